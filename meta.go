package logical

// Well-known keys of Mutation.Meta. A dialect sets them to tell a Target
// what its source did beyond the row image; a Target that does not know a
// key ignores it, so each key is defined such that ignoring it is safe or
// fails loudly. Meta is never persisted, so these are hints for one Apply.
const (
	// MetaInsert (value true) marks a row the source inserted: a hint that
	// the target has no row with its key yet, so a Target may write it
	// with a plain insert, which is cheaper than an upsert. A Target that
	// uses the hint must fall back to an upsert when the key exists after
	// all (a replay after a restart, a target that was not empty).
	MetaInsert = "logical.insert"

	// MetaTruncate (value true) marks a truncate: every row of the table
	// is deleted, in order with the other mutations of the same Apply
	// call. Such a mutation has no Key and no Data, so a Target that does
	// not know the key fails on the missing key instead of deleting one row.
	MetaTruncate = "logical.truncate"

	// MetaTruncateTables (value []Table), on a MetaTruncate mutation,
	// lists every target table the source truncated in the same
	// statement, this one included, in the source's order: a Target can
	// empty them together, which foreign keys between them require. A
	// dialect still sends one MetaTruncate mutation per table.
	MetaTruncateTables = "logical.truncate.tables"

	// MetaTruncateRestart (value true), on a MetaTruncate mutation, says
	// the source's TRUNCATE restarted the tables' identity sequences.
	MetaTruncateRestart = "logical.truncate.restart"

	// MetaNoKey (value true) says that the source has no key for the
	// mutation's table and Key holds the whole row (PostgreSQL's REPLICA
	// IDENTITY FULL, or no replica identity): Key changes with the row's
	// values, so two mutations of one row may have different Keys, and
	// a Target with a key of its own finds the row by other values.
	// Fan mode keeps the order of each Key only, so it applies every
	// mutation of such a table on one shard, in the order given, from
	// the first one so marked on (see Sharder). A Target may ignore it.
	MetaNoKey = "logical.nokey"
)
