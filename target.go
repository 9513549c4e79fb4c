package logical

import (
	"bytes"
	"context"
	"encoding/json"
	"sort"
	"sync"

	"github.com/pkg/errors"
)

// A Target is where mutations land: a database, a queue, memory.
//
// In serial mode the loop calls Begin once per batch and applies through
// the TargetTx; in fan mode (backfill, Config.Immediate) up to
// Config.FanShards goroutines call Apply concurrently, for different tables
// or for disjoint sets of keys of one table. muts are never empty and are
// owned by the target during the call only. An error fails the batch; the
// loop then restarts from the consistent point, so a Target must accept a
// mutation it has already applied (upserts and deletes are idempotent).
type Target interface {
	// Apply writes muts to table outside of any transaction.
	Apply(ctx context.Context, table Table, muts []Mutation) error
	// Begin opens a transaction.
	Begin(ctx context.Context) (TargetTx, error)
}

// A TargetTx is one target transaction, used by one goroutine.
type TargetTx interface {
	// Apply writes muts to table within the transaction.
	Apply(ctx context.Context, table Table, muts []Mutation) error
	// Commit makes the transaction's writes visible.
	Commit(ctx context.Context) error
	// Rollback drops them. It is called at most once, and never after
	// Commit.
	Rollback(ctx context.Context) error
}

// A ChainTx is a TargetTx that can commit without waiting for the commit's
// result, and go on with the next transaction on the same session. Serial
// mode discovers it by type assertion: the group of a backlog then commits
// while the next group is read and built, instead of one after the other.
// Without it, every commit waits for its result.
type ChainTx interface {
	TargetTx
	// CommitChain commits the transaction like Commit, but returns before
	// the target answered; result receives the commit's outcome once.
	// next is the transaction that follows on the same session: what it
	// applies is written at the target after this commit, and never if
	// this commit failed (its calls then return an error). The receiver
	// is ended; next belongs to the caller, who ends it with Commit,
	// CommitChain or Rollback. It is called by the goroutine that uses
	// the transaction; result may be read from any goroutine.
	CommitChain(ctx context.Context) (next TargetTx, result <-chan error)
}

// A MultiApplier is a Target that can apply the mutations of several
// tables in one call, outside of any transaction of the loop's (in one of
// its own, say, so that it costs one round trip and one commit). Fan mode
// (backfill, Config.Immediate) discovers it by type assertion: a shard
// about to apply a few mutations then takes along the few that are ready
// for other tables, so that a small source transaction that touches
// several tables costs one call and not one Apply per table. Without it,
// every table is its own Apply call.
type MultiApplier interface {
	// ApplyMulti writes the mutations of each part to its table, as
	// Apply would one part after the other. Each table appears once;
	// the parts are never empty. It is called concurrently, like Apply,
	// for disjoint sets of keys; an error fails the batches of every
	// part (some of the parts may have been applied).
	ApplyMulti(ctx context.Context, parts []TableMutations) error
}

// TableMutations is the mutations of one table in a MultiApplier call,
// owned by the target during the call only.
type TableMutations struct {
	Table     Table
	Mutations []Mutation
}

// An Orderer is a Target that knows the foreign-key dependencies between its
// tables. Config.ForeignKeys needs it; without it a Target is assumed to have
// no foreign keys, and starting a loop with ForeignKeys on fails.
type Orderer interface {
	// Order returns the tables of schema by dependency level: level 0 holds
	// the tables that reference no other table, level n the tables whose
	// parents are all in levels below n. It is called once when a loop
	// starts.
	Order(ctx context.Context, schema string) ([][]Table, error)
}

// A Sharder is a Target that knows which of its tables fan mode must not
// spread over shards. Fan mode (backfill, Config.Immediate) applies the
// mutations of different keys of a table concurrently and keeps only each
// key's order; that is wrong for a table whose rows the Target finds by
// other values than Mutation.Key (it has no key), or whose rows of
// different keys depend on each other (a unique or exclusion constraint
// besides the key: a source that swaps two rows' values through a
// temporary one must be applied in its order). For a table for which
// OneShard reports true, every mutation goes to one shard and is applied
// in the order given, across batches too; other tables stay spread by
// key. Without Sharder every table is spread (unless its mutations carry
// MetaNoKey).
type Sharder interface {
	// OneShard reports whether the mutations of table must be applied in
	// the order given, by one shard. Fan mode calls it from the goroutine
	// that adds the table's first mutation, once per table and fan queue
	// (a loop iteration's, or for Factory.Immediate the Factory's), so a
	// change of the answer counts from the next iteration; an error fails
	// that OnData call.
	OneShard(ctx context.Context, table Table) (bool, error)
}

// MemoryTarget is a transactional in-memory Target, keyed by the JSON of
// Mutation.Key. It is meant for tests and demos and offers read helpers. All
// methods are safe for concurrent use.
type MemoryTarget struct {
	mu     sync.RWMutex
	tables map[Table]map[string]json.RawMessage
	order  [][]Table
}

var _ Target = (*MemoryTarget)(nil)

// NewMemoryTarget returns an empty MemoryTarget.
func NewMemoryTarget() *MemoryTarget {
	return &MemoryTarget{tables: make(map[Table]map[string]json.RawMessage)}
}

// Apply implements Target: it writes muts at once.
func (t *MemoryTarget) Apply(_ context.Context, table Table, muts []Mutation) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.applyLocked(table, muts)
}

// applyLocked writes muts; the caller holds t.mu for writing.
func (t *MemoryTarget) applyLocked(table Table, muts []Mutation) error {
	rows := t.tables[table]
	if rows == nil {
		rows = make(map[string]json.RawMessage)
		t.tables[table] = rows
	}
	for i := range muts {
		key, err := memoryKey(muts[i].Key)
		if err != nil {
			return errors.Wrapf(err, "logical: MemoryTarget: table %s", table)
		}
		if muts[i].IsDelete() {
			delete(rows, key)
		} else {
			rows[key] = bytes.Clone(muts[i].Data)
		}
	}
	return nil
}

// memoryKey returns the canonical form of a JSON key.
func memoryKey(raw json.RawMessage) (string, error) {
	if len(raw) == 0 {
		return "", errors.New("mutation has no key")
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return "", errors.Wrapf(err, "mutation key %q is not JSON", raw)
	}
	return buf.String(), nil
}

// Begin implements Target: writes are staged and become visible together at
// Commit.
func (t *MemoryTarget) Begin(context.Context) (TargetTx, error) {
	return &memoryTx{target: t}, nil
}

// SetOrder makes the target an Orderer-like source of dependency levels;
// see MemoryTarget.Order.
func (t *MemoryTarget) SetOrder(levels [][]Table) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.order = levels
}

// Get returns the row of table with the given JSON key, and whether it
// exists.
func (t *MemoryTarget) Get(table Table, key string) (json.RawMessage, bool) {
	k, err := memoryKey(json.RawMessage(key))
	if err != nil {
		return nil, false
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	row, ok := t.tables[table][k]
	return row, ok
}

// Count returns the number of rows in table.
func (t *MemoryTarget) Count(table Table) int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.tables[table])
}

// Keys returns the keys of table's rows, sorted.
func (t *MemoryTarget) Keys(table Table) []string {
	t.mu.RLock()
	defer t.mu.RUnlock()
	keys := make([]string, 0, len(t.tables[table]))
	for k := range t.tables[table] {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Tables returns the tables that have been written to, sorted by name.
func (t *MemoryTarget) Tables() []Table {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := make([]Table, 0, len(t.tables))
	for tbl := range t.tables {
		out = append(out, tbl)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

// memoryTx is a MemoryTarget transaction.
type memoryTx struct {
	target *MemoryTarget
	writes []memoryWrite
	done   bool
}

type memoryWrite struct {
	table Table
	muts  []Mutation
}

func (x *memoryTx) Apply(_ context.Context, table Table, muts []Mutation) error {
	if x.done {
		return errors.New("logical: MemoryTarget: Apply after the transaction ended")
	}
	for i := range muts {
		if _, err := memoryKey(muts[i].Key); err != nil {
			return errors.Wrapf(err, "logical: MemoryTarget: table %s", table)
		}
	}
	x.writes = append(x.writes, memoryWrite{table, muts})
	return nil
}

func (x *memoryTx) Commit(context.Context) error {
	if x.done {
		return errors.New("logical: MemoryTarget: Commit after the transaction ended")
	}
	x.done = true
	x.target.mu.Lock()
	defer x.target.mu.Unlock()
	for _, w := range x.writes {
		if err := x.target.applyLocked(w.table, w.muts); err != nil {
			return err
		}
	}
	return nil
}

func (x *memoryTx) Rollback(context.Context) error {
	x.done = true
	x.writes = nil
	return nil
}

var _ Orderer = (*MemoryTarget)(nil)

// Order implements Orderer with the levels given to SetOrder, keeping the
// tables of schema. Without SetOrder it returns no levels.
func (t *MemoryTarget) Order(_ context.Context, schema string) ([][]Table, error) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	var out [][]Table
	for _, level := range t.order {
		var keep []Table
		for _, tbl := range level {
			if tbl.Schema == schema {
				keep = append(keep, tbl)
			}
		}
		if len(keep) > 0 {
			out = append(out, keep)
		}
	}
	return out, nil
}
