package logical_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/logical-go/logical"
	"github.com/logical-go/logical/logicaltest"
	"github.com/pkg/errors"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// failTimes is a Process that fails at once, recording when it was called
// and when it returned.
type failTimes struct {
	mu           sync.Mutex
	calls, fails []time.Time
	enough       chan struct{}
	want         int
}

func (f *failTimes) process(context.Context, <-chan logical.Message, logical.Events) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, time.Now())
	if len(f.calls) == f.want {
		close(f.enough)
	}
	f.fails = append(f.fails, time.Now())
	return errors.New("always failing")
}

// gaps returns, for each failure but the last, the time until the next
// call.
func (f *failTimes) gaps() []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []time.Duration
	for i := 0; i+1 < len(f.calls); i++ {
		out = append(out, f.calls[i+1].Sub(f.fails[i]))
	}
	return out
}

// TestRestartBackoff shows the loop's retry delays for a Process that
// always fails: they start at Config.RetryDelay and double up to
// Config.MaxRetryDelay (jitter only lengthens them, so the doubled values
// are lower bounds); with MaxRetryDelay equal to RetryDelay every delay is
// the same.
func TestRestartBackoff(t *testing.T) {
	const ms = time.Millisecond
	for _, tc := range []struct {
		name       string
		base, max  time.Duration
		atLeast    []time.Duration
		fixedBelow time.Duration // if set, every gap stays below it
	}{
		// The backoff resets after a healthy run of MaxRetryDelay; these
		// iterations fail at once, so only a stall of 160ms between a
		// restart and its failure could reset it.
		{"exponential up to the cap", 10 * ms, 160 * ms,
			[]time.Duration{10 * ms, 20 * ms, 40 * ms, 80 * ms, 160 * ms, 160 * ms}, 0},
		// An exponential sequence would reach 30ms*2^5 = 960ms at the
		// sixth gap; a fixed one stays at 30ms, and 900ms leaves a very
		// generous margin for a loaded machine.
		{"MaxRetryDelay equal to RetryDelay is a fixed delay", 30 * ms, 30 * ms,
			[]time.Duration{30 * ms, 30 * ms, 30 * ms, 30 * ms, 30 * ms, 30 * ms}, 900 * ms},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leak := goroutines(t)
			ft := &failTimes{enough: make(chan struct{}), want: len(tc.atLeast) + 1}
			d := newBadDialect()
			d.process = ft.process
			cfg := fastConfig(t, logicaltest.NewRecorder())
			cfg.RetryDelay, cfg.MaxRetryDelay = tc.base, tc.max
			l, err := logical.Start(context.Background(), cfg, &logical.LoopConfig{Dialect: d, LoopName: "backoff"})
			require.NoError(t, err)
			waitChan(t, ft.enough, "the failures")
			l.Stop(0)
			waitStopped(t, l)

			gaps := ft.gaps()
			require.GreaterOrEqual(t, len(gaps), len(tc.atLeast))
			for i, min := range tc.atLeast {
				assert.GreaterOrEqual(t, gaps[i], min, "gap %d of %v", i, gaps)
				if tc.fixedBelow > 0 {
					assert.Less(t, gaps[i], tc.fixedBelow, "gap %d of %v grew", i, gaps)
				}
			}
			assert.GreaterOrEqual(t, l.Stats().ProcessRestarts, uint64(len(tc.atLeast)))
			t.Logf("gaps: %v", gaps)
			leak()
		})
	}
}
