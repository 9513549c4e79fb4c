package logical

import (
	"context"
	"sync"
	"time"

	"github.com/pkg/errors"
)

// Stats is a snapshot of a loop's metrics.
type Stats struct {
	// LoopName is the loop's name.
	LoopName string
	// CommitsOK and CommitsFailed count batch commits.
	CommitsOK, CommitsFailed uint64
	// Point is the last persisted consistent point, PointTime its time
	// (for a TimeStamp) and PointOffset its offset (for an OffsetStamp).
	Point       Stamp
	PointTime   time.Time
	PointOffset uint64
	// Lag is how far PointTime is behind the clock when the snapshot is
	// taken, so it keeps growing while no new point is set (a stuck or
	// idle loop). Zero while the point has no time.
	Lag time.Duration
	// Backfilling is true while the loop runs in backfill mode.
	Backfilling bool
	// SourceRestarts and ProcessRestarts count failures of either side;
	// Iterations counts loop iterations started.
	SourceRestarts, ProcessRestarts, Iterations uint64
	// LastError is the text of the last error that restarted something,
	// and LastErrorTime when it happened.
	LastError     string
	LastErrorTime time.Time
}

// An Observer is told about changes of each loop's Stats, for example to
// export them as metrics. Observe is called synchronously from the loop's
// goroutines and must be quick. Calls for one loop never overlap, and
// deliver snapshots in the order they were taken: a snapshot that a newer
// one overtook is dropped, so counters never go back. Calls for different
// loops may overlap. While a loop runs, Observe is also called every
// second without a change, so that Lag keeps growing at the observer
// when nothing happens.
type Observer interface {
	Observe(stats Stats)
}

// statsTick is how often a running loop shows its observer a snapshot
// even without a change, so that a growing Lag is seen.
const statsTick = time.Second

// statsKeeper holds a loop's Stats.
type statsKeeper struct {
	mu       sync.Mutex
	s        Stats
	seq      uint64           // snapshots taken for the observer
	now      func() time.Time // the clock for Lag; time.Now
	observer Observer

	deliverMu sync.Mutex // serializes Observe calls
	delivered uint64     // seq of the last snapshot delivered
}

func (k *statsKeeper) init(name string, o Observer) {
	k.s.LoopName = name
	k.observer = o
	k.now = time.Now
}

// update changes the stats under the lock and tells the observer.
func (k *statsKeeper) update(fn func(s *Stats)) {
	k.mu.Lock()
	fn(&k.s)
	if k.observer == nil {
		k.mu.Unlock()
		return
	}
	k.seq++
	seq, snap := k.seq, k.snapshotLocked()
	k.mu.Unlock()
	k.deliver(seq, snap)
}

// deliver shows snap, taken as number seq, to the observer, unless a newer
// snapshot was shown already.
func (k *statsKeeper) deliver(seq uint64, snap Stats) {
	k.deliverMu.Lock()
	defer k.deliverMu.Unlock()
	if seq <= k.delivered {
		return // a newer snapshot overtook this one
	}
	k.delivered = seq
	k.observer.Observe(snap)
}

// tick shows the observer a fresh snapshot, with the current Lag.
func (k *statsKeeper) tick() { k.update(func(*Stats) {}) }

func (k *statsKeeper) snapshot() Stats {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.snapshotLocked()
}

// snapshotLocked returns the stats with Lag as of now. The caller holds
// k.mu.
func (k *statsKeeper) snapshotLocked() Stats {
	s := k.s
	if !s.PointTime.IsZero() {
		s.Lag = k.now().Sub(s.PointTime)
	}
	return s
}

func (k *statsKeeper) setPoint(cp Stamp) {
	k.update(func(s *Stats) {
		s.Point = cp
		s.PointTime = time.Time{}
		if ts, ok := cp.(TimeStamp); ok {
			s.PointTime = ts.AsTime()
		}
		if os, ok := cp.(OffsetStamp); ok {
			s.PointOffset = os.AsOffset()
		}
	})
}

func (k *statsKeeper) commit(err error) {
	k.update(func(s *Stats) {
		if err == nil {
			s.CommitsOK++
		} else {
			s.CommitsFailed++
		}
	})
}

func (k *statsKeeper) iteration(backfilling bool) {
	k.update(func(s *Stats) {
		s.Iterations++
		s.Backfilling = backfilling
	})
}

func (k *statsKeeper) sourceRestart(err error) {
	k.update(func(s *Stats) {
		s.SourceRestarts++
		s.LastError, s.LastErrorTime = err.Error(), time.Now()
	})
}

func (k *statsKeeper) processRestart(err error) {
	k.update(func(s *Stats) {
		s.ProcessRestarts++
		s.LastError, s.LastErrorTime = err.Error(), time.Now()
	})
}

// Stats returns a snapshot of the loop's metrics.
func (l *Loop) Stats() Stats { return l.stats.snapshot() }

// Diagnostic returns a JSON-friendly description of the loop: its
// configuration, stats and consistent point, and the dialect's own
// diagnostic if it implements Diagnoser.
func (l *Loop) Diagnostic() map[string]any {
	cfg := l.factory.cfg
	cp := l.cp.Peek()
	out := map[string]any{
		"loopName":        l.name,
		"targetSchema":    l.cfg.TargetSchema,
		"consistentPoint": stampString(cp),
		"initialPoint":    stampString(l.initial),
		"stats":           l.Stats(),
		"config": map[string]any{
			"applyTimeout":   cfg.ApplyTimeout.String(),
			"backfillWindow": cfg.BackfillWindow.String(),
			"bytesInFlight":  cfg.BytesInFlight,
			"chaosProb":      cfg.ChaosProb,
			"fanShards":      cfg.FanShards,
			"foreignKeys":    cfg.ForeignKeys,
			"immediate":      cfg.Immediate,
			"retryDelay":     cfg.RetryDelay.String(),
			"maxRetryDelay":  cfg.MaxRetryDelay.String(),
			"standbyTimeout": cfg.StandbyTimeout.String(),
		},
	}
	if d, ok := l.dialect.(Diagnoser); ok {
		out["dialect"] = d.Diagnostic()
	}
	return out
}

// A Diagnoser is a Dialect that describes its own state for
// Loop.Diagnostic. The value should marshal to JSON.
type Diagnoser interface {
	Diagnostic() any
}

// metricsBatcher counts commits.
type metricsBatcher struct {
	inner Batcher
	stats *statsKeeper
}

func (e *metricsBatcher) OnBegin(ctx context.Context) (Batch, error) {
	b, err := e.inner.OnBegin(ctx)
	if err != nil {
		return nil, err
	}
	return &metricsBatch{Batch: b, stats: e.stats}, nil
}

type metricsBatch struct {
	Batch
	stats *statsKeeper
}

// commitChain implements chainCommitter if the inner batch does.
func (b *metricsBatch) commitChain(ctx context.Context) (Batch, func() error, bool) {
	cc, ok := b.Batch.(chainCommitter)
	if !ok {
		return nil, nil, false
	}
	next, wait, ok := cc.commitChain(ctx)
	if !ok {
		return nil, nil, false
	}
	counted := func() error {
		err := wait()
		b.stats.commit(err)
		return err
	}
	if next == nil {
		return nil, counted, true
	}
	return &metricsBatch{Batch: next, stats: b.stats}, counted, true
}

func (b *metricsBatch) OnCommit(ctx context.Context) <-chan error {
	err := commitOf(ctx, b.Batch)
	if !errors.Is(err, ErrBatchEnded) { // a second OnCommit commits nothing
		b.stats.commit(err)
	}
	return result1(err)
}
