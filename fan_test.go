package logical_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/logical-go/logical"
	"github.com/logical-go/logical/logicaltest"
	"github.com/pkg/errors"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestFanKeepsPerKeyOrder(t *testing.T) {
	target := logicaltest.NewRecorder()
	// Random small delays shuffle the workers' timing.
	target.Hook = func(context.Context, logical.Table, []logical.Mutation) error {
		if rand.IntN(4) == 0 {
			time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
		}
		return nil
	}
	cfg := fastConfig(t, target)
	cfg.FanShards = 32
	b := immediateBatcher(t, cfg)
	ctx := context.Background()
	tables := logicaltest.Tables("s", 3)
	const keys, versions = 20, 60

	batch, err := b.OnBegin(ctx)
	require.NoError(t, err)
	for v := 0; v < versions; v++ {
		for _, tbl := range tables {
			// Many calls, each with several keys and several versions of
			// one key, so chunks of one key meet on one lane.
			var muts []logical.Mutation
			for k := 0; k < keys; k++ {
				muts = append(muts, logical.Mutation{
					Key:  json.RawMessage(fmt.Sprintf("[%d]", k)),
					Data: json.RawMessage(fmt.Sprintf(`{"v":%d}`, v)),
				})
			}
			require.NoError(t, batch.OnData(ctx, "src", tbl, muts))
		}
		if v%7 == 0 {
			require.NoError(t, batch.Flush(ctx))
		}
	}
	require.NoError(t, <-batch.OnCommit(ctx))

	// Every key's writes came in version order.
	last := map[string]int{}
	for _, w := range target.Writes() {
		row := w.Table.String() + w.Key
		last[row]++
	}
	for _, tbl := range tables {
		for k := 0; k < keys; k++ {
			key := fmt.Sprintf("[%d]", k)
			require.Equal(t, versions, last[tbl.String()+key])
			row, ok := target.Row(tbl, key)
			require.True(t, ok)
			assert.JSONEq(t, fmt.Sprintf(`{"v":%d}`, versions-1), string(row), "%s %s", tbl, key)
		}
	}
	seen := map[string]int{}
	for _, w := range target.Writes() {
		row, _ := json.Marshal(w)
		_ = row
		seen[w.Table.String()+w.Key]++
	}
	assert.Len(t, seen, len(tables)*keys)
}

func TestFanPerKeyOrderFromWrites(t *testing.T) {
	// A target that records the version of each write, to check the order
	// itself rather than the final value.
	var mu sync.Mutex
	versions := map[string][]int{}
	target := &funcTarget{apply: func(_ context.Context, table logical.Table, muts []logical.Mutation) error {
		if rand.IntN(3) == 0 {
			time.Sleep(time.Duration(rand.IntN(100)) * time.Microsecond)
		}
		mu.Lock()
		defer mu.Unlock()
		for _, m := range muts {
			var row struct{ V int }
			if err := json.Unmarshal(m.Data, &row); err != nil {
				return err
			}
			k := table.String() + string(m.Key)
			versions[k] = append(versions[k], row.V)
		}
		return nil
	}}
	cfg := fastConfig(t, target)
	cfg.FanShards = 64
	b := immediateBatcher(t, cfg)
	ctx := context.Background()
	batch, err := b.OnBegin(ctx)
	require.NoError(t, err)
	tbl := logical.Table{Schema: "s", Name: "t"}
	for v := 0; v < 500; v++ {
		k := v % 7
		require.NoError(t, batch.OnData(ctx, "src", tbl, []logical.Mutation{{
			Key:  json.RawMessage(fmt.Sprintf("[%d]", k)),
			Data: json.RawMessage(fmt.Sprintf(`{"V":%d}`, v)),
		}}))
	}
	require.NoError(t, <-batch.OnCommit(ctx))
	require.Len(t, versions, 7)
	for k, vs := range versions {
		for i := 1; i < len(vs); i++ {
			require.Less(t, vs[i-1], vs[i], "key %s: writes out of order: %v", k, vs)
		}
	}
}

// funcTarget is a Target made of a function.
type funcTarget struct {
	apply func(ctx context.Context, table logical.Table, muts []logical.Mutation) error
}

func (f *funcTarget) Apply(ctx context.Context, table logical.Table, muts []logical.Mutation) error {
	return f.apply(ctx, table, muts)
}

func (f *funcTarget) Begin(context.Context) (logical.TargetTx, error) {
	return nil, errors.New("funcTarget has no transactions")
}

func TestFanBytesInFlight(t *testing.T) {
	entered := make(chan struct{}, 100)
	gate := make(chan struct{})
	var applied atomic.Int64
	target := &funcTarget{apply: func(ctx context.Context, _ logical.Table, muts []logical.Mutation) error {
		entered <- struct{}{}
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
		applied.Add(int64(len(muts)))
		return nil
	}}
	cfg := fastConfig(t, target)
	cfg.BytesInFlight = 10 << 10
	b := immediateBatcher(t, cfg)
	ctx := context.Background()
	batch, err := b.OnBegin(ctx)
	require.NoError(t, err)
	tbl := logical.Table{Schema: "s", Name: "t"}
	big := func(k int) []logical.Mutation {
		return []logical.Mutation{{
			Key:  json.RawMessage(fmt.Sprintf("[%d]", k)),
			Data: json.RawMessage(`{"pad":"` + strings.Repeat("x", 6<<10) + `"}`),
		}}
	}
	// The first call fits the bound and returns at once.
	require.NoError(t, batch.OnData(ctx, "src", tbl, big(1)))

	// The second would exceed it: the queued data is handed over, and the
	// call blocks while the target holds it.
	second := make(chan error, 1)
	go func() { second <- batch.OnData(ctx, "src", tbl, big(2)) }()
	waitChan(t, entered, "the first apply")
	select {
	case err := <-second:
		t.Fatalf("OnData returned (%v) while the bound was exceeded", err)
	default:
	}
	close(gate)
	require.NoError(t, waitChan(t, second, "the blocked OnData"))
	require.NoError(t, <-batch.OnCommit(ctx))
	assert.Equal(t, int64(2), applied.Load())

	t.Run("a call larger than the bound is admitted when the queue is empty", func(t *testing.T) {
		batch, err := b.OnBegin(ctx)
		require.NoError(t, err)
		var muts []logical.Mutation
		for k := 0; k < 5; k++ {
			muts = append(muts, big(k)...)
		}
		require.NoError(t, batch.OnData(ctx, "src", tbl, muts))
		require.NoError(t, <-batch.OnCommit(ctx))
	})

	t.Run("a blocked call respects its context", func(t *testing.T) {
		hold := make(chan struct{})
		slow := &funcTarget{apply: func(ctx context.Context, _ logical.Table, _ []logical.Mutation) error {
			select {
			case <-hold:
			case <-ctx.Done():
			}
			return nil
		}}
		cfg := fastConfig(t, slow)
		cfg.BytesInFlight = 10 << 10
		cfg.FanShards = 1
		b := immediateBatcher(t, cfg)
		batch, err := b.OnBegin(ctx)
		require.NoError(t, err)
		require.NoError(t, batch.OnData(ctx, "src", tbl, big(1)))
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- batch.OnData(cctx, "src", tbl, big(2)) }()
		cancel()
		err = waitChan(t, done, "the cancelled OnData")
		// Either the worker took the first chunk and the call waited
		// (cancelled), or the call applied it itself and was let in once
		// it finished; with the target held, only cancellation returns.
		assert.ErrorIs(t, err, context.Canceled)
		close(hold)
		require.NoError(t, batch.OnRollback(ctx))
	})
}

func TestFanBatchSemantics(t *testing.T) {
	ctx := context.Background()
	tbl := logical.Table{Schema: "s", Name: "t"}
	mut := func(k int) []logical.Mutation {
		return []logical.Mutation{{Key: json.RawMessage(fmt.Sprintf("[%d]", k)), Data: json.RawMessage(`{}`)}}
	}

	t.Run("OnData after OnCommit or OnRollback is an error", func(t *testing.T) {
		b := immediateBatcher(t, fastConfig(t, logical.NewMemoryTarget()))
		batch, err := b.OnBegin(ctx)
		require.NoError(t, err)
		require.NoError(t, <-batch.OnCommit(ctx))
		assert.ErrorContains(t, batch.OnData(ctx, "src", tbl, mut(1)), "after OnCommit or OnRollback")
		batch, err = b.OnBegin(ctx)
		require.NoError(t, err)
		require.NoError(t, batch.OnRollback(ctx))
		assert.ErrorContains(t, batch.OnData(ctx, "src", tbl, mut(1)), "after OnCommit or OnRollback")
	})

	t.Run("a worker error is reported by Flush and OnCommit", func(t *testing.T) {
		target := &funcTarget{apply: func(context.Context, logical.Table, []logical.Mutation) error {
			return errors.New("disk full")
		}}
		b := immediateBatcher(t, fastConfig(t, target))
		batch, err := b.OnBegin(ctx)
		require.NoError(t, err)
		require.NoError(t, batch.OnData(ctx, "src", tbl, mut(1)))
		assert.ErrorContains(t, batch.Flush(ctx), "disk full")
		assert.ErrorContains(t, <-batch.OnCommit(ctx), "disk full")
	})

	t.Run("OnCommit emits exactly one value and closes", func(t *testing.T) {
		b := immediateBatcher(t, fastConfig(t, logical.NewMemoryTarget()))
		batch, err := b.OnBegin(ctx)
		require.NoError(t, err)
		ch := batch.OnCommit(ctx)
		require.NoError(t, <-ch)
		_, open := <-ch
		assert.False(t, open)
	})

	t.Run("OnRollback drops what is not applied", func(t *testing.T) {
		target := logical.NewMemoryTarget()
		b := immediateBatcher(t, fastConfig(t, target))
		batch, err := b.OnBegin(ctx)
		require.NoError(t, err)
		require.NoError(t, batch.OnData(ctx, "src", tbl, mut(1)))
		require.NoError(t, batch.OnRollback(ctx))
		assert.Zero(t, target.Count(tbl), "a mutation still pending was applied after the rollback")
	})
}

// TestFanApplyPanicRestartsIteration: a panic in Target.Apply in fan mode
// (Immediate, and backfill) is recovered like one in serial mode: the
// iteration fails with an error that carries the panic and its stack, and
// the loop restarts and converges. It used to kill the process
// ("sync: unlock of unlocked mutex").
func TestFanApplyPanicRestartsIteration(t *testing.T) {
	for _, tc := range []struct {
		name     string
		backfill bool
	}{
		{name: "immediate"},
		{name: "backfill", backfill: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			const n = 30
			target := logicaltest.NewRecorder()
			var calls atomic.Int64
			target.Hook = func(context.Context, logical.Table, []logical.Mutation) error {
				if calls.Add(1) == 5 {
					panic("target exploded")
				}
				return nil
			}
			gen := logicaltest.NewGenerator(n)
			cfg := fastConfig(t, target)
			if tc.backfill {
				gen.Base = time.Now().Add(-time.Hour)
				cfg.BackfillWindow = time.Minute
			} else {
				cfg.Immediate = true
			}
			l := startLoop(t, cfg, &logical.LoopConfig{Dialect: gen, LoopName: "panic-" + tc.name, TargetSchema: "s"})
			waitForSeq(t, l, n-1)
			st := l.Stats()
			assert.Contains(t, st.LastError, "panic in Apply: target exploded")
			assert.Contains(t, st.LastError, "fan_test.go", "the error carries the stack")
			assert.Positive(t, st.ProcessRestarts)
			assert.Equal(t, st.Backfilling, tc.backfill)
			for _, tbl := range logicaltest.Tables("s", 4) {
				assert.Equal(t, n, target.Count(tbl), "%s", tbl)
			}
		})
	}
}
