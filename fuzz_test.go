package logical_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/logical-go/logical"
	"github.com/logical-go/logical/logicaltest"
	"github.com/pkg/errors"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// FuzzStampDecode stores arbitrary bytes as a loop's consistent point in a
// FileMemo, with an arbitrary LoopConfig.DefaultConsistentPoint, and starts
// the loop. Start must either fail with an error naming the loop and what
// is wrong, or start from exactly the point a direct decode gives: the
// stored JSON, else the default, else the zero stamp. Never a panic, and
// never a silent reset.
func FuzzStampDecode(f *testing.F) {
	f.Add([]byte(`"12@2024-01-02T03:04:05Z"`), "")
	f.Add([]byte(`"7"`), "3")
	f.Add([]byte(``), "41")
	f.Add([]byte(``), "")
	f.Add([]byte(``), "x@y")
	f.Add([]byte(`null`), "")
	f.Add([]byte(`{"seq":3}`), "")
	f.Add([]byte(`"-1"`), "")
	f.Add([]byte(`"5@not a time"`), "")
	f.Add([]byte("\"\xff\""), "")
	f.Add([]byte(`12`), "")
	f.Fuzz(func(t *testing.T, stored []byte, def string) {
		memo, err := logical.NewFileMemo(t.TempDir())
		require.NoError(t, err)
		if len(stored) > 0 {
			require.NoError(t, memo.Put(context.Background(), "fuzz", stored))
		}
		// The model: decode directly.
		var want *logicaltest.Stamp
		var wantErr []string
		if def != "" {
			var s logicaltest.Stamp
			if err := s.UnmarshalText([]byte(def)); err != nil {
				wantErr = []string{`loop "fuzz"`, "LoopConfig.DefaultConsistentPoint"}
			} else if len(stored) == 0 {
				want = &s
			}
		}
		if wantErr == nil && len(stored) > 0 {
			s := logicaltest.Stamp{Seq: -1}
			if err := json.Unmarshal(stored, &s); err != nil {
				wantErr = []string{`loop "fuzz"`, "cannot be decoded", memo.Path("fuzz")}
			} else {
				want = &s
			}
		}
		if wantErr == nil && want == nil {
			want = &logicaltest.Stamp{Seq: -1}
		}

		cfg := fastConfig(t, logicaltest.NewRecorder())
		cfg.Memo = memo
		l, err := logical.Start(context.Background(), cfg, &logical.LoopConfig{Dialect: newBadDialect(), LoopName: "fuzz", DefaultConsistentPoint: def})
		if wantErr != nil {
			require.Error(t, err, "stored %q, default %q", stored, def)
			for _, w := range wantErr {
				assert.Contains(t, err.Error(), w)
			}
			return
		}
		require.NoError(t, err, "stored %q, default %q", stored, def)
		defer func() {
			l.Stop(0)
			<-l.Stopped()
		}()
		got := l.GetInitialPoint().(*logicaltest.Stamp)
		assert.Equal(t, want.Seq, got.Seq)
		assert.True(t, want.Time.Equal(got.Time), "time %v, want %v", got.Time, want.Time)
		cp, _ := l.GetConsistentPoint()
		assert.Equal(t, 0, logical.Compare(cp, got), "the published point is the initial one")
	})
}

// Tables of the script fuzz test.
var (
	fzTarget = logical.Table{Schema: "s", Name: "target"}
	fzA      = logical.Table{Schema: "s", Name: "a"}
	fzB      = logical.Table{Schema: "s", Name: "b"}
	fzDel    = logical.Table{Schema: "s", Name: "del"}
)

// fzKey reads the number in a key "[n]".
func fzKey(m logical.Mutation) int {
	n, _ := strconv.Atoi(strings.Trim(string(m.Key), "[]"))
	return n
}

func fzMut(key int, del bool) logical.Mutation {
	m := logical.Mutation{Key: json.RawMessage("[" + strconv.Itoa(key) + "]")}
	if !del {
		m.Data = json.RawMessage(`{"k":` + strconv.Itoa(key) + `}`)
	}
	return m
}

// fzScript is the script a fuzz input describes.
type fzScript struct {
	source     string // the OnData source: "src" or "other" (no entry)
	hasEntry   bool
	dispatch   bool
	deletesTo  logical.Table // zero, fzDel, or fzTarget
	failOn13   bool          // Dispatch fails for key 13
	mapA, delA bool          // Map / DeleteKey on table a
	mapT, delT bool          // Map / DeleteKey on the call's target
	delDel     bool          // DeleteKey on the deletes table
}

func newFzScript(flags, tflags byte) fzScript {
	s := fzScript{source: "src", hasEntry: flags&1 != 0, dispatch: flags&2 != 0, failOn13: flags&16 != 0}
	switch {
	case flags&4 != 0:
		s.deletesTo = fzDel
	case flags&8 != 0:
		s.deletesTo = fzTarget
	}
	if flags&32 != 0 {
		s.source = "other"
	}
	s.mapA, s.delA, s.mapT, s.delT, s.delDel = tflags&1 != 0, tflags&2 != 0, tflags&4 != 0, tflags&8 != 0, tflags&16 != 0
	return s
}

// Dispatch: key%3 == 0 drops the row, 1 sends it to a, 2 to a and two rows
// to b.
func (s fzScript) dispatchFn(_ context.Context, m logical.Mutation) (map[logical.Table][]logical.Mutation, error) {
	k := fzKey(m)
	if s.failOn13 && k == 13 {
		return nil, errors.New("no dispatch for 13")
	}
	switch k % 3 {
	case 0:
		return nil, nil
	case 1:
		return map[logical.Table][]logical.Mutation{fzA: {m}}, nil
	default:
		return map[logical.Table][]logical.Mutation{fzA: {m}, fzB: {m, fzMut(k+100, false)}}, nil
	}
}

// mapFn drops keys divisible by drop and marks the others.
func mapFn(drop int, mark string) func(context.Context, logical.Mutation) (logical.Mutation, bool, error) {
	return func(_ context.Context, m logical.Mutation) (logical.Mutation, bool, error) {
		k := fzKey(m)
		if k%drop == 0 {
			return m, false, nil
		}
		m.Data = json.RawMessage(fmt.Sprintf(`{"k":%d,%q:true}`, k, mark))
		return m, true, nil
	}
}

// deleteFn drops keys divisible by drop and moves the others to key+1000.
func deleteFn(drop int) func(context.Context, logical.Mutation) (logical.Mutation, bool, error) {
	return func(_ context.Context, m logical.Mutation) (logical.Mutation, bool, error) {
		k := fzKey(m)
		if k%drop == 0 {
			return m, false, nil
		}
		return fzMut(k+1000, true), true, nil
	}
}

func (s fzScript) script() *logical.Script {
	sc := &logical.Script{Sources: map[string]logical.SourceScript{}, Targets: map[logical.Table]logical.TargetScript{}}
	if s.hasEntry {
		src := logical.SourceScript{DeletesTo: s.deletesTo}
		if s.dispatch {
			src.Dispatch = s.dispatchFn
		}
		sc.Sources["src"] = src
	}
	var a, tgt, del logical.TargetScript
	if s.mapA {
		a.Map = mapFn(4, "a")
	}
	if s.delA {
		a.DeleteKey = deleteFn(5)
	}
	if s.mapT {
		tgt.Map = mapFn(2, "t")
	}
	if s.delT {
		tgt.DeleteKey = deleteFn(3)
	}
	if s.delDel {
		del.DeleteKey = deleteFn(7)
	}
	sc.Targets[fzA], sc.Targets[fzTarget], sc.Targets[fzDel] = a, tgt, del
	return sc
}

// model routes muts by the rules of Script's doc, one mutation at a time:
// the expected rows per table, or the text the error must contain.
func (s fzScript) model(muts []logical.Mutation) (map[logical.Table][]string, string) {
	routed := map[logical.Table][]logical.Mutation{}
	entry := s.hasEntry && s.source == "src"
	for _, m := range muts {
		switch {
		case m.IsDelete():
			to := fzTarget
			if entry && s.deletesTo != (logical.Table{}) {
				to = s.deletesTo
			} else if entry && s.dispatch {
				return nil, `source "src" dispatches but has no DeletesTo`
			}
			routed[to] = append(routed[to], m)
		case entry && s.dispatch:
			out, err := s.dispatchFn(context.Background(), m)
			if err != nil {
				return nil, "dispatching a mutation of source"
			}
			for t, ms := range out {
				routed[t] = append(routed[t], ms...)
			}
		default:
			routed[fzTarget] = append(routed[fzTarget], m)
		}
	}
	want := map[logical.Table][]string{}
	for t, ms := range routed {
		var rows []string
		for _, m := range ms {
			k := fzKey(m)
			switch {
			case !m.IsDelete() && t == fzA && s.mapA:
				m, _, _ = mapFn(4, "a")(context.Background(), m)
				if k%4 == 0 {
					continue
				}
			case !m.IsDelete() && t == fzTarget && s.mapT:
				m, _, _ = mapFn(2, "t")(context.Background(), m)
				if k%2 == 0 {
					continue
				}
			case m.IsDelete() && t == fzA && s.delA && k%5 == 0,
				m.IsDelete() && t == fzTarget && s.delT && k%3 == 0,
				m.IsDelete() && t == fzDel && s.delDel && k%7 == 0:
				continue
			case m.IsDelete() && (t == fzA && s.delA || t == fzTarget && s.delT || t == fzDel && s.delDel):
				m = fzMut(k+1000, true)
			}
			rows = append(rows, fzRow(m))
		}
		if len(rows) > 0 {
			want[t] = rows
		}
	}
	return want, ""
}

func fzRow(m logical.Mutation) string {
	if m.IsDelete() {
		return string(m.Key) + " delete"
	}
	return string(m.Key) + " " + string(m.Data)
}

// fzTargetRec records the rows applied to each table, in order.
type fzTargetRec struct {
	mu   sync.Mutex
	rows map[logical.Table][]string
}

func (r *fzTargetRec) Apply(_ context.Context, table logical.Table, muts []logical.Mutation) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range muts {
		r.rows[table] = append(r.rows[table], fzRow(m))
	}
	return nil
}

func (r *fzTargetRec) Begin(context.Context) (logical.TargetTx, error) {
	return nil, errors.New("fzTargetRec: no transactions")
}

// FuzzScriptRouting sends one OnData call through a Script built from the
// fuzz input (source entry or not, Dispatch, DeletesTo, Map and DeleteKey
// on several tables) and compares what reaches each table with a model of
// the documented rules. With one fan shard, each table's rows arrive in
// order, so the comparison is exact.
func FuzzScriptRouting(f *testing.F) {
	f.Add(byte(0), byte(0), []byte{2, 3, 4})
	f.Add(byte(3), byte(0), []byte{2, 4, 6, 8})
	f.Add(byte(3), byte(0), []byte{2, 5})
	f.Add(byte(7), byte(31), []byte{2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13})
	f.Add(byte(11), byte(12), []byte{1, 3, 5, 6, 8})
	f.Add(byte(5), byte(16), []byte{1, 14, 15, 28, 29})
	f.Add(byte(23), byte(1), []byte{26, 4})
	f.Add(byte(39), byte(31), []byte{2, 3, 4, 5})
	f.Fuzz(func(t *testing.T, flags, tflags byte, raw []byte) {
		if len(raw) > 64 {
			raw = raw[:64]
		}
		s := newFzScript(flags, tflags)
		muts := make([]logical.Mutation, len(raw))
		for i, b := range raw {
			muts[i] = fzMut(int(b>>1)%32, b&1 != 0)
		}
		want, wantErr := s.model(muts)

		rec := &fzTargetRec{rows: map[logical.Table][]string{}}
		cfg := fastConfig(t, rec)
		cfg.Script = s.script()
		cfg.FanShards = 1
		fac, err := logical.NewFactory(context.Background(), cfg)
		require.NoError(t, err)
		defer func() {
			fac.Stop(0)
			require.NoError(t, fac.Wait())
		}()
		batcher, err := fac.Immediate("s")
		require.NoError(t, err)
		ctx := context.Background()
		b, err := batcher.OnBegin(ctx)
		require.NoError(t, err)
		err = b.OnData(ctx, s.source, fzTarget, muts)
		if wantErr != "" {
			require.Error(t, err, "script %+v, mutations %v", s, raw)
			assert.Contains(t, err.Error(), wantErr)
			require.NoError(t, b.OnRollback(ctx))
			return
		}
		require.NoError(t, err, "script %+v, mutations %v", s, raw)
		require.NoError(t, <-b.OnCommit(ctx))

		rec.mu.Lock()
		defer rec.mu.Unlock()
		tables := func(m map[logical.Table][]string) []string {
			var out []string
			for t := range m {
				out = append(out, t.String())
			}
			sort.Strings(out)
			return out
		}
		require.Equal(t, tables(want), tables(rec.rows), "tables written; script %+v, mutations %v", s, raw)
		for tbl, rows := range want {
			assert.Equal(t, rows, rec.rows[tbl], "rows of %s; script %+v, mutations %v", tbl, s, raw)
		}
	})
}
