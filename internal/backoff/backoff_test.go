package backoff

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func fixed(v float64) func() float64 { return func() float64 { return v } }

func delays(p *Policy, n int) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = p.Next()
	}
	return out
}

func TestPolicySequence(t *testing.T) {
	const ms = time.Millisecond
	for _, tc := range []struct {
		name      string
		base, max time.Duration
		rand      float64
		want      []time.Duration
	}{
		{"doubles without jitter up to the cap", 10 * ms, 100 * ms, 0,
			[]time.Duration{10 * ms, 20 * ms, 40 * ms, 80 * ms, 100 * ms, 100 * ms}},
		{"jitter adds up to a quarter of the doubled delay", 10 * ms, time.Second, 0.5,
			// 10, 2*10*1.125, 2*22.5*1.125, ...
			[]time.Duration{10 * ms, 22500 * time.Microsecond, 50625 * time.Microsecond, 113906250 * time.Nanosecond}},
		{"the cap holds with the most jitter", 10 * ms, 30 * ms, 0.999999,
			// 2*10ms*(1+0.25*0.999999), then capped.
			[]time.Duration{10 * ms, time.Duration(float64(20*ms) * (1 + 0.25*0.999999)), 30 * ms, 30 * ms}},
		{"max equal to base is a fixed delay", 50 * ms, 50 * ms, 0.9,
			[]time.Duration{50 * ms, 50 * ms, 50 * ms, 50 * ms, 50 * ms}},
		{"max below base is raised to base", 50 * ms, 10 * ms, 0.9,
			[]time.Duration{50 * ms, 50 * ms, 50 * ms}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := New(tc.base, tc.max).WithRand(fixed(tc.rand))
			assert.Equal(t, tc.want, delays(p, len(tc.want)))
		})
	}
}

func TestPolicyNeverExceedsMax(t *testing.T) {
	p := New(time.Millisecond, time.Minute).WithRand(fixed(0.999999))
	prev := time.Duration(0)
	for i, d := range delays(p, 100) {
		require.LessOrEqual(t, d, time.Minute, "delay %d", i)
		require.GreaterOrEqual(t, d, prev, "delay %d shrank", i)
		prev = d
	}
	assert.Equal(t, time.Minute, prev, "the delays reach the cap and stay there")
}

func TestPolicyReset(t *testing.T) {
	p := New(10*time.Millisecond, time.Second).WithRand(fixed(0))
	delays(p, 5)
	p.Reset()
	assert.Equal(t, []time.Duration{10 * time.Millisecond, 20 * time.Millisecond}, delays(p, 2), "after a reset the sequence starts over")
}

func TestPolicyZeroBase(t *testing.T) {
	// A zero base (never configured by the loop, whose minimum is 1ms)
	// must not loop on zero delays forever: it goes to the cap.
	p := New(0, time.Second).WithRand(fixed(0))
	assert.Equal(t, []time.Duration{time.Second, time.Second}, delays(p, 2))
}

func TestPolicyConcurrentUse(t *testing.T) {
	p := New(time.Millisecond, 50*time.Millisecond)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				d := p.Next()
				assert.True(t, d >= time.Millisecond && d <= 50*time.Millisecond, "delay %v out of bounds", d)
				if d == 50*time.Millisecond {
					p.Reset()
				}
			}
		}()
	}
	wg.Wait()
}
