package logical

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/pkg/errors"
)

// monotonicObserver fails the test if a counter it is shown goes back, or
// if two calls overlap.
type monotonicObserver struct {
	t      *testing.T
	mu     sync.Mutex
	last   Stats
	calls  int
	inside bool
}

func (o *monotonicObserver) Observe(s Stats) {
	o.mu.Lock()
	if o.inside {
		o.t.Error("Observe calls of one loop overlap")
	}
	o.inside = true
	last := o.last
	o.mu.Unlock()
	// Widen the window in which a concurrent, newer snapshot could
	// overtake this one.
	for range 100 {
		_ = last.CommitsOK
	}
	if s.CommitsOK < last.CommitsOK || s.CommitsFailed < last.CommitsFailed || s.Iterations < last.Iterations ||
		s.SourceRestarts < last.SourceRestarts || s.ProcessRestarts < last.ProcessRestarts {
		o.t.Errorf("a counter went back: %+v after %+v", s, last)
	}
	o.mu.Lock()
	o.last, o.calls, o.inside = s, o.calls+1, false
	o.mu.Unlock()
}

// TestObserverSeesCountersInOrder: snapshots taken by concurrent updates
// reach the observer in the order they were taken (an older one that lost
// the race is dropped), so an exporter's counter never goes back. The
// snapshot used to be delivered after the lock was released, so an older
// one could arrive last.
func TestObserverSeesCountersInOrder(t *testing.T) {
	obs := &monotonicObserver{t: t}
	var k statsKeeper
	k.init("order", obs)
	const goroutines, updates = 8, 2000
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range updates {
				switch (g + i) % 4 {
				case 0, 1:
					k.commit(nil)
				case 2:
					k.iteration(false)
				default:
					k.setPoint(nil)
				}
			}
		}()
	}
	wg.Wait()
	final := k.snapshot()
	if want := uint64(goroutines * updates / 2); final.CommitsOK != want {
		t.Fatalf("CommitsOK = %d, want %d", final.CommitsOK, want)
	}
	// The last update is always delivered: nothing newer can drop it.
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if obs.last.CommitsOK != final.CommitsOK || obs.last.Iterations != final.Iterations {
		t.Errorf("the observer's last snapshot %+v is not the final one %+v", obs.last, final)
	}
}

// TestLagGrowsWithoutNewPoint: Lag is measured when a snapshot is taken,
// from the last point's time, so it keeps growing while no point is set
// (a stuck loop); it used to stay at the value computed when the point was
// set.
func TestLagGrowsWithoutNewPoint(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	var k statsKeeper
	k.init("lag", nil)
	k.now = func() time.Time { return now }
	k.setPoint(&timedStamp{at: now.Add(-time.Second)})
	if got := k.snapshot().Lag; got != time.Second {
		t.Fatalf("Lag right after the point = %v, want 1s", got)
	}
	now = now.Add(time.Hour)
	if got := k.snapshot().Lag; got != time.Hour+time.Second {
		t.Fatalf("Lag an hour later without a new point = %v, want 1h0m1s", got)
	}
}

// timedStamp is a TimeStamp for these tests.
type timedStamp struct{ at time.Time }

func (s *timedStamp) Less(other Stamp) bool { return s.at.Before(other.(*timedStamp).at) }
func (s *timedStamp) AsTime() time.Time     { return s.at }

// endedBatch is a Batch that has ended already.
type endedBatch struct{ Batch }

func (endedBatch) OnCommit(context.Context) <-chan error { return result1(ErrBatchEnded) }

// A second OnCommit of a batch commits nothing, so it is no failed commit.
func TestMetricsDoNotCountAnEndedBatch(t *testing.T) {
	var k statsKeeper
	b := &metricsBatch{Batch: endedBatch{}, stats: &k}
	if err := <-b.OnCommit(context.Background()); !errors.Is(err, ErrBatchEnded) {
		t.Fatalf("OnCommit of an ended batch: got %v, want ErrBatchEnded", err)
	}
	if s := k.snapshot(); s.CommitsFailed != 0 || s.CommitsOK != 0 {
		t.Errorf("an ended batch's OnCommit was counted: %+v", s)
	}
}
