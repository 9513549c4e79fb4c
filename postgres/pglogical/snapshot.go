package pglogical

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/logical-go/logical"
	"github.com/pkg/errors"
	"github.com/sirupsen/logrus"
)

// Defaults of SnapshotConfig.
const (
	DefaultSnapshotWorkers   = 4
	DefaultSnapshotChunkRows = 100000
	DefaultSnapshotPollEvery = 10 * time.Second
)

// SnapshotConfig makes Process copy the rows of the published tables into
// the target: every table it has not copied yet (all of them at the first
// start), and each table that joins a publication later, without a
// restart. It also adds columns added at the source to the target.
//
// # How a copy stays exact
//
// A copy happens in rounds. A round opens a temporary replication slot,
// which exports a snapshot of the source at the slot's consistent point
// Z, and keeps that connection idle, so the snapshot stays importable.
// The stream of the main slot goes on until it reaches Z: every source
// transaction that commits before Z is applied (changes of tables that
// were never copied are skipped: the copy will have them), and before the
// first one that commits at or after Z, with nothing in between, Process
// persists Z as its consistent point and copies the tables of the round
// at the snapshot Z, as a nested backfill (see below): Workers
// connections import the snapshot and COPY the key ranges (chunks) of
// each table, each chunk into the target in one transaction that first
// deletes the target's rows in its range and marks the chunk done in the
// Store. Then the stream resumes at Z. So
// every chunk holds the rows of exactly the stream position it is copied
// at, the target never holds a row the source did not have at that
// position (secondary UNIQUE constraints hold throughout), and nothing
// older than a chunk is ever applied over it.
//
// A crash during a copy loses the snapshot, but not the chunks done: the
// next Process opens a new round at a later Z', the stream brings the
// done chunks (and everything else copied) from Z up to Z', and only the
// chunks not done are copied, at Z'. Only chunks in flight at the crash
// are copied again.
//
// # What makes a copy fast
//
// A target table that has no rows and that the stream has not written to
// (no chunk of it done yet) has nothing to replace: no chunk deletes its
// range first. If the Store is a SnapshotIndexer, its indexes are dropped
// before the rows go in and created again once they are all in, before
// the stream resumes: one index build costs much less than inserting
// every row into an index, in particular from several chunks at once
// into its middle. The indexes dropped are recorded first, and a start
// that finds them recorded creates the missing ones before it applies
// anything, so a crash in between leaves no table without them. A table
// with rows keeps its indexes. If the Store is a SnapshotBinaryCopier, a
// table whose columns have the same built-in types at both ends goes in
// COPY binary format, which both servers parse and print faster than
// text. Each chunk commits as it always did (durably, as the target is
// set up to commit): with its rows and its done mark in one transaction,
// a commit lost in a target crash loses both, and the chunk is copied
// again.
//
// # What the library does for the copy
//
// When the stream reaches Z, Process copies the round with
// Events.Backfill: a nested loop named Key+".snapshot" whose Backfiller
// hands over one message per chunk not done (BackfillInto) and copies
// them on Workers goroutines (Process), each over its own connection
// that imports the snapshot. Its consistent point is a logical.Pieces,
// the set of chunks done, which Process sets after chunks commit (merged
// on one goroutine, so each point holds the last, and a worker does not
// wait for the Memo). The library gives the copy what it gives a loop: contexts under the lease the stream
// holds (so the Store's lease fence, and the Memo's, see the same lease),
// the persisted progress under its own name, the stop (a stop during the
// copy cancels the chunks in flight and is an error, never mistaken for a
// finished copy: the stream does not resume at Z, and the next start
// opens a new round for what is left), the backfilling metrics and log
// fields, and chaos testing (WithChaos keeps the Backfiller; the nested
// loop takes the Factory's chaos). The library changed for it in two
// places: Pieces, a Stamp for pieces that finish in any order (an LSN
// cannot say "chunks 1, 2 and 5", and a resume from the first chunk not
// done would copy again all done after it), and a nested backfill is
// complete only once its Process returned nil unstopped, not merely
// once BackfillInto returned (this Process takes every chunk off the
// channel at once and copies on its own goroutines).
//
// What stayed here, and why. A chunk still replaces its key range with
// rows from a COPY stream (binary or text) and marks itself done in the
// Store in one target transaction; a Batch carries per-key mutations,
// which would lose COPY, the range DELETE and the deferred indexes. So
// the Store's done mark, atomic with the rows, is what a resume trusts:
// the nested point is persisted after the commit, and a crash in between
// leaves a chunk done but not in the point (the next round puts it there
// without copying it again; when no chunk of the table is left to copy,
// and so no round comes, the next start does, with a nested backfill
// that copies nothing). A chunk in the point but not marked done
// (a Store reset by hand) is copied again, which is exact, as every
// chunk replaces its range unless its table is blank, and blankness (no
// chunk done, and the target table just created or found empty, under
// lock, when its indexes are dropped) comes from the marks and the
// target, never from the point. Planning, the round's slot and snapshot, creating tables
// and columns, and putting indexes off and creating them again stay on
// Process's own goroutine, before and after the Backfill call: they are
// the dialect's, and no hook of the nested loop would make them simpler.
//
// # Limits
//
// Chunks are copied in parallel without regard to foreign keys between
// the target tables, so a target with foreign keys among copied tables
// needs them added after the copy. Key ranges are compared in each
// database's collation: text keys need the same collation at both ends.
// Opening a round waits, as any slot creation does, for the source
// transactions running at that moment to end.
type SnapshotConfig struct {
	// Store keeps the plan and writes the rows; pgstore.Snapshots
	// (through an adapter) is one. Required.
	Store SnapshotStore
	// Key names this dialect's plan in the Store. Default: the slot.
	Key string
	// Workers is how many chunks are copied at once. Default 4.
	Workers int
	// ChunkRows is about how many rows a chunk has. Default 100000.
	ChunkRows int
	// PollEvery is how often Process looks for tables that joined the
	// publications (a Relation message of an unknown table makes it
	// look at once). Default 10s; negative: only on Relation messages.
	PollEvery time.Duration
	// CreateTables makes a copy create a missing target table from the
	// source's columns and primary key; otherwise a missing target table
	// is an error naming it.
	CreateTables bool
	// Logger gets the copy's lifecycle (Info) and chunks (Debug).
	// Default: the standard logger.
	Logger logrus.FieldLogger
}

// SnapshotStore is where a snapshot keeps its plan and writes what it
// copies. Process calls it from its own goroutine and, during a copy,
// from Workers goroutines at once.
type SnapshotStore interface {
	// Load returns every record of key.
	Load(ctx context.Context, key string) ([]SnapshotRecord, error)
	// Plan replaces the chunks (N >= 0) of table by chunks, none done.
	Plan(ctx context.Context, key, table string, chunks []SnapshotRecord) error
	// SetSpec writes the spec of record n of table, creating it.
	SetSpec(ctx context.Context, key, table string, n int, spec json.RawMessage) error
	// Start counts an attempt to copy chunk n of table, at once.
	Start(ctx context.Context, key, table string, n int) error
	// Copy deletes the rows of target that match where (unless where is
	// empty) and writes the rows read from rows (COPY text format,
	// columns), and marks chunk n done, all in one transaction; it
	// returns how many rows it wrote.
	Copy(ctx context.Context, key, table string, n int, target logical.Table, where string, columns []string, rows io.Reader) (int64, error)
	// Columns returns the target table's column types by name, and
	// false if it does not exist.
	Columns(ctx context.Context, table logical.Table) (map[string]string, bool, error)
	// AddColumn adds a column to a target table.
	AddColumn(ctx context.Context, table logical.Table, name, typ string) error
	// CreateTable creates a target table.
	CreateTable(ctx context.Context, table logical.Table, names, types, key []string) error
	// AddPrimaryKey adds a primary key to a target table.
	AddPrimaryKey(ctx context.Context, table logical.Table, key []string) error
}

// SnapshotIndexer is what a SnapshotStore may also do: put off the
// indexes of a target table that has no rows yet until its rows are in,
// as one index build is much cheaper than inserting every row into the
// index (and, with several chunks at once, into its middle). Without it
// a copy writes into the indexes as they are. Process calls it from its
// own goroutine, never during a chunk copy.
type SnapshotIndexer interface {
	// DeferrableIndexes reports whether a target table has no rows, and
	// returns the indexes of it that DropIndexes may drop and
	// RestoreIndexes create again; none for a table with rows.
	DeferrableIndexes(ctx context.Context, table logical.Table) ([]SnapshotIndex, bool, error)
	// DropIndexes drops indexes of a target table, in one transaction
	// that fails if the table has rows.
	DropIndexes(ctx context.Context, table logical.Table, indexes []SnapshotIndex) error
	// RestoreIndexes creates each of indexes the target table lacks; a
	// second call after a crash creates those the first did not.
	RestoreIndexes(ctx context.Context, table logical.Table, indexes []SnapshotIndex) error
}

// SnapshotBinaryCopier is what a SnapshotStore may also do: take a
// chunk's rows in COPY binary format, which costs both servers less than
// text. A copy uses it for a table whose columns have, at both ends, the
// same built-in types, between servers of the same major version (the
// binary form of a type is the server's own, and that of a user-defined
// type, or of an array of one, carries OIDs that differ between
// databases).
// Without it, or for other tables, rows come in text format.
type SnapshotBinaryCopier interface {
	// CopyBinary is SnapshotStore.Copy with rows in COPY binary format.
	CopyBinary(ctx context.Context, key, table string, n int, target logical.Table, where string, columns []string, rows io.Reader) (int64, error)
	// ServerVersion returns the target's server_version_num.
	ServerVersion(ctx context.Context) (int, error)
}

// SnapshotIndex is an index a copy put off (see SnapshotIndexer): its
// name, whether the name is of the constraint that owns it, and the
// statement that creates it. The Store chooses all three.
type SnapshotIndex struct {
	Name       string `json:"name"`
	Constraint bool   `json:"constraint,omitempty"`
	SQL        string `json:"sql"`
}

// SnapshotRecord is one record of a plan: chunk N >= 0 of a table, or
// its table record (N = -1).
type SnapshotRecord struct {
	Table    string // the source table, "schema.name"
	N        int
	Spec     json.RawMessage
	Done     bool
	Attempts int
	Rows     int64
}

// checked validates c and returns a copy with defaults filled in; a nil
// c is fine.
func (c *SnapshotConfig) checked(slot string) (*SnapshotConfig, error) {
	if c == nil {
		return nil, nil
	}
	cp := *c
	c = &cp
	switch {
	case c.Store == nil:
		return nil, errors.New("pglogical: Config.Snapshot.Store is required")
	case c.Workers < 0:
		return nil, errors.Errorf("pglogical: Config.Snapshot.Workers must not be negative, got %d", c.Workers)
	case c.ChunkRows < 0:
		return nil, errors.Errorf("pglogical: Config.Snapshot.ChunkRows must not be negative, got %d", c.ChunkRows)
	}
	if c.Key == "" {
		c.Key = slot
	}
	if c.Workers == 0 {
		c.Workers = DefaultSnapshotWorkers
	}
	if c.ChunkRows == 0 {
		c.ChunkRows = DefaultSnapshotChunkRows
	}
	if c.PollEvery == 0 {
		c.PollEvery = DefaultSnapshotPollEvery
	}
	if c.Logger == nil {
		c.Logger = logrus.StandardLogger()
	}
	return c, nil
}

// chunkSpec is the spec of a chunk: a range of the key, Lo inclusive and
// Hi exclusive, each nil when unbounded, values in text form.
type chunkSpec struct {
	Key   []string `json:"key,omitempty"`
	Types []string `json:"types,omitempty"`
	Lo    []string `json:"lo,omitempty"`
	Hi    []string `json:"hi,omitempty"`
}

// where returns the SQL condition of the chunk's range.
func (s chunkSpec) where() string {
	if len(s.Key) == 0 || (s.Lo == nil && s.Hi == nil) {
		return "true"
	}
	cols := make([]string, len(s.Key))
	for i, k := range s.Key {
		cols[i] = quoteIdent(k)
	}
	tuple := func(vals []string) string {
		out := make([]string, len(vals))
		for i, v := range vals {
			out[i] = quoteLiteral(v) + "::" + s.Types[i]
		}
		return "(" + strings.Join(out, ", ") + ")"
	}
	lhs := "(" + strings.Join(cols, ", ") + ")"
	var conds []string
	if s.Lo != nil {
		conds = append(conds, lhs+" >= "+tuple(s.Lo))
	}
	if s.Hi != nil {
		conds = append(conds, lhs+" < "+tuple(s.Hi))
	}
	return strings.Join(conds, " AND ")
}

// tableSpec is the spec of a table record: the source columns last seen
// and whether a copy of the table ever finished.
type tableSpec struct {
	Columns []srcColumn `json:"columns"`
	Synced  bool        `json:"synced"`
	// DeferredKey is the primary key of a target table the copy created
	// without one, to be added once the rows are in (one index build is
	// cheaper than inserting every row into the index).
	DeferredKey []string `json:"deferredKey,omitempty"`
	// DeferredIndexes are the indexes of an empty target table that the
	// copy dropped, to be created again once the rows are in. Recorded
	// before they are dropped, so a crash in between cannot lose them.
	DeferredIndexes []SnapshotIndex `json:"deferredIndexes,omitempty"`
}

// srcColumn is a source column.
type srcColumn struct {
	Name string `json:"name"`
	Type string `json:"type"` // format_type
	OID  uint32 `json:"oid"`
	Mod  int32  `json:"mod"`
}

// snapTable is what the snapshot knows of one source table.
type snapTable struct {
	name        string // "schema.name"
	schema, rel string
	spec        tableSpec
	chunks      []*snapChunk
	round       *snapRound // the round that copies it
	again       bool       // copy it again after that round
	blank       bool       // the target table has no rows of t nor old ones: no range to delete
	binary      bool       // copy in COPY binary format
}

// snapChunk is one chunk of a table.
type snapChunk struct {
	n    int
	spec chunkSpec
	done bool
}

// pending reports whether some chunk is not done, or none was planned.
func (t *snapTable) pending() bool {
	if t.chunks == nil {
		return true
	}
	for _, c := range t.chunks {
		if !c.done {
			return true
		}
	}
	return false
}

// fresh reports whether the target has nothing of t yet: its changes are
// useless until t is copied.
func (t *snapTable) fresh() bool {
	if t.spec.Synced {
		return false
	}
	for _, c := range t.chunks {
		if c.done {
			return false
		}
	}
	return true
}

// snapRound is a copy waiting for the stream to reach its position.
type snapRound struct {
	conn     *pgconn.PgConn // holds the exported snapshot
	at       uint64         // the temporary slot's consistent point
	snapshot string
	tables   []*snapTable
}

// snapGate runs the copies of one Process call, from its goroutine.
type snapGate struct {
	d        *Dialect
	cfg      *SnapshotConfig
	log      logrus.FieldLogger
	loaded   bool
	tables   map[string]*snapTable
	rels     map[uint32]*snapTable
	round    *snapRound
	lastPoll time.Time
	versions [2]int // server_version_num of the source and the target, once read
}

// newSnapGate returns the gate of a Process call, nil without
// Config.Snapshot.
func (d *Dialect) newSnapGate() *snapGate {
	if d.cfg.Snapshot == nil {
		return nil
	}
	return &snapGate{
		d: d, cfg: d.cfg.Snapshot,
		log:    d.cfg.Snapshot.Logger.WithField("slot", d.cfg.Slot),
		tables: make(map[string]*snapTable),
		rels:   make(map[uint32]*snapTable),
	}
}

// close releases the snapshot of an unfinished round.
func (g *snapGate) close() {
	if g == nil || g.round == nil {
		return
	}
	closeConn(g.round.conn)
	g.round = nil
}

func closeConn(c *pgconn.PgConn) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = c.Close(ctx)
}

// snapshotGate is called by Process before it handles m. It copies a
// round when the stream reached its position, follows relations, and
// reports true for a row change to drop (of a table not copied yet).
func (p *processor) snapshotGate(ctx context.Context, m logical.Message) (bool, error) {
	g := p.snap
	if !g.loaded {
		if err := g.load(ctx, p); err != nil {
			return false, err
		}
	}
	if g.cfg.PollEvery > 0 && !p.inTx && time.Since(g.lastPoll) >= g.cfg.PollEvery {
		if err := g.poll(ctx, p); err != nil {
			return false, err
		}
	}
	switch m := m.(type) {
	case keepalive:
		if g.round != nil && !p.inTx && m.walEnd >= g.round.at {
			return false, g.copyRound(ctx, p)
		}
	case walMessage:
		switch w := m.msg.(type) {
		case *pglogrepl.BeginMessage:
			if g.round != nil && !p.inTx && uint64(w.FinalLSN) >= g.round.at {
				return false, g.copyRound(ctx, p)
			}
		case *pglogrepl.RelationMessage:
			return false, g.relation(ctx, p, w)
		case *pglogrepl.InsertMessage:
			return g.drop(p, w.RelationID), nil
		case *pglogrepl.UpdateMessage:
			return g.drop(p, w.RelationID), nil
		case *pglogrepl.DeleteMessage:
			return g.drop(p, w.RelationID), nil
		}
	}
	return false, nil
}

// drop reports whether a row change of relation id in the open
// transaction is to be left out: its table was never copied and will be,
// at a position after this transaction.
func (g *snapGate) drop(p *processor, id uint32) bool {
	t := g.rels[id]
	if t == nil || p.begin == nil || !t.fresh() || !t.pending() {
		return false
	}
	return t.round == nil || uint64(p.begin.FinalLSN) < t.round.at
}

// target returns the target table of t, as Process names it.
func (g *snapGate) target(p *processor, t *snapTable) logical.Table {
	return logical.Table{Schema: TargetSchema(t.schema, p.d.cfg.SchemaMap, p.events.GetTargetDB()), Name: t.rel}
}

// load reads the plan, looks for published tables and starts a round if
// any needs a copy.
func (g *snapGate) load(ctx context.Context, p *processor) error {
	recs, err := g.cfg.Store.Load(ctx, g.cfg.Key)
	if err != nil {
		return err
	}
	for _, r := range recs {
		t := g.table(r.Table)
		if r.N < 0 {
			if err := json.Unmarshal(r.Spec, &t.spec); err != nil {
				return errors.Wrapf(err, "pglogical: the snapshot record of %s", r.Table)
			}
			continue
		}
		c := &snapChunk{n: r.N, done: r.Done}
		if err := json.Unmarshal(r.Spec, &c.spec); err != nil {
			return errors.Wrapf(err, "pglogical: chunk %d of %s", r.N, r.Table)
		}
		t.chunks = append(t.chunks, c)
	}
	g.loaded = true
	// A copy that created tables without their keys crashed: the keys
	// must be there before the stream applies changes to the chunks done.
	for _, t := range g.tables {
		if err := g.addDeferredKey(ctx, p, t); err != nil {
			return err
		}
	}
	if err := g.finishCopied(ctx, p); err != nil {
		return err
	}
	return g.poll(ctx, p)
}

// finishCopied finishes the copy of the tables whose chunks are all done
// but whose round did not end: the nested backfill failed (or the
// process stopped) after the last chunks committed and before their
// point was persisted. No round would copy them again, so nothing else
// would bring the nested point up to the marks: a nested backfill with
// nothing to copy puts them there, and the tables are recorded synced.
func (g *snapGate) finishCopied(ctx context.Context, p *processor) error {
	var tables []*snapTable
	var marked []string
	for _, t := range g.tables {
		if t.spec.Synced || t.chunks == nil || t.pending() {
			continue
		}
		tables = append(tables, t)
		for _, c := range t.chunks {
			marked = append(marked, pieceName(t, c))
		}
	}
	if len(tables) == 0 {
		return nil
	}
	bf := &snapBackfill{g: g, p: p, kick: make(chan struct{}, 1), marked: logical.NewPieces(marked...)}
	if err := p.events.Backfill(ctx, g.backfillName(), bf); err != nil {
		return err
	}
	for _, t := range tables {
		t.spec.Synced = true
		if err := g.saveSpec(ctx, t); err != nil {
			return err
		}
		g.log.WithField("table", t.name).Info("snapshot of table finished")
	}
	return nil
}

// addDeferredKey adds the primary key and the indexes that the copy of t
// put off, if any.
func (g *snapGate) addDeferredKey(ctx context.Context, p *processor, t *snapTable) error {
	if len(t.spec.DeferredKey) == 0 && len(t.spec.DeferredIndexes) == 0 {
		return nil
	}
	target := g.target(p, t)
	if _, ok, err := g.cfg.Store.Columns(ctx, target); err != nil || !ok {
		return err // not created yet: the next copy creates it
	}
	start := time.Now()
	if len(t.spec.DeferredKey) > 0 {
		if err := g.cfg.Store.AddPrimaryKey(ctx, target, t.spec.DeferredKey); err != nil {
			return err
		}
		g.log.WithFields(logrus.Fields{"table": target.String(), "took": time.Since(start).Round(time.Millisecond)}).Info("primary key added")
	}
	if len(t.spec.DeferredIndexes) > 0 {
		ix, ok := g.cfg.Store.(SnapshotIndexer)
		if !ok {
			return errors.Errorf("pglogical: indexes of %s were dropped for a copy, and this Store cannot create them again: it is no SnapshotIndexer", target)
		}
		start = time.Now()
		if err := ix.RestoreIndexes(ctx, target, t.spec.DeferredIndexes); err != nil {
			return err
		}
		g.log.WithFields(logrus.Fields{"table": target.String(), "indexes": len(t.spec.DeferredIndexes),
			"took": time.Since(start).Round(time.Millisecond)}).Info("indexes created")
	}
	t.spec.DeferredKey, t.spec.DeferredIndexes = nil, nil
	return g.saveSpec(ctx, t)
}

// deferIndexes drops the indexes of the target table of t, to be created
// again after the copy, when t is fresh (the stream wrote nothing to it)
// and the table has no rows: then no chunk has old rows to delete either.
func (g *snapGate) deferIndexes(ctx context.Context, p *processor, t *snapTable) error {
	ix, ok := g.cfg.Store.(SnapshotIndexer)
	if !ok || t.blank || !t.fresh() {
		return nil
	}
	target := g.target(p, t)
	indexes, empty, err := ix.DeferrableIndexes(ctx, target)
	if err != nil || !empty {
		return err
	}
	t.blank = true
	if len(indexes) == 0 {
		return nil
	}
	t.spec.DeferredIndexes = append(t.spec.DeferredIndexes, indexes...)
	if err := g.saveSpec(ctx, t); err != nil {
		return err
	}
	g.log.WithFields(logrus.Fields{"table": target.String(), "indexes": len(indexes)}).Info("indexes put off until the rows are in")
	return ix.DropIndexes(ctx, target, indexes)
}

// table returns the entry of a source table, making it.
func (g *snapGate) table(name string) *snapTable {
	t := g.tables[name]
	if t == nil {
		schema, rel, _ := strings.Cut(name, ".")
		t = &snapTable{name: name, schema: schema, rel: rel}
		g.tables[name] = t
	}
	return t
}

// poll looks for published tables that need a copy and starts a round
// for them unless one is waiting.
func (g *snapGate) poll(ctx context.Context, p *processor) error {
	g.lastPoll = time.Now()
	conn, err := pgx.Connect(ctx, g.d.cfg.SourceConn)
	if err != nil {
		return errors.Wrap(err, "pglogical: connecting to the source")
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, `SELECT DISTINCT schemaname, tablename FROM pg_catalog.pg_publication_tables
		WHERE pubname = ANY($1) ORDER BY 1, 2`, g.d.cfg.Publications)
	if err != nil {
		return errors.Wrap(err, "pglogical: listing the published tables")
	}
	var schema, name string
	var found []string
	if _, err := pgx.ForEachRow(rows, []any{&schema, &name}, func() error {
		found = append(found, schema+"."+name)
		return nil
	}); err != nil {
		return errors.Wrap(err, "pglogical: listing the published tables")
	}
	for _, n := range found {
		t := g.tables[n]
		if t == nil {
			t = g.table(n)
			g.log.WithField("table", n).Info("table to copy")
		}
	}
	if g.round != nil {
		return nil
	}
	var todo []*snapTable
	for _, n := range found {
		if t := g.tables[n]; t.pending() {
			todo = append(todo, t)
		}
	}
	if len(todo) == 0 {
		return nil
	}
	// Creating the round's slot waits for running transactions, the
	// group's too when the target shares the source's cluster.
	if err := p.quiesce(ctx); err != nil {
		return err
	}
	return g.startRound(ctx, conn, todo)
}

// startRound plans the tables without chunks and opens the temporary slot
// whose snapshot they will be copied at.
func (g *snapGate) startRound(ctx context.Context, conn *pgx.Conn, tables []*snapTable) error {
	for _, t := range tables {
		if t.chunks != nil {
			continue
		}
		if err := g.plan(ctx, conn, t); err != nil {
			return err
		}
	}
	rc, err := g.d.connect(ctx)
	if err != nil {
		return err
	}
	var raw [4]byte
	_, _ = rand.Read(raw[:])
	slot := fmt.Sprintf("%.40s_copy_%s", g.d.cfg.Slot, hex.EncodeToString(raw[:]))
	res, err := pglogrepl.CreateReplicationSlot(ctx, rc, quoteIdent(slot), "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Temporary: true, SnapshotAction: "EXPORT_SNAPSHOT"})
	if err != nil {
		closeConn(rc)
		return errors.Wrap(err, "pglogical: creating a temporary slot for a snapshot")
	}
	at, err := ParseLSN(res.ConsistentPoint)
	if err != nil {
		closeConn(rc)
		return errors.Wrap(err, "pglogical: the temporary slot's consistent point")
	}
	r := &snapRound{conn: rc, at: at, snapshot: res.SnapshotName, tables: tables}
	names := make([]string, len(tables))
	for i, t := range tables {
		t.round = r
		names[i] = t.name
	}
	g.round = r
	g.log.WithFields(logrus.Fields{"at": FormatLSN(at), "tables": strings.Join(names, ",")}).Info("snapshot taken")
	return nil
}

// plan splits t into chunks of about ChunkRows rows by its primary key
// (or replica identity index); a table without one is a single chunk.
func (g *snapGate) plan(ctx context.Context, conn *pgx.Conn, t *snapTable) error {
	reg := quoteIdent(t.schema) + "." + quoteIdent(t.rel)
	rows, err := conn.Query(ctx, `
		SELECT a.attname, format_type(a.atttypid, a.atttypmod)
		  FROM pg_catalog.pg_index i
		  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
		 WHERE i.indrelid = $1::regclass
		   AND i.indexrelid = (SELECT x.indexrelid FROM pg_catalog.pg_index x
		                        WHERE x.indrelid = $1::regclass AND (x.indisprimary OR x.indisreplident)
		                        ORDER BY x.indisprimary DESC LIMIT 1)
		 ORDER BY array_position(i.indkey::int2[], a.attnum)`, reg)
	if err != nil {
		return errors.Wrapf(err, "pglogical: reading the key of %s", t.name)
	}
	var key, types []string
	var k, typ string
	if _, err := pgx.ForEachRow(rows, []any{&k, &typ}, func() error {
		key, types = append(key, k), append(types, typ)
		return nil
	}); err != nil {
		return errors.Wrapf(err, "pglogical: reading the key of %s", t.name)
	}
	var bounds [][]string
	switch {
	case len(key) == 1 && (types[0] == "integer" || types[0] == "bigint" || types[0] == "smallint"):
		// An integer key: even steps between its ends, without reading
		// every key.
		var lo, hi, n int64
		k := quoteIdent(key[0])
		if err := conn.QueryRow(ctx, `SELECT coalesce(min(`+k+`), 0)::bigint, coalesce(max(`+k+`), 0)::bigint,
			greatest((SELECT reltuples FROM pg_catalog.pg_class WHERE oid = $1::regclass), 0)::bigint FROM `+reg, reg).
			Scan(&lo, &hi, &n); err != nil {
			return errors.Wrapf(err, "pglogical: splitting %s into chunks", t.name)
		}
		if n == 0 { // never analyzed
			if err := conn.QueryRow(ctx, `SELECT count(*) FROM `+reg).Scan(&n); err != nil {
				return errors.Wrapf(err, "pglogical: splitting %s into chunks", t.name)
			}
		}
		parts := n / int64(g.cfg.ChunkRows)
		if span := hi - lo; parts > span {
			parts = span
		}
		for i := int64(1); i < parts; i++ {
			bounds = append(bounds, []string{strconv.FormatInt(lo+(hi-lo)/parts*i, 10)})
		}
	case len(key) > 0:
		cols := make([]string, len(key))
		texts := make([]string, len(key))
		for i, k := range key {
			cols[i] = quoteIdent(k)
			texts[i] = quoteIdent(k) + "::text"
		}
		list := strings.Join(cols, ", ")
		rows, err := conn.Query(ctx, `SELECT ARRAY[`+strings.Join(texts, ", ")+`] FROM (SELECT `+list+
			`, row_number() OVER (ORDER BY `+list+`) AS rn FROM `+reg+`) s WHERE rn % $1 = 0 ORDER BY rn`, g.cfg.ChunkRows)
		if err != nil {
			return errors.Wrapf(err, "pglogical: splitting %s into chunks", t.name)
		}
		var b []string
		if _, err := pgx.ForEachRow(rows, []any{&b}, func() error {
			bounds = append(bounds, b)
			return nil
		}); err != nil {
			return errors.Wrapf(err, "pglogical: splitting %s into chunks", t.name)
		}
	}
	var recs []SnapshotRecord
	t.chunks = nil
	var lo []string
	for i := 0; i <= len(bounds); i++ {
		s := chunkSpec{Key: key, Types: types, Lo: lo}
		if i < len(bounds) {
			s.Hi = bounds[i]
			lo = bounds[i]
		}
		raw, _ := json.Marshal(s)
		recs = append(recs, SnapshotRecord{Table: t.name, N: i, Spec: raw})
		t.chunks = append(t.chunks, &snapChunk{n: i, spec: s})
	}
	return g.cfg.Store.Plan(ctx, g.cfg.Key, t.name, recs)
}

// copyRound copies the tables of the round at its snapshot; the stream is
// at the round's position.
func (g *snapGate) copyRound(ctx context.Context, p *processor) error {
	if err := p.quiesce(ctx); err != nil { // nothing uncommitted behind the point
		return err
	}
	r := g.round
	if p.committed < r.at {
		p.committed = r.at
	}
	if err := p.maybeSetPoint(ctx, true); err != nil {
		return err
	}
	start := time.Now()
	bf, err := g.prepareRound(ctx, p, r)
	if err != nil {
		return err
	}
	if err := p.events.Backfill(ctx, g.backfillName(), bf); err != nil {
		if isClosed(p.events.Stopping()) {
			return errors.Wrap(err, "pglogical: a stop interrupted the snapshot; the next start resumes it")
		}
		return err
	}
	total := bf.total
	closeConn(r.conn)
	g.round = nil
	var again []*snapTable
	for _, t := range r.tables {
		t.round, t.blank = nil, false
		if err := g.addDeferredKey(ctx, p, t); err != nil {
			return err
		}
		t.spec.Synced = true
		if err := g.saveSpec(ctx, t); err != nil {
			return err
		}
		if t.again {
			t.again = false
			again = append(again, t)
		}
	}
	g.log.WithFields(logrus.Fields{"at": FormatLSN(r.at), "rows": total, "took": time.Since(start).Round(time.Millisecond)}).
		Info("snapshot copied")
	if len(again) > 0 {
		conn, err := pgx.Connect(ctx, g.d.cfg.SourceConn)
		if err != nil {
			return errors.Wrap(err, "pglogical: connecting to the source")
		}
		defer conn.Close(context.Background())
		for _, t := range again {
			if err := g.plan(ctx, conn, t); err != nil {
				return err
			}
		}
	}
	// Tables that joined meanwhile get a round of their own.
	return g.poll(ctx, p)
}

// saveSpec records the table record of t.
func (g *snapGate) saveSpec(ctx context.Context, t *snapTable) error {
	raw, err := json.Marshal(t.spec)
	if err != nil {
		return errors.Wrapf(err, "pglogical: the snapshot record of %s", t.name)
	}
	return g.cfg.Store.SetSpec(ctx, g.cfg.Key, t.name, -1, raw)
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// backfillName is the name of the nested loop that copies a round: its
// consistent point, the set of chunks done, is persisted under it.
func (g *snapGate) backfillName() string { return g.cfg.Key + ".snapshot" }

// prepareRound makes sure the target tables can take the rows and returns
// the backfiller that copies the chunks not done.
func (g *snapGate) prepareRound(ctx context.Context, p *processor, r *snapRound) (*snapBackfill, error) {
	conn, err := g.snapshotConn(ctx, r)
	if err != nil {
		return nil, err
	}
	defer closeConn(conn.PgConn())
	bf := &snapBackfill{g: g, p: p, r: r, kick: make(chan struct{}, 1)}
	var marked []string
	for _, t := range r.tables {
		cols, err := g.sourceColumns(ctx, conn, t)
		if err != nil {
			return nil, err
		}
		if err := g.prepareTarget(ctx, p, conn, t, cols); err != nil {
			return nil, err
		}
		if err := g.deferIndexes(ctx, p, t); err != nil {
			return nil, err
		}
		t.spec.Columns = cols
		names := make([]string, len(cols))
		for i, c := range cols {
			names[i] = c.Name
		}
		for _, c := range t.chunks {
			if c.done {
				marked = append(marked, pieceName(t, c))
			} else {
				bf.jobs = append(bf.jobs, snapJob{t: t, c: c, cols: names})
			}
		}
	}
	bf.marked = logical.NewPieces(marked...)
	return bf, nil
}

// pieceName names chunk c of t in the nested loop's point.
func pieceName(t *snapTable, c *snapChunk) string { return t.name + "/" + strconv.Itoa(c.n) }

// snapJob is a chunk to copy: the message from BackfillInto to Process.
type snapJob struct {
	t    *snapTable
	c    *snapChunk
	cols []string
}

// snapBackfill copies the chunks of a round, as the Backfiller of the
// nested loop that Process runs with Events.Backfill when the stream
// reached the round's position. BackfillInto hands over the chunks that
// the Store has not marked done; Process copies them on Workers
// connections that import the round's snapshot and, after chunks
// committed (rows and done mark in one target transaction), sets the
// nested loop's point to the set of chunks done so far, on a goroutine of
// its own that merges what finished meanwhile into one point.
type snapBackfill struct {
	g      *snapGate
	p      *processor
	r      *snapRound
	jobs   []snapJob
	marked *logical.Pieces // the chunks of the round's tables the Store had marked done
	// open starts a worker: it returns what copies a chunk (committing
	// its rows and done mark) and what releases the worker. Nil:
	// openSnapshot. Tests replace it.
	open func(ctx context.Context) (copyJob func(context.Context, snapJob) (int64, error), release func(), err error)

	kick  chan struct{} // a chunk finished: wakes persist
	mu    sync.Mutex    // guards total and todo
	total int64
	todo  []string // chunks finished and not yet in the point
}

var _ logical.Backfiller = (*snapBackfill)(nil)

// ZeroStamp implements logical.Dialect: the set of chunks done.
func (b *snapBackfill) ZeroStamp() logical.Stamp { return &logical.Pieces{} }

// ReadInto implements logical.Dialect; the nested loop only backfills.
func (b *snapBackfill) ReadInto(ctx context.Context, ch chan<- logical.Message, state logical.State) error {
	return b.BackfillInto(ctx, ch, state)
}

// BackfillInto implements logical.Backfiller: one message per chunk to
// copy. The Store's done marks, committed with the rows, decide what is
// left; the nested point (set after the commit) can only lag behind them.
func (b *snapBackfill) BackfillInto(ctx context.Context, ch chan<- logical.Message, state logical.State) error {
	for _, j := range b.jobs {
		select {
		case ch <- j:
		case <-state.Stopping():
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// Process implements logical.Dialect: Workers goroutines copy the chunks
// from ch. A stop cancels the copies in flight (their transactions roll
// back) and is an error: the chunks not done are copied by the next
// round. The chunks that committed before a stop or a failure still go
// into the point.
func (b *snapBackfill) Process(ctx context.Context, ch <-chan logical.Message, events logical.Events) error {
	// The copies run under wctx, which a stop or a failure cancels; the
	// point is persisted under ctx, so that the chunks that committed
	// before a stop or a failed chunk still reach it (the grace period
	// of a stop leaves time for that last write).
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-events.Stopping():
			cancel()
		case <-wctx.Done():
		}
	}()
	// A crash between a chunk's commit and the point that follows it
	// left the chunk marked done but not in the point: put it there.
	b.finished(0, b.marked.Names()...)
	finish := make(chan struct{})
	persisted := make(chan error, 1)
	go func() {
		err := b.persist(ctx, events, finish)
		if err != nil {
			cancel()
		}
		persisted <- err
	}()
	workers := min(b.g.cfg.Workers, len(b.jobs))
	errs := make(chan error, workers)
	for range workers {
		go func() {
			err := b.work(wctx, ch)
			if err != nil {
				cancel()
			}
			errs <- err
		}()
	}
	var first error
	if workers == 0 { // nothing to copy: done once the channel is closed
		first = drain(wctx, ch)
	}
	for range workers {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	close(finish)
	if err := <-persisted; err != nil && (first == nil || errors.Is(first, context.Canceled)) {
		first = err // the cause: the workers were cancelled for it
	}
	if first == nil && isClosed(events.Stopping()) {
		first = errors.New("pglogical: stopped during the snapshot")
	}
	return first
}

// drain waits for ch to be closed.
func drain(ctx context.Context, ch <-chan logical.Message) error {
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return nil
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// finished notes a chunk committed (rows copied, its piece) for persist.
func (b *snapBackfill) finished(rows int64, pieces ...string) {
	b.mu.Lock()
	b.total += rows
	b.todo = append(b.todo, pieces...)
	b.mu.Unlock()
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// persist sets the nested point to the current one plus the chunks
// finished since, one point at a time and each holding the last, so a
// worker goes on to its next chunk without waiting for the Memo; once
// finish is closed (every worker returned) it sets what is left and
// returns.
func (b *snapBackfill) persist(ctx context.Context, events logical.Events, finish <-chan struct{}) error {
	for {
		last := false
		select {
		case <-b.kick:
		case <-finish:
			last = true
		case <-ctx.Done():
			return ctx.Err()
		}
		b.mu.Lock()
		todo := b.todo
		b.todo = nil
		b.mu.Unlock()
		cp, _ := events.GetConsistentPoint()
		cur, _ := cp.(*logical.Pieces)
		if next := cur.With(todo...); next != cur {
			if err := events.SetConsistentPoint(ctx, next); err != nil {
				return err
			}
		}
		if last {
			return nil
		}
	}
}

// work copies chunks from ch until it is closed, with a worker from
// open: by default over a connection of its own that sees the round's
// snapshot.
func (b *snapBackfill) work(ctx context.Context, ch <-chan logical.Message) error {
	open := b.open
	if open == nil {
		open = b.openSnapshot
	}
	copyJob, release, err := open(ctx)
	if err != nil {
		return err
	}
	defer release()
	for {
		var m logical.Message
		var ok bool
		select {
		case m, ok = <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		if !ok {
			return nil
		}
		j, isJob := m.(snapJob)
		if !isJob {
			continue // the rollback sentinel: the nested loop never restarts BackfillInto
		}
		n, err := copyJob(ctx, j)
		if err != nil {
			return err
		}
		b.finished(n, pieceName(j.t, j.c))
	}
}

// openSnapshot is the default open of snapBackfill: a worker copies over
// a source connection of its own that imports the round's snapshot.
func (b *snapBackfill) openSnapshot(ctx context.Context) (func(context.Context, snapJob) (int64, error), func(), error) {
	conn, err := b.g.snapshotConn(ctx, b.r)
	if err != nil {
		return nil, nil, err
	}
	copyJob := func(ctx context.Context, j snapJob) (int64, error) {
		return b.g.copyChunk(ctx, b.p, conn, j.t, j.c, j.cols)
	}
	return copyJob, func() { closeConn(conn.PgConn()) }, nil
}

// snapshotConn opens a source connection in a transaction that sees the
// round's snapshot.
func (g *snapGate) snapshotConn(ctx context.Context, r *snapRound) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, g.d.cfg.SourceConn)
	if err != nil {
		return nil, errors.Wrap(err, "pglogical: connecting to the source for a snapshot")
	}
	if _, err := conn.Exec(ctx, `BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`); err == nil {
		_, err = conn.Exec(ctx, `SET TRANSACTION SNAPSHOT `+quoteLiteral(r.snapshot))
	}
	if err != nil {
		closeConn(conn.PgConn())
		return nil, errors.Wrap(err, "pglogical: importing the snapshot")
	}
	return conn, nil
}

// copyBuffer is how many bytes of COPY data go to the target at once.
const copyBuffer = 256 << 10

// copyChunk copies one chunk from the snapshot of conn into the target.
func (g *snapGate) copyChunk(ctx context.Context, p *processor, conn *pgx.Conn, t *snapTable, c *snapChunk, cols []string) (int64, error) {
	if err := g.cfg.Store.Start(ctx, g.cfg.Key, t.name, c.n); err != nil {
		return 0, err
	}
	quoted := make([]string, len(cols))
	for i, c := range cols {
		quoted[i] = quoteIdent(c)
	}
	where := c.spec.where()
	sql := `COPY (SELECT ` + strings.Join(quoted, ", ") + ` FROM ` + quoteIdent(t.schema) + "." + quoteIdent(t.rel) +
		` WHERE ` + where + `) TO STDOUT`
	copyInto := g.cfg.Store.Copy
	if bc, ok := g.cfg.Store.(SnapshotBinaryCopier); ok && t.binary {
		sql += ` (FORMAT binary)`
		copyInto = bc.CopyBinary
	}
	if t.blank {
		where = "" // nothing to replace, and maybe no index to find it
	}
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		// The server sends a message per row: hand them over in large
		// pieces, or the target would get a message (and a write) per row.
		bw := bufio.NewWriterSize(pw, copyBuffer)
		_, err := conn.PgConn().CopyTo(ctx, bw, sql)
		if err == nil {
			err = bw.Flush()
		}
		pw.CloseWithError(err)
		done <- err
	}()
	start := time.Now()
	n, err := copyInto(ctx, g.cfg.Key, t.name, c.n, g.target(p, t), where, cols, pr)
	pr.CloseWithError(errors.New("pglogical: the target stopped reading"))
	srcErr := <-done
	if err == nil && srcErr != nil {
		err = errors.Wrapf(srcErr, "pglogical: copying chunk %d of %s from the source", c.n, t.name)
	}
	if err != nil {
		return 0, err
	}
	c.done = true
	format := "text"
	if t.binary {
		format = "binary"
	}
	g.log.WithFields(logrus.Fields{"table": t.name, "chunk": c.n, "rows": n, "format": format, "took": time.Since(start).Round(time.Millisecond)}).
		Debug("chunk copied")
	return n, nil
}

// sourceColumns reads the columns of t as the snapshot of conn sees them.
func (g *snapGate) sourceColumns(ctx context.Context, conn *pgx.Conn, t *snapTable) ([]srcColumn, error) {
	rows, err := conn.Query(ctx, `
		SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.atttypid, a.atttypmod
		  FROM pg_catalog.pg_attribute a
		 WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
		 ORDER BY a.attnum`, quoteIdent(t.schema)+"."+quoteIdent(t.rel))
	if err != nil {
		return nil, errors.Wrapf(err, "pglogical: reading the columns of %s", t.name)
	}
	var cols []srcColumn
	var c srcColumn
	if _, err := pgx.ForEachRow(rows, []any{&c.Name, &c.Type, &c.OID, &c.Mod}, func() error {
		cols = append(cols, c)
		return nil
	}); err != nil {
		return nil, errors.Wrapf(err, "pglogical: reading the columns of %s", t.name)
	}
	return cols, nil
}

// prepareTarget makes sure the target table of t exists and has every
// source column.
func (g *snapGate) prepareTarget(ctx context.Context, p *processor, conn *pgx.Conn, t *snapTable, cols []srcColumn) error {
	target := g.target(p, t)
	have, ok, err := g.cfg.Store.Columns(ctx, target)
	if err != nil {
		return err
	}
	if !ok {
		if !g.cfg.CreateTables {
			return errors.Errorf("pglogical: target table %s of %s does not exist: create it (or let pgreplicate, with --createTables)",
				target, t.name)
		}
		names := make([]string, len(cols))
		types := make([]string, len(cols))
		for i, c := range cols {
			names[i], types[i] = c.Name, c.Type
		}
		var key []string
		if len(t.chunks) > 0 {
			key = t.chunks[0].spec.Key
		}
		g.log.WithFields(logrus.Fields{"table": target.String()}).Info("creating target table")
		// The key comes after the rows; recorded first, so that a crash
		// in between cannot leave a table without it.
		t.spec.DeferredKey = key
		if err := g.saveSpec(ctx, t); err != nil {
			return err
		}
		if err := g.cfg.Store.CreateTable(ctx, target, names, types, nil); err != nil {
			return err
		}
		t.blank = true
		have = make(map[string]string, len(cols))
	}
	for _, c := range cols {
		if _, has := have[c.Name]; !has {
			if ok { // the table was there before
				g.log.WithFields(logrus.Fields{"table": target.String(), "column": c.Name, "type": c.Type}).Info("adding column")
				if err := g.cfg.Store.AddColumn(ctx, target, c.Name, c.Type); err != nil {
					return err
				}
			}
			have[c.Name] = c.Type
		}
	}
	t.binary, err = g.binary(ctx, conn, have, cols)
	return err
}

// firstNormalOID is where the OIDs of objects that are not built in
// start (FirstNormalObjectId).
const firstNormalOID = 16384

// binary reports whether rows of the source columns cols can go to target
// columns of the types have in COPY binary format: the Store takes them,
// both servers have the same major version, and every column has the same
// built-in type at both ends.
func (g *snapGate) binary(ctx context.Context, conn *pgx.Conn, have map[string]string, cols []srcColumn) (bool, error) {
	bc, ok := g.cfg.Store.(SnapshotBinaryCopier)
	if !ok {
		return false, nil
	}
	for _, c := range cols {
		if c.OID >= firstNormalOID || have[c.Name] != c.Type {
			return false, nil
		}
	}
	if g.versions == [2]int{} {
		if err := conn.QueryRow(ctx, `SELECT current_setting('server_version_num')::int`).Scan(&g.versions[0]); err != nil {
			return false, errors.Wrap(err, "pglogical: reading the source's version")
		}
		v, err := bc.ServerVersion(ctx)
		if err != nil {
			return false, err
		}
		g.versions[1] = v
	}
	return g.versions[0]/10000 == g.versions[1]/10000, nil
}
