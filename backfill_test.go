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

// waitUntil polls cond until it holds, with a deadline.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLong)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond) // polling interval
	}
}

// modeLog wraps a generator and records the order of its fill calls and
// the consistent point each started from.
type modeLog struct {
	*logicaltest.Generator
	zero func() logical.Stamp // ZeroStamp override, if set
	hold <-chan struct{}      // if set, ReadInto notes calls before it closed

	mu          sync.Mutex
	calls       []string
	from        []int
	earlyReadOK atomic.Bool // set when ReadInto ran before hold closed
}

func (d *modeLog) note(what string, state logical.State) {
	cp, _ := state.GetConsistentPoint()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls = append(d.calls, what)
	d.from = append(d.from, cp.(*logicaltest.Stamp).Seq)
}

func (d *modeLog) log() ([]string, []int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.calls...), append([]int(nil), d.from...)
}

func (d *modeLog) ZeroStamp() logical.Stamp {
	if d.zero != nil {
		return d.zero()
	}
	return d.Generator.ZeroStamp()
}

func (d *modeLog) ReadInto(ctx context.Context, ch chan<- logical.Message, state logical.State) error {
	if d.hold != nil {
		select {
		case <-d.hold:
		default:
			d.earlyReadOK.Store(true)
		}
	}
	d.note("read", state)
	return d.Generator.ReadInto(ctx, ch, state)
}

func (d *modeLog) BackfillInto(ctx context.Context, ch chan<- logical.Message, state logical.State) error {
	d.note("backfill", state)
	return d.Generator.BackfillInto(ctx, ch, state)
}

var _ logical.Backfiller = (*modeLog)(nil)

func TestBackfillSwitch(t *testing.T) {
	t.Run("streaming switches to backfill when the lag grows past the window", func(t *testing.T) {
		const n, window = 60, 30
		leak := goroutines(t)
		// Message i happened i seconds ago: the source falls further
		// behind with every message, as if the loop had been paused.
		now := time.Now()
		gen := logicaltest.NewGenerator(n)
		gen.Base, gen.Step = now, -time.Second
		d := &modeLog{Generator: gen, zero: func() logical.Stamp { return &logicaltest.Stamp{Seq: -1, Time: now} }}
		r := logicaltest.NewRecorder()
		obs := &statsRecorder{}
		cfg := fastConfig(t, r)
		cfg.BackfillWindow = window * time.Second
		cfg.Observer = obs
		l := startLoop(t, cfg, &logical.LoopConfig{Dialect: d, LoopName: "lag", TargetSchema: "gen"})
		waitForSeq(t, l, n-1)
		waitUntil(t, "a backfill", func() bool { return gen.Calls().BackfillInto > 0 })

		calls, from := d.log()
		require.NotEmpty(t, calls)
		assert.Equal(t, "read", calls[0], "the young start point streams")
		assert.Equal(t, -1, from[0])
		first := -1
		for i, c := range calls {
			if c == "backfill" {
				first = i
				break
			}
		}
		require.Positive(t, first, "a backfill after streaming: %v", calls)
		assert.GreaterOrEqual(t, from[first], window, "the switch waited until the point was older than the window")
		assert.True(t, obs.any(func(s logical.Stats) bool { return s.Backfilling }), "Stats.Backfilling was set")
		for _, tbl := range logicaltest.Tables("gen", 4) {
			assert.Equal(t, n, r.Count(tbl), "rows in %s", tbl)
		}
		assert.Equal(t, n, gen.Seen())
		l.Stop(0)
		waitStopped(t, l)
		leak()
	})

	t.Run("an idle stream does not switch", func(t *testing.T) {
		// Every message is young; nothing makes the loop backfill even
		// though the window is short compared to the test's runtime.
		const n = 20
		gen := logicaltest.NewGenerator(n)
		d := &modeLog{Generator: gen, zero: func() logical.Stamp { return &logicaltest.Stamp{Seq: -1, Time: time.Now()} }}
		cfg := fastConfig(t, logicaltest.NewRecorder())
		cfg.BackfillWindow = time.Hour
		l := startLoop(t, cfg, &logical.LoopConfig{Dialect: d, LoopName: "idle", TargetSchema: "gen"})
		waitForSeq(t, l, n-1)
		calls, _ := d.log()
		assert.Equal(t, []string{"read"}, calls)
	})

	for _, tc := range []struct {
		name string
		n    int
		base func(n int) time.Time
	}{
		{
			// The first half is older than the window: the loop backfills
			// until it has caught up, then the watcher stops it.
			name: "backfill to streaming waits for WaitAfterBackfill",
			n:    100,
			base: func(n int) time.Time { return time.Now().Add(-time.Duration(n) * time.Second) },
		},
		{
			// Only the zero stamp is old: the backfill may well finish (its
			// backfiller returns) before the watcher sees a young point.
			name: "a backfill that finishes on its own waits too",
			n:    5,
			base: func(int) time.Time { return time.Now() },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gen := logicaltest.NewGenerator(tc.n)
			gen.Base, gen.Step = tc.base(tc.n), time.Second
			hold := make(chan struct{})
			d := &modeLog{Generator: gen, hold: hold}
			cfg := fastConfig(t, logicaltest.NewRecorder())
			cfg.BackfillWindow = time.Duration(tc.n/2) * time.Second
			l := startLoop(t, cfg, &logical.LoopConfig{Dialect: d, LoopName: "hold", TargetSchema: "gen", WaitAfterBackfill: hold})

			// Wait for the backfill iteration's two sides to end: without
			// the hook the loop would stream at once.
			waitUntil(t, "the backfill iteration to end", func() bool {
				c := gen.Calls()
				return c.BackfillIntoExits >= 1 && c.ProcessExits >= 1
			})
			assert.Zero(t, gen.Calls().ReadInto, "ReadInto before WaitAfterBackfill closed")
			assert.Equal(t, uint64(1), l.Stats().Iterations, "no new iteration before WaitAfterBackfill closed")
			close(hold)
			waitForSeq(t, l, tc.n-1)
			waitUntil(t, "ReadInto", func() bool { return gen.Calls().ReadInto > 0 })
			assert.False(t, d.earlyReadOK.Load(), "ReadInto was called before WaitAfterBackfill closed")
			calls, _ := d.log()
			assert.Equal(t, "backfill", calls[0])
			assert.Equal(t, tc.n, gen.Seen())
		})
	}
}

// nester is a dialect whose Process runs a nested backfill on its first
// message and reports the result.
type nester struct {
	name   string
	sub    logical.Backfiller
	cancel context.Context // if set, its end cancels the Backfill call
	result chan error      // gets the first result
}

var _ logical.Dialect = (*nester)(nil)

func newNester(name string, sub logical.Backfiller) *nester {
	return &nester{name: name, sub: sub, result: make(chan error, 1)}
}

func (d *nester) ZeroStamp() logical.Stamp { return &logicaltest.Stamp{Seq: -1} }

func (d *nester) ReadInto(ctx context.Context, ch chan<- logical.Message, state logical.State) error {
	if cp, _ := state.GetConsistentPoint(); cp.(*logicaltest.Stamp).Seq < 0 {
		select {
		case ch <- logicaltest.Message{Seq: 0}:
		case <-state.Stopping():
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	select {
	case <-state.Stopping():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (d *nester) Process(ctx context.Context, ch <-chan logical.Message, events logical.Events) error {
	for {
		select {
		case msg, ok := <-ch:
			if !ok {
				return nil
			}
			if logical.IsRollback(msg) {
				continue
			}
			bctx := ctx
			if d.cancel != nil {
				var stop context.CancelFunc
				bctx, stop = context.WithCancel(ctx)
				defer stop()
				context.AfterFunc(d.cancel, stop)
			}
			err := events.Backfill(bctx, d.name, d.sub)
			select {
			case d.result <- err:
			default:
			}
			if err == nil {
				if err := events.SetConsistentPoint(ctx, &logicaltest.Stamp{Seq: 0}); err != nil {
					return err
				}
			}
		case <-events.Stopping():
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// stuckBackfiller sends nothing and waits for a stop or cancellation, or
// returns err at once if set.
type stuckBackfiller struct {
	logicaltest.Generator
	err     error
	started chan struct{}
	calls   atomic.Int64
}

func (b *stuckBackfiller) BackfillInto(ctx context.Context, _ chan<- logical.Message, state logical.State) error {
	if b.calls.Add(1) == 1 {
		close(b.started)
	}
	if b.err != nil {
		return b.err
	}
	select {
	case <-state.Stopping():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func TestNestedBackfill(t *testing.T) {
	t.Run("completes and persists its point under its own name", func(t *testing.T) {
		const n = 20
		leak := goroutines(t)
		sub := logicaltest.NewGenerator(n)
		sub.Tables = []logical.Table{{Schema: "gen", Name: "sub0"}, {Schema: "gen", Name: "sub1"}}
		d := newNester("nested", sub)
		r := logicaltest.NewRecorder()
		memo := logical.NewMemoryMemo()
		cfg := fastConfig(t, r)
		cfg.Memo = memo
		l := startLoop(t, cfg, &logical.LoopConfig{Dialect: d, LoopName: "outer", TargetSchema: "gen"})

		require.NoError(t, waitChan(t, d.result, "the nested backfill"))
		waitForSeq(t, l, 0)
		buf, err := memo.Get(context.Background(), "nested")
		require.NoError(t, err)
		require.NotEmpty(t, buf, "the nested loop's point is persisted under its name")
		var got logicaltest.Stamp
		require.NoError(t, json.Unmarshal(buf, &got))
		assert.Equal(t, n-1, got.Seq)
		buf, err = memo.Get(context.Background(), "outer")
		require.NoError(t, err)
		require.NoError(t, json.Unmarshal(buf, &got))
		assert.Equal(t, 0, got.Seq, "the outer point is its own")
		for _, tbl := range sub.Tables {
			assert.Equal(t, n, r.Count(tbl), "rows in %s", tbl)
		}
		assert.Equal(t, n, sub.Seen())
		c := sub.Calls()
		assert.Equal(t, int64(1), c.BackfillInto)
		assert.Zero(t, c.ReadInto, "a nested backfill never streams")
		l.Stop(0)
		waitStopped(t, l)
		leak()
	})

	t.Run("a second backfill of the same name resumes from its point", func(t *testing.T) {
		const n = 10
		sub := logicaltest.NewGenerator(n)
		memo := logical.NewMemoryMemo()
		for i := 0; i < 2; i++ {
			d := newNester("again", sub)
			cfg := fastConfig(t, logicaltest.NewRecorder())
			cfg.Memo = memo
			l, err := logical.Start(context.Background(), cfg, &logical.LoopConfig{Dialect: d, LoopName: "outer" + string(rune('a'+i)), TargetSchema: "gen"})
			require.NoError(t, err)
			require.NoError(t, waitChan(t, d.result, "the nested backfill"))
			l.Stop(0)
			waitStopped(t, l)
		}
		assert.Equal(t, int64(2), sub.Calls().BackfillInto)
		for i := 0; i < n; i++ {
			assert.Equal(t, 1, sub.SeenCount(i), "message %d applied once", i)
		}
	})

	stopCases := []struct {
		name  string
		err   error
		stop  func(l *logical.Loop, cancel context.CancelFunc)
		wants []string
	}{
		{
			name:  "a stop before the backfiller finished is an error",
			stop:  func(l *logical.Loop, _ context.CancelFunc) { l.Stop(waitLong) },
			wants: []string{`backfill "stuck"`, "stopped before the backfiller finished"},
		},
		{
			name:  "a cancellation before the backfiller finished is an error",
			stop:  func(_ *logical.Loop, cancel context.CancelFunc) { cancel() },
			wants: []string{`"stuck"`},
		},
		{
			name:  "a backfiller error is returned without a retry",
			err:   errors.New("scan failed"),
			wants: []string{"scan failed"},
		},
	}
	for _, tc := range stopCases {
		t.Run(tc.name, func(t *testing.T) {
			leak := goroutines(t)
			sub := &stuckBackfiller{err: tc.err, started: make(chan struct{})}
			d := newNester("stuck", sub)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			d.cancel = ctx
			l := startLoop(t, fastConfig(t, logicaltest.NewRecorder()), &logical.LoopConfig{Dialect: d, LoopName: "outer", TargetSchema: "gen"})
			waitChan(t, sub.started, "BackfillInto")
			if tc.stop != nil {
				tc.stop(l, cancel)
			}
			err := waitChan(t, d.result, "the nested backfill")
			require.Error(t, err, "an unfinished backfill is never reported as complete")
			for _, want := range tc.wants {
				assert.Contains(t, err.Error(), want)
			}
			assert.Equal(t, int64(1), sub.calls.Load(), "no retry")
			l.Stop(0)
			waitStopped(t, l)
			leak()
		})
	}

	t.Run("bad arguments are errors", func(t *testing.T) {
		for _, tc := range []struct {
			name, loop string
			sub        logical.Backfiller
			want       string
		}{
			{name: "empty name", loop: "", sub: logicaltest.NewGenerator(1), want: "needs a loop name"},
			{name: "nil backfiller", loop: "x", sub: nil, want: "nil Backfiller"},
			{name: "the name of a running loop", loop: "outer", sub: logicaltest.NewGenerator(1), want: `"outer" is already running`},
		} {
			t.Run(tc.name, func(t *testing.T) {
				d := newNester(tc.loop, tc.sub)
				startLoop(t, fastConfig(t, logicaltest.NewRecorder()), &logical.LoopConfig{Dialect: d, LoopName: "outer", TargetSchema: "gen"})
				err := waitChan(t, d.result, "Backfill")
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.want)
			})
		}
	})
}
