package logical_test

import (
	"context"
	"testing"

	"github.com/logical-go/logical"
	"github.com/logical-go/logical/logicaltest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var (
	fkParent = logical.Table{Schema: "s", Name: "parent"}
	fkChild  = logical.Table{Schema: "s", Name: "child"}
	fkGrand  = logical.Table{Schema: "s", Name: "grand"}
)

// fkBatcher returns an Immediate batcher with foreign-key ordering over a
// Recorder holding parent <- child <- grand.
func fkBatcher(t *testing.T) (logical.Batcher, *logicaltest.Recorder) {
	t.Helper()
	return fkBatcherShards(t, 0)
}

// fkBatcherShards is fkBatcher with Config.FanShards set to shards (0:
// the default); with one shard the target sees the order the FK
// decorator hands over across keys too.
func fkBatcherShards(t *testing.T, shards int) (logical.Batcher, *logicaltest.Recorder) {
	t.Helper()
	r := logicaltest.NewRecorder()
	r.Chain(fkParent, fkChild, fkGrand)
	cfg := fastConfig(t, r)
	cfg.ForeignKeys = true
	cfg.FanShards = shards
	return immediateBatcher(t, cfg), r
}

// fkWrite is one OnData call.
type fkWrite struct {
	table logical.Table
	mut   logical.Mutation
}

// fkApply writes each mutation with its own OnData call, in one batch.
func fkApply(ctx context.Context, b logical.Batcher, writes ...fkWrite) error {
	batch, err := b.OnBegin(ctx)
	if err != nil {
		return err
	}
	for _, w := range writes {
		if err := batch.OnData(ctx, w.table.String(), w.table, []logical.Mutation{w.mut}); err != nil {
			_ = batch.OnRollback(ctx)
			return err
		}
	}
	return <-batch.OnCommit(ctx)
}

// describe returns the recorded writes as "table key" or "table -key".
func describe(writes []logicaltest.Write) []string {
	out := make([]string, len(writes))
	for i, w := range writes {
		k := w.Key
		if w.Delete {
			k = "-" + k
		}
		out[i] = w.Table.Name + " " + k
	}
	return out
}

func TestForeignKeyOrdering(t *testing.T) {
	ctx := context.Background()

	t.Run("only the last mutation per table and key counts", func(t *testing.T) {
		b, r := fkBatcher(t)
		require.NoError(t, fkApply(ctx, b,
			fkWrite{fkParent, upsert(`[1]`, `{"v":1}`)},
			fkWrite{fkChild, upsert(`[1]`, `{"v":1}`)},
			fkWrite{fkChild, deletion(`[1]`)},
			fkWrite{fkChild, upsert(`[1]`, `{"v":3}`)},
			fkWrite{fkGrand, upsert(`[1]`, `{"v":1}`)},
			fkWrite{fkGrand, deletion(`[1]`)},
			// A level-0 delete superseded by an upsert of the same key.
			fkWrite{fkParent, deletion(`[2]`)},
			fkWrite{fkParent, upsert(`[2]`, `{"v":2}`)},
		))
		assert.Equal(t, []string{"child [1]"}, describe(filter(r.Writes(), fkChild)), "one write for the child")
		row, ok := r.Row(fkChild, `[1]`)
		require.True(t, ok)
		assert.JSONEq(t, `{"v":3}`, string(row))
		assert.Equal(t, []string{"grand -[1]"}, describe(filter(r.Writes(), fkGrand)), "only the final delete of grand")
		assert.True(t, r.Has(fkParent, `[2]`), "the later upsert of parent [2] wins")
		assert.NotContains(t, describe(r.Writes()), "parent -[2]")
		assert.Empty(t, r.Violations())
	})

	t.Run("a key move and the key's reuse keep their order", func(t *testing.T) {
		b, r := fkBatcherShards(t, 1)
		move := upsert(`[2]`, `{"id":2}`)
		move.Before = []byte(`{"id":1}`) // the row moved from key 1 to key 2
		require.NoError(t, fkApply(ctx, b,
			fkWrite{fkParent, upsert(`[1]`, `{}`)},
			fkWrite{fkParent, upsert(`[2]`, `{}`)},
			fkWrite{fkChild, upsert(`[1]`, `{"id":1}`)},
			fkWrite{fkChild, move},
			fkWrite{fkChild, upsert(`[1]`, `{"id":1,"new":true}`)},
			fkWrite{fkChild, upsert(`[2]`, `{"id":2,"v":3}`)},
		))
		// The new row of key 1 must come after the move away from key 1
		// (else the move would take it along), and the move is not
		// folded into the later update of key 2.
		assert.Equal(t, []string{"child [2]", "child [1]", "child [2]"}, describe(filter(r.Writes(), fkChild)))
		assert.Empty(t, r.Violations())
	})

	t.Run("upserts go parents first", func(t *testing.T) {
		b, r := fkBatcher(t)
		require.NoError(t, fkApply(ctx, b,
			fkWrite{fkGrand, upsert(`[1]`, `{}`)},
			fkWrite{fkChild, upsert(`[1]`, `{}`)},
			fkWrite{fkParent, upsert(`[1]`, `{}`)},
		))
		assert.Equal(t, []string{"parent [1]", "child [1]", "grand [1]"}, describe(r.Writes()))
		assert.Empty(t, r.Violations())
	})

	t.Run("deletes go children first after the upserts", func(t *testing.T) {
		b, r := fkBatcher(t)
		require.NoError(t, fkApply(ctx, b,
			fkWrite{fkParent, upsert(`[1]`, `{}`)},
			fkWrite{fkChild, upsert(`[1]`, `{}`)},
			fkWrite{fkGrand, upsert(`[1]`, `{}`)},
		))
		before := len(r.Writes())
		require.NoError(t, fkApply(ctx, b,
			fkWrite{fkParent, deletion(`[1]`)},
			fkWrite{fkChild, deletion(`[1]`)},
			fkWrite{fkGrand, deletion(`[1]`)},
			fkWrite{fkGrand, upsert(`[2]`, `{}`)},
			fkWrite{fkChild, upsert(`[2]`, `{}`)},
			fkWrite{fkParent, upsert(`[2]`, `{}`)},
		))
		assert.Equal(t, []string{
			"parent [2]", "child [2]", "grand [2]",
			"grand -[1]", "child -[1]", "parent -[1]",
		}, describe(r.Writes()[before:]))
		assert.Empty(t, r.Violations())
		for _, tbl := range []logical.Table{fkParent, fkChild, fkGrand} {
			assert.False(t, r.Has(tbl, `[1]`), "%s [1] deleted", tbl)
			assert.True(t, r.Has(tbl, `[2]`), "%s [2] written", tbl)
		}
	})

	t.Run("a table not in the order is an error naming it", func(t *testing.T) {
		b, r := fkBatcher(t)
		stray := logical.Table{Schema: "s", Name: "stray"}
		err := fkApply(ctx, b, fkWrite{stray, upsert(`[1]`, `{}`)})
		require.Error(t, err)
		assert.Contains(t, err.Error(), "s.stray")
		assert.Contains(t, err.Error(), "foreign-key order")
		assert.Empty(t, r.Writes())
	})

	t.Run("rollback drops the held mutations", func(t *testing.T) {
		b, r := fkBatcher(t)
		batch, err := b.OnBegin(ctx)
		require.NoError(t, err)
		require.NoError(t, batch.OnData(ctx, "child", fkChild, []logical.Mutation{upsert(`[1]`, `{}`)}))
		require.NoError(t, batch.OnRollback(ctx))
		assert.Empty(t, r.Writes())
		assert.Error(t, batch.OnData(ctx, "child", fkChild, []logical.Mutation{upsert(`[1]`, `{}`)}), "OnData after OnRollback")
	})
}

// filter keeps the writes to table.
func filter(writes []logicaltest.Write, table logical.Table) []logicaltest.Write {
	var out []logicaltest.Write
	for _, w := range writes {
		if w.Table == table {
			out = append(out, w)
		}
	}
	return out
}

// plainTarget hides the Orderer of the target it wraps.
type plainTarget struct{ logical.Target }

func TestForeignKeyConfiguration(t *testing.T) {
	t.Run("foreign keys in the target need ForeignKeys on", func(t *testing.T) {
		r := logicaltest.NewRecorder()
		r.Chain(logicaltest.Tables("gen", 2)...)
		cfg := fastConfig(t, r)
		_, err := logical.Start(context.Background(), cfg, &logical.LoopConfig{
			Dialect: logicaltest.NewGenerator(1), LoopName: "fk-off", TargetSchema: "gen",
		})
		require.Error(t, err)
		assert.Contains(t, err.Error(), "has foreign keys")
		assert.Contains(t, err.Error(), "Config.ForeignKeys is off")
		assert.Contains(t, err.Error(), `"fk-off"`)
	})

	t.Run("a single level needs no ForeignKeys", func(t *testing.T) {
		r := logicaltest.NewRecorder()
		r.Chain(logicaltest.Tables("gen", 1)...)
		gen := logicaltest.NewGenerator(3)
		gen.Tables = logicaltest.Tables("gen", 1)
		l := startLoop(t, fastConfig(t, r), &logical.LoopConfig{Dialect: gen, LoopName: "fk-one", TargetSchema: "gen"})
		waitForSeq(t, l, 2)
	})

	t.Run("ForeignKeys with Immediate is rejected", func(t *testing.T) {
		cfg := fastConfig(t, logicaltest.NewRecorder())
		cfg.ForeignKeys, cfg.Immediate = true, true
		_, err := logical.NewFactory(context.Background(), cfg)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "Config.ForeignKeys")
		assert.Contains(t, err.Error(), "Config.Immediate")
	})

	t.Run("ForeignKeys with a target that is no Orderer is rejected", func(t *testing.T) {
		cfg := fastConfig(t, plainTarget{logicaltest.NewRecorder()})
		cfg.ForeignKeys = true
		_, err := logical.NewFactory(context.Background(), cfg)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "Config.ForeignKeys")
		assert.Contains(t, err.Error(), "Orderer")
	})
}

// TestForeignKeyTruncate checks that a truncate passes the ordering in
// order (it has no key to hold it by) and drops what was held for its
// table before it.
func TestForeignKeyTruncate(t *testing.T) {
	ctx := context.Background()
	b, r := fkBatcher(t)
	truncate := logical.Mutation{Meta: map[string]any{logical.MetaTruncate: true}}
	require.NoError(t, fkApply(ctx, b,
		fkWrite{fkParent, upsert(`[1]`, `{}`)},
		fkWrite{fkChild, upsert(`[1]`, `{"v":"before"}`)},
		fkWrite{fkChild, truncate},
		fkWrite{fkChild, upsert(`[1]`, `{"v":"after"}`)},
	))
	assert.Equal(t, []string{"parent [1]", "child -", "child [1]"}, describe(r.Writes()))
	row, ok := r.Row(fkChild, `[1]`)
	require.True(t, ok)
	assert.JSONEq(t, `{"v":"after"}`, string(row))
}
