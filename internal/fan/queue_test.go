package fan

import (
	"context"
	"errors"
	"sync"
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

// TestApplyManyGathersLanes holds the only worker in its first apply
// while small batches queue items on the lanes of three tables, then lets
// it go: the lanes ready together must be applied in ApplyMany calls of
// several tables, every item once, and each key's items in the order they
// were added, across batches.
func TestApplyManyGathersLanes(t *testing.T) {
	type item struct{ key, id int }
	gate := make(chan struct{})
	var mu sync.Mutex
	var log [][2]int // table, id
	keyOf := make(map[int]int)
	manyCalls, tablesInMany := 0, 0
	first := true
	record := func(table int, items []item) {
		for _, it := range items {
			log = append(log, [2]int{table, it.id})
		}
	}
	q := New(context.Background(), Config[int, item]{
		Apply: func(_ context.Context, table int, items []item) error {
			mu.Lock()
			wait := first
			first = false
			mu.Unlock()
			if wait {
				<-gate
			}
			mu.Lock()
			defer mu.Unlock()
			record(table, items)
			return nil
		},
		ApplyMany: func(_ context.Context, parts []Part[int, item]) error {
			mu.Lock()
			defer mu.Unlock()
			manyCalls++
			tablesInMany += len(parts)
			for _, p := range parts {
				record(p.Table, p.Items)
			}
			return nil
		},
		Hash:     func(it item) uint64 { return uint64(it.key) },
		Size:     func(item) int { return 1 },
		Workers:  1,
		Chunk:    100, // gathered lanes hold up to a chunk's worth
		MaxApply: 200,
		Limit:    1 << 30,
	})
	defer q.Close()
	q.mu.Lock()
	q.gatherAlways = true // as with a slow target, without timing
	q.mu.Unlock()
	ctx := context.Background()
	results := make(chan error, 100)
	commit := func(b *Batch[int, item]) { b.CommitAsync(func(err error) { results <- err }) }
	id := 0
	add := func(b *Batch[int, item], table, key int) {
		id++
		mu.Lock()
		keyOf[id] = key
		mu.Unlock()
		if err := b.Add(ctx, table, []item{{key: key, id: id}}); err != nil {
			t.Fatalf("Add: %v", err)
		}
	}
	b := q.Begin()
	add(b, 0, 0)
	commit(b)
	// Wait (bounded) until the worker holds lane 0 of table 0 in its
	// first apply.
	waitLocked(t, q, "the worker to start the first apply", func() bool { return q.tables[0][0].busy })
	const batches = 40
	for i := range batches {
		b := q.Begin()
		for table := range 3 {
			add(b, table, (i+table)%5)
			add(b, table, (i*7+table)%5)
		}
		commit(b)
	}
	close(gate)
	for range batches + 1 {
		select {
		case err := <-results:
			if err != nil {
				t.Fatalf("CommitAsync: %v", err)
			}
		case <-time.After(time.Minute):
			t.Fatal("a CommitAsync callback never came")
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if manyCalls == 0 || tablesInMany < 2*manyCalls {
		t.Fatalf("ApplyMany called %d times with %d tables in all; want calls of several tables", manyCalls, tablesInMany)
	}
	if len(log) != id {
		t.Fatalf("applied %d items, want %d", len(log), id)
	}
	last := make(map[[2]int]int)
	for _, a := range log {
		k := [2]int{a[0], keyOf[a[1]]}
		if prev, ok := last[k]; ok && a[1] <= prev {
			t.Fatalf("table %d key %d: item %d applied after item %d", k[0], k[1], a[1], prev)
		}
		last[k] = a[1]
	}
}

// TestCloseDuringGatheredApply closes the queue while a waiting batch's
// Commit applies its lane together with a lane of a batch committed with
// CommitAsync, and a third batch, also committed with CommitAsync, has
// queued behind on that lane meanwhile. Close dropped what nobody ran,
// but that lane was busy then; the goroutine that gathered it stops once
// its own batch is done, so it must end what is left on the lane itself
// (ErrClosed) before its Commit returns, or that callback never comes.
func TestCloseDuringGatheredApply(t *testing.T) {
	type item struct{ key, id int }
	gateW, gateA := make(chan struct{}), make(chan struct{})
	inW, inA := make(chan struct{}, 2), make(chan struct{})
	q := New(context.Background(), Config[int, item]{
		Apply: func(_ context.Context, table int, items []item) error {
			for _, it := range items {
				switch it.id {
				case 1, 2: // held by the two workers
					inW <- struct{}{}
					<-gateW
				case 3: // A's, gathered with B's by B's Commit
					close(inA)
					<-gateA
				}
			}
			return nil
		},
		Hash:    func(it item) uint64 { return uint64(it.key) },
		Size:    func(item) int { return 1 },
		Workers: 2, // and two lanes per table: keys 0 and 1
		Chunk:   10,
		Limit:   1 << 30,
	})
	q.mu.Lock()
	q.gatherAlways = true
	q.mu.Unlock()
	ctx := context.Background()
	wait := func(ch <-chan struct{}, what string) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(time.Minute):
			t.Fatalf("%s did not happen", what)
		}
	}
	add := func(table, key, id int) *Batch[int, item] {
		t.Helper()
		b := q.Begin()
		if err := b.Add(ctx, table, []item{{key: key, id: id}}); err != nil {
			t.Fatalf("Add %d: %v", id, err)
		}
		return b
	}
	type result struct {
		name string
		err  error
	}
	results := make(chan result, 4)
	commitAsync := func(b *Batch[int, item], name string) {
		b.CommitAsync(func(err error) { results <- result{name, err} })
	}
	// Both workers busy on tables of their own.
	commitAsync(add(8, 0, 1), "W1")
	commitAsync(add(9, 0, 2), "W2")
	wait(inW, "the first worker's apply")
	wait(inW, "the second worker's apply")
	// A's lane is ready first; B's Commit takes it and B's own along.
	commitAsync(add(0, 1, 3), "A")
	b := add(0, 0, 4)
	committed := make(chan error, 1)
	go func() { committed <- b.Commit(ctx) }()
	wait(inA, "the gathered apply of A and B")
	// C queues behind A on the busy lane.
	commitAsync(add(0, 1, 5), "C")
	closed := make(chan struct{})
	go func() { q.Close(); close(closed) }()
	waitLocked(t, q, "Close to start", func() bool { return q.closed })
	close(gateW) // the workers finish and exit; Close drops what is idle
	wait(closed, "Close")
	close(gateA)
	select {
	case err := <-committed:
		if err != nil {
			t.Fatalf("Commit: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Commit did not return")
	}
	got := make(map[string]error)
	for len(results) > 0 {
		r := <-results
		got[r.name] = r.err
	}
	for _, name := range []string{"W1", "W2", "A", "C"} {
		err, ok := got[name]
		switch {
		case !ok:
			t.Errorf("the CommitAsync callback of %s had not come when Commit returned", name)
		case name == "C" && err != nil && !errors.Is(err, ErrClosed):
			t.Errorf("%s: %v, want nil or ErrClosed", name, err)
		case name != "C" && err != nil:
			t.Errorf("%s: %v", name, err)
		}
	}
	if n := q.Bytes(); n != 0 {
		t.Errorf("%d bytes left in the closed queue", n)
	}
}

// waitLocked polls cond under q.mu until it holds, and fails the test
// naming what if it does not within a minute.
func waitLocked[T comparable, M any](t *testing.T, q *Queue[T, M], what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		q.mu.Lock()
		ok := cond()
		q.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
