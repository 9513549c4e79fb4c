package logical_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/logical-go/logical"
	"github.com/logical-go/logical/logicaltest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// streamOnly is a dialect without BackfillInto: it hides the generator's.
type streamOnly struct{ d logical.Dialect }

func (s streamOnly) ReadInto(ctx context.Context, ch chan<- logical.Message, st logical.State) error {
	return s.d.ReadInto(ctx, ch, st)
}
func (s streamOnly) Process(ctx context.Context, ch <-chan logical.Message, ev logical.Events) error {
	return s.d.Process(ctx, ch, ev)
}
func (s streamOnly) ZeroStamp() logical.Stamp { return s.d.ZeroStamp() }

// instant is a dialect whose ReadInto returns nil at once and whose
// Process runs body.
type instant struct {
	body func(ev logical.Events) error
}

func (d *instant) ReadInto(context.Context, chan<- logical.Message, logical.State) error { return nil }
func (d *instant) Process(_ context.Context, _ <-chan logical.Message, ev logical.Events) error {
	if d.body == nil {
		return nil
	}
	return d.body(ev)
}
func (d *instant) ZeroStamp() logical.Stamp { return &logicaltest.Stamp{Seq: -1} }

// fakeEvents is an Events whose batches do nothing.
type fakeEvents struct{ logical.State }

func (fakeEvents) OnBegin(context.Context) (logical.Batch, error) { return nopBatch{}, nil }
func (fakeEvents) Backfill(context.Context, string, logical.Backfiller) error {
	return nil
}

type nopBatch struct{}

func (nopBatch) Flush(context.Context) error { return nil }
func (nopBatch) OnCommit(context.Context) <-chan error {
	ch := make(chan error, 1)
	ch <- nil
	close(ch)
	return ch
}
func (nopBatch) OnData(context.Context, string, logical.Table, []logical.Mutation) error { return nil }
func (nopBatch) OnRollback(context.Context) error                                        { return nil }

// faultPattern calls ReadInto n times from one goroutine and returns which
// calls failed.
func faultPattern(t *testing.T, d logical.Dialect, n int) []bool {
	t.Helper()
	out := make([]bool, n)
	for i := range out {
		err := d.ReadInto(context.Background(), nil, nil)
		if err != nil {
			require.ErrorIs(t, err, logical.ErrChaos)
			out[i] = true
		}
	}
	return out
}

func TestWithChaos(t *testing.T) {
	t.Run("zero probability returns the dialect itself", func(t *testing.T) {
		gen := logicaltest.NewGenerator(1)
		assert.Same(t, gen, logical.WithChaos(gen, 0))
		assert.Same(t, gen, logical.WithChaosSeed(gen, -1, 7))
	})

	t.Run("keeps Backfiller only if the dialect has it", func(t *testing.T) {
		_, ok := logical.WithChaos(logicaltest.NewGenerator(1), 0.5).(logical.Backfiller)
		assert.True(t, ok, "a Backfiller stays a Backfiller")
		_, ok = logical.WithChaos(streamOnly{logicaltest.NewGenerator(1)}, 0.5).(logical.Backfiller)
		assert.False(t, ok, "no Backfiller is made up")
	})

	t.Run("always a Lessor", func(t *testing.T) {
		for _, d := range []logical.Dialect{logicaltest.NewGenerator(1), streamOnly{logicaltest.NewGenerator(1)}} {
			lessor, ok := logical.WithChaosSeed(d, 0.001, 1).(logical.Lessor)
			require.True(t, ok, "%T wrapped is a Lessor", d)
			lease, err := lessor.Acquire(context.Background())
			require.NoError(t, err, "with seed 1 the first call is no fault")
			require.NotNil(t, lease)
			assert.NoError(t, lease.Context().Err())
			lease.Release()
		}
	})

	t.Run("the same seed gives the same faults", func(t *testing.T) {
		const calls = 200
		a := faultPattern(t, logical.WithChaosSeed(&instant{}, 0.3, 42), calls)
		b := faultPattern(t, logical.WithChaosSeed(&instant{}, 0.3, 42), calls)
		c := faultPattern(t, logical.WithChaosSeed(&instant{}, 0.3, 43), calls)
		assert.Equal(t, a, b)
		assert.NotEqual(t, a, c, "another seed, other faults")
		assert.Contains(t, a, true)
		assert.Contains(t, a, false)
	})

	t.Run("every injected error wraps ErrChaos", func(t *testing.T) {
		d := logical.WithChaosSeed(logicaltest.NewGenerator(1), 1, 5)
		assert.ErrorIs(t, d.ReadInto(context.Background(), nil, nil), logical.ErrChaos)
		assert.ErrorIs(t, d.Process(context.Background(), nil, nil), logical.ErrChaos)
		assert.ErrorIs(t, d.(logical.Backfiller).BackfillInto(context.Background(), nil, nil), logical.ErrChaos)
		_, err := d.(logical.Lessor).Acquire(context.Background())
		require.Error(t, err)
		var busy *logical.LeaseBusyError
		if !errors.As(err, &busy) {
			assert.ErrorIs(t, err, logical.ErrChaos)
		}
	})

	t.Run("busy leases expire almost at once", func(t *testing.T) {
		d := logical.WithChaosSeed(logicaltest.NewGenerator(1), 1, 9).(logical.Lessor)
		var sawBusy, sawErr bool
		for i := 0; i < 100 && !(sawBusy && sawErr); i++ {
			_, err := d.Acquire(context.Background())
			require.Error(t, err)
			if busy, ok := logical.IsLeaseBusy(err); ok {
				sawBusy = true
				assert.WithinDuration(t, time.Now(), busy.Expiration, time.Minute)
			} else {
				sawErr = true
				assert.ErrorIs(t, err, logical.ErrChaos)
			}
		}
		assert.True(t, sawBusy, "Acquire returns *LeaseBusyError sometimes")
		assert.True(t, sawErr, "Acquire returns ErrChaos sometimes")
	})

	t.Run("Events and Batch calls fail too", func(t *testing.T) {
		var beginFaults, dataFaults, ok int
		body := func(ev logical.Events) error {
			for i := 0; i < 100; i++ {
				b, err := ev.OnBegin(context.Background())
				if err != nil {
					require.ErrorIs(t, err, logical.ErrChaos)
					beginFaults++
					continue
				}
				if err := b.OnData(context.Background(), "s", scriptIn, nil); err != nil {
					require.ErrorIs(t, err, logical.ErrChaos)
					dataFaults++
				} else {
					ok++
				}
				_ = b.OnRollback(context.Background())
			}
			return nil
		}
		d := logical.WithChaosSeed(&instant{body: body}, 0.3, 11)
		for i := 0; i < 50; i++ {
			if err := d.Process(context.Background(), nil, fakeEvents{}); err == nil {
				break
			}
		}
		assert.Positive(t, beginFaults, "OnBegin faults")
		assert.Positive(t, dataFaults, "OnData faults")
		assert.Positive(t, ok, "calls that pass")
	})
}
