package logical

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/pkg/errors"
)

// A Lessor is a Dialect that must hold a global lease before it works, so
// that of several processes replicating the same source only one is active.
//
// The loop calls Acquire at the start of each iteration, from the loop's
// goroutine, and repeats it until it succeeds: a *LeaseBusyError makes the
// loop wait until the lease's expiration, but at least 50ms (an
// expiration in the past, from a holder whose clock runs behind, does not
// make the loop spin), plus up to 100ms of jitter; any other
// error ends the iteration, and the loop tries again after
// Config.RetryDelay. Everything in the iteration then runs under a context
// derived from Lease.Context, and the loop calls Release when the
// iteration ends. Without this interface a dialect runs unconditionally.
type Lessor interface {
	Acquire(ctx context.Context) (Lease, error)
}

// A Lease is held until it is released or lost.
type Lease interface {
	// Context is cancelled when the lease is lost (renewal failed, taken
	// over) or released.
	Context() context.Context
	// Release gives the lease up. It may be called more than once, and
	// from any goroutine.
	Release()
}

// LeaseBusyError is returned by Lessor.Acquire when another holder has the
// lease. Expiration is when the holder's current term ends; the loop tries
// again then (plus jitter), and no sooner than 50ms from now.
type LeaseBusyError struct {
	Expiration time.Time
}

// Error implements error.
func (e *LeaseBusyError) Error() string {
	return fmt.Sprintf("lease busy until %s", e.Expiration.Format(time.RFC3339Nano))
}

// IsLeaseBusy reports whether err is, or wraps, a *LeaseBusyError (through
// errors.Wrap as well as fmt.Errorf's %w), and returns it.
func IsLeaseBusy(err error) (*LeaseBusyError, bool) {
	var busy *LeaseBusyError
	if errors.As(err, &busy) {
		return busy, true
	}
	return nil, false
}

// MemoryLeases is an in-process lease manager, for dialects that need a
// Lessor within one process and for tests. A lease lasts lifetime and is
// renewed in the background while held, so it is only lost when released,
// revoked (Revoke) or when its renewals stop (SetClock can simulate that).
// It is safe for concurrent use.
type MemoryLeases struct {
	lifetime time.Duration

	mu    sync.Mutex
	now   func() time.Time
	held  map[string]*memoryLease
	nonce uint64
}

// NewMemoryLeases returns a lease manager whose leases last lifetime
// (at least 1ms).
func NewMemoryLeases(lifetime time.Duration) *MemoryLeases {
	if lifetime < time.Millisecond {
		lifetime = time.Millisecond
	}
	return &MemoryLeases{lifetime: lifetime, now: time.Now, held: make(map[string]*memoryLease)}
}

// SetClock replaces the clock used for expirations, for tests that
// simulate skew.
func (m *MemoryLeases) SetClock(now func() time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.now = now
}

// Acquire takes the lease called name, or returns a *LeaseBusyError with
// the current holder's expiration.
func (m *MemoryLeases) Acquire(ctx context.Context, name string) (Lease, error) {
	if err := ctx.Err(); err != nil {
		return nil, errors.WithStack(err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	if cur := m.held[name]; cur != nil {
		if now.Before(cur.expires) {
			return nil, &LeaseBusyError{Expiration: cur.expires}
		}
		m.dropLocked(cur) // expired: the holder lost it
	}
	m.nonce++
	l := &memoryLease{m: m, name: name, nonce: m.nonce, expires: now.Add(m.lifetime)}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	l.timer = time.AfterFunc(m.lifetime/3, l.renew)
	m.held[name] = l
	return l, nil
}

// Holder reports whether the lease called name is held, and until when.
func (m *MemoryLeases) Holder(name string) (expires time.Time, held bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if l := m.held[name]; l != nil {
		return l.expires, true
	}
	return time.Time{}, false
}

// Revoke takes the lease called name from its holder, whose context is
// cancelled, as if it had been lost. For tests.
func (m *MemoryLeases) Revoke(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if l := m.held[name]; l != nil {
		m.dropLocked(l)
	}
}

// dropLocked ends l; the caller holds m.mu.
func (m *MemoryLeases) dropLocked(l *memoryLease) {
	if m.held[l.name] == l {
		delete(m.held, l.name)
	}
	l.timer.Stop()
	l.cancel()
}

type memoryLease struct {
	m       *MemoryLeases
	name    string
	nonce   uint64
	expires time.Time // guarded by m.mu
	ctx     context.Context
	cancel  context.CancelFunc
	timer   *time.Timer
}

func (l *memoryLease) Context() context.Context { return l.ctx }

// Release gives the lease up; it has no effect on a later holder.
func (l *memoryLease) Release() {
	l.m.mu.Lock()
	defer l.m.mu.Unlock()
	l.m.dropLocked(l)
}

// renew extends the lease, unless it was lost meanwhile.
func (l *memoryLease) renew() {
	m := l.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.held[l.name] != l {
		return
	}
	now := m.now()
	if !now.Before(l.expires) {
		m.dropLocked(l) // renewal came too late: lost
		return
	}
	l.expires = now.Add(m.lifetime)
	l.timer.Reset(m.lifetime / 3)
}
