package logical

import (
	"context"
	"sort"

	"github.com/pkg/errors"
)

// Script routes and rewrites mutations between the dialect and the target:
// the Go form of a user script. Set it as Config.Script.
//
// Rules, applied to each OnData call:
//   - Without an entry in Sources for the call's source, or without a
//     Dispatch function there, the mutations go to the call's target table.
//   - Deletes are never dispatched: they go to the source's DeletesTo table
//     if set, else to the call's target. A source with Dispatch but without
//     DeletesTo has no place for deletes, and a delete is then an error that
//     names the source.
//   - For each resulting table, upserts go through the table's Map and
//     deletes through its DeleteKey, when set. A delete for a table that has
//     Map but no DeleteKey passes unchanged. Each non-empty group is passed
//     on.
type Script struct {
	Sources map[string]SourceScript
	Targets map[Table]TargetScript
}

// SourceScript routes the mutations of one source table.
type SourceScript struct {
	// Dispatch maps one upsert to mutations for any number of tables.
	Dispatch func(ctx context.Context, mut Mutation) (map[Table][]Mutation, error)
	// DeletesTo is where deletes of this source go.
	DeletesTo Table
}

// TargetScript rewrites the mutations bound for one table.
type TargetScript struct {
	// Map rewrites an upsert; false drops it.
	Map func(ctx context.Context, mut Mutation) (Mutation, bool, error)
	// DeleteKey rewrites a delete; false drops it.
	DeleteKey func(ctx context.Context, mut Mutation) (Mutation, bool, error)
}

func (s *Script) validate() error {
	for name := range s.Sources {
		if name == "" {
			return errors.New("logical: Config.Script.Sources has an entry with an empty source name")
		}
	}
	return nil
}

// scriptBatcher applies a Script to every batch.
type scriptBatcher struct {
	inner  Batcher
	script *Script
}

func (e *scriptBatcher) OnBegin(ctx context.Context) (Batch, error) {
	b, err := e.inner.OnBegin(ctx)
	if err != nil {
		return nil, err
	}
	return &scriptBatch{Batch: b, script: e.script}, nil
}

// scriptBatch routes OnData through the script; the rest passes through.
type scriptBatch struct {
	Batch
	script *Script
}

func (b *scriptBatch) OnData(ctx context.Context, source string, target Table, muts []Mutation) error {
	routed, order, err := b.script.route(ctx, source, target, muts)
	if err != nil {
		return err
	}
	for _, t := range order {
		out, err := b.script.rewrite(ctx, t, routed[t])
		if err != nil {
			return err
		}
		if len(out) > 0 {
			if err := b.Batch.OnData(ctx, source, t, out); err != nil {
				return err
			}
		}
	}
	return nil
}

// route applies the source rules: dispatch of upserts, placement of
// deletes. order lists the tables in first-seen order, so the output is
// deterministic.
func (s *Script) route(ctx context.Context, source string, target Table, muts []Mutation) (map[Table][]Mutation, []Table, error) {
	src, ok := s.Sources[source]
	if !ok || src.Dispatch == nil {
		deletesTo := target
		if ok && src.DeletesTo != (Table{}) {
			deletesTo = src.DeletesTo
		}
		if deletesTo == target {
			return map[Table][]Mutation{target: muts}, []Table{target}, nil
		}
		out := make(map[Table][]Mutation, 2)
		var order []Table
		for _, m := range muts {
			t := target
			if m.IsDelete() {
				t = deletesTo
			}
			if _, seen := out[t]; !seen {
				order = append(order, t)
			}
			out[t] = append(out[t], m)
		}
		return out, order, nil
	}
	out := make(map[Table][]Mutation)
	var order []Table
	add := func(t Table, ms ...Mutation) {
		if _, seen := out[t]; !seen {
			order = append(order, t)
		}
		out[t] = append(out[t], ms...)
	}
	for _, m := range muts {
		if m.IsDelete() {
			if src.DeletesTo == (Table{}) {
				return nil, nil, errors.Errorf("logical: script: source %q dispatches but has no DeletesTo, so a delete has nowhere to go", source)
			}
			add(src.DeletesTo, m)
			continue
		}
		dispatched, err := src.Dispatch(ctx, m)
		if err != nil {
			return nil, nil, errors.Wrapf(err, "logical: script: dispatching a mutation of source %q", source)
		}
		tables := make([]Table, 0, len(dispatched))
		for t := range dispatched {
			tables = append(tables, t)
		}
		sort.Slice(tables, func(i, j int) bool { return tables[i].String() < tables[j].String() })
		for _, t := range tables {
			if ms := dispatched[t]; len(ms) > 0 {
				add(t, ms...)
			}
		}
	}
	return out, order, nil
}

// rewrite applies the target rules: Map for upserts, DeleteKey for deletes.
func (s *Script) rewrite(ctx context.Context, t Table, muts []Mutation) ([]Mutation, error) {
	ts, ok := s.Targets[t]
	if !ok || ts.Map == nil && ts.DeleteKey == nil {
		return muts, nil
	}
	out := make([]Mutation, 0, len(muts))
	for _, m := range muts {
		fn := ts.Map
		what := "Map"
		if m.IsDelete() {
			fn, what = ts.DeleteKey, "DeleteKey"
		}
		if fn == nil {
			out = append(out, m)
			continue
		}
		mapped, keep, err := fn(ctx, m)
		if err != nil {
			return nil, errors.Wrapf(err, "logical: script: %s for table %s", what, t)
		}
		if keep {
			out = append(out, mapped)
		}
	}
	return out, nil
}
