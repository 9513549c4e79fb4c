package fan

import (
	"context"
	"testing"
	"time"
)

// TestBusyLaneDropsAppliedChunks keeps one lane busy for 2000 chunks (a
// new chunk always arrives before the previous one is applied, so the lane
// never runs dry) and checks that its queue does not keep the applied
// chunks, and that every item is applied once, in order.
func TestBusyLaneDropsAppliedChunks(t *testing.T) {
	const n = 2000
	step := make(chan struct{})
	var q *Queue[int, int]
	var got []int
	maxQueue := 0
	q = New(context.Background(), Config[int, int]{
		Apply: func(_ context.Context, table int, items []int) error {
			<-step
			q.mu.Lock()
			maxQueue = max(maxQueue, len(q.tables[table][0].queue))
			got = append(got, items...)
			q.mu.Unlock()
			return nil
		},
		Hash:    func(int) uint64 { return 0 },
		Size:    func(int) int { return 1 },
		Workers: 1,
		Chunk:   1,
		Limit:   1 << 30,
	})
	defer q.Close()
	ctx := context.Background()
	b := q.Begin()
	deadline := time.After(time.Minute)
	for i := range n {
		if err := b.Add(ctx, 0, []int{i}); err != nil {
			t.Fatalf("Add %d: %v", i, err)
		}
		if i == 0 {
			continue // the worker holds item 0 until the next one is queued
		}
		select {
		case step <- struct{}{}:
		case <-deadline:
			t.Fatalf("apply %d did not start", i-1)
		}
	}
	close(step)
	if err := b.Commit(ctx); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if len(got) != n {
		t.Fatalf("applied %d items, want %d", len(got), n)
	}
	for i, v := range got {
		if v != i {
			t.Fatalf("item %d applied at position %d", v, i)
		}
	}
	// A lane drops applied chunks once they are at least compactAfter and
	// half its queue; without that, it would reach n entries here.
	if limit := 2*compactAfter + 4; maxQueue > limit {
		t.Errorf("a busy lane's queue reached %d entries (applied ones kept), want at most %d", maxQueue, limit)
	}
}
