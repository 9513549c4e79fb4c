package pgstore

import (
	"context"
	"encoding/json"
	"math"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/logical-go/logical"
	"github.com/pkg/errors"
)

// Folding the mutations of a call per key and writing them in a few
// multi-row statements (applyRows) loses their order, and PostgreSQL
// checks a unique constraint other than the key (or an exclusion
// constraint), unless it is deferrable, row by row as a statement writes:
// a source that swaps the values of such a column between two rows in
// three steps (A: u = tmp; B: u = a; A: u = b) is written as A: u = b,
// B: u = a, which fails. When a statement of a segment of more than one
// mutation fails so, the segment is written again one statement per
// mutation in the source's order, as the source did: in a transaction by
// replaying the transaction from its statement log with the segment's
// statements replaced; outside one (fan mode) each statement on its own,
// see apart. A violation that remains is a real one (the target has a
// constraint the source lacks) and fails with the constraint and the
// values. Should the log be too large to replay, the transaction fails
// and the Target writes the table one mutation per statement until a
// transaction that did so commits.

// segment is the mutations of one applyRows call of more than one
// mutation, kept so that they can be written again one by one.
type segment struct {
	info *tableInfo
	muts []logical.Mutation // outside a transaction: the caller's
	kept *keptMuts          // in a transaction: a copy; nil if its log was full
	// replaced is set once the mutations were written one by one; the
	// segment's statements still to come are then skipped.
	replaced bool
}

// mutations returns the segment's mutations, or nil if they were not
// kept.
func (s *segment) mutations() []logical.Mutation {
	if s.kept != nil {
		return s.kept.mutations()
	}
	return s.muts
}

// keptMuts is a compact copy of mutations: their Before, Data and Key
// one after the other in buf, and where each ends.
type keptMuts struct {
	buf    []byte
	ends   []uint32 // three per mutation: the ends of Before, Data and Key in buf
	insert []bool   // marked MetaInsert
}

// mutations rebuilds the mutations; their byte slices alias k.buf.
func (k *keptMuts) mutations() []logical.Mutation {
	out := make([]logical.Mutation, len(k.insert))
	start := uint32(0)
	part := func(end uint32) json.RawMessage {
		b := k.buf[start:end:end]
		start = end
		if len(b) == 0 {
			return nil
		}
		return b
	}
	for i := range out {
		out[i] = logical.Mutation{Before: part(k.ends[3*i]), Data: part(k.ends[3*i+1]), Key: part(k.ends[3*i+2])}
		if k.insert[i] {
			out[i].Meta = insertMeta
		}
	}
	return out
}

// segmentExec is an execer that marks each statement with the segment
// that wrote it.
type segmentExec struct {
	execer
	seg *segment
}

func (s segmentExec) exec(ctx context.Context, st stmt, sql string, args ...any) error {
	st.seg = s.seg
	return s.execer.exec(ctx, st, sql, args...)
}

// copier is an execer that can write inserts by COPY (targetTx, see
// copyin.go).
type copier interface {
	copyRows(ctx context.Context, st stmt, sql string, info *tableInfo, cols []int, rows []row) (bool, error)
}

func (s segmentExec) copyRows(ctx context.Context, st stmt, sql string, info *tableInfo, cols []int, rows []row) (bool, error) {
	c, ok := s.execer.(copier)
	if !ok {
		return false, nil
	}
	st.seg = s.seg
	return c.copyRows(ctx, st, sql, info, cols, rows)
}

// insertMeta is the Meta of a kept copy of a mutation marked MetaInsert;
// it is never written to.
var insertMeta = map[string]any{MetaInsert: true}

// keep implements execer: the mutations stay the caller's after Apply, so
// a transaction keeps a compact copy of them, counted in its log, while
// the log is not full.
func (x *targetTx) keep(muts []logical.Mutation) *keptMuts {
	if x.logFull {
		return nil
	}
	size := 0
	for i := range muts {
		size += len(muts[i].Before) + len(muts[i].Data) + len(muts[i].Key)
	}
	if x.logBytes += size; x.logBytes > replayBytes || size > math.MaxUint32 {
		x.log, x.logFull = nil, true
		return nil
	}
	k := &keptMuts{buf: make([]byte, 0, size), ends: make([]uint32, 0, 3*len(muts)), insert: make([]bool, len(muts))}
	for i := range muts {
		m := &muts[i]
		k.buf = append(k.buf, m.Before...)
		k.ends = append(k.ends, uint32(len(k.buf)))
		k.buf = append(k.buf, m.Data...)
		k.ends = append(k.ends, uint32(len(k.buf)))
		k.buf = append(k.buf, m.Key...)
		k.ends = append(k.ends, uint32(len(k.buf)))
		k.insert[i], _ = m.Meta[MetaInsert].(bool)
	}
	return k
}

// keep implements execer: outside a transaction the segment is written
// again, if at all, during the call, from the caller's mutations.
func (poolExec) keep([]logical.Mutation) *keptMuts { return nil }

// recorder is an execer that only collects the statements.
type recorder struct{ stmts []loggedStmt }

func (r *recorder) exec(_ context.Context, st stmt, sql string, args ...any) error {
	r.stmts = append(r.stmts, loggedStmt{st: st, sql: sql, args: args})
	return nil
}

func (*recorder) keep([]logical.Mutation) *keptMuts { return nil }

// isOrderViolation reports whether err, the failure of statement st, is a
// unique or exclusion violation that writing st's segment one mutation
// per statement may avoid.
func isOrderViolation(st stmt, err error) bool {
	var pgErr *pgconn.PgError
	return st.seg != nil && !st.seg.replaced && errors.As(err, &pgErr) &&
		(pgErr.Code == "23505" || pgErr.Code == "23P01")
}

// oneByOne writes the mutations of seg one statement per mutation, in
// order, through q.
func (t *Target) oneByOne(ctx context.Context, q execer, seg *segment) error {
	muts := seg.mutations()
	for i := range muts {
		if err := t.applyRows(ctx, q, seg.info, muts[i:i+1]); err != nil {
			return err
		}
	}
	return nil
}

// orderWait bounds how long a statement outside a transaction that
// violates a unique or exclusion constraint is tried again, see apart.
const orderWait = 2 * time.Second

// apart writes the mutations of seg one statement per mutation, each
// committed on its own (fan mode: outside a transaction, the segment's
// statements that ran before the failing one are written again). Fan
// workers apply other keys concurrently and keep only the order of each
// key's mutations, so a value this segment takes may still be held by a
// row whose mutation another worker is about to apply: a mutation that
// violates a unique or exclusion constraint is tried again, with a short
// growing pause, for up to orderWait before its error is returned.
func (t *Target) apart(ctx context.Context, seg *segment) error {
	muts := seg.mutations()
	for i := range muts {
		deadline := time.Now().Add(orderWait)
		pause := 5 * time.Millisecond
		for {
			err := t.applyRows(ctx, poolExec{t}, seg.info, muts[i:i+1])
			var pgErr *pgconn.PgError
			if err == nil || !errors.As(err, &pgErr) || pgErr.Code != "23505" && pgErr.Code != "23P01" ||
				time.Now().Add(pause).After(deadline) {
				if err != nil {
					return err
				}
				break
			}
			timer := time.NewTimer(pause)
			select {
			case <-ctx.Done():
				timer.Stop()
				return err
			case <-timer.C:
			}
			pause = min(2*pause, 200*time.Millisecond)
		}
	}
	return nil
}

// setRowByRow makes the Target write table one mutation per statement
// (on) or again in folded statements (off).
func (t *Target) setRowByRow(table logical.Table, on bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if on {
		t.rowByRow[table] = true
	} else {
		delete(t.rowByRow, table)
	}
}

var _ logical.Sharder = (*Target)(nil)

// OneShard implements logical.Sharder: fan mode must keep the order of
// every mutation of a table without a key (its rows are found by their
// values) and of one with a unique or exclusion constraint besides its
// key (rows of different keys may trade values, as in a swap, which only
// the source's order applies without a violation). Such a table is then
// written by one shard, whose calls the Target writes one mutation per
// statement in order if their folded statements violate the constraint
// (see apart). The answer is read from the catalog once per call; fan
// mode asks once per table and loop iteration.
func (t *Target) OneShard(ctx context.Context, table logical.Table) (bool, error) {
	info, err := t.info(ctx, table, false)
	if err != nil {
		return false, err
	}
	if len(info.pk) == 0 {
		return true, nil
	}
	var other bool
	err = t.pool.QueryRow(ctx, `
		SELECT EXISTS (
		  SELECT 1 FROM pg_catalog.pg_index i
		   WHERE i.indrelid = c.oid AND (i.indisunique OR i.indisexclusion)
		     AND i.indexrelid IS DISTINCT FROM (
		         SELECT k.indexrelid FROM pg_catalog.pg_index k
		          WHERE k.indrelid = c.oid AND (k.indisprimary OR k.indisreplident)
		          ORDER BY k.indisprimary DESC LIMIT 1))
		  FROM pg_catalog.pg_class c
		  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')`, table.Schema, table.Name).Scan(&other)
	if err != nil {
		return false, errors.Wrapf(err, "pgstore: reading the unique constraints of %s", table)
	}
	return other, nil
}
