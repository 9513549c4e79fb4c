package logical_test

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/logical-go/logical"
	"github.com/logical-go/logical/logicaltest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// statsRecorder is an Observer that keeps every snapshot.
type statsRecorder struct {
	mu    sync.Mutex
	snaps []logical.Stats
}

var _ logical.Observer = (*statsRecorder)(nil)

func (o *statsRecorder) Observe(s logical.Stats) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.snaps = append(o.snaps, s)
}

// any reports whether a snapshot satisfies cond.
func (o *statsRecorder) any(cond func(logical.Stats) bool) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, s := range o.snaps {
		if cond(s) {
			return true
		}
	}
	return false
}

// waitStats polls the loop's Stats until cond holds, with a deadline.
func waitStats(t *testing.T, l *logical.Loop, what string, cond func(logical.Stats) bool) logical.Stats {
	t.Helper()
	deadline := time.Now().Add(waitLong)
	for {
		s := l.Stats()
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for stats: %s; last: %+v", what, s)
		}
		time.Sleep(time.Millisecond) // polling interval
	}
}

// readFailsOnce is a generator whose first ReadInto fails.
type readFailsOnce struct {
	*logicaltest.Generator
	failed atomic.Bool
}

func (d *readFailsOnce) ReadInto(ctx context.Context, ch chan<- logical.Message, state logical.State) error {
	if d.failed.CompareAndSwap(false, true) {
		return errors.New("source broke")
	}
	return d.Generator.ReadInto(ctx, ch, state)
}

func TestStats(t *testing.T) {
	const n = 10

	t.Run("commits and the point are counted", func(t *testing.T) {
		obs := &statsRecorder{}
		gen := logicaltest.NewGenerator(n)
		cfg := fastConfig(t, logicaltest.NewRecorder())
		cfg.Observer = obs
		start := time.Now()
		l := startLoop(t, cfg, &logical.LoopConfig{Dialect: gen, LoopName: "stats", TargetSchema: "gen"})
		waitForSeq(t, l, n-1)
		s := waitStats(t, l, "point at the last message", func(s logical.Stats) bool {
			return logical.Compare(s.Point, &logicaltest.Stamp{Seq: n - 1}) == 0
		})
		assert.Equal(t, "stats", s.LoopName)
		assert.Equal(t, uint64(n), s.CommitsOK)
		assert.Zero(t, s.CommitsFailed)
		assert.Equal(t, uint64(n), s.PointOffset, "offset of message n-1")
		assert.False(t, s.PointTime.Before(start), "point time is the message's time")
		assert.GreaterOrEqual(t, s.Lag, time.Duration(0))
		assert.False(t, s.Backfilling)
		assert.Equal(t, uint64(1), s.Iterations)
		assert.Zero(t, s.SourceRestarts)
		assert.Zero(t, s.ProcessRestarts)
		assert.Empty(t, s.LastError)
		assert.True(t, obs.any(func(s logical.Stats) bool { return s.LoopName == "stats" && s.CommitsOK == n }),
			"the observer saw the last commit")
	})

	t.Run("a failed commit restarts the processor", func(t *testing.T) {
		r := logicaltest.NewRecorder()
		var refused atomic.Bool
		r.CommitHook = func(context.Context) error {
			if refused.CompareAndSwap(false, true) {
				return errors.New("commit refused")
			}
			return nil
		}
		l := startLoop(t, fastConfig(t, r), &logical.LoopConfig{Dialect: logicaltest.NewGenerator(n), LoopName: "stats", TargetSchema: "gen"})
		waitForSeq(t, l, n-1)
		s := l.Stats()
		assert.Equal(t, uint64(1), s.CommitsFailed)
		assert.Equal(t, uint64(n), s.CommitsOK)
		assert.Equal(t, uint64(1), s.ProcessRestarts)
		assert.Zero(t, s.SourceRestarts)
		assert.Contains(t, s.LastError, "commit refused")
		assert.False(t, s.LastErrorTime.IsZero())
		assert.Equal(t, uint64(2), s.Iterations)
	})

	t.Run("a failed source restarts the source", func(t *testing.T) {
		d := &readFailsOnce{Generator: logicaltest.NewGenerator(n)}
		l := startLoop(t, fastConfig(t, logicaltest.NewRecorder()), &logical.LoopConfig{Dialect: d, LoopName: "stats", TargetSchema: "gen"})
		waitForSeq(t, l, n-1)
		s := l.Stats()
		assert.Equal(t, uint64(1), s.SourceRestarts)
		assert.Zero(t, s.ProcessRestarts)
		assert.Contains(t, s.LastError, "source broke")
		assert.Equal(t, uint64(1), s.Iterations)
		assert.Equal(t, uint64(n), s.CommitsOK)
	})

	t.Run("backfilling is flagged until streaming starts", func(t *testing.T) {
		const n = 100
		obs := &statsRecorder{}
		gen := logicaltest.NewGenerator(n)
		gen.Step = time.Second
		gen.Base = time.Now().Add(-n * time.Second)
		cfg := fastConfig(t, logicaltest.NewRecorder())
		cfg.Observer = obs
		cfg.BackfillWindow = n / 2 * time.Second
		hold := make(chan struct{})
		l := startLoop(t, cfg, &logical.LoopConfig{Dialect: gen, LoopName: "stats", TargetSchema: "gen", WaitAfterBackfill: hold})
		waitForSeq(t, l, 0)
		// The first iteration backfills, and the next cannot start before
		// hold closes.
		s := l.Stats()
		assert.True(t, s.Backfilling)
		assert.Equal(t, uint64(1), s.Iterations)
		close(hold)
		waitForSeq(t, l, n-1)
		waitStats(t, l, "streaming", func(s logical.Stats) bool { return !s.Backfilling && s.Iterations >= 2 })
		assert.True(t, obs.any(func(s logical.Stats) bool { return s.Backfilling }), "the observer saw the backfill")
		assert.True(t, obs.any(func(s logical.Stats) bool { return !s.Backfilling && s.Iterations >= 2 }), "the observer saw streaming")
	})
}

// diagnosing is a generator that describes itself.
type diagnosing struct{ *logicaltest.Generator }

var _ logical.Diagnoser = diagnosing{}

func (d diagnosing) Diagnostic() any {
	return map[string]any{"slot": "demo_slot", "messages": d.N}
}

func TestDiagnostic(t *testing.T) {
	const n = 5
	cfg := fastConfig(t, logicaltest.NewRecorder())
	l := startLoop(t, cfg, &logical.LoopConfig{Dialect: diagnosing{logicaltest.NewGenerator(n)}, LoopName: "diag", TargetSchema: "gen"})
	waitForSeq(t, l, n-1)

	buf, err := json.Marshal(l.Diagnostic())
	require.NoError(t, err, "Diagnostic must marshal to JSON")
	var got map[string]any
	require.NoError(t, json.Unmarshal(buf, &got))
	assert.Equal(t, "diag", got["loopName"])
	assert.Equal(t, "gen", got["targetSchema"])
	assert.Equal(t, "4", got["consistentPoint"])
	assert.Equal(t, map[string]any{"slot": "demo_slot", "messages": float64(n)}, got["dialect"])
	assert.Contains(t, got, "config")
	require.Contains(t, got, "stats")
	stats, ok := got["stats"].(map[string]any)
	require.True(t, ok, "stats is an object: %s", buf)
	assert.Equal(t, float64(n), stats["CommitsOK"])

	t.Run("a dialect without Diagnoser has no dialect entry", func(t *testing.T) {
		l := startLoop(t, fastConfig(t, logicaltest.NewRecorder()), &logical.LoopConfig{Dialect: logicaltest.NewGenerator(1), LoopName: "plain", TargetSchema: "gen"})
		_, err := json.Marshal(l.Diagnostic())
		require.NoError(t, err)
		assert.NotContains(t, l.Diagnostic(), "dialect")
	})
}

// TestLagGrowsWhileNoPointIsSet: a loop whose point stops moving reports a
// growing Lag, both from Stats and to its observer, which is shown a
// fresh snapshot every second even though nothing changes. Lag used to be
// computed once, when the point was set, so a stuck loop reported its
// last small lag forever.
func TestLagGrowsWhileNoPointIsSet(t *testing.T) {
	t.Parallel()
	obs := &statsRecorder{}
	p := newProbe()
	cfg := fastConfig(t, logical.NewMemoryTarget())
	cfg.Observer = obs
	l := startLoop(t, cfg, &logical.LoopConfig{Dialect: p, LoopName: "lag", TargetSchema: "s"})
	ev := waitChan(t, p.events, "Process")
	at := time.Now()
	require.NoError(t, ev.SetConsistentPoint(context.Background(), &logicaltest.Stamp{Seq: 1, Time: at}))

	// Two observed snapshots of the same point, the later with more lag:
	// only the periodic snapshot can show that, as nothing else changes.
	atPoint := func(s logical.Stats) bool { return logical.Compare(s.Point, &logicaltest.Stamp{Seq: 1}) == 0 }
	deadline := time.Now().Add(waitLong)
	for {
		obs.mu.Lock()
		var lags []time.Duration
		for _, s := range obs.snaps {
			if atPoint(s) {
				lags = append(lags, s.Lag)
			}
		}
		obs.mu.Unlock()
		if len(lags) >= 2 && lags[len(lags)-1] > lags[0] {
			break
		}
		require.True(t, time.Now().Before(deadline), "the observer never saw the lag grow: %v", lags)
		time.Sleep(5 * time.Millisecond) // polling interval
	}
	// Stats measures the lag when called: at least the time elapsed
	// since the point's time (a lower bound, which cannot flake).
	elapsed := time.Since(at)
	s := l.Stats()
	require.True(t, atPoint(s))
	assert.GreaterOrEqual(t, s.Lag, elapsed)
}
