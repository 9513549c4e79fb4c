package logicaltest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"

	"github.com/logical-go/logical"
)

// Write is one applied mutation, as a Recorder saw it.
type Write struct {
	Table  logical.Table
	Key    string
	Delete bool
	// Tx is true for writes through a transaction (serial mode).
	Tx bool
}

// Recorder is a logical.Target (and logical.Orderer) that keeps rows in
// memory, records every write in order, can enforce foreign keys, and can
// be made slow or failing. Its methods are safe for concurrent use.
//
// Foreign keys are declared with SetParent: a row of a child table needs
// the row with the same key in the parent table, and a parent row cannot be
// deleted while a child row with its key exists. A violation fails the
// write and is remembered (Violations).
type Recorder struct {
	// Hook, if set, is called before every Apply (in or out of a
	// transaction); an error fails that Apply. Use it to slow the target
	// down or to inject failures. Set it before use.
	Hook func(ctx context.Context, table logical.Table, muts []logical.Mutation) error
	// CommitHook, if set, is called before every Commit; an error fails
	// the commit.
	CommitHook func(ctx context.Context) error

	mu         sync.Mutex
	rows       map[logical.Table]map[string]json.RawMessage
	writes     []Write
	parents    map[logical.Table]logical.Table
	violations []string
	commits    int
}

var (
	_ logical.Target  = (*Recorder)(nil)
	_ logical.Orderer = (*Recorder)(nil)
)

// NewRecorder returns an empty Recorder without foreign keys.
func NewRecorder() *Recorder {
	return &Recorder{rows: make(map[logical.Table]map[string]json.RawMessage), parents: make(map[logical.Table]logical.Table)}
}

// SetParent declares that child references parent by key. It also makes
// both tables known to Order.
func (r *Recorder) SetParent(child, parent logical.Table) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.parents[child] = parent
	if _, ok := r.parents[parent]; !ok {
		r.parents[parent] = logical.Table{}
	}
}

// Chain declares tables[i] the parent of tables[i+1].
func (r *Recorder) Chain(tables ...logical.Table) {
	for i := 1; i < len(tables); i++ {
		r.SetParent(tables[i], tables[i-1])
	}
	if len(tables) == 1 {
		r.SetParent(tables[0], logical.Table{})
	}
}

// Order implements logical.Orderer from the declared parents.
func (r *Recorder) Order(_ context.Context, schema string) ([][]logical.Table, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	depth := make(map[logical.Table]int)
	var level func(t logical.Table, seen int) int
	level = func(t logical.Table, seen int) int {
		if d, ok := depth[t]; ok {
			return d
		}
		p := r.parents[t]
		d := 0
		if p != (logical.Table{}) && seen < len(r.parents) {
			d = level(p, seen+1) + 1
		}
		depth[t] = d
		return d
	}
	var out [][]logical.Table
	for t := range r.parents {
		if t.Schema != schema {
			continue
		}
		d := level(t, 0)
		for len(out) <= d {
			out = append(out, nil)
		}
		out[d] = append(out[d], t)
	}
	for _, lvl := range out {
		sort.Slice(lvl, func(i, j int) bool { return lvl[i].Name < lvl[j].Name })
	}
	return out, nil
}

// Apply implements logical.Target.
func (r *Recorder) Apply(ctx context.Context, table logical.Table, muts []logical.Mutation) error {
	if r.Hook != nil {
		if err := r.Hook(ctx, table, muts); err != nil {
			return err
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.applyLocked(nil, table, muts, false)
}

// applyLocked checks and applies muts, to staged if it is not nil.
func (r *Recorder) applyLocked(staged map[logical.Table]map[string]json.RawMessage, table logical.Table, muts []logical.Mutation, tx bool) error {
	get := func(t logical.Table, key string) bool {
		if staged != nil {
			if rows, ok := staged[t]; ok {
				if v, ok := rows[key]; ok {
					return v != nil
				}
			}
		}
		_, ok := r.rows[t][key]
		return ok
	}
	dest := r.rows
	if staged != nil {
		dest = staged
	}
	for _, m := range muts {
		key := compact(m.Key)
		if p := r.parents[table]; p != (logical.Table{}) && !m.IsDelete() && !get(p, key) {
			v := fmt.Sprintf("write of %s %s before its parent %s", table, key, p)
			r.violations = append(r.violations, v)
			return fmt.Errorf("logicaltest: foreign key violation: %s", v)
		}
		if m.IsDelete() {
			for child, p := range r.parents {
				if p == table && get(child, key) {
					v := fmt.Sprintf("delete of %s %s while child %s has it", table, key, child)
					r.violations = append(r.violations, v)
					return fmt.Errorf("logicaltest: foreign key violation: %s", v)
				}
			}
		}
		rows := dest[table]
		if rows == nil {
			rows = make(map[string]json.RawMessage)
			dest[table] = rows
		}
		if m.IsDelete() {
			if staged != nil {
				rows[key] = nil // a staged delete
			} else {
				delete(rows, key)
			}
		} else {
			rows[key] = bytes.Clone(m.Data)
		}
		r.writes = append(r.writes, Write{Table: table, Key: key, Delete: m.IsDelete(), Tx: tx})
	}
	return nil
}

func compact(raw json.RawMessage) string {
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return string(raw)
	}
	return buf.String()
}

// Begin implements logical.Target.
func (r *Recorder) Begin(context.Context) (logical.TargetTx, error) {
	return &recorderTx{r: r, staged: make(map[logical.Table]map[string]json.RawMessage)}, nil
}

type recorderTx struct {
	r      *Recorder
	staged map[logical.Table]map[string]json.RawMessage
}

func (x *recorderTx) Apply(ctx context.Context, table logical.Table, muts []logical.Mutation) error {
	if x.r.Hook != nil {
		if err := x.r.Hook(ctx, table, muts); err != nil {
			return err
		}
	}
	x.r.mu.Lock()
	defer x.r.mu.Unlock()
	return x.r.applyLocked(x.staged, table, muts, true)
}

func (x *recorderTx) Commit(ctx context.Context) error {
	if x.r.CommitHook != nil {
		if err := x.r.CommitHook(ctx); err != nil {
			return err
		}
	}
	x.r.mu.Lock()
	defer x.r.mu.Unlock()
	for t, rows := range x.staged {
		dest := x.r.rows[t]
		if dest == nil {
			dest = make(map[string]json.RawMessage)
			x.r.rows[t] = dest
		}
		for k, v := range rows {
			if v == nil {
				delete(dest, k)
			} else {
				dest[k] = v
			}
		}
	}
	x.r.commits++
	return nil
}

func (x *recorderTx) Rollback(context.Context) error { return nil }

// Has reports whether table has a row with the given JSON key.
func (r *Recorder) Has(table logical.Table, key string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.rows[table][compact(json.RawMessage(key))]
	return ok
}

// Row returns the row of table with the given JSON key.
func (r *Recorder) Row(table logical.Table, key string) (json.RawMessage, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	v, ok := r.rows[table][compact(json.RawMessage(key))]
	return v, ok
}

// Count returns the number of rows in table.
func (r *Recorder) Count(table logical.Table) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.rows[table])
}

// Writes returns a copy of every write so far, in order.
func (r *Recorder) Writes() []Write {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Write(nil), r.writes...)
}

// Violations returns the foreign-key violations seen so far.
func (r *Recorder) Violations() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.violations...)
}

// Commits returns the number of committed transactions.
func (r *Recorder) Commits() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.commits
}
