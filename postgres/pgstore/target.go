package pgstore

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/logical-go/logical"
	"github.com/logical-go/logical/postgres/internal/jsontext"
	"github.com/pkg/errors"
)

// MetaTruncate and MetaInsert are the Mutation.Meta keys this Target
// honours; they are logical.MetaTruncate and logical.MetaInsert. For a
// truncate the table is emptied in order with the other mutations of the
// Apply call (with logical.MetaTruncateTables, by one TRUNCATE of all the
// tables listed). An insert's row is written with a plain INSERT when it
// is the first mutation of its key in the call; should the key exist after
// all (a replay), the Target upserts into the table from then on and redoes
// the write at once as an upsert: outside a transaction the statement, in
// one the whole transaction from its statement log (if that is not larger
// than 16 MiB; else the transaction fails and the caller's retry upserts).
const (
	MetaTruncate = logical.MetaTruncate
	MetaInsert   = logical.MetaInsert
)

// Target is a logical.Target that writes into existing PostgreSQL tables.
// It reads each table's columns, types and key from the catalog the first
// time it sees the table (again when a row has a column it does not know,
// and after any error that suggests the table changed), and lets the
// database convert values: each JSON value is taken as text (->>) and
// cast to the column's base type, so the text form a source decoded
// (pgoutput's) and ordinary JSON numbers, booleans and objects all work.
// A value the column cannot hold exactly (too long, out of range, more
// digits or precision than its typmod keeps) fails the statement with an
// error naming the table, column and value; nothing is truncated or
// rounded. Identity columns GENERATED ALWAYS take the given values.
//
// One Apply call costs at most one statement per distinct set of columns
// among its upserts (usually one; rows the source inserted, see
// MetaInsert, make a group of their own) plus one for its deletes:
//
//	INSERT INTO t (cols) SELECT CAST(r.c0 AS type), ... FROM unnest($1::text[], ...) AS r(c0, ...)
//	ON CONFLICT (pk) DO UPDATE SET c = excluded.c, ...
//	DELETE FROM t USING unnest($1::text[], ...) AS k(c0, ...) WHERE t.pk = CAST(k.c0 AS type)
//
// Rows the source inserted (and rows of a table without a key) that
// would be a plain INSERT of at least 200 rows go by COPY instead: in a
// transaction (Begin) one COPY takes the following such statements too,
// see copyin.go. A COPY that fails is redone as the INSERT.
//
// The text of these statements is made once per table and set of columns
// and kept with the table's catalog information, so it is made again
// whenever that is read again.
//
// Rows whose values are all JSON strings or null (pgoutput's) go as one
// text array per column; rows with other JSON values as one JSON array
// of arrays taken apart with ->>, so that the database casts the same text
// either way. Keys go the same way.
//
// Only the last mutation of a key within one call counts (should the
// folded statements violate a unique or exclusion constraint other than
// the key, as a swap of unique values does, the call's mutations are
// written again one statement per mutation in their order, see
// unique.go); an upsert whose
// row lacks some columns (PostgreSQL's unchanged TOAST values) updates only
// the columns it has, so the target keeps the others. Mutation.Key holds the
// key values in the table's column order. The key is the primary key, or
// else the replica-identity index. An upsert whose Before has other key
// values than its Data moves the row (an UPDATE of the old row, so the
// columns Data lacks are kept). In a table with no key, rows marked
// MetaInsert (and upserts with an empty Key) are inserted, and an update
// or delete changes exactly one row equal to its Before in every column
// Before has; without a Before it is an error naming the table.
//
// Target is also a logical.Orderer over the catalog's foreign keys. All
// methods are safe for concurrent use.
type Target struct {
	pool *pgxpool.Pool

	mu         sync.RWMutex
	tables     map[logical.Table]*tableInfo
	loading    map[logical.Table]*infoCall // catalog queries in progress
	upsertOnly map[logical.Table]bool      // a plain insert met an existing row
	rowByRow   map[logical.Table]bool      // written one mutation per statement, see unique.go

	copies atomic.Int64 // COPY runs started, for tests
}

var (
	_ logical.Target   = (*Target)(nil)
	_ logical.TargetTx = (*targetTx)(nil)
	_ logical.ChainTx  = (*targetTx)(nil)
	_ logical.Orderer  = (*Target)(nil)
)

// NewTarget returns a Target writing through pool.
func NewTarget(pool *pgxpool.Pool) *Target {
	return &Target{
		pool:       pool,
		tables:     make(map[logical.Table]*tableInfo),
		loading:    make(map[logical.Table]*infoCall),
		upsertOnly: make(map[logical.Table]bool),
		rowByRow:   make(map[logical.Table]bool),
	}
}

// column is one writable column of a target table.
type column struct {
	name string
	typ  string // format_type(): the declared type, for casts that must keep its typmod and for messages
	// cast is the type the text of a value is cast to: the base type
	// without a length, precision or scale (a domain's base type), so
	// that the assignment to the column applies those and fails where a
	// value does not fit, instead of an explicit cast that truncates.
	cast string
	// check is set for a typmod that assignment applies by rounding
	// (numeric scale, time, timestamp and interval precision, interval
	// fields): the value is compared with its cast to typ, see valueExpr.
	check  bool
	typmod bool // the declared type has a typmod (its own or its domain's)
	always bool // GENERATED ALWAYS AS IDENTITY
	pk     bool // part of the key: the primary key, or else the replica-identity index
	// copyIn is set if COPY's input of the text gives the value valueExpr
	// does: no check, and the cast from text to the base type is by its
	// input function (or binary), not a function of its own.
	copyIn bool
	member string // memberPrefix of name
}

// tableInfo is what the catalog says about one table.
type tableInfo struct {
	table  logical.Table
	ident  string // quoted, schema-qualified
	cols   []column
	byName map[string]int
	pk     []int // indexes into cols, in column order
	always bool  // some column is GENERATED ALWAYS AS IDENTITY
	// copyIn is set if the table may be written by COPY (see copyin.go):
	// it has no rules (which COPY does not apply) and no row-level
	// security (which COPY FROM does not support).
	copyIn bool

	// The statements written to the table, made on first use: they
	// depend only on the fields above, which do not change.
	sqlMu   sync.Mutex
	upserts map[string]*upsertSQL // by set of columns, see upsertSQL
	deletes [2]string             // deleteKeys' statement from text arrays, from JSON
}

// execer runs the statements of Apply: at once (poolExec) or pipelined in
// a transaction (targetTx).
type execer interface {
	exec(ctx context.Context, st stmt, sql string, args ...any) error
	// keep returns a copy of muts that outlives the call, for writing
	// them again one by one (see unique.go); nil if the execer needs none
	// (it writes them again during the call) or cannot keep them.
	keep(muts []logical.Mutation) *keptMuts
}

// stmt describes a statement for errors.
type stmt struct {
	what string     // "upserting 3 rows into s.t"
	info *tableInfo // the table written, if any
	// plainInsert is set for an INSERT without ON CONFLICT of rows the
	// source inserted: if it fails on a unique violation, the Target
	// upserts into the table from then on and runs upsert, the same
	// statement with ON CONFLICT, instead.
	plainInsert bool
	upsert      string
	diag        *diagnosis // for finding the value of a data error
	seg         *segment   // the mutations written, if more than one
}

// isUniqueViolation reports whether err is a unique violation (23505).
func isUniqueViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505"
}

// conflicted reports whether st is a plain insert that err, a unique
// violation, says to redo as an upsert; it makes the Target upsert into
// the table from now on.
func (t *Target) conflicted(st stmt, err error) bool {
	if !st.plainInsert || !isUniqueViolation(err) {
		return false
	}
	t.mu.Lock()
	t.upsertOnly[st.info.table] = true
	t.mu.Unlock()
	return true
}

// failed wraps err, the failure of statement st. An error that suggests
// the table changed drops its cached description; a data error is
// explained by the column and value that caused it.
func (t *Target) failed(st stmt, err error) error {
	if st.info != nil && suggestsCatalogChange(err) {
		t.forget(st.info.table)
	}
	if st.diag != nil && isDataError(err) {
		if d := t.diagnose(st.diag); d != nil {
			return errors.Wrap(d, "pgstore: "+st.what)
		}
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (pgErr.Code == "23505" || pgErr.Code == "23P01") {
		// The constraint and the values that collide.
		return errors.Wrapf(err, "pgstore: %s: constraint %q: %s", st.what, pgErr.ConstraintName, pgErr.Detail)
	}
	return errors.Wrap(err, "pgstore: "+st.what)
}

// poolExec runs each statement at once, in a transaction of its own.
type poolExec struct{ target *Target }

func (p poolExec) exec(ctx context.Context, st stmt, sql string, args ...any) error {
	if st.seg != nil && st.seg.replaced {
		return nil
	}
	_, err := p.target.pool.Exec(ctx, sql, args...)
	if err != nil && p.target.conflicted(st, err) {
		// A replayed insert: the row is there already.
		_, err = p.target.pool.Exec(ctx, st.upsert, args...)
	}
	if err != nil && isOrderViolation(st, err) {
		st.seg.replaced = true
		return p.target.apart(ctx, st.seg)
	}
	if err != nil {
		return p.target.failed(st, err)
	}
	return nil
}

// Apply implements logical.Target: each statement commits on its own.
func (t *Target) Apply(ctx context.Context, table logical.Table, muts []logical.Mutation) error {
	return t.apply(ctx, poolExec{t}, table, muts)
}

// Begin implements logical.Target. The transaction holds one connection of
// the pool until it commits or rolls back.
func (t *Target) Begin(ctx context.Context) (logical.TargetTx, error) {
	conn, err := t.pool.Acquire(ctx)
	if err != nil {
		return nil, errors.Wrap(err, "pgstore: beginning a target transaction")
	}
	return &targetTx{target: t, conn: conn}, nil
}

// pipelineBytes is how much SQL and arguments a transaction queues before
// it sends them to the server.
const pipelineBytes = 128 << 10

// targetTx is a Target transaction whose statements are pipelined: Apply
// only queues them (BEGIN first); once pipelineBytes are queued they go to
// the server in one batch, and the next Apply calls prepare the next
// batch while the server runs this one. Commit sends what is left with
// the COMMIT. A small source transaction so costs one round trip, and a
// large one keeps the caller and the server busy at the same time. The
// price: a statement's error comes back from a later Apply or from Commit
// (wrapped with what the statement did); after one, every call returns it
// and the transaction can only roll back. One exception: a plain insert
// of rows the source inserted that meets existing rows (a replay after a
// restart without a Progress table) makes the transaction start over at
// once with upserts, from a log of its statements that is kept while it
// is smaller than replayBytes.
type targetTx struct {
	target *Target
	conn   *pgxpool.Conn // nil once the transaction ended

	queued      pgx.Batch
	queuedWhat  []stmt // per queued statement
	queuedBytes int
	begun       bool // BEGIN is queued or sent

	inflight     pgx.BatchResults // the batch the server is running
	inflightWhat []stmt
	ctx          context.Context // of the last send, for a replay

	log        []loggedStmt // every statement since BEGIN, unless logFull
	logBytes   int
	logFull    bool
	committing bool // COMMIT is queued or sent

	byRow []logical.Table // tables written one mutation per statement (Target.rowByRow)

	copy *copyRun // the COPY in progress, see copyin.go

	// after is the transaction before this one on the connection, if it
	// was committed with CommitChain: this one uses the connection only
	// once that commit's result is in.
	after *chainLink

	err error // the first failure
}

// chainLink is how a transaction committed with CommitChain hands the
// connection to the next one: err is set before done closes.
type chainLink struct {
	done chan struct{}
	err  error
}

// waitPrev waits until the transaction before this one on the connection
// ended; if its commit failed, so does this transaction.
func (x *targetTx) waitPrev() error {
	if x.after == nil {
		return x.err
	}
	<-x.after.done
	if err := x.after.err; err != nil && x.err == nil {
		x.err = errors.Wrap(err, "pgstore: the transaction before this one on its connection failed")
	}
	x.after = nil
	return x.err
}

// loggedStmt is a statement of the transaction, kept for a replay.
type loggedStmt struct {
	st   stmt
	sql  string
	args []any
	// copyData is set for rows that went by COPY: their COPY text, of
	// copyCols columns, for args of sql (see copyArrays).
	copyData []byte
	copyCols int
}

// replayBytes bounds the statements a transaction keeps for a replay.
var replayBytes = 16 << 20 // a variable for tests

// exec implements execer by queueing the statement.
func (x *targetTx) exec(ctx context.Context, st stmt, sql string, args ...any) error {
	if x.conn == nil {
		return errors.New("pgstore: the target transaction has ended")
	}
	if x.err != nil {
		return x.err
	}
	if x.copy != nil {
		if err := x.endCopy(false); err != nil {
			return err
		}
	}
	if st.seg != nil && st.seg.replaced {
		return nil // written one by one after a statement before this one failed
	}
	x.queue(stmt{what: "beginning the target transaction"}, "BEGIN")
	size := x.queue(st, sql, args...)
	if !x.logFull {
		x.log = append(x.log, loggedStmt{st: st, sql: sql, args: args})
		if x.logBytes += size; x.logBytes > replayBytes {
			x.log, x.logFull = nil, true
		}
	}
	if x.queuedBytes >= pipelineBytes {
		return x.send(ctx)
	}
	return nil
}

// queue adds a statement to the next batch; BEGIN only once. It returns
// the statement's size.
func (x *targetTx) queue(what stmt, sql string, args ...any) int {
	if sql == "BEGIN" {
		if x.begun {
			return 0
		}
		x.begun = true
	}
	x.queued.Queue(sql, args...)
	x.queuedWhat = append(x.queuedWhat, what)
	size := len(sql)
	for _, a := range args {
		if s, ok := a.(string); ok {
			size += len(s)
		}
	}
	x.queuedBytes += size
	return size
}

// send waits for the batch in flight and sends the queued one.
func (x *targetTx) send(ctx context.Context) error {
	if err := x.waitPrev(); err != nil {
		return err
	}
	if err := x.collect(); err != nil {
		return err
	}
	if x.queued.Len() == 0 {
		return nil
	}
	batch := x.queued
	x.inflightWhat = x.queuedWhat
	x.queued, x.queuedWhat, x.queuedBytes = pgx.Batch{}, nil, 0
	x.ctx = ctx
	x.inflight = x.conn.SendBatch(ctx, &batch)
	return nil
}

// collect waits for the batch in flight and returns the transaction's
// first error.
func (x *targetTx) collect() error {
	if x.inflight == nil {
		return x.err
	}
	br, whats := x.inflight, x.inflightWhat
	x.inflight, x.inflightWhat = nil, nil
	var err error
	for _, what := range whats {
		if _, e := br.Exec(); e != nil {
			if x.target.conflicted(what, e) && !x.logFull {
				_ = br.Close()
				return x.replay(true)
			}
			if isOrderViolation(what, e) {
				if what.seg.kept != nil && !x.logFull {
					what.seg.replaced = true
					_ = br.Close()
					return x.replay(false)
				}
				// Too large to replay: the retry writes the table one
				// mutation per statement.
				x.target.setRowByRow(what.info.table, true)
			}
			err = x.target.failed(what, e)
			break
		}
	}
	if e := br.Close(); e != nil && err == nil {
		err = errors.Wrap(e, "pgstore: running the target transaction")
	}
	if err != nil && x.err == nil {
		x.err = err
	}
	return x.err
}

// replay rolls the transaction back and runs it again from the log, with
// the statements of each replaced segment as one statement per mutation,
// with every plain insert as an upsert if upserts is set, and with the
// COMMIT if it was sent.
func (x *targetTx) replay(upserts bool) error {
	ctx := x.ctx
	if _, err := x.conn.Exec(ctx, "ROLLBACK"); err != nil {
		x.err = errors.Wrap(err, "pgstore: rolling back the target transaction to replay it")
		return x.err
	}
	var log []loggedStmt
	var written *segment // the replaced segment last written one by one
	for _, l := range x.log {
		seg := l.st.seg
		switch {
		case seg == nil || !seg.replaced:
			log = append(log, l)
		case seg != written:
			// The segment's first statement: write its mutations instead.
			written = seg
			var rec recorder
			if err := x.target.oneByOne(ctx, &rec, seg); err != nil {
				x.err = err
				return x.err
			}
			log = append(log, rec.stmts...)
		}
	}
	x.log = log
	var batch pgx.Batch
	whats := []stmt{{what: "beginning the target transaction"}}
	batch.Queue("BEGIN")
	for i := range x.log {
		l := &x.log[i]
		if l.copyData != nil {
			args, err := copyArrays(l.copyData, l.copyCols)
			if err != nil {
				x.err = err
				return x.err
			}
			l.args, l.copyData = args, nil
		}
		if upserts && l.st.plainInsert {
			l.sql, l.st.plainInsert = l.st.upsert, false
			l.st.what = strings.Replace(l.st.what, "inserting", "upserting", 1)
		}
		batch.Queue(l.sql, l.args...)
		whats = append(whats, l.st)
	}
	if x.committing {
		batch.Queue("COMMIT")
		whats = append(whats, stmt{what: "committing the target transaction"})
	}
	// The log has the statements not sent yet, too.
	x.queued, x.queuedWhat, x.queuedBytes = pgx.Batch{}, nil, 0
	x.begun = true
	x.inflight, x.inflightWhat = x.conn.SendBatch(ctx, &batch), whats
	return x.collect()
}

// Apply implements logical.TargetTx.
func (x *targetTx) Apply(ctx context.Context, table logical.Table, muts []logical.Mutation) error {
	return x.target.apply(ctx, x, table, muts)
}

// Commit implements logical.TargetTx. On an error the transaction is
// rolled back.
func (x *targetTx) Commit(ctx context.Context) error {
	if x.conn == nil {
		return errors.New("pgstore: the target transaction has ended")
	}
	x.sendCommit(ctx)
	x.end(ctx)
	if x.err != nil {
		return x.err
	}
	x.committed()
	return nil
}

// sendCommit ends an open COPY and, unless a statement failed, sends what
// is queued wrapped in BEGIN and COMMIT and reads the results; x.err
// holds the outcome.
func (x *targetTx) sendCommit(ctx context.Context) {
	if x.copy != nil {
		_ = x.endCopy(false)
	}
	if x.err == nil {
		x.queue(stmt{what: "beginning the target transaction"}, "BEGIN")
		x.queue(stmt{what: "committing the target transaction"}, "COMMIT")
		x.committing = true
		if err := x.send(ctx); err == nil {
			_ = x.collect()
		}
	}
}

// committed lifts the row-by-row writing of the tables this transaction
// had to write so, once it committed.
func (x *targetTx) committed() {
	for _, table := range x.byRow {
		x.target.setRowByRow(table, false)
	}
}

// CommitChain implements logical.ChainTx: the COMMIT goes to the server
// with what is still queued, and a goroutine reads the results and
// delivers the outcome, while the caller queues the next transaction's
// statements; those are sent once the outcome is in (and never if the
// commit failed), on the same connection, so they run after the commit.
// A statement that must be redone (see targetTx) is redone by that
// goroutine before the outcome.
func (x *targetTx) CommitChain(ctx context.Context) (logical.TargetTx, <-chan error) {
	result := make(chan error, 1)
	if x.conn == nil {
		result <- errors.New("pgstore: the target transaction has ended")
		return nil, result
	}
	link := &chainLink{done: make(chan struct{})}
	next := &targetTx{target: x.target, conn: x.conn, after: link}
	go func() {
		x.sendCommit(ctx)
		err := x.err
		x.close(ctx, false)
		if err == nil {
			x.committed()
		}
		link.err = err
		close(link.done)
		result <- err
	}()
	return next, result
}

// Rollback implements logical.TargetTx; after Commit it does nothing.
func (x *targetTx) Rollback(ctx context.Context) error {
	if x.conn == nil {
		return nil
	}
	x.end(ctx)
	return nil
}

// end waits for the batch in flight, rolls back whatever is still open
// and gives the connection back (the pool closes it if that failed).
func (x *targetTx) end(ctx context.Context) { x.close(ctx, true) }

// close is end; it keeps the connection (for the next transaction of
// CommitChain) unless release is set.
func (x *targetTx) close(ctx context.Context, release bool) {
	if x.copy != nil {
		_ = x.endCopy(true)
	}
	_ = x.waitPrev()
	_ = x.collect()
	if x.conn.Conn().PgConn().TxStatus() != 'I' && !x.conn.Conn().IsClosed() {
		_, _ = x.conn.Exec(ctx, "ROLLBACK")
	}
	if release {
		x.conn.Release()
	}
	x.conn = nil
	x.queued, x.queuedWhat, x.queuedBytes = pgx.Batch{}, nil, 0
	x.log = nil
}

// apply writes muts through q, splitting them at truncates.
func (t *Target) apply(ctx context.Context, q execer, table logical.Table, muts []logical.Mutation) error {
	info, err := t.info(ctx, table, false)
	if err != nil {
		return err
	}
	start := 0
	for i := range muts {
		if truncate, _ := muts[i].Meta[MetaTruncate].(bool); !truncate {
			continue
		}
		if err := t.applySegment(ctx, q, info, muts[start:i]); err != nil {
			return err
		}
		if err := t.truncate(ctx, q, info, muts[i].Meta); err != nil {
			return err
		}
		start = i + 1
	}
	return t.applySegment(ctx, q, info, muts[start:])
}

// truncate empties a table. With the list of tables the source truncated
// together (logical.MetaTruncateTables) it is one TRUNCATE of all of them,
// which foreign keys among them allow, and RESTART IDENTITY if the
// source's did (logical.MetaTruncateRestart); without it, a DELETE of
// every row, in order with whatever else the transaction does.
func (t *Target) truncate(ctx context.Context, q execer, info *tableInfo, meta map[string]any) error {
	tables, _ := meta[logical.MetaTruncateTables].([]logical.Table)
	if len(tables) == 0 {
		return q.exec(ctx, stmt{what: "truncating " + info.table.String(), info: info}, "DELETE FROM "+info.ident)
	}
	names := make([]string, 0, len(tables))
	var list []string
	for _, tbl := range tables {
		names = append(names, TableIdent(tbl))
		list = append(list, tbl.String())
	}
	sql := "TRUNCATE " + strings.Join(names, ", ")
	if restart, _ := meta[logical.MetaTruncateRestart].(bool); restart {
		sql += " RESTART IDENTITY"
	}
	return q.exec(ctx, stmt{what: "truncating " + strings.Join(list, ", "), info: info}, sql)
}

// rowState is the net effect of a segment's mutations on one key.
type rowState struct {
	deleted bool
	fresh   bool   // the first mutation of the key was an insert (MetaInsert)
	key     string // the compact JSON array of the key values
	data    row
}

// row is a decoded row image: the JSON value of each column of a
// tableInfo, by index; nil for a column the image does not have.
type row []json.RawMessage

// unknownColumnError is a row column that the tableInfo lacks.
type unknownColumnError struct{ name string }

func (e unknownColumnError) Error() string { return fmt.Sprintf("no column %q", e.name) }

// applySegment writes mutations that contain no truncate. A row with a
// column the cached catalog information lacks makes it read the catalog
// again, once (the table may have changed); a column still unknown is an
// error naming it.
func (t *Target) applySegment(ctx context.Context, q execer, info *tableInfo, muts []logical.Mutation) error {
	if len(muts) == 0 {
		return nil
	}
	err := t.applyParts(ctx, q, info, muts)
	var unknown unknownColumnError
	if !errors.As(err, &unknown) {
		return err
	}
	if info, err = t.info(ctx, info.table, true); err != nil {
		return err
	}
	err = t.applyParts(ctx, q, info, muts)
	if errors.As(err, &unknown) {
		return errors.Errorf("pgstore: table %s has no column %q", info.table, unknown.name)
	}
	return err
}

// applyRows is applySegment with the catalog information info; it sends
// nothing if a row has a column info lacks (unknownColumnError).
func (t *Target) applyRows(ctx context.Context, q execer, info *tableInfo, muts []logical.Mutation) error {
	if len(muts) > 1 {
		t.mu.RLock()
		byRow := t.rowByRow[info.table]
		t.mu.RUnlock()
		if byRow {
			if x, ok := q.(*targetTx); ok {
				x.byRow = append(x.byRow, info.table)
			}
			return t.oneByOne(ctx, q, &segment{info: info, muts: muts})
		}
		seg := &segment{info: info, kept: q.keep(muts)}
		if seg.kept == nil {
			seg.muts = muts // outside a transaction, or not replayable
		}
		q = segmentExec{execer: q, seg: seg}
	}
	var order []*rowState // in order of first appearance
	states := make(map[string]*rowState, len(muts))
	var inserts []row // tables without a primary key
	var keyBuf []byte
	// One allocation for the rows and one for their states, not one per
	// mutation: the states never outgrow their capacity, so pointers into
	// it stay valid.
	ncols := len(info.cols)
	slab := make([]json.RawMessage, len(muts)*ncols)
	stateSlab := make([]rowState, 0, len(muts))
	for i := range muts {
		m := &muts[i]
		r := row(slab[i*ncols : (i+1)*ncols : (i+1)*ncols])
		if len(info.pk) == 0 {
			if m.IsDelete() {
				return errors.Errorf("pgstore: table %s has no primary key, cannot apply a delete", info.table)
			}
			r, err := decodeRowInto(info, m.Data, r)
			if err != nil {
				return err
			}
			inserts = append(inserts, r)
			continue
		}
		var err error
		if m.IsDelete() {
			r = nil
		} else if r, err = decodeRowInto(info, m.Data, r); err != nil {
			return err
		}
		if keyBuf, err = appendKey(keyBuf[:0], info, m, r); err != nil {
			return err
		}
		st := states[string(keyBuf)]
		if st == nil {
			insert, _ := m.Meta[MetaInsert].(bool)
			stateSlab = append(stateSlab, rowState{key: string(keyBuf), fresh: insert && !m.IsDelete()})
			st = &stateSlab[len(stateSlab)-1]
			states[st.key] = st
			order = append(order, st)
		}
		if m.IsDelete() {
			st.deleted, st.data = true, nil
			continue
		}
		if st.data != nil && !st.deleted {
			// A later image may lack unchanged columns; keep the earlier
			// values for those.
			for c, v := range r {
				if v != nil {
					st.data[c] = v
				}
			}
		} else {
			st.data = r
		}
		st.deleted = false
	}

	var deletes []json.RawMessage
	// The groups' rows, by signature: an index into groupRows, so that a
	// row of a group seen before looks it up without making the
	// signature a string.
	groups := make(map[string]int)
	var groupOrder []string
	var groupRows [][]row
	// A group is a set of columns (a bitmap over the column indexes) and
	// whether its rows are fresh (a last byte of 1).
	sig := make([]byte, (len(info.cols)+7)/8+1)
	group := func(r row, fresh bool) {
		clear(sig)
		if fresh {
			sig[len(sig)-1] = 1
		}
		for c, v := range r {
			if v != nil {
				sig[c/8] |= 1 << (c % 8)
			}
		}
		g, ok := groups[string(sig)]
		if !ok {
			g = len(groupRows)
			groups[string(sig)] = g
			groupOrder = append(groupOrder, string(sig))
			groupRows = append(groupRows, nil)
		}
		groupRows[g] = append(groupRows[g], r)
	}
	for _, st := range order {
		if st.deleted {
			deletes = append(deletes, json.RawMessage(st.key))
			continue
		}
		group(st.data, st.fresh)
	}
	for _, r := range inserts {
		group(r, false)
	}

	if len(deletes) > 0 {
		if err := t.deleteKeys(ctx, q, info, deletes); err != nil {
			return err
		}
	}
	for g, sig := range groupOrder {
		if err := t.upsert(ctx, q, info, sig, groupRows[g]); err != nil {
			return err
		}
	}
	return nil
}

// decodeRow parses a row image into the columns of info. A column info
// does not have is an unknownColumnError.
func decodeRow(info *tableInfo, data json.RawMessage) (row, error) {
	return decodeRowInto(info, data, make(row, len(info.cols)))
}

// decodeRowInto is decodeRow into r, a row of info's columns that is all
// nil.
func decodeRowInto(info *tableInfo, data json.RawMessage, r row) (row, error) {
	if unknown, ok := decodeFlatRow(info, data, r); ok {
		if unknown != nil {
			return nil, unknownColumnError{string(unknown)}
		}
		return r, nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, errors.Errorf("pgstore: table %s: row data is not a JSON object", info.table)
	}
	clear(r)
	for name, v := range m {
		i, found := info.byName[name]
		if !found {
			return nil, unknownColumnError{name}
		}
		if v == nil { // cannot happen for a parsed value, but keep nil = absent
			v = json.RawMessage("null")
		}
		r[i] = v
	}
	return r, nil
}

// decodeFlatRow is the fast path of decodeRow for the common row image: a
// JSON object whose keys are strings without escapes and whose values are
// strings or null. It sets the member of each column of info in r (the
// last of a duplicate key), returns the first key info has no column for,
// and reports false for anything else (including invalid JSON), which
// decodeRow then hands to encoding/json; r may have been set in part by
// then. The values alias data.
//
// A source usually sends the columns in the table's order: the member of
// the column after the last one found is tried first, by comparing the
// bytes of its key and colon (column.member) without scanning them.
func decodeFlatRow(info *tableInfo, data []byte, r row) (unknown []byte, ok bool) {
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return nil, false
	}
	i = skipSpace(data, i+1)
	if i < len(data) && data[i] == '}' {
		return nil, skipSpace(data, i+1) == len(data)
	}
	next := 0 // the column after the last one found
	for {
		col := -1
		if next < len(info.cols) {
			if k := info.cols[next].member; k != "" && len(data)-i >= len(k) && string(data[i:i+len(k)]) == k {
				col = next
				i = skipSpace(data, i+len(k))
			}
		}
		if col < 0 {
			// A key: a string without escapes.
			if i >= len(data) || data[i] != '"' {
				return nil, false
			}
			end, escaped, ok := scanString(data, i)
			if !ok || escaped {
				return nil, false
			}
			key := data[i+1 : end-1]
			i = skipSpace(data, end)
			if i >= len(data) || data[i] != ':' {
				return nil, false
			}
			i = skipSpace(data, i+1)
			if next < len(info.cols) && info.cols[next].name == string(key) {
				col = next
			} else if c, found := info.byName[string(key)]; found {
				col = c
			} else if unknown == nil {
				unknown = key
			}
		}
		// A value: a string or null.
		var end int
		switch {
		case i < len(data) && data[i] == '"':
			if end, _, ok = scanString(data, i); !ok {
				return nil, false
			}
		case len(data)-i >= 4 && string(data[i:i+4]) == "null":
			end = i + 4
		default:
			return nil, false
		}
		if col >= 0 {
			r[col] = json.RawMessage(data[i:end:end])
			next = col + 1
		}
		i = skipSpace(data, end)
		if i >= len(data) {
			return nil, false
		}
		switch data[i] {
		case ',':
			i = skipSpace(data, i+1)
		case '}':
			return unknown, skipSpace(data, i+1) == len(data)
		default:
			return nil, false
		}
	}
}

// memberPrefix returns the bytes that begin a JSON object's member of
// the column name: its key and a colon, when name is a JSON string
// without escapes as it stands (valid UTF-8 without quotes, backslashes
// or control characters); else "", and decodeFlatRow scans the key.
func memberPrefix(name string) string {
	if !utf8.ValidString(name) {
		return ""
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 0x20 || c == '"' || c == '\\' {
			return ""
		}
	}
	return `"` + name + `":`
}

// skipSpace returns the index of the first byte at or after i that is not
// JSON whitespace.
func skipSpace(data []byte, i int) int {
	for i < len(data) {
		switch data[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// scanString checks the JSON string that starts at data[i] (a quote) and
// returns the index after its closing quote and whether it has escapes. It
// reports false for a string that is unterminated, contains a control
// character or a malformed escape, or is not valid UTF-8.
func scanString(data []byte, i int) (end int, escaped, ok bool) {
	for i++; i < len(data); {
		// Plain bytes, most of every value, a word at a time.
		if n := jsontext.PlainPrefix(data[i:]); n > 0 {
			i += n
			continue
		}
		c := data[i]
		switch {
		case c == '"':
			return i + 1, escaped, true
		case c < 0x20:
			return 0, false, false
		case c == '\\':
			escaped = true
			if i+1 >= len(data) {
				return 0, false, false
			}
			switch data[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(data) {
					return 0, false, false
				}
				for _, h := range data[i+2 : i+6] {
					if !isHex(h) {
						return 0, false, false
					}
				}
				i += 6
			default:
				return 0, false, false
			}
		case c < utf8.RuneSelf:
			i++
		default:
			r, size := utf8.DecodeRune(data[i:])
			if r == utf8.RuneError && size == 1 {
				return 0, false, false
			}
			i += size
		}
	}
	return 0, false, false
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// splitFlatArray is the fast path of decoding a key: a JSON array whose
// elements are strings or null (pglogical's keys). It appends the
// elements to dst, aliasing data, and reports false for anything else
// (other values, invalid JSON), which the caller then hands to
// encoding/json.
func splitFlatArray(data []byte, dst []json.RawMessage) ([]json.RawMessage, bool) {
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '[' {
		return dst, false
	}
	i = skipSpace(data, i+1)
	if i < len(data) && data[i] == ']' {
		return dst, skipSpace(data, i+1) == len(data)
	}
	for {
		start := i
		var end int
		switch {
		case i < len(data) && data[i] == '"':
			var ok bool
			if end, _, ok = scanString(data, i); !ok {
				return dst, false
			}
		case len(data)-i >= 4 && string(data[i:i+4]) == "null":
			end = i + 4
		default:
			return dst, false
		}
		dst = append(dst, json.RawMessage(data[start:end:end]))
		i = skipSpace(data, end)
		if i >= len(data) {
			return dst, false
		}
		switch data[i] {
		case ',':
			i = skipSpace(data, i+1)
		case ']':
			return dst, skipSpace(data, i+1) == len(data)
		default:
			return dst, false
		}
	}
}

// appendKey appends the primary-key values of a mutation to buf as a
// compact JSON array, in which equal keys are equal strings. An upsert's
// key comes from its row; a delete's from Mutation.Key, or from
// Mutation.Before when Key does not match the primary key (a source whose
// replica identity is the full row).
func appendKey(buf []byte, info *tableInfo, m *logical.Mutation, r row) ([]byte, error) {
	var small [4]json.RawMessage
	vals := small[:0]
	switch {
	case r != nil:
		for _, i := range info.pk {
			if r[i] == nil {
				return nil, errors.Errorf("pgstore: table %s: a row lacks a primary-key column", info.table)
			}
			vals = append(vals, r[i])
		}
	default:
		if parts, ok := splitFlatArray(m.Key, vals); ok && len(parts) == len(info.pk) {
			vals = parts
			break
		}
		var parts []json.RawMessage
		if err := json.Unmarshal(m.Key, &parts); err == nil && len(parts) == len(info.pk) {
			vals = parts
			break
		}
		vals = vals[:0]
		var before map[string]json.RawMessage
		if len(m.Before) > 0 && json.Unmarshal(m.Before, &before) == nil {
			for _, i := range info.pk {
				if v, ok := before[info.cols[i].name]; ok {
					vals = append(vals, v)
				}
			}
		}
		if len(vals) != len(info.pk) {
			return nil, errors.Errorf("pgstore: table %s: a delete's key does not match the primary key's %d columns",
				info.table, len(info.pk))
		}
	}
	buf = append(buf, '[')
	for n, v := range vals {
		if n > 0 {
			buf = append(buf, ',')
		}
		if len(v) > 0 && v[0] == '"' {
			// A valid JSON string is compact already.
			buf = append(buf, v...)
			continue
		}
		var c bytes.Buffer
		if err := json.Compact(&c, v); err != nil {
			return nil, errors.Errorf("pgstore: table %s: a key value is not JSON", info.table)
		}
		buf = append(buf, c.Bytes()...)
	}
	return append(buf, ']'), nil
}

// upsert writes rows that all have the columns of sig in one statement;
// with a plain INSERT if sig says the rows are fresh and no plain insert
// into the table failed before.
// The rows go to the server as one JSON array of arrays, each holding the
// values of sig's columns in column order.
func (t *Target) upsert(ctx context.Context, q execer, info *tableInfo, sig string, rows []row) error {
	plain := false
	if sig[len(sig)-1] == 1 && len(info.pk) > 0 {
		t.mu.RLock()
		plain = !t.upsertOnly[info.table]
		t.mu.RUnlock()
	}
	// Rows whose values are all JSON strings or null (every row pgoutput
	// decodes) go as one text array per column; others as one JSON array
	// of arrays, taken apart with ->>. The database casts the same text
	// either way.
	p, err := info.upsertSQL(sig)
	if err != nil {
		return err
	}
	cols := p.cols
	arrays := len(cols) <= maxArrayColumns && stringsOrNulls(rows, cols)
	text := &p.json
	if arrays {
		text = &p.arrays
	}
	verb, sql := "upserting ", text.upsert
	if plain {
		// A plain insert has no ON CONFLICT: the primary key rejects an
		// existing row, and the upsert runs instead.
		verb, sql = "inserting ", text.insert
	}
	what := stmt{what: verb + strconv.Itoa(len(rows)) + " rows into " + info.table.String(), info: info,
		diag: &diagnosis{info: info, cols: cols, vals: func(col int) []*string { return columnTexts(rows, col) }}}
	if plain {
		what.plainInsert, what.upsert = true, text.upsert
	}
	if arrays && (plain || len(info.pk) == 0) && copyable(info, cols) {
		if c, ok := q.(copier); ok {
			if done, err := c.copyRows(ctx, what, sql, info, cols, rows); done {
				return err
			}
		}
	}
	if arrays {
		args, err := textArrays(info, rows, cols)
		if err != nil {
			return err
		}
		return q.exec(ctx, what, sql, args...)
	}
	// The values are JSON already (decodeRow checked them), so the array
	// is put together without encoding/json.
	size := 2
	for _, row := range rows {
		size += 3 + len(cols)
		for _, i := range cols {
			size += len(row[i])
		}
	}
	buf := make([]byte, 0, size)
	buf = append(buf, '[')
	for r, row := range rows {
		if r > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, '[')
		for n, i := range cols {
			if n > 0 {
				buf = append(buf, ',')
			}
			v := row[i]
			if len(v) == 0 {
				v = json.RawMessage("null")
			}
			buf = append(buf, v...)
		}
		buf = append(buf, ']')
	}
	buf = append(buf, ']')
	return q.exec(ctx, what, sql, string(buf))
}

// upsertSQL is the SQL of the upserts of one set of columns into a
// table (a signature of applyRows without its last byte), made once per
// tableInfo: a table whose catalog information is read again gets a new
// tableInfo and so new statements.
type upsertSQL struct {
	cols   []int      // the columns, in column order; read only
	arrays upsertText // the rows as one text array per column
	json   upsertText // the rows as one JSON array of arrays
}

// upsertText is an upsert's statement text.
type upsertText struct {
	insert string // INSERT ... SELECT without ON CONFLICT
	upsert string // insert with ON CONFLICT; insert itself for a table without a key
}

// upsertSQL returns the statements of an upsert of the columns of sig,
// from the cache of info or made and added to it. Only the columns of sig
// count, not whether its rows are fresh.
func (info *tableInfo) upsertSQL(sig string) (*upsertSQL, error) {
	cols := sig[:len(sig)-1]
	info.sqlMu.Lock()
	p := info.upserts[cols]
	info.sqlMu.Unlock()
	if p != nil {
		return p, nil
	}
	p, err := makeUpsertSQL(info, cols)
	if err != nil {
		return nil, err
	}
	info.sqlMu.Lock()
	if info.upserts == nil {
		info.upserts = make(map[string]*upsertSQL)
	}
	if len(info.upserts) < maxUpsertSQL {
		info.upserts[cols] = p
	}
	info.sqlMu.Unlock()
	return p, nil
}

// maxUpsertSQL is the most sets of columns whose statements a tableInfo
// keeps; those of further sets (a table with many columns that are
// often unchanged TOAST values, each row lacking others) are made for
// each statement.
const maxUpsertSQL = 64

// makeUpsertSQL makes the statements of an upsert of the columns in the
// bitmap set (a signature without its last byte).
func makeUpsertSQL(info *tableInfo, set string) (*upsertSQL, error) {
	p := &upsertSQL{}
	for i := range info.cols {
		if i/8 < len(set) && set[i/8]&(1<<(i%8)) != 0 {
			p.cols = append(p.cols, i)
		}
	}
	if len(p.cols) == 0 {
		return nil, errors.Errorf("pgstore: table %s: a row has no columns", info.table)
	}
	var names, arrayValues, jsonValues, sets []string
	present := make(map[int]bool, len(p.cols))
	overriding := false
	for n, i := range p.cols {
		c := info.cols[i]
		present[i] = true
		overriding = overriding || c.always
		names = append(names, Ident(c.name))
		arrayValues = append(arrayValues, valueExpr(c, "r.c"+strconv.Itoa(n)))
		jsonValues = append(jsonValues, valueExpr(c, "(r.v->>"+strconv.Itoa(n)+")"))
		// An identity column GENERATED ALWAYS can only be updated to
		// DEFAULT; its value does not change after the insert.
		if !c.pk && !c.always {
			sets = append(sets, Ident(c.name)+" = excluded."+Ident(c.name))
		}
	}
	head := "INSERT INTO " + info.ident + " (" + strings.Join(names, ", ") + ") "
	if overriding {
		// The source's values of identity columns GENERATED ALWAYS.
		head += "OVERRIDING SYSTEM VALUE "
	}
	p.arrays.insert = head + "SELECT " + strings.Join(arrayValues, ", ") + " FROM " + unnestFrom(len(p.cols), "r")
	p.json.insert = head + "SELECT " + strings.Join(jsonValues, ", ") + " FROM jsonb_array_elements($1::jsonb) AS r(v)"
	p.arrays.upsert, p.json.upsert = p.arrays.insert, p.json.insert
	if len(info.pk) > 0 {
		var pk []string
		for _, i := range info.pk {
			if !present[i] {
				return nil, errors.Errorf("pgstore: table %s: a row lacks primary-key column %q", info.table, info.cols[i].name)
			}
			pk = append(pk, Ident(info.cols[i].name))
		}
		onConflict := " ON CONFLICT (" + strings.Join(pk, ", ") + ") DO UPDATE SET " + strings.Join(sets, ", ")
		if len(sets) == 0 {
			onConflict = " ON CONFLICT (" + strings.Join(pk, ", ") + ") DO NOTHING"
		}
		p.arrays.upsert += onConflict
		p.json.upsert += onConflict
	}
	return p, nil
}

// maxArrayColumns is the most columns an upsert passes as one text array
// each; wider rows go as JSON.
const maxArrayColumns = 100

// stringsOrNulls reports whether every value of cols in rows is a JSON
// string or null.
func stringsOrNulls(rows []row, cols []int) bool {
	for _, r := range rows {
		for _, i := range cols {
			v := r[i]
			if len(v) == 0 || v[0] == '"' || string(v) == "null" {
				continue
			}
			return false
		}
	}
	return true
}

// textArray returns the values of column col in rows as the text form of
// a PostgreSQL text[] literal: {"a","b",NULL}. A JSON string without
// escapes is already a quoted array element (it contains no quote or
// backslash); one with escapes is decoded and quoted again.
func textArray(rows []row, col int) (string, error) {
	size := 2
	for _, r := range rows {
		size += len(r[col]) + 1
		if len(r[col]) == 0 {
			size += len("NULL")
		}
	}
	// A Builder grown once hands over its buffer as the string without
	// a copy.
	var buf strings.Builder
	buf.Grow(size)
	buf.WriteByte('{')
	for n, r := range rows {
		if n > 0 {
			buf.WriteByte(',')
		}
		v := r[col]
		switch {
		case len(v) == 0 || v[0] != '"':
			buf.WriteString("NULL")
		case bytes.IndexByte(v, '\\') < 0:
			buf.Write(v)
		default:
			var s string
			if err := json.Unmarshal(v, &s); err != nil {
				return "", errors.New("a value is not a JSON string")
			}
			buf.WriteByte('"')
			for i := 0; i < len(s); i++ {
				if s[i] == '"' || s[i] == '\\' {
					buf.WriteByte('\\')
				}
				buf.WriteByte(s[i])
			}
			buf.WriteByte('"')
		}
	}
	buf.WriteByte('}')
	return buf.String(), nil
}

// deleteKeys deletes the rows with the given primary keys in one
// statement. Keys whose values are all JSON strings or null (pglogical's)
// go as one text array per key column, joined by unnest, which costs the
// server less than taking a JSON array apart; others as one JSON array of
// arrays.
func (t *Target) deleteKeys(ctx context.Context, q execer, info *tableInfo, keys []json.RawMessage) error {
	what := stmt{what: "deleting " + strconv.Itoa(len(keys)) + " rows from " + info.table.String(), info: info}
	if rows, ok := splitKeys(info, keys); ok {
		args, err := textArrays(info, rows, info.pk)
		if err != nil {
			return err
		}
		return q.exec(ctx, what, info.deleteSQL(true), args...)
	}
	buf, err := json.Marshal(keys)
	if err != nil {
		return errors.Wrapf(err, "pgstore: table %s: encoding keys", info.table)
	}
	return q.exec(ctx, what, info.deleteSQL(false), string(buf))
}

// deleteSQL returns deleteKeys' statement, from the cache of info or made
// and added to it: with the keys as one text array per key column
// (arrays) or as one JSON array of arrays.
func (info *tableInfo) deleteSQL(arrays bool) string {
	k := 0
	if !arrays {
		k = 1
	}
	info.sqlMu.Lock()
	sql := info.deletes[k]
	info.sqlMu.Unlock()
	if sql != "" {
		return sql
	}
	from, value := unnestFrom(len(info.pk), "k"), "k.c"
	if !arrays {
		from, value = "jsonb_array_elements($1::jsonb) AS k(v)", "k.v->>"
	}
	var conds []string
	for n, i := range info.pk {
		c := info.cols[i]
		// The base type: a cast to a shorter varchar(n) would truncate
		// the key and match another row.
		conds = append(conds, "t."+Ident(c.name)+" = CAST("+value+strconv.Itoa(n)+" AS "+c.cast+")")
	}
	sql = "DELETE FROM " + info.ident + " AS t USING " + from + " WHERE " + strings.Join(conds, " AND ")
	info.sqlMu.Lock()
	info.deletes[k] = sql
	info.sqlMu.Unlock()
	return sql
}

// splitKeys returns the values of keys (compact JSON arrays of the key
// columns' values) as rows of info's columns that hold only the key
// columns, if the values are all JSON strings or null.
func splitKeys(info *tableInfo, keys []json.RawMessage) ([]row, bool) {
	ncols := len(info.cols)
	slab := make([]json.RawMessage, ncols*len(keys))
	rows := make([]row, len(keys))
	var vals []json.RawMessage
	for k, key := range keys {
		var ok bool
		if vals, ok = splitFlatArray(key, vals[:0]); !ok || len(vals) != len(info.pk) {
			return nil, false
		}
		r := row(slab[k*ncols : (k+1)*ncols : (k+1)*ncols])
		for n, i := range info.pk {
			r[i] = vals[n]
		}
		rows[k] = r
	}
	return rows, true
}

// unnestFrom returns "unnest($1::text[], ...) AS alias(c0, ...)" for n
// text-array parameters: the rows of n columns.
func unnestFrom(n int, alias string) string {
	var sb strings.Builder
	sb.WriteString("unnest(")
	for i := range n {
		if i > 0 {
			sb.WriteString(", ")
		}
		sb.WriteString("$" + strconv.Itoa(i+1) + "::text[]")
	}
	sb.WriteString(") AS " + alias + "(")
	for i := range n {
		if i > 0 {
			sb.WriteString(", ")
		}
		sb.WriteString("c" + strconv.Itoa(i))
	}
	sb.WriteString(")")
	return sb.String()
}

// textArrays returns the values of columns cols of rows as one text-array
// literal per column (textArray), the arguments of an unnestFrom.
func textArrays(info *tableInfo, rows []row, cols []int) ([]any, error) {
	args := make([]any, len(cols))
	for n, i := range cols {
		lit, err := textArray(rows, i)
		if err != nil {
			return nil, errors.Wrapf(err, "pgstore: table %s: column %q", info.table, info.cols[i].name)
		}
		args[n] = lit
	}
	return args, nil
}

// quoteLiteral quotes s as an SQL string literal.
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// info returns what the catalog says about table, from the cache unless
// refresh is set. Concurrent calls for one table (fan workers meeting a
// new table) share one catalog query.
func (t *Target) info(ctx context.Context, table logical.Table, refresh bool) (*tableInfo, error) {
	t.mu.Lock()
	if info := t.tables[table]; info != nil && !refresh {
		t.mu.Unlock()
		return info, nil
	}
	if c := t.loading[table]; c != nil {
		t.mu.Unlock()
		select {
		case <-c.done:
			return c.info, c.err
		case <-ctx.Done():
			return nil, errors.Wrapf(ctx.Err(), "pgstore: reading the columns of %s", table)
		}
	}
	c := &infoCall{done: make(chan struct{})}
	t.loading[table] = c
	t.mu.Unlock()

	c.info, c.err = t.readInfo(ctx, table)
	t.mu.Lock()
	delete(t.loading, table)
	if c.err == nil {
		t.tables[table] = c.info
	}
	t.mu.Unlock()
	close(c.done)
	return c.info, c.err
}

// infoCall is a catalog query in progress; info and err are set before
// done closes.
type infoCall struct {
	done chan struct{}
	info *tableInfo
	err  error
}

// forget drops the cached description of table, so that the next write
// reads the catalog again.
func (t *Target) forget(table logical.Table) {
	t.mu.Lock()
	delete(t.tables, table)
	t.mu.Unlock()
}

// readInfo queries the catalog for table. The key is the primary key, or
// for a table without one its replica-identity index (REPLICA IDENTITY
// USING INDEX, which pg_dump keeps); a table with neither has no key.
func (t *Target) readInfo(ctx context.Context, table logical.Table) (*tableInfo, error) {
	infos, err := t.readInfos(ctx, []logical.Table{table})
	if err != nil {
		return nil, err
	}
	if infos[table] == nil {
		return nil, tableMissing(table)
	}
	return infos[table], nil
}

// tableMissing is the error of a write to a table the target lacks.
func tableMissing(table logical.Table) error {
	return errors.Errorf("pgstore: target table %s does not exist", table)
}

// readInfos is readInfo for several tables in one query; a table that
// does not exist has no entry. The query filters with = ANY over the
// schemas and over the names, keeping the joins of a one-table lookup
// (driving it from unnest of the pairs made the server plan it for longer
// than the per-table queries took), and drops the pairs not asked for.
func (t *Target) readInfos(ctx context.Context, tables []logical.Table) (map[logical.Table]*tableInfo, error) {
	what := fmt.Sprint(tables[0])
	if len(tables) > 1 {
		what = fmt.Sprintf("%d tables", len(tables))
	}
	schemas, names := make([]string, len(tables)), make([]string, len(tables))
	asked := make(map[logical.Table]bool, len(tables))
	for i, table := range tables {
		schemas[i], names[i] = table.Schema, table.Name
		asked[table] = true
	}
	rows, err := t.pool.Query(ctx, `
		SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
		       quote_ident(bn.nspname) || '.' || quote_ident(bt.typname),
		       a.atttypmod >= 0 OR (ty.typtype = 'd' AND ty.typtypmod >= 0),
		       (a.atttypmod >= 0 OR (ty.typtype = 'd' AND ty.typtypmod >= 0))
		         AND coalesce(et.typname, bt.typname) IN ('numeric', 'time', 'timetz', 'timestamp', 'timestamptz', 'interval')
		         AND coalesce(et.typnamespace, bt.typnamespace) = 'pg_catalog'::regnamespace,
		       a.attidentity = 'a',
		       coalesce(a.attnum = ANY (k.indkey), false),
		       NOT EXISTS (SELECT 1 FROM pg_catalog.pg_cast pc
		                    WHERE pc.castsource = 'pg_catalog.text'::pg_catalog.regtype
		                      AND pc.casttarget = bt.oid AND pc.castmethod <> 'b'),
		       NOT c.relhasrules AND NOT c.relrowsecurity
		  FROM pg_catalog.pg_attribute a
		  JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
		  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		  JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid
		  JOIN pg_catalog.pg_type bt ON bt.oid = CASE WHEN ty.typtype = 'd' THEN ty.typbasetype ELSE ty.oid END
		  JOIN pg_catalog.pg_namespace bn ON bn.oid = bt.typnamespace
		  LEFT JOIN pg_catalog.pg_type et ON et.oid = bt.typelem AND bt.typcategory = 'A'
		  LEFT JOIN LATERAL (
		        SELECT i.indkey FROM pg_catalog.pg_index i
		         WHERE i.indrelid = c.oid AND (i.indisprimary OR i.indisreplident)
		         ORDER BY i.indisprimary DESC LIMIT 1) k ON true
		 WHERE n.nspname = ANY ($1::name[]) AND c.relname = ANY ($2::name[]) AND c.relkind IN ('r', 'p')
		   AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
		 ORDER BY n.nspname, c.relname, a.attnum`, schemas, names)
	if err != nil {
		return nil, errors.Wrapf(err, "pgstore: reading the columns of %s", what)
	}
	infos := make(map[logical.Table]*tableInfo, len(tables))
	for rows.Next() {
		var table logical.Table
		var c column
		var tableCopyIn bool
		if err := rows.Scan(&table.Schema, &table.Name, &c.name, &c.typ, &c.cast, &c.typmod, &c.check, &c.always, &c.pk,
			&c.copyIn, &tableCopyIn); err != nil {
			rows.Close()
			return nil, errors.Wrapf(err, "pgstore: reading the columns of %s", what)
		}
		if !asked[table] {
			continue // a schema and a name asked for, but not together
		}
		info := infos[table]
		if info == nil {
			info = &tableInfo{table: table, ident: TableIdent(table), byName: make(map[string]int)}
			infos[table] = info
		}
		info.byName[c.name] = len(info.cols)
		c.member = memberPrefix(c.name)
		if c.pk {
			info.pk = append(info.pk, len(info.cols))
		}
		info.always = info.always || c.always
		c.copyIn = c.copyIn && !c.check
		info.copyIn = tableCopyIn
		info.cols = append(info.cols, c)
	}
	if err := rows.Err(); err != nil {
		return nil, errors.Wrapf(err, "pgstore: reading the columns of %s", what)
	}
	return infos, nil
}

// Preload reads what the catalog says about tables, in one query, into
// the cache that writes use, so that the first write to a table need not
// wait for it (pgreplicate runs it in the background while it starts). A
// write that meets a table being read waits for that read and gets its
// result; a table that does not exist is not cached, so its first write
// after the read reads the catalog again (and names the table if it is
// still missing). Tables already cached or being read are skipped.
func (t *Target) Preload(ctx context.Context, tables []logical.Table) {
	calls := make(map[logical.Table]*infoCall, len(tables))
	var read []logical.Table
	t.mu.Lock()
	for _, table := range tables {
		if t.tables[table] != nil || t.loading[table] != nil || calls[table] != nil {
			continue
		}
		c := &infoCall{done: make(chan struct{})}
		t.loading[table] = c
		calls[table] = c
		read = append(read, table)
	}
	t.mu.Unlock()
	if len(read) == 0 {
		return
	}
	infos, err := t.readInfos(ctx, read)
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, table := range read {
		c := calls[table]
		delete(t.loading, table)
		switch info := infos[table]; {
		case err != nil:
			c.err = err
		case info == nil:
			c.err = tableMissing(table)
		default:
			c.info = info
			t.tables[table] = info
		}
		close(c.done)
	}
}

// Forget drops what the target knows about every table, so that the next
// write reads the catalog again (after DDL, for example).
func (t *Target) Forget() {
	t.mu.Lock()
	defer t.mu.Unlock()
	clear(t.tables)
}

// Order implements logical.Orderer from the catalog's foreign keys between
// the tables of schema. References to tables in other schemas and to the
// table itself are ignored. A cycle is an error naming its tables.
func (t *Target) Order(ctx context.Context, schema string) ([][]logical.Table, error) {
	rows, err := t.pool.Query(ctx, `
		SELECT c.relname,
		       coalesce(array_agg(DISTINCT p.relname) FILTER (WHERE p.relname IS NOT NULL), '{}')
		  FROM pg_catalog.pg_class c
		  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		  LEFT JOIN pg_catalog.pg_constraint k
		         ON k.conrelid = c.oid AND k.contype = 'f' AND k.confrelid <> c.oid
		  LEFT JOIN pg_catalog.pg_class p
		         ON p.oid = k.confrelid AND p.relnamespace = c.relnamespace
		 WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition
		 GROUP BY c.relname
		 ORDER BY c.relname`, schema)
	if err != nil {
		return nil, errors.Wrapf(err, "pgstore: reading the foreign keys of schema %s", schema)
	}
	parents := make(map[string][]string)
	var names []string
	for rows.Next() {
		var name string
		var ps []string
		if err := rows.Scan(&name, &ps); err != nil {
			rows.Close()
			return nil, errors.Wrapf(err, "pgstore: reading the foreign keys of schema %s", schema)
		}
		names = append(names, name)
		parents[name] = ps
	}
	if err := rows.Err(); err != nil {
		return nil, errors.Wrapf(err, "pgstore: reading the foreign keys of schema %s", schema)
	}
	return levels(schema, names, parents)
}

// levels sorts names into dependency levels: a table goes one level above
// its highest parent.
func levels(schema string, names []string, parents map[string][]string) ([][]logical.Table, error) {
	level := make(map[string]int, len(names))
	var out [][]logical.Table
	for len(level) < len(names) {
		var this []string
		for _, name := range names {
			if _, done := level[name]; done {
				continue
			}
			ready := true
			for _, p := range parents[name] {
				if l, done := level[p]; !done || l >= len(out) {
					ready = false
					break
				}
			}
			if ready {
				this = append(this, name)
			}
		}
		if len(this) == 0 {
			var stuck []string
			for _, name := range names {
				if _, done := level[name]; !done {
					stuck = append(stuck, schema+"."+name)
				}
			}
			return nil, errors.Errorf("pgstore: foreign keys form a cycle among %s", strings.Join(stuck, ", "))
		}
		tables := make([]logical.Table, len(this))
		for i, name := range this {
			level[name] = len(out)
			tables[i] = logical.Table{Schema: schema, Name: name}
		}
		out = append(out, tables)
	}
	return out, nil
}
