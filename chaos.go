package logical

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/pkg/errors"
)

// ErrChaos is wrapped by every error that WithChaos injects. The loop
// treats it like any other failure: the failed side is restarted.
var ErrChaos = errors.New("logical: chaos")

// WithChaos returns d wrapped so that each call of ReadInto, Process,
// BackfillInto and Acquire, and of the Events and Batch methods handed to
// Process, fails with an error wrapping ErrChaos with probability prob. It
// returns d itself when prob <= 0. The result is a Backfiller if d is one,
// and always a Lessor: when d is no Lessor it hands out a private in-memory
// lease, and Acquire may also return a *LeaseBusyError that expires almost
// at once. Use it in tests to prove a dialect converges despite failures.
func WithChaos(d Dialect, prob float32) Dialect { return WithChaosSeed(d, prob, 0) }

// WithChaosSeed is WithChaos with a seeded fault sequence: a run in which
// the wrapped calls happen in the same order (one goroutine) fails at the
// same calls. A zero seed picks a random one.
func WithChaosSeed(d Dialect, prob float32, seed int64) Dialect {
	if prob <= 0 || d == nil {
		return d
	}
	if seed == 0 {
		seed = rand.Int64()
	}
	c := &chaos{
		inner: d,
		prob:  float64(prob),
		rng:   rand.New(rand.NewPCG(uint64(seed), uint64(seed)^0x9e3779b97f4a7c15)),
	}
	if _, ok := d.(Lessor); !ok {
		c.leases = NewMemoryLeases(time.Minute)
	}
	if bf, ok := d.(Backfiller); ok {
		return &chaosBackfiller{chaos: c, bf: bf}
	}
	return c
}

// chaos is the dialect wrapper.
type chaos struct {
	inner  Dialect
	prob   float64
	leases *MemoryLeases // when inner is no Lessor

	mu     sync.Mutex
	rng    *rand.Rand
	faults map[string]uint64 // injected faults by method; guarded by mu
}

var (
	_ Dialect    = (*chaos)(nil)
	_ Lessor     = (*chaos)(nil)
	_ Backfiller = (*chaosBackfiller)(nil)
)

// fail returns an ErrChaos error with probability c.prob, and counts it
// under what.
func (c *chaos) fail(what string) error {
	c.mu.Lock()
	hit := c.rng.Float64() < c.prob
	if hit {
		if c.faults == nil {
			c.faults = make(map[string]uint64)
		}
		c.faults[what]++
	}
	c.mu.Unlock()
	if hit {
		return errors.Wrapf(ErrChaos, "injected into %s", what)
	}
	return nil
}

// ChaosFaults reports how many faults d, a dialect returned by WithChaos or
// WithChaosSeed, has injected so far, by the method that failed:
// "ReadInto", "BackfillInto", "Process", "Acquire" (an error),
// "AcquireBusy" (a *LeaseBusyError), "OnBegin", "SetConsistentPoint",
// "Backfill", "Flush", "OnData", "OnCommit", "OnRollback". ok is false when
// d is no chaos wrapper. It is safe to call while d is in use; tests use it
// to check that restarts are explained by injected faults.
func ChaosFaults(d Dialect) (faults map[string]uint64, ok bool) {
	var c *chaos
	switch w := d.(type) {
	case *chaos:
		c = w
	case *chaosBackfiller:
		c = w.chaos
	default:
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	faults = make(map[string]uint64, len(c.faults))
	for k, v := range c.faults {
		faults[k] = v
	}
	return faults, true
}

func (c *chaos) ReadInto(ctx context.Context, ch chan<- Message, state State) error {
	if err := c.fail("ReadInto"); err != nil {
		return err
	}
	return c.inner.ReadInto(ctx, ch, state)
}

func (c *chaos) Process(ctx context.Context, ch <-chan Message, events Events) error {
	if err := c.fail("Process"); err != nil {
		return err
	}
	return c.inner.Process(ctx, ch, &chaosEvents{Events: events, c: c})
}

func (c *chaos) ZeroStamp() Stamp { return c.inner.ZeroStamp() }

func (c *chaos) Acquire(ctx context.Context) (Lease, error) {
	if err := c.fail("Acquire"); err != nil {
		c.mu.Lock()
		busy := c.rng.IntN(2) == 0
		if busy {
			c.faults["Acquire"]--
			c.faults["AcquireBusy"]++
		}
		c.mu.Unlock()
		if busy {
			return nil, &LeaseBusyError{Expiration: time.Now().Add(time.Millisecond)}
		}
		return nil, err
	}
	if l, ok := c.inner.(Lessor); ok {
		return l.Acquire(ctx)
	}
	return c.leases.Acquire(ctx, "chaos")
}

// chaosBackfiller adds BackfillInto.
type chaosBackfiller struct {
	*chaos
	bf Backfiller
}

func (c *chaosBackfiller) BackfillInto(ctx context.Context, ch chan<- Message, state State) error {
	if err := c.fail("BackfillInto"); err != nil {
		return err
	}
	return c.bf.BackfillInto(ctx, ch, state)
}

// chaosEvents injects faults into Events.
type chaosEvents struct {
	Events
	c *chaos
}

var _ Grouper = (*chaosEvents)(nil)

func (e *chaosEvents) OnBegin(ctx context.Context) (Batch, error) {
	if err := e.c.fail("OnBegin"); err != nil {
		return nil, err
	}
	b, err := e.Events.OnBegin(ctx)
	if err != nil {
		return nil, err
	}
	return &chaosBatch{Batch: b, c: e.c}, nil
}

// OnBeginGrouped implements Grouper: a grouped batch of the inner Events
// if it is a Grouper, else a plain one.
func (e *chaosEvents) OnBeginGrouped(ctx context.Context) (Batch, error) {
	g, ok := e.Events.(Grouper)
	if !ok {
		return e.OnBegin(ctx)
	}
	if err := e.c.fail("OnBegin"); err != nil {
		return nil, err
	}
	b, err := g.OnBeginGrouped(ctx)
	if err != nil {
		return nil, err
	}
	return &chaosBatch{Batch: b, c: e.c}, nil
}

// CommitGroup implements Grouper.
func (e *chaosEvents) CommitGroup(ctx context.Context) error {
	g, ok := e.Events.(Grouper)
	if !ok {
		return nil
	}
	if err := e.c.fail("CommitGroup"); err != nil {
		return err
	}
	return g.CommitGroup(ctx)
}

// StartCommitGroup implements AsyncGrouper.
func (e *chaosEvents) StartCommitGroup(ctx context.Context) error {
	g, ok := e.Events.(AsyncGrouper)
	if !ok {
		return e.CommitGroup(ctx)
	}
	if err := e.c.fail("CommitGroup"); err != nil {
		return err
	}
	return g.StartCommitGroup(ctx)
}

func (e *chaosEvents) SetConsistentPoint(ctx context.Context, cp Stamp) error {
	if err := e.c.fail("SetConsistentPoint"); err != nil {
		return err
	}
	return e.Events.SetConsistentPoint(ctx, cp)
}

func (e *chaosEvents) Backfill(ctx context.Context, loopName string, bf Backfiller) error {
	if err := e.c.fail("Backfill"); err != nil {
		return err
	}
	return e.Events.Backfill(ctx, loopName, bf)
}

// chaosBatch injects faults into a Batch. A failed OnCommit or OnRollback
// still rolls the real batch back, so no transaction is left open.
type chaosBatch struct {
	Batch
	c *chaos
}

func (b *chaosBatch) Flush(ctx context.Context) error {
	if err := b.c.fail("Flush"); err != nil {
		return err
	}
	return b.Batch.Flush(ctx)
}

func (b *chaosBatch) OnData(ctx context.Context, source string, target Table, muts []Mutation) error {
	if err := b.c.fail("OnData"); err != nil {
		return err
	}
	return b.Batch.OnData(ctx, source, target, muts)
}

func (b *chaosBatch) OnCommit(ctx context.Context) <-chan error {
	if err := b.c.fail("OnCommit"); err != nil {
		_ = b.Batch.OnRollback(ctx)
		return result1(err)
	}
	return b.Batch.OnCommit(ctx)
}

func (b *chaosBatch) OnRollback(ctx context.Context) error {
	rbErr := b.Batch.OnRollback(ctx)
	if err := b.c.fail("OnRollback"); err != nil {
		return err
	}
	return rbErr
}
