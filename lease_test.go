package logical_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/logical-go/logical"
	"github.com/logical-go/logical/logicaltest"
	"github.com/pkg/errors"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeClock is a settable clock for MemoryLeases.SetClock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// isDone reports whether ctx is cancelled, without waiting.
func isDone(ctx context.Context) bool {
	select {
	case <-ctx.Done():
		return true
	default:
		return false
	}
}

func TestMemoryLeasesClockSkew(t *testing.T) {
	const lifetime = time.Hour // no renewal fires during the test
	for _, tc := range []struct {
		name     string
		skew     time.Duration // of the second holder's clock against the first's
		takeOver bool
	}{
		{name: "a clock behind keeps the lease busy", skew: -10 * time.Minute},
		{name: "a clock ahead by less than the lifetime keeps the lease busy", skew: lifetime - time.Second},
		{name: "a clock ahead by the lifetime takes over and cancels the old holder", skew: lifetime, takeOver: true},
		{name: "a clock far ahead takes over and cancels the old holder", skew: 24 * time.Hour, takeOver: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			clk := newFakeClock()
			m := logical.NewMemoryLeases(lifetime)
			m.SetClock(clk.Now)
			first, err := m.Acquire(ctx, "skew")
			require.NoError(t, err)
			defer first.Release()
			expires, held := m.Holder("skew")
			require.True(t, held)
			assert.Equal(t, clk.Now().Add(lifetime), expires)

			clk.Add(tc.skew) // the second holder's view of time
			second, err := m.Acquire(ctx, "skew")
			if !tc.takeOver {
				busy, ok := logical.IsLeaseBusy(err)
				require.True(t, ok, "want a busy lease, got %v", err)
				assert.Equal(t, expires, busy.Expiration, "the busy error carries the holder's expiry, not the caller's clock")
				assert.False(t, isDone(first.Context()), "the holder keeps its lease")
				return
			}
			require.NoError(t, err)
			defer second.Release()
			assert.True(t, isDone(first.Context()), "the old holder's context must be cancelled before the new holder gets the lease")
			assert.False(t, isDone(second.Context()))
			first.Release() // a late release by the old holder
			assert.False(t, isDone(second.Context()), "a release by the old holder must not end the new lease")
			_, held = m.Holder("skew")
			assert.True(t, held)
		})
	}
}

func TestMemoryLeasesRenewalFailure(t *testing.T) {
	// Renewal runs every lifetime/3 in real time but judges expiry by the
	// lease clock: a clock that jumped past the expiry makes the renewal
	// come too late, and the lease is lost.
	clk := newFakeClock()
	m := logical.NewMemoryLeases(30 * time.Millisecond)
	m.SetClock(clk.Now)
	lease, err := m.Acquire(context.Background(), "renew")
	require.NoError(t, err)
	defer lease.Release()
	clk.Add(time.Minute)
	waitChan(t, lease.Context().Done(), "the lease to be lost when its renewal came too late")
	_, held := m.Holder("renew")
	assert.False(t, held, "a lost lease is free")
	again, err := m.Acquire(context.Background(), "renew")
	require.NoError(t, err, "a lost lease can be taken again")
	again.Release()
}

func TestMemoryLeasesRenewalKeepsLease(t *testing.T) {
	// With a working clock the renewals extend the lease: it outlives
	// several lifetimes. Wait for the expiry to move twice.
	m := logical.NewMemoryLeases(30 * time.Millisecond)
	lease, err := m.Acquire(context.Background(), "keep")
	require.NoError(t, err)
	defer lease.Release()
	first, _ := m.Holder("keep")
	deadline := time.Now().Add(waitLong)
	for {
		exp, held := m.Holder("keep")
		require.True(t, held, "the lease was lost although it was renewed")
		if exp.After(first.Add(60 * time.Millisecond)) {
			break
		}
		require.True(t, time.Now().Before(deadline), "the lease was not renewed")
		time.Sleep(5 * time.Millisecond) // polling interval
	}
	assert.False(t, isDone(lease.Context()))
}

func TestMemoryLeasesRelease(t *testing.T) {
	ctx := context.Background()
	t.Run("release by a non-holder has no effect", func(t *testing.T) {
		m := logical.NewMemoryLeases(time.Minute)
		a, err := m.Acquire(ctx, "r")
		require.NoError(t, err)
		a.Release()
		b, err := m.Acquire(ctx, "r")
		require.NoError(t, err)
		defer b.Release()
		a.Release()
		a.Release()
		assert.False(t, isDone(b.Context()))
		_, held := m.Holder("r")
		assert.True(t, held)
		_, err = m.Acquire(ctx, "r")
		_, busy := logical.IsLeaseBusy(err)
		assert.True(t, busy, "the lease is still taken: %v", err)
	})
	t.Run("release frees the lease and cancels its context", func(t *testing.T) {
		m := logical.NewMemoryLeases(time.Minute)
		a, err := m.Acquire(ctx, "r")
		require.NoError(t, err)
		a.Release()
		assert.True(t, isDone(a.Context()))
		_, held := m.Holder("r")
		assert.False(t, held)
	})
	t.Run("revoke of a free name has no effect", func(t *testing.T) {
		m := logical.NewMemoryLeases(time.Minute)
		m.Revoke("nobody")
		a, err := m.Acquire(ctx, "nobody")
		require.NoError(t, err)
		a.Release()
	})
	t.Run("names are independent", func(t *testing.T) {
		m := logical.NewMemoryLeases(time.Minute)
		a, err := m.Acquire(ctx, "x")
		require.NoError(t, err)
		defer a.Release()
		b, err := m.Acquire(ctx, "y")
		require.NoError(t, err)
		defer b.Release()
		m.Revoke("y")
		assert.True(t, isDone(b.Context()))
		assert.False(t, isDone(a.Context()))
	})
	t.Run("acquire with a cancelled context fails", func(t *testing.T) {
		m := logical.NewMemoryLeases(time.Minute)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		_, err := m.Acquire(cctx, "c")
		require.ErrorIs(t, err, context.Canceled)
		_, held := m.Holder("c")
		assert.False(t, held)
	})
}

// arena is where two holders compete for one MemoryLeases lease and apply
// to one target. Its mutex orders acquisitions, revocations and applies, so
// that the owner it records is exact at every apply.
type arena struct {
	leases *logical.MemoryLeases
	target *logicaltest.Recorder

	mu       sync.Mutex
	owner    string // the current lease holder, "" if none
	yielding string // a holder that was revoked and waits for the other
	owners   []string
	applies  map[string]int
	overlaps []string
}

const arenaLease = "arena"

func (a *arena) acquire(ctx context.Context, who string) (logical.Lease, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.yielding == who {
		// Give the other holder its turn, so that the lease moves.
		return nil, &logical.LeaseBusyError{Expiration: time.Now().Add(2 * time.Millisecond)}
	}
	lease, err := a.leases.Acquire(ctx, arenaLease)
	if err != nil {
		return nil, err
	}
	a.owner = who
	a.owners = append(a.owners, who)
	if a.yielding != "" {
		a.yielding = ""
	}
	return lease, nil
}

// revoke takes the lease from its holder, which must let the other holder
// have it next.
func (a *arena) revoke() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.owner == "" {
		return
	}
	a.yielding = a.owner
	a.owner = ""
	a.leases.Revoke(arenaLease)
}

// apply is the target of holder who. Like a database driver, it refuses
// work under a cancelled context; what it accepts must come from the
// holder of the lease.
func (a *arena) apply(ctx context.Context, who string, fn func() error) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return errors.WithStack(err)
	}
	if a.owner != who {
		a.overlaps = append(a.overlaps, fmt.Sprintf("%s applied while %q held the lease", who, a.owner))
	}
	a.applies[who]++
	return fn()
}

// holderTarget is the Target of one holder.
type holderTarget struct {
	a   *arena
	who string
}

func (h *holderTarget) Apply(ctx context.Context, table logical.Table, muts []logical.Mutation) error {
	return h.a.apply(ctx, h.who, func() error { return h.a.target.Apply(ctx, table, muts) })
}

func (h *holderTarget) Begin(ctx context.Context) (logical.TargetTx, error) {
	tx, err := h.a.target.Begin(ctx)
	if err != nil {
		return nil, err
	}
	return &holderTx{h: h, tx: tx}, nil
}

type holderTx struct {
	h  *holderTarget
	tx logical.TargetTx
}

func (x *holderTx) Apply(ctx context.Context, table logical.Table, muts []logical.Mutation) error {
	return x.tx.Apply(ctx, table, muts) // staged; what counts is the commit
}

func (x *holderTx) Commit(ctx context.Context) error {
	return x.h.a.apply(ctx, x.h.who, func() error { return x.tx.Commit(ctx) })
}

func (x *holderTx) Rollback(ctx context.Context) error { return x.tx.Rollback(ctx) }

// holderDialect is a generator that takes the arena's lease.
type holderDialect struct {
	*logicaltest.Generator
	a   *arena
	who string
}

var _ logical.Lessor = (*holderDialect)(nil)

func (d *holderDialect) Acquire(ctx context.Context) (logical.Lease, error) {
	return d.a.acquire(ctx, d.who)
}

// monotonicMemo records stored points that move backwards, and signals
// Puts (several Puts may share one signal). Like a database, it refuses a
// write whose context is cancelled, checking as it writes.
type monotonicMemo struct {
	logical.MemoryMemo
	mu    sync.Mutex
	last  int
	back  []string
	puts  chan int
	count int
}

func (m *monotonicMemo) Get(ctx context.Context, key string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.MemoryMemo.Get(ctx, key)
}

func (m *monotonicMemo) Put(ctx context.Context, key string, value []byte) error {
	var s logicaltest.Stamp
	if err := json.Unmarshal(value, &s); err != nil {
		return err
	}
	m.mu.Lock()
	if err := ctx.Err(); err != nil {
		m.mu.Unlock()
		return errors.WithStack(err)
	}
	if s.Seq < m.last {
		m.back = append(m.back, fmt.Sprintf("%d -> %d", m.last, s.Seq))
	}
	m.last = s.Seq
	m.count++
	err := m.MemoryMemo.Put(ctx, key, value)
	m.mu.Unlock()
	if err != nil {
		return err
	}
	select {
	case m.puts <- s.Seq:
	default:
	}
	return nil
}

// TestLeaseHoldersNeverOverlap runs two loops, in two factories, on one
// MemoryLeases lease, one memo and one target, as two processes
// replicating the same source would. The lease is revoked every few
// commits and moves to the other holder. Every write must come from the
// holder of the lease, the persisted point must never move backwards (the
// new holder starts from where the old one stopped), and the target must end
// up complete.
func TestLeaseHoldersNeverOverlap(t *testing.T) {
	for _, mode := range []string{"serial", "immediate"} {
		t.Run(mode, func(t *testing.T) {
			const n = 400
			leak := goroutines(t)
			a := &arena{
				leases:  logical.NewMemoryLeases(50 * time.Millisecond),
				target:  logicaltest.NewRecorder(),
				applies: make(map[string]int),
			}
			memo := &monotonicMemo{last: -1, puts: make(chan int, 1)}
			var factories []*logical.Factory
			for _, who := range []string{"A", "B"} {
				cfg := fastConfig(t, &holderTarget{a: a, who: who})
				cfg.Memo = memo
				cfg.Immediate = mode == "immediate"
				f, err := logical.NewFactory(context.Background(), cfg)
				require.NoError(t, err)
				factories = append(factories, f)
				_, err = f.Start(&logical.LoopConfig{
					Dialect:      &holderDialect{Generator: logicaltest.NewGenerator(n), a: a, who: who},
					LoopName:     "shared",
					TargetSchema: "s",
				})
				require.NoError(t, err)
			}
			defer func() {
				for _, f := range factories {
					f.Stop(0)
					require.NoError(t, f.Wait())
				}
			}()

			// Revoke every 40 points until the end.
			next := 40
			deadline := time.After(waitLong)
			for last := -1; last < n-1; {
				select {
				case <-memo.puts:
					memo.mu.Lock()
					last = memo.last
					memo.mu.Unlock()
				case <-deadline:
					t.Fatalf("point stuck at %d", last)
				}
				if last >= next && last < n-1 {
					a.revoke()
					next = last + 40
				}
			}
			for _, f := range factories {
				f.Stop(time.Second)
				require.NoError(t, f.Wait())
			}

			a.mu.Lock()
			defer a.mu.Unlock()
			memo.mu.Lock()
			defer memo.mu.Unlock()
			assert.Empty(t, a.overlaps, "writes by a holder without the lease")
			assert.Empty(t, memo.back, "the persisted point moved backwards")
			assert.Positive(t, a.applies["A"], "A wrote")
			assert.Positive(t, a.applies["B"], "B wrote")
			assert.GreaterOrEqual(t, len(a.owners), 5, "the lease should have changed hands: %v", a.owners)
			requireAllRows(t, a.target, logicaltest.Tables("s", 4), n)
			leak()
		})
	}
}
