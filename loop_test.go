package logical_test

import (
	"context"
	"encoding/json"
	"strconv"
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

// requireAllRows checks that every table holds keys 0..n-1.
func requireAllRows(t *testing.T, target *logicaltest.Recorder, tables []logical.Table, n int) {
	t.Helper()
	for _, tbl := range tables {
		require.Equal(t, n, target.Count(tbl), "rows in %s", tbl)
		for i := 0; i < n; i++ {
			require.True(t, target.Has(tbl, "["+strconv.Itoa(i)+"]"), "%s misses key %d", tbl, i)
		}
	}
}

func TestRestartResumesFromPersistedPoint(t *testing.T) {
	leak := goroutines(t)
	memo := logical.NewMemoryMemo()
	tables := logicaltest.Tables("s", 4)
	target := logicaltest.NewRecorder()

	first := logicaltest.NewGenerator(50)
	cfg := fastConfig(t, target)
	cfg.Memo = memo
	l := startLoop(t, cfg, &logical.LoopConfig{Dialect: first, LoopName: "restart", TargetSchema: "s"})
	waitForSeq(t, l, 49)
	l.Stop(time.Second)
	waitStopped(t, l)

	// A new factory on the same memo, with a source that has more.
	second := logicaltest.NewGenerator(100)
	cfg2 := fastConfig(t, target)
	cfg2.Memo = memo
	l2 := startLoop(t, cfg2, &logical.LoopConfig{Dialect: second, LoopName: "restart", TargetSchema: "s"})
	assert.Equal(t, 49, l2.GetInitialPoint().(*logicaltest.Stamp).Seq)
	waitForSeq(t, l2, 99)
	l2.Stop(time.Second)
	waitStopped(t, l2)

	for i := 0; i <= 49; i++ {
		require.Zero(t, second.SeenCount(i), "message %d was read again after the restart", i)
	}
	assert.Equal(t, 50, second.Seen())
	requireAllRows(t, target, tables, 100)
	leak()
}

func TestSourceErrorDeliversRollbackAndResumes(t *testing.T) {
	const n = 200
	tables := logicaltest.Tables("s", 4)
	target := logicaltest.NewRecorder()
	gen := logicaltest.NewGenerator(n)
	src := &sourceFailsOnce{Generator: gen, failAt: 37}
	l := startLoop(t, fastConfig(t, target), &logical.LoopConfig{Dialect: src, LoopName: "rollback", TargetSchema: "s"})
	waitForSeq(t, l, n-1)

	calls := gen.Calls()
	assert.Equal(t, int64(1), calls.Rollbacks, "rollback messages seen by Process")
	assert.Equal(t, int64(1), calls.Process, "Process keeps running across a source restart")
	assert.Equal(t, int64(2), src.calls.Load(), "ReadInto calls")
	assert.Equal(t, uint64(1), l.Stats().SourceRestarts)
	assert.Equal(t, n, gen.Seen())
	requireAllRows(t, target, tables, n)
}

// sourceFailsOnce sends messages up to failAt itself, then fails; the
// second call delegates to the generator, which must start after the
// consistent point.
type sourceFailsOnce struct {
	*logicaltest.Generator
	failAt int
	calls  atomic.Int64
}

func (s *sourceFailsOnce) ReadInto(ctx context.Context, ch chan<- logical.Message, state logical.State) error {
	if s.calls.Add(1) > 1 {
		return s.Generator.ReadInto(ctx, ch, state)
	}
	for i := 0; i <= s.failAt; i++ {
		select {
		case ch <- logicaltest.Message{Seq: i, Time: time.Now()}:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return errors.New("source broke")
}

func TestProcessErrorRestartsIteration(t *testing.T) {
	const n = 100
	tables := logicaltest.Tables("s", 4)
	target := logicaltest.NewRecorder()
	var commits atomic.Int64
	target.CommitHook = func(context.Context) error {
		if commits.Add(1) == 10 {
			return errors.New("commit refused")
		}
		return nil
	}
	gen := logicaltest.NewGenerator(n)
	l := startLoop(t, fastConfig(t, target), &logical.LoopConfig{Dialect: gen, LoopName: "procfail", TargetSchema: "s"})
	waitForSeq(t, l, n-1)
	stats := l.Stats()
	assert.Equal(t, uint64(1), stats.ProcessRestarts)
	assert.Equal(t, uint64(1), stats.CommitsFailed)
	assert.Contains(t, stats.LastError, "commit refused")
	assert.Equal(t, int64(2), gen.Calls().Process)
	assert.Equal(t, int64(2), gen.Calls().ReadInto, "the source is restarted with the iteration")
	requireAllRows(t, target, tables, n)
}

// leased is a generator that must hold a lease.
type leased struct {
	*logicaltest.Generator
	acquire func(ctx context.Context) (logical.Lease, error)
	calls   atomic.Int64
	times   chan time.Time
}

func (d *leased) Acquire(ctx context.Context) (logical.Lease, error) {
	d.calls.Add(1)
	if d.times != nil {
		select {
		case d.times <- time.Now():
		default:
		}
	}
	return d.acquire(ctx)
}

var _ logical.Lessor = (*leased)(nil)

func TestLease(t *testing.T) {
	const n = 50
	t.Run("busy waits until expiry", func(t *testing.T) {
		leases := logical.NewMemoryLeases(time.Minute)
		var expiry time.Time
		gen := logicaltest.NewGenerator(n)
		d := &leased{Generator: gen, times: make(chan time.Time, 10)}
		d.acquire = func(ctx context.Context) (logical.Lease, error) {
			if d.calls.Load() == 1 {
				expiry = time.Now().Add(150 * time.Millisecond)
				return nil, errors.Wrap(&logical.LeaseBusyError{Expiration: expiry}, "held elsewhere")
			}
			return leases.Acquire(ctx, "busy")
		}
		l := startLoop(t, fastConfig(t, logicaltest.NewRecorder()), &logical.LoopConfig{Dialect: d, LoopName: "busy", TargetSchema: "s"})
		waitForSeq(t, l, n-1)
		assert.Equal(t, int64(2), d.calls.Load())
		<-d.times
		second := <-d.times
		assert.False(t, second.Before(expiry), "retried at %v, before the expiry %v", second, expiry)
	})

	t.Run("busy with an expiration in the past waits at least the minimum", func(t *testing.T) {
		// A holder whose clock runs behind reports an expiration that has
		// passed already; Acquire used to be called again at once, in a
		// tight loop. Each interval is a lower bound (a sleep never ends
		// early), so this cannot flake; before the fix most intervals were
		// a bare jitter in [0, 100ms).
		const busy = 8
		leases := logical.NewMemoryLeases(time.Minute)
		gen := logicaltest.NewGenerator(n)
		d := &leased{Generator: gen, times: make(chan time.Time, busy+1)}
		d.acquire = func(ctx context.Context) (logical.Lease, error) {
			if d.calls.Load() <= busy {
				return nil, &logical.LeaseBusyError{Expiration: time.Now().Add(-time.Hour)}
			}
			return leases.Acquire(ctx, "past")
		}
		l := startLoop(t, fastConfig(t, logicaltest.NewRecorder()), &logical.LoopConfig{Dialect: d, LoopName: "past", TargetSchema: "s"})
		waitForSeq(t, l, n-1)
		require.Equal(t, int64(busy+1), d.calls.Load())
		prev := <-d.times
		for i := 1; i <= busy; i++ {
			next := <-d.times
			assert.GreaterOrEqual(t, next.Sub(prev), logical.LeaseMinWait, "Acquire call %d came too soon after call %d", i+1, i)
			prev = next
		}
	})

	t.Run("lost mid-run stops the work and re-acquires", func(t *testing.T) {
		leases := logical.NewMemoryLeases(time.Minute)
		gen := logicaltest.NewGenerator(n)
		d := &leased{Generator: gen}
		d.acquire = func(ctx context.Context) (logical.Lease, error) { return leases.Acquire(ctx, "lost") }
		target := logicaltest.NewRecorder()
		l := startLoop(t, fastConfig(t, target), &logical.LoopConfig{Dialect: d, LoopName: "lost", TargetSchema: "s"})
		waitForSeq(t, l, n-1)
		require.Equal(t, int64(1), gen.Calls().ReadInto)
		leases.Revoke("lost")
		// The loop's work is cancelled (both sides exit) and it comes
		// back with a new lease.
		deadline := time.Now().Add(waitLong)
		for d.calls.Load() < 2 || gen.Calls().ReadInto < 2 {
			require.True(t, time.Now().Before(deadline), "loop did not re-acquire the lease")
			time.Sleep(time.Millisecond) // polling interval
		}
		calls := gen.Calls()
		assert.Equal(t, int64(1), calls.ReadIntoExits, "the first ReadInto ended with the lease")
		assert.GreaterOrEqual(t, calls.ProcessExits, int64(1), "the first Process ended with the lease")
		_, held := leases.Holder("lost")
		assert.True(t, held)
		requireAllRows(t, target, logicaltest.Tables("s", 4), n)
	})

	t.Run("acquire error is retried after the delay", func(t *testing.T) {
		leases := logical.NewMemoryLeases(time.Minute)
		gen := logicaltest.NewGenerator(n)
		d := &leased{Generator: gen, times: make(chan time.Time, 10)}
		d.acquire = func(ctx context.Context) (logical.Lease, error) {
			if d.calls.Load() == 1 {
				return nil, errors.New("lease table unreachable")
			}
			return leases.Acquire(ctx, "err")
		}
		cfg := fastConfig(t, logicaltest.NewRecorder())
		cfg.RetryDelay = 50 * time.Millisecond
		cfg.MaxRetryDelay = 50 * time.Millisecond
		l := startLoop(t, cfg, &logical.LoopConfig{Dialect: d, LoopName: "err", TargetSchema: "s"})
		waitForSeq(t, l, n-1)
		first, second := <-d.times, <-d.times
		assert.GreaterOrEqual(t, second.Sub(first), 50*time.Millisecond)
		assert.Contains(t, l.Stats().LastError, "lease table unreachable")
	})
}

// heldMemo blocks Put until released.
type heldMemo struct {
	*logical.MemoryMemo
	entered chan struct{}
	release chan struct{}
	hold    atomic.Bool
}

func (m *heldMemo) Put(ctx context.Context, key string, value []byte) error {
	if m.hold.Load() {
		m.entered <- struct{}{}
		<-m.release
	}
	return m.MemoryMemo.Put(ctx, key, value)
}

func TestPersistBeforePublish(t *testing.T) {
	memo := &heldMemo{MemoryMemo: logical.NewMemoryMemo(), entered: make(chan struct{}), release: make(chan struct{})}
	memo.hold.Store(true)
	cfg := fastConfig(t, logicaltest.NewRecorder())
	cfg.Memo = memo
	gen := logicaltest.NewGenerator(3)
	l := startLoop(t, cfg, &logical.LoopConfig{Dialect: gen, LoopName: "ppp", TargetSchema: "s"})

	waitChan(t, memo.entered, "the first Put")
	cp, changed := l.GetConsistentPoint()
	assert.Equal(t, -1, cp.(*logicaltest.Stamp).Seq, "published before it was persisted")
	select {
	case <-changed:
		t.Fatal("notified before the point was persisted")
	default:
	}
	stored, err := memo.Get(context.Background(), "ppp")
	require.NoError(t, err)
	assert.Nil(t, stored)

	memo.hold.Store(false)
	close(memo.release)
	waitChan(t, changed, "the notification after the Put")
	waitForSeq(t, l, 2)
	stored, err = memo.Get(context.Background(), "ppp")
	require.NoError(t, err)
	var s logicaltest.Stamp
	require.NoError(t, json.Unmarshal(stored, &s))
	assert.Equal(t, 2, s.Seq)
}

// probe is a dialect that hands its Events to the test.
type probe struct {
	events chan logical.Events
	zero   func() logical.Stamp
}

func newProbe() *probe {
	return &probe{events: make(chan logical.Events, 1), zero: func() logical.Stamp { return &logicaltest.Stamp{Seq: -1} }}
}

func (p *probe) ReadInto(ctx context.Context, _ chan<- logical.Message, state logical.State) error {
	select {
	case <-state.Stopping():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p *probe) Process(ctx context.Context, ch <-chan logical.Message, events logical.Events) error {
	select {
	case p.events <- events:
	default:
	}
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return nil
			}
		case <-events.Stopping():
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (p *probe) ZeroStamp() logical.Stamp { return p.zero() }

func TestSetConsistentPoint(t *testing.T) {
	p := newProbe()
	l := startLoop(t, fastConfig(t, logical.NewMemoryTarget()), &logical.LoopConfig{Dialect: p, LoopName: "cp", TargetSchema: "s"})
	ev := waitChan(t, p.events, "Process")
	ctx := context.Background()

	require.NoError(t, ev.SetConsistentPoint(ctx, &logicaltest.Stamp{Seq: 5}))
	err := ev.SetConsistentPoint(ctx, &logicaltest.Stamp{Seq: 5})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "stalled")
	assert.Contains(t, err.Error(), `loop "cp"`)
	err = ev.SetConsistentPoint(ctx, &logicaltest.Stamp{Seq: 3})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "going backwards: 5 -> 3")
	err = ev.SetConsistentPoint(ctx, nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "nil")
	assert.Equal(t, 5, seqOf(l))
	assert.Equal(t, "s", ev.GetTargetDB())

	// Safe from many goroutines: concurrent increasing points all land or
	// fail cleanly, and the point ends at the highest.
	var wg sync.WaitGroup
	for i := 6; i < 40; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = ev.SetConsistentPoint(ctx, &logicaltest.Stamp{Seq: i})
		}()
	}
	wg.Wait()
	require.NoError(t, ev.SetConsistentPoint(ctx, &logicaltest.Stamp{Seq: 40}))
	assert.Equal(t, 40, seqOf(l))
}

func TestInvalidConfiguration(t *testing.T) {
	target := logical.NewMemoryTarget()
	gen := logicaltest.NewGenerator(1)
	fkOff := logicaltest.NewRecorder()
	fkOff.Chain(logicaltest.Tables("s", 2)...)
	type notOrderer struct{ logical.Target }
	cases := []struct {
		name string
		cfg  logical.Config
		loop logical.LoopConfig
		want string
	}{
		{"negative ApplyTimeout", logical.Config{Target: target, ApplyTimeout: -1}, logical.LoopConfig{}, "Config.ApplyTimeout"},
		{"negative BackfillWindow", logical.Config{Target: target, BackfillWindow: -1}, logical.LoopConfig{}, "Config.BackfillWindow"},
		{"negative BytesInFlight", logical.Config{Target: target, BytesInFlight: -1}, logical.LoopConfig{}, "Config.BytesInFlight"},
		{"ChaosProb above 1", logical.Config{Target: target, ChaosProb: 1.5}, logical.LoopConfig{}, "Config.ChaosProb"},
		{"ChaosProb below 0", logical.Config{Target: target, ChaosProb: -0.1}, logical.LoopConfig{}, "Config.ChaosProb"},
		{"negative FanShards", logical.Config{Target: target, FanShards: -1}, logical.LoopConfig{}, "Config.FanShards must be > 0, got -1"},
		{"negative RetryDelay", logical.Config{Target: target, RetryDelay: -1}, logical.LoopConfig{}, "Config.RetryDelay"},
		{"negative MaxRetryDelay", logical.Config{Target: target, MaxRetryDelay: -1}, logical.LoopConfig{}, "Config.MaxRetryDelay"},
		{"negative StandbyTimeout", logical.Config{Target: target, StandbyTimeout: -1}, logical.LoopConfig{}, "Config.StandbyTimeout"},
		{"nil Target", logical.Config{}, logical.LoopConfig{}, "Config.Target"},
		{"ForeignKeys with Immediate", logical.Config{Target: fkOff, ForeignKeys: true, Immediate: true}, logical.LoopConfig{}, "Config.ForeignKeys cannot be combined with Config.Immediate"},
		{"ForeignKeys without Orderer", logical.Config{Target: notOrderer{target}, ForeignKeys: true}, logical.LoopConfig{}, "Orderer"},
		{"nil Dialect", logical.Config{Target: target}, logical.LoopConfig{LoopName: "x"}, "LoopConfig.Dialect"},
		{"empty LoopName", logical.Config{Target: target}, logical.LoopConfig{Dialect: gen}, "LoopConfig.LoopName"},
		{"foreign keys with the option off", logical.Config{Target: fkOff}, logical.LoopConfig{Dialect: gen, LoopName: "x", TargetSchema: "s"}, "foreign keys"},
		{"unparseable DefaultConsistentPoint", logical.Config{Target: target}, logical.LoopConfig{Dialect: gen, LoopName: "x", DefaultConsistentPoint: "nope"}, "LoopConfig.DefaultConsistentPoint"},
		{"DefaultConsistentPoint without TextUnmarshaler", logical.Config{Target: target}, logical.LoopConfig{Dialect: newProbeWith(func() logical.Stamp { return &plainStamp{} }), LoopName: "x", DefaultConsistentPoint: "5"}, "TextUnmarshaler"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.Logger = quietLogger(t)
			loop := tc.loop
			if loop.Dialect == nil && loop.LoopName == "" {
				loop = logical.LoopConfig{Dialect: gen, LoopName: "x"}
			}
			l, err := logical.Start(context.Background(), &cfg, &loop)
			require.Error(t, err)
			assert.Nil(t, l)
			assert.Contains(t, err.Error(), tc.want)
		})
	}

	t.Run("duplicate LoopName", func(t *testing.T) {
		f, err := logical.NewFactory(context.Background(), fastConfig(t, target))
		require.NoError(t, err)
		defer func() { f.Stop(0); require.NoError(t, f.Wait()) }()
		_, err = f.Start(&logical.LoopConfig{Dialect: newProbe(), LoopName: "twice"})
		require.NoError(t, err)
		_, err = f.Start(&logical.LoopConfig{Dialect: newProbe(), LoopName: "twice"})
		require.Error(t, err)
		assert.Contains(t, err.Error(), `LoopConfig.LoopName "twice" is already running`)
	})

	t.Run("nil configs", func(t *testing.T) {
		_, err := logical.NewFactory(context.Background(), nil)
		assert.ErrorContains(t, err, "Config is nil")
		f, err := logical.NewFactory(context.Background(), fastConfig(t, target))
		require.NoError(t, err)
		_, err = f.Start(nil)
		assert.ErrorContains(t, err, "LoopConfig is nil")
		f.Stop(0)
		require.NoError(t, f.Wait())
		_, err = f.Start(&logical.LoopConfig{Dialect: newProbe(), LoopName: "late"})
		assert.ErrorContains(t, err, "factory is stopped")
	})
}

func TestPreflightDefaults(t *testing.T) {
	cfg := logical.Config{Target: logical.NewMemoryTarget(), RetryDelay: time.Microsecond}
	require.NoError(t, cfg.Preflight())
	assert.Equal(t, 30*time.Second, cfg.ApplyTimeout)
	assert.Equal(t, 10<<20, cfg.BytesInFlight)
	assert.Equal(t, 16, cfg.FanShards)
	assert.Equal(t, time.Millisecond, cfg.RetryDelay, "positive delays under 1ms become 1ms")
	assert.Equal(t, time.Minute, cfg.MaxRetryDelay)
	assert.Equal(t, 5*time.Second, cfg.StandbyTimeout)
	assert.NotNil(t, cfg.Memo)
	assert.NotNil(t, cfg.Logger)
	again := cfg
	require.NoError(t, again.Preflight())
	assert.Equal(t, cfg, again, "Preflight is idempotent")

	zero := logical.Config{Target: logical.NewMemoryTarget()}
	require.NoError(t, zero.Preflight())
	assert.Equal(t, 10*time.Second, zero.RetryDelay)
}

// plainStamp has no text form.
type plainStamp struct{ N int }

func (s *plainStamp) Less(o logical.Stamp) bool { return s.N < o.(*plainStamp).N }

func newProbeWith(zero func() logical.Stamp) *probe {
	p := newProbe()
	p.zero = zero
	return p
}

func TestCorruptStoredPoint(t *testing.T) {
	t.Run("memory memo names the loop", func(t *testing.T) {
		memo := logical.NewMemoryMemo()
		require.NoError(t, memo.Put(context.Background(), "corrupt", []byte("{not json")))
		cfg := fastConfig(t, logical.NewMemoryTarget())
		cfg.Memo = memo
		_, err := logical.Start(context.Background(), cfg, &logical.LoopConfig{Dialect: logicaltest.NewGenerator(1), LoopName: "corrupt"})
		require.Error(t, err)
		assert.Contains(t, err.Error(), `loop "corrupt"`)
		assert.Contains(t, err.Error(), "cannot be decoded")
	})
	t.Run("file memo names the file", func(t *testing.T) {
		memo, err := logical.NewFileMemo(t.TempDir())
		require.NoError(t, err)
		require.NoError(t, memo.Put(context.Background(), "corrupt", []byte(`"x@y"`)))
		cfg := fastConfig(t, logical.NewMemoryTarget())
		cfg.Memo = memo
		_, err = logical.Start(context.Background(), cfg, &logical.LoopConfig{Dialect: logicaltest.NewGenerator(1), LoopName: "corrupt"})
		require.Error(t, err)
		assert.Contains(t, err.Error(), memo.Path("corrupt"))
	})
	t.Run("stamp that cannot be unmarshalled into", func(t *testing.T) {
		memo := logical.NewMemoryMemo()
		require.NoError(t, memo.Put(context.Background(), "value", []byte(`{"N":1}`)))
		cfg := fastConfig(t, logical.NewMemoryTarget())
		cfg.Memo = memo
		_, err := logical.Start(context.Background(), cfg, &logical.LoopConfig{
			Dialect:  newProbeWith(func() logical.Stamp { return valueStamp{} }),
			LoopName: "value",
		})
		require.Error(t, err)
		assert.Contains(t, err.Error(), "logical_test.valueStamp")
	})
}

// valueStamp is a non-pointer stamp, which json cannot fill.
type valueStamp struct{ N int }

func (s valueStamp) Less(o logical.Stamp) bool { return s.N < o.(valueStamp).N }

func TestDefaultConsistentPoint(t *testing.T) {
	gen := logicaltest.NewGenerator(20)
	target := logicaltest.NewRecorder()
	l := startLoop(t, fastConfig(t, target), &logical.LoopConfig{Dialect: gen, LoopName: "def", TargetSchema: "s", DefaultConsistentPoint: "9"})
	assert.Equal(t, 9, l.GetInitialPoint().(*logicaltest.Stamp).Seq)
	waitForSeq(t, l, 19)
	assert.Equal(t, 10, gen.Seen())
	assert.Zero(t, gen.SeenCount(9))
}

// blockingDialect ignores Stopping and only returns on cancellation.
type blockingDialect struct{ probe }

func (b *blockingDialect) ReadInto(ctx context.Context, _ chan<- logical.Message, _ logical.State) error {
	<-ctx.Done()
	return ctx.Err()
}

func (b *blockingDialect) Process(ctx context.Context, _ <-chan logical.Message, ev logical.Events) error {
	b.events <- ev
	<-ctx.Done()
	return ctx.Err()
}

func TestShutdownWithinGrace(t *testing.T) {
	for _, tc := range []struct {
		name    string
		dialect logical.Dialect
		grace   time.Duration
	}{
		{"cooperative dialect", logicaltest.NewGenerator(10), 10 * time.Second},
		{"dialect that ignores Stopping", &blockingDialect{*newProbe()}, 200 * time.Millisecond},
		{"zero grace", &blockingDialect{*newProbe()}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leak := goroutines(t)
			cfg := fastConfig(t, logicaltest.NewRecorder())
			f, err := logical.NewFactory(context.Background(), cfg)
			require.NoError(t, err)
			l, err := f.Start(&logical.LoopConfig{Dialect: tc.dialect, LoopName: "stop", TargetSchema: "s"})
			require.NoError(t, err)
			switch d := tc.dialect.(type) {
			case *logicaltest.Generator:
				waitForSeq(t, l, d.N-1)
			case *blockingDialect:
				waitChan(t, d.events, "Process to run")
			}
			start := time.Now()
			f.Stop(tc.grace)
			waitStopped(t, l)
			require.NoError(t, f.Wait())
			took := time.Since(start)
			// Generous margin: a shared machine under -race.
			assert.Less(t, took, tc.grace+5*time.Second)
			if _, ok := tc.dialect.(*blockingDialect); ok {
				assert.GreaterOrEqual(t, took, tc.grace, "a dialect that ignores Stopping keeps running for the grace period")
			}
			l.Stop(0) // idempotent after the fact
			leak()
		})
	}

	t.Run("cancelling the parent context is a hard stop", func(t *testing.T) {
		leak := goroutines(t)
		ctx, cancel := context.WithCancel(context.Background())
		l, err := logical.Start(ctx, fastConfig(t, logicaltest.NewRecorder()), &logical.LoopConfig{Dialect: &blockingDialect{*newProbe()}, LoopName: "hard"})
		require.NoError(t, err)
		cancel()
		waitStopped(t, l)
		leak()
	})
}
