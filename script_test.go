package logical_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/logical-go/logical"
	"github.com/logical-go/logical/logicaltest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var (
	scriptIn    = logical.Table{Schema: "s", Name: "in"}
	scriptA     = logical.Table{Schema: "s", Name: "a"}
	scriptB     = logical.Table{Schema: "s", Name: "b"}
	scriptGone  = logical.Table{Schema: "s", Name: "gone"}
	scriptOther = logical.Table{Schema: "s", Name: "other"}
)

func upsert(key, data string) logical.Mutation {
	return logical.Mutation{Key: json.RawMessage(key), Data: json.RawMessage(data)}
}

func deletion(key string) logical.Mutation {
	return logical.Mutation{Key: json.RawMessage(key)}
}

// immediateBatcher returns a Factory.Immediate batcher over target and
// stops the factory at the end of the test.
func immediateBatcher(t *testing.T, cfg *logical.Config) logical.Batcher {
	t.Helper()
	f, err := logical.NewFactory(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		f.Stop(0)
		require.NoError(t, f.Wait())
	})
	b, err := f.Immediate("s")
	require.NoError(t, err)
	return b
}

// applyBatch writes muts (by source and target) in one batch and commits.
func applyBatch(ctx context.Context, b logical.Batcher, source string, target logical.Table, muts ...logical.Mutation) error {
	batch, err := b.OnBegin(ctx)
	if err != nil {
		return err
	}
	if err := batch.OnData(ctx, source, target, muts); err != nil {
		_ = batch.OnRollback(ctx)
		return err
	}
	return <-batch.OnCommit(ctx)
}

// writesTo returns the recorded writes to table as "key" or "-key" for a
// delete.
func writesTo(r *logicaltest.Recorder, table logical.Table) []string {
	var out []string
	for _, w := range r.Writes() {
		if w.Table != table {
			continue
		}
		if w.Delete {
			out = append(out, "-"+w.Key)
		} else {
			out = append(out, w.Key)
		}
	}
	return out
}

// setField returns a Map that sets field to value in the row.
func setField(field, value string) func(context.Context, logical.Mutation) (logical.Mutation, bool, error) {
	return func(_ context.Context, m logical.Mutation) (logical.Mutation, bool, error) {
		var row map[string]any
		if err := json.Unmarshal(m.Data, &row); err != nil {
			return m, false, err
		}
		row[field] = value
		buf, err := json.Marshal(row)
		m.Data = buf
		return m, true, err
	}
}

// dispatchBoth copies each upsert to scriptA and scriptB.
func dispatchBoth(_ context.Context, m logical.Mutation) (map[logical.Table][]logical.Mutation, error) {
	return map[logical.Table][]logical.Mutation{scriptA: {m}, scriptB: {m}}, nil
}

func TestScript(t *testing.T) {
	ctx := context.Background()
	type check func(t *testing.T, r *logicaltest.Recorder, err error)
	tests := []struct {
		name   string
		script logical.Script
		source string
		target logical.Table
		muts   []logical.Mutation
		check  check
	}{
		{
			name: "dispatch sends an upsert to two tables through their own Map",
			script: logical.Script{
				Sources: map[string]logical.SourceScript{"src": {Dispatch: dispatchBoth, DeletesTo: scriptGone}},
				Targets: map[logical.Table]logical.TargetScript{
					scriptA: {Map: setField("via", "a")},
					scriptB: {Map: setField("via", "b")},
				},
			},
			source: "src", target: scriptIn,
			muts: []logical.Mutation{upsert(`[1]`, `{"v":1}`)},
			check: func(t *testing.T, r *logicaltest.Recorder, err error) {
				require.NoError(t, err)
				a, ok := r.Row(scriptA, `[1]`)
				require.True(t, ok, "row in %s", scriptA)
				assert.JSONEq(t, `{"v":1,"via":"a"}`, string(a))
				b, ok := r.Row(scriptB, `[1]`)
				require.True(t, ok, "row in %s", scriptB)
				assert.JSONEq(t, `{"v":1,"via":"b"}`, string(b))
				assert.Empty(t, writesTo(r, scriptIn), "nothing reaches the given target")
			},
		},
		{
			name: "deletes of a dispatching source go to DeletesTo",
			script: logical.Script{
				Sources: map[string]logical.SourceScript{"src": {Dispatch: dispatchBoth, DeletesTo: scriptGone}},
			},
			source: "src", target: scriptIn,
			muts: []logical.Mutation{upsert(`[1]`, `{"v":1}`), deletion(`[2]`)},
			check: func(t *testing.T, r *logicaltest.Recorder, err error) {
				require.NoError(t, err)
				assert.Equal(t, []string{"-[2]"}, writesTo(r, scriptGone))
				assert.Equal(t, []string{"[1]"}, writesTo(r, scriptA))
				assert.Equal(t, []string{"[1]"}, writesTo(r, scriptB))
				assert.Empty(t, writesTo(r, scriptIn))
			},
		},
		{
			name: "a delete without a place is an error naming the source",
			script: logical.Script{
				Sources: map[string]logical.SourceScript{"orders_src": {Dispatch: dispatchBoth}},
			},
			source: "orders_src", target: scriptIn,
			muts: []logical.Mutation{deletion(`[1]`)},
			check: func(t *testing.T, r *logicaltest.Recorder, err error) {
				require.Error(t, err)
				assert.Contains(t, err.Error(), `source "orders_src"`)
				assert.Contains(t, err.Error(), "DeletesTo")
				assert.Empty(t, r.Writes())
			},
		},
		{
			name: "DeleteKey rewrites the key of a delete",
			script: logical.Script{
				Targets: map[logical.Table]logical.TargetScript{scriptIn: {
					DeleteKey: func(_ context.Context, m logical.Mutation) (logical.Mutation, bool, error) {
						m.Key = json.RawMessage(`["k",` + strings.Trim(string(m.Key), "[]") + `]`)
						return m, true, nil
					},
				}},
			},
			source: "src", target: scriptIn,
			muts: []logical.Mutation{deletion(`[7]`), upsert(`[8]`, `{}`)},
			check: func(t *testing.T, r *logicaltest.Recorder, err error) {
				require.NoError(t, err)
				assert.ElementsMatch(t, []string{`-["k",7]`, `[8]`}, writesTo(r, scriptIn))
			},
		},
		{
			name: "DeleteKey returning false drops the delete",
			script: logical.Script{
				Targets: map[logical.Table]logical.TargetScript{scriptIn: {
					DeleteKey: func(_ context.Context, m logical.Mutation) (logical.Mutation, bool, error) { return m, false, nil },
				}},
			},
			source: "src", target: scriptIn,
			muts: []logical.Mutation{deletion(`[7]`)},
			check: func(t *testing.T, r *logicaltest.Recorder, err error) {
				require.NoError(t, err)
				assert.Empty(t, r.Writes())
			},
		},
		{
			name: "Map returning false drops the row",
			script: logical.Script{
				Targets: map[logical.Table]logical.TargetScript{scriptIn: {
					Map: func(_ context.Context, m logical.Mutation) (logical.Mutation, bool, error) {
						return m, string(m.Key) != `[2]`, nil
					},
				}},
			},
			source: "src", target: scriptIn,
			muts: []logical.Mutation{upsert(`[1]`, `{}`), upsert(`[2]`, `{}`), upsert(`[3]`, `{}`)},
			check: func(t *testing.T, r *logicaltest.Recorder, err error) {
				require.NoError(t, err)
				assert.ElementsMatch(t, []string{`[1]`, `[3]`}, writesTo(r, scriptIn))
				assert.False(t, r.Has(scriptIn, `[2]`))
			},
		},
		{
			name: "without a source entry data and deletes go to the given target",
			script: logical.Script{
				Sources: map[string]logical.SourceScript{"elsewhere": {Dispatch: dispatchBoth, DeletesTo: scriptGone}},
			},
			source: "src", target: scriptIn,
			muts: []logical.Mutation{upsert(`[1]`, `{}`), deletion(`[2]`)},
			check: func(t *testing.T, r *logicaltest.Recorder, err error) {
				require.NoError(t, err)
				assert.ElementsMatch(t, []string{`[1]`, `-[2]`}, writesTo(r, scriptIn))
				assert.Empty(t, writesTo(r, scriptGone))
			},
		},
		{
			name: "without Dispatch deletes go to the given target",
			script: logical.Script{
				Sources: map[string]logical.SourceScript{"src": {}},
			},
			source: "src", target: scriptIn,
			muts: []logical.Mutation{deletion(`[2]`)},
			check: func(t *testing.T, r *logicaltest.Recorder, err error) {
				require.NoError(t, err)
				assert.Equal(t, []string{`-[2]`}, writesTo(r, scriptIn))
			},
		},
		{
			name: "without Dispatch deletes still go to DeletesTo when set",
			script: logical.Script{
				Sources: map[string]logical.SourceScript{"src": {DeletesTo: scriptGone}},
			},
			source: "src", target: scriptIn,
			muts: []logical.Mutation{upsert(`[1]`, `{}`), deletion(`[2]`)},
			check: func(t *testing.T, r *logicaltest.Recorder, err error) {
				require.NoError(t, err)
				assert.Equal(t, []string{`[1]`}, writesTo(r, scriptIn))
				assert.Equal(t, []string{`-[2]`}, writesTo(r, scriptGone))
			},
		},
		{
			name: "a delete for a target with Map but no DeleteKey passes unchanged",
			script: logical.Script{
				Targets: map[logical.Table]logical.TargetScript{scriptIn: {
					Map: func(_ context.Context, m logical.Mutation) (logical.Mutation, bool, error) {
						m.Key = json.RawMessage(`["mapped"]`)
						return m, true, nil
					},
				}},
			},
			source: "src", target: scriptIn,
			muts: []logical.Mutation{deletion(`[5]`), upsert(`[6]`, `{}`)},
			check: func(t *testing.T, r *logicaltest.Recorder, err error) {
				require.NoError(t, err)
				assert.ElementsMatch(t, []string{`-[5]`, `["mapped"]`}, writesTo(r, scriptIn))
			},
		},
		{
			name: "a Dispatch error names the source",
			script: logical.Script{
				Sources: map[string]logical.SourceScript{"src": {
					Dispatch: func(context.Context, logical.Mutation) (map[logical.Table][]logical.Mutation, error) {
						return nil, errors.New("boom")
					},
				}},
			},
			source: "src", target: scriptIn,
			muts: []logical.Mutation{upsert(`[1]`, `{}`)},
			check: func(t *testing.T, r *logicaltest.Recorder, err error) {
				require.Error(t, err)
				assert.Contains(t, err.Error(), `source "src"`)
				assert.Contains(t, err.Error(), "boom")
			},
		},
		{
			name: "a Map error names the table",
			script: logical.Script{
				Targets: map[logical.Table]logical.TargetScript{scriptOther: {
					Map: func(context.Context, logical.Mutation) (logical.Mutation, bool, error) {
						return logical.Mutation{}, false, errors.New("bad row")
					},
				}},
			},
			source: "src", target: scriptOther,
			muts: []logical.Mutation{upsert(`[1]`, `{}`)},
			check: func(t *testing.T, r *logicaltest.Recorder, err error) {
				require.Error(t, err)
				assert.Contains(t, err.Error(), "Map for table s.other")
				assert.Contains(t, err.Error(), "bad row")
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := logicaltest.NewRecorder()
			cfg := fastConfig(t, r)
			script := tc.script
			cfg.Script = &script
			b := immediateBatcher(t, cfg)
			err := applyBatch(ctx, b, tc.source, tc.target, tc.muts...)
			tc.check(t, r, err)
		})
	}
}

// TestScriptInSerialLoop runs the generator through a loop whose script
// renames one of its tables, in serial mode.
func TestScriptInSerialLoop(t *testing.T) {
	const n = 20
	tables := logicaltest.Tables("gen", 2)
	renamed := logical.Table{Schema: "gen", Name: "renamed"}
	gen := logicaltest.NewGenerator(n)
	gen.Tables = tables
	r := logicaltest.NewRecorder()
	cfg := fastConfig(t, r)
	cfg.Script = &logical.Script{Sources: map[string]logical.SourceScript{
		"generator": {
			Dispatch: func(_ context.Context, m logical.Mutation) (map[logical.Table][]logical.Mutation, error) {
				var row struct{ Table string }
				if err := json.Unmarshal(m.Data, &row); err != nil {
					return nil, err
				}
				if row.Table == tables[1].Name {
					return map[logical.Table][]logical.Mutation{renamed: {m}}, nil
				}
				return map[logical.Table][]logical.Mutation{tables[0]: {m}}, nil
			},
			DeletesTo: tables[0],
		},
	}}
	l := startLoop(t, cfg, &logical.LoopConfig{Dialect: gen, LoopName: "script", TargetSchema: "gen"})
	waitForSeq(t, l, n-1)
	assert.Equal(t, n, r.Count(tables[0]))
	assert.Equal(t, n, r.Count(renamed))
	assert.Zero(t, r.Count(tables[1]))
	assert.Equal(t, n, r.Commits(), "one transaction per message")
}

func TestScriptValidation(t *testing.T) {
	cfg := fastConfig(t, logicaltest.NewRecorder())
	cfg.Script = &logical.Script{Sources: map[string]logical.SourceScript{"": {}}}
	_, err := logical.NewFactory(context.Background(), cfg)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "Config.Script.Sources")
	assert.Contains(t, err.Error(), "empty source name")
}
