// Package backoff computes retry delays: exponential with jitter, capped,
// and reset after a healthy period.
package backoff

import (
	"math/rand/v2"
	"sync"
	"time"
)

// Policy hands out the delays before successive retries. It is safe for
// concurrent use.
type Policy struct {
	base, max time.Duration

	mu   sync.Mutex
	last time.Duration // the previous delay; zero after a reset
	rand func() float64
}

// New returns a Policy whose first delay is base and whose delays never
// exceed max. With max equal to base every delay is base.
func New(base, max time.Duration) *Policy {
	if max < base {
		max = base
	}
	return &Policy{base: base, max: max, rand: rand.Float64}
}

// WithRand replaces the jitter source (values in [0, 1)), for tests.
func (p *Policy) WithRand(r func() float64) *Policy {
	p.rand = r
	return p
}

// Next returns the delay before the next retry: base first, then about
// twice the previous delay (plus up to 25% jitter), never above max.
func (p *Policy) Next() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	var d time.Duration
	if p.last == 0 {
		d = p.base
	} else {
		d = 2 * p.last
		d += time.Duration(float64(d) * 0.25 * p.rand())
	}
	if d > p.max || d <= 0 {
		d = p.max
	}
	p.last = d
	return d
}

// Reset makes the next delay base again. Call it after a healthy period.
func (p *Policy) Reset() {
	p.mu.Lock()
	p.last = 0
	p.mu.Unlock()
}
