package logical_test

import (
	"context"
	"encoding/json"
	"sync/atomic"
	"testing"
	"time"

	"github.com/logical-go/logical"
	"github.com/logical-go/logical/logicaltest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// stopMargin is the generous allowance, beyond the grace period, for a
// stop to complete on a loaded machine under -race.
const stopMargin = 10 * time.Second

// busyLessor is a generator whose lease is always held by someone else, for
// an hour.
type busyLessor struct {
	*logicaltest.Generator
	asked chan struct{}
}

var _ logical.Lessor = (*busyLessor)(nil)

func (d *busyLessor) Acquire(context.Context) (logical.Lease, error) {
	select {
	case d.asked <- struct{}{}:
	default:
	}
	return nil, &logical.LeaseBusyError{Expiration: time.Now().Add(time.Hour)}
}

// stuckMemo blocks every Put after the first few until its context ends.
type stuckMemo struct {
	logical.MemoryMemo
	free    atomic.Int64 // Puts that go through
	entered chan struct{}
}

func (m *stuckMemo) Put(ctx context.Context, key string, value []byte) error {
	if m.free.Add(-1) >= 0 {
		return m.MemoryMemo.Put(ctx, key, value)
	}
	select {
	case m.entered <- struct{}{}:
	default:
	}
	<-ctx.Done()
	return ctx.Err()
}

// midBatch opens a batch, adds a row, tells the test, and then either
// waits for Stopping (cooperative) or only for cancellation; either way it
// rolls the batch back.
type midBatch struct {
	probe
	cooperative bool
	inBatch     chan struct{}
	rollbackErr chan error
}

func (d *midBatch) Process(ctx context.Context, ch <-chan logical.Message, ev logical.Events) error {
	b, err := ev.OnBegin(ctx)
	if err != nil {
		return err
	}
	mut := logical.Mutation{Key: json.RawMessage(`[1]`), Data: json.RawMessage(`{"k":1}`)}
	if err := b.OnData(ctx, "src", logical.Table{Schema: "s", Name: "t"}, []logical.Mutation{mut}); err != nil {
		return err
	}
	close(d.inBatch)
	if d.cooperative {
		<-ev.Stopping()
		d.rollbackErr <- b.OnRollback(ctx)
		return nil
	}
	<-ctx.Done()
	d.rollbackErr <- b.OnRollback(context.Background())
	return ctx.Err()
}

// TestShutdownUnderStress stops a loop at awkward moments. Each stop must
// complete within the grace period plus a generous margin, leave no
// goroutine behind, and, where the dialect or a store ignores Stopping,
// take at least the grace period (the loop waits before it cancels).
func TestShutdownUnderStress(t *testing.T) {
	type setup struct {
		cfg    *logical.Config
		lc     *logical.LoopConfig
		ready  func(t *testing.T, l *logical.Loop) // blocks until the moment to stop
		after  func(t *testing.T, l *logical.Loop) // checks after the stop
		grace  time.Duration
		ignore bool // something ignores Stopping: the stop takes the whole grace
	}
	for _, tc := range []struct {
		name string
		make func(t *testing.T) setup
	}{
		{"during backfill", func(t *testing.T) setup {
			const n = 100000
			gen := logicaltest.NewGenerator(n)
			gen.Step = time.Millisecond
			gen.Base = time.Now().Add(-2 * time.Hour) // every message is older than the window: backfill throughout
			cfg := fastConfig(t, logicaltest.NewRecorder())
			cfg.BackfillWindow = time.Hour
			return setup{cfg: cfg, lc: &logical.LoopConfig{Dialect: gen, LoopName: "stress", TargetSchema: "s"},
				grace: 5 * time.Second,
				ready: func(t *testing.T, l *logical.Loop) {
					waitForSeq(t, l, 100)
					require.True(t, l.Stats().Backfilling)
				},
				after: func(t *testing.T, l *logical.Loop) {
					assert.Less(t, seqOf(l), n-1, "the stop came before the backfill finished")
				}}
		}},
		{"during a lease wait", func(t *testing.T) setup {
			d := &busyLessor{Generator: logicaltest.NewGenerator(10), asked: make(chan struct{}, 1)}
			return setup{cfg: fastConfig(t, logicaltest.NewRecorder()), lc: &logical.LoopConfig{Dialect: d, LoopName: "stress", TargetSchema: "s"},
				grace: 5 * time.Second,
				ready: func(t *testing.T, _ *logical.Loop) { waitChan(t, d.asked, "Acquire") },
				after: func(t *testing.T, l *logical.Loop) {
					assert.Equal(t, int64(0), d.Calls().ReadInto, "nothing ran without the lease")
				}}
		}},
		{"during a blocked Memo.Put", func(t *testing.T) setup {
			memo := &stuckMemo{entered: make(chan struct{}, 1)}
			memo.free.Store(5)
			cfg := fastConfig(t, logicaltest.NewRecorder())
			cfg.Memo = memo
			return setup{cfg: cfg, lc: &logical.LoopConfig{Dialect: logicaltest.NewGenerator(100), LoopName: "stress", TargetSchema: "s"},
				grace: 300 * time.Millisecond, ignore: true,
				ready: func(t *testing.T, _ *logical.Loop) { waitChan(t, memo.entered, "the blocked Put") },
				after: func(t *testing.T, l *logical.Loop) {
					assert.Equal(t, 4, seqOf(l), "the point is the last one persisted")
				}}
		}},
		{"during a target that never returns (serial)", func(t *testing.T) setup {
			entered := make(chan struct{}, 1)
			target := logicaltest.NewRecorder()
			target.Hook = func(ctx context.Context, _ logical.Table, _ []logical.Mutation) error {
				select {
				case entered <- struct{}{}:
				default:
				}
				<-ctx.Done()
				return ctx.Err()
			}
			return setup{cfg: fastConfig(t, target), lc: &logical.LoopConfig{Dialect: logicaltest.NewGenerator(100), LoopName: "stress", TargetSchema: "s"},
				grace: 300 * time.Millisecond, ignore: true,
				ready: func(t *testing.T, _ *logical.Loop) { waitChan(t, entered, "the blocked Apply") },
				after: func(t *testing.T, l *logical.Loop) {
					assert.Equal(t, -1, seqOf(l))
					assert.Zero(t, target.Commits())
				}}
		}},
		{"during a target that never returns (fan)", func(t *testing.T) setup {
			entered := make(chan struct{}, 1)
			target := logicaltest.NewRecorder()
			target.Hook = func(ctx context.Context, _ logical.Table, _ []logical.Mutation) error {
				select {
				case entered <- struct{}{}:
				default:
				}
				<-ctx.Done()
				return ctx.Err()
			}
			cfg := fastConfig(t, target)
			cfg.Immediate = true
			return setup{cfg: cfg, lc: &logical.LoopConfig{Dialect: logicaltest.NewGenerator(100), LoopName: "stress", TargetSchema: "s"},
				grace: 300 * time.Millisecond, ignore: true,
				ready: func(t *testing.T, _ *logical.Loop) { waitChan(t, entered, "the blocked Apply") },
				after: func(t *testing.T, l *logical.Loop) { assert.Equal(t, -1, seqOf(l)) }}
		}},
		{"while Process is mid-batch and watches Stopping", func(t *testing.T) setup {
			d := &midBatch{probe: *newProbe(), cooperative: true, inBatch: make(chan struct{}), rollbackErr: make(chan error, 1)}
			target := logicaltest.NewRecorder()
			return setup{cfg: fastConfig(t, target), lc: &logical.LoopConfig{Dialect: d, LoopName: "stress", TargetSchema: "s"},
				grace: 5 * time.Second,
				ready: func(t *testing.T, _ *logical.Loop) { waitChan(t, d.inBatch, "the open batch") },
				after: func(t *testing.T, _ *logical.Loop) {
					assert.NoError(t, <-d.rollbackErr, "the open batch rolls back cleanly")
					assert.Zero(t, target.Commits())
					assert.Zero(t, target.Count(logical.Table{Schema: "s", Name: "t"}))
				}}
		}},
		{"while Process is mid-batch and ignores Stopping", func(t *testing.T) setup {
			d := &midBatch{probe: *newProbe(), inBatch: make(chan struct{}), rollbackErr: make(chan error, 1)}
			target := logicaltest.NewRecorder()
			cfg := fastConfig(t, target)
			cfg.Immediate = true
			return setup{cfg: cfg, lc: &logical.LoopConfig{Dialect: d, LoopName: "stress", TargetSchema: "s"},
				grace: 300 * time.Millisecond, ignore: true,
				ready: func(t *testing.T, _ *logical.Loop) { waitChan(t, d.inBatch, "the open batch") },
				after: func(t *testing.T, _ *logical.Loop) {
					assert.NoError(t, <-d.rollbackErr, "the open batch rolls back after the loop cancelled it")
				}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leak := goroutines(t)
			s := tc.make(t)
			f, err := logical.NewFactory(context.Background(), s.cfg)
			require.NoError(t, err)
			l, err := f.Start(s.lc)
			require.NoError(t, err)
			s.ready(t, l)

			start := time.Now()
			f.Stop(s.grace)
			waitStopped(t, l)
			require.NoError(t, f.Wait())
			took := time.Since(start)
			assert.Less(t, took, s.grace+stopMargin, "the stop took too long")
			if s.ignore {
				assert.GreaterOrEqual(t, took, s.grace, "the loop cancelled before the grace period ended")
			}
			s.after(t, l)
			leak()
		})
	}
}
