package logical

import (
	"bytes"
	"context"
	"encoding/json"

	"github.com/pkg/errors"
)

// fkOrder is the dependency order of a schema's tables.
type fkOrder struct {
	schema string
	levels [][]Table
	level  map[Table]int
}

// loadOrder asks target (an Orderer) for the levels of schema. A target
// that is no Orderer has no foreign keys: one empty order.
func loadOrder(ctx context.Context, target Target, schema string) (*fkOrder, error) {
	o := &fkOrder{schema: schema, level: make(map[Table]int)}
	orderer, ok := target.(Orderer)
	if !ok {
		return o, nil
	}
	levels, err := orderer.Order(ctx, schema)
	if err != nil {
		return nil, errors.Wrapf(err, "reading the foreign-key order of schema %q", schema)
	}
	o.levels = levels
	for i, level := range levels {
		for _, t := range level {
			o.level[t] = i
		}
	}
	return o, nil
}

// fkBatcher holds back mutations so that parents are written before their
// children and deleted after them.
type fkBatcher struct {
	inner Batcher
	order *fkOrder
}

func (e *fkBatcher) OnBegin(ctx context.Context) (Batch, error) {
	b, err := e.inner.OnBegin(ctx)
	if err != nil {
		return nil, err
	}
	return &fkBatch{inner: b, order: e.order}, nil
}

// fkBatch keeps, per table and key, only the last mutation held back (in
// the place of its last occurrence); mutations with a prior image (Before)
// are kept in sequence instead, since they depend on the rows before them.
type fkBatch struct {
	inner Batch
	order *fkOrder
	held  map[Table]*heldRows
	ended bool
}

// heldRows are the held mutations of one table, in arrival order of their
// keys.
type heldRows struct {
	muts  []Mutation
	index map[string]int // key -> position in muts
}

func (b *fkBatch) Flush(ctx context.Context) error { return b.inner.Flush(ctx) }

func (b *fkBatch) OnData(ctx context.Context, source string, target Table, muts []Mutation) error {
	if b.ended {
		return ErrBatchEnded
	}
	lvl, ok := b.order.level[target]
	if !ok {
		return errors.Errorf("logical: table %s is not in the foreign-key order of schema %q", target, b.order.schema)
	}
	var pass []Mutation
	for _, m := range muts {
		if truncate, _ := m.Meta[MetaTruncate].(bool); truncate {
			// A truncate goes through in order (a dialect flushes
			// around it) and supersedes what is held for the table.
			delete(b.held, target)
			pass = append(pass, m)
			continue
		}
		if lvl == 0 && !m.IsDelete() {
			b.forget(target, m.Key)
			pass = append(pass, m)
			continue
		}
		b.hold(target, m)
	}
	if len(pass) > 0 {
		return b.inner.OnData(ctx, source, target, pass)
	}
	return nil
}

// fkKey is the form of a key used to match mutations of one row: the
// JSON as given, compacted only if it holds white space.
func fkKey(raw json.RawMessage) string {
	if bytes.ContainsAny(raw, " \t\r\n") {
		var buf bytes.Buffer
		if json.Compact(&buf, raw) == nil {
			return buf.String()
		}
	}
	return string(raw)
}

func (b *fkBatch) hold(t Table, m Mutation) {
	if b.held == nil {
		b.held = make(map[Table]*heldRows)
	}
	h := b.held[t]
	if h == nil {
		h = &heldRows{index: make(map[string]int)}
		b.held[t] = h
	}
	key := fkKey(m.Key)
	if i, ok := h.index[key]; ok && h.muts[i].Before == nil && m.Before == nil {
		// m supersedes the held mutation, and takes the last place: a
		// mutation held in between may depend on the key's earlier state
		// (a key moved away from it by an update carrying Before).
		h.muts[i] = Mutation{} // no Key: skipped at commit
	}
	// A mutation with a prior image (a key move, a row matched by its old
	// values) is not folded: both it and what follows are written, in order.
	h.index[key] = len(h.muts)
	h.muts = append(h.muts, m)
}

// forget drops a held mutation that a passed-through upsert supersedes.
func (b *fkBatch) forget(t Table, key []byte) {
	h := b.held[t]
	if h == nil {
		return
	}
	k := fkKey(key)
	if i, ok := h.index[k]; ok {
		h.muts[i] = Mutation{} // no Key: skipped at commit
		delete(h.index, k)
	}
}

// release writes held upserts parents first, then held deletes children
// first, with a Flush between levels.
func (b *fkBatch) release(ctx context.Context) error {
	if len(b.held) == 0 {
		return nil
	}
	levels := b.order.levels
	pass := func(i int, deletes bool) (bool, error) {
		wrote := false
		for _, t := range levels[i] {
			h := b.held[t]
			if h == nil {
				continue
			}
			var out []Mutation
			for _, m := range h.muts {
				if m.Key != nil && m.IsDelete() == deletes {
					out = append(out, m)
				}
			}
			if len(out) > 0 {
				wrote = true
				if err := b.inner.OnData(ctx, t.String(), t, out); err != nil {
					return wrote, err
				}
			}
		}
		return wrote, nil
	}
	// Level-0 upserts went straight through; they must land first.
	if err := b.inner.Flush(ctx); err != nil {
		return err
	}
	for i := 1; i < len(levels); i++ {
		wrote, err := pass(i, false)
		if err != nil {
			return err
		}
		if wrote {
			if err := b.inner.Flush(ctx); err != nil {
				return err
			}
		}
	}
	for i := len(levels) - 1; i >= 0; i-- {
		wrote, err := pass(i, true)
		if err != nil {
			return err
		}
		if wrote && i > 0 {
			if err := b.inner.Flush(ctx); err != nil {
				return err
			}
		}
	}
	b.held = nil
	return nil
}

func (b *fkBatch) OnCommit(ctx context.Context) <-chan error {
	if b.ended {
		return result1(ErrBatchEnded)
	}
	b.ended = true
	if err := b.release(ctx); err != nil {
		_ = b.inner.OnRollback(ctx)
		return result1(err)
	}
	return b.inner.OnCommit(ctx)
}

func (b *fkBatch) OnRollback(ctx context.Context) error {
	b.ended = true
	b.held = nil
	return b.inner.OnRollback(ctx)
}

// decorate wraps base with the configured decorators, outermost first:
// metrics, script, foreign-key ordering.
func decorate(base Batcher, cfg *Config, order *fkOrder, l *Loop) Batcher {
	b := base
	if order != nil && cfg.ForeignKeys {
		b = &fkBatcher{inner: b, order: order}
	}
	if cfg.Script != nil {
		b = &scriptBatcher{inner: b, script: cfg.Script}
	}
	if l != nil {
		b = &metricsBatcher{inner: b, stats: &l.stats}
	}
	return b
}
