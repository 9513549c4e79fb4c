package fan

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"
)

// fuzzItem is what the fuzzed queue carries: a key, a unique id in the
// order of Add calls, whether applying it fails, and whether its apply
// closes the queue (the first such one does, and waits until Close began).
type fuzzItem struct {
	key   uint8
	id    int
	fail  bool
	close bool
}

var errApply = errors.New("apply failed")

// applied is one item as Apply saw it.
type applied struct {
	table uint8
	item  fuzzItem
}

// fuzzBatch is the model of one batch.
type fuzzBatch struct {
	b        *Batch[uint8, fuzzItem]
	items    []applied // added, in order
	ended    bool
	ok       bool // committed without error
	doneSeen int  // items of the batch applied when it ended
	// CommitAsync: result receives the callback's error, and doneSeen
	// is set when it comes.
	async  bool
	result chan error
}

// flushCheck is a successful Flush, to be checked once the results of
// the batches committed with CommitAsync before it are known: those that
// succeeded were applied whole when Flush returned.
type flushCheck struct {
	applied map[int]bool
	before  []*fuzzBatch
}

// FuzzQueue drives a queue with a random sequence of Begin, Add,
// AddOrdered, Flush, Commit, CommitAsync and Rollback over up to three open
// batches (one goroutine, as the loop does), with merged Applies
// (MaxApply), and checks it against a simple model:
//   - items of one table and key are applied in the order they were added,
//     each at most once;
//   - after a successful Flush or Commit every item the batch added so far
//     is applied; an error is the apply error of one of its own items;
//   - a batch that rolled back or failed has, per key, applied a prefix of
//     its items (never a later one without the earlier), and nothing of a
//     batch is applied once Commit or Rollback returned;
//   - a batch refuses Add, Flush and Commit once ended; no bytes are left;
//   - a CommitAsync callback comes once: nil once every item is applied,
//     else an apply error as for Commit; a successful Flush returns after
//     every batch committed with CommitAsync before it that succeeds is
//     applied whole (whatever the keys);
//   - table 2 is ordered from its first AddOrdered on: its items from
//     then on are applied in the order added, after every earlier one;
//   - an item may close the queue while it is applied (as Process ending
//     closes it with applies under way): batches still used go on, their
//     own goroutine applying them, and every CommitAsync callback still
//     comes, ErrClosed allowed from then on.
func FuzzQueue(f *testing.F) {
	f.Add([]byte{0, 1, 0, 2, 0, 3, 2, 0, 3, 0}, uint8(2), uint8(2), uint16(4))
	f.Add([]byte{0, 5, 8, 5, 0, 6, 4, 0, 3, 0, 3, 8}, uint8(1), uint8(1), uint16(1))
	f.Add([]byte{0, 0xff, 0, 1, 0, 2, 3, 0, 5, 9, 0, 1, 2, 0}, uint8(3), uint8(3), uint16(64))
	f.Add([]byte{5, 0, 0, 4, 8, 4, 16, 4, 0, 4, 4, 0, 12, 0, 20, 0}, uint8(4), uint8(1), uint16(2))
	// ApplyMany (the high bit of workers): small batches over the three
	// tables, committed asynchronously, with merged applies.
	f.Add([]byte{0, 0, 0, 1, 0, 2, 5, 1, 0, 4, 0, 5, 0, 6, 5, 1, 0, 0, 0, 1, 0, 2, 2, 0}, uint8(0x80), uint8(3), uint16(0x00ff))
	f.Add([]byte{0, 4, 0xe0, 5, 0, 0xff, 5, 1, 0, 8, 0xe0, 9, 0, 10, 5, 1, 2, 0}, uint8(0x82), uint8(3), uint16(0x70))
	// Lanes of one table taken along (the high bit of chunk).
	f.Add([]byte{0, 4, 0, 5, 0, 6, 5, 1, 0, 8, 0, 9, 0, 12, 5, 1, 3, 0}, uint8(1), uint8(0x83), uint16(0x00ff))
	// Closed during an apply that a Commit gathered with a lane of a batch
	// committed with CommitAsync, behind which another one queued.
	f.Add([]byte{0, 4, 13, 1, 8, 0xfe, 3, 0, 0, 4, 5, 1, 0, 8}, uint8(1), uint8(0x83), uint16(0x00ff))
	f.Fuzz(func(t *testing.T, ops []byte, workers, chunk uint8, limit uint16) {
		if len(ops) > 400 {
			ops = ops[:400]
		}
		var mu sync.Mutex
		var log []applied
		var bad string // a malformed ApplyMany call
		var q *Queue[uint8, fuzzItem]
		var closeOnce sync.Once
		closing := false                 // an item started Close; under mu
		closeDone := make(chan struct{}) // closed once that Close returned
		logLocked := func(table uint8, items []fuzzItem) error {
			var err error
			for _, it := range items {
				log = append(log, applied{table, it})
				if it.fail {
					err = errApply
				}
				if it.close {
					closeOnce.Do(func() {
						closing = true
						go func() { q.Close(); close(closeDone) }()
						// Until Close began (it takes q.mu, which
						// no apply holds).
						for deadline := time.Now().Add(20 * time.Second); ; {
							q.mu.Lock()
							c := q.closed
							q.mu.Unlock()
							if c {
								break
							}
							if time.Now().After(deadline) {
								bad = "Close did not begin"
								break
							}
							runtime.Gosched()
						}
					})
				}
			}
			return err
		}
		var applyMany func(context.Context, []Part[uint8, fuzzItem]) error
		if workers&0x80 != 0 {
			// Lanes of several tables applied together, as one unit.
			applyMany = func(_ context.Context, parts []Part[uint8, fuzzItem]) error {
				mu.Lock()
				defer mu.Unlock()
				seen := make(map[uint8]bool)
				var err error
				for _, p := range parts {
					if seen[p.Table] || len(p.Items) == 0 {
						bad = fmt.Sprintf("ApplyMany: table %d twice or empty in %v", p.Table, parts)
					}
					seen[p.Table] = true
					if e := logLocked(p.Table, p.Items); e != nil {
						err = e
					}
				}
				if len(parts) < 2 {
					bad = "ApplyMany with fewer than 2 tables"
				}
				return err
			}
		}
		q = New(context.Background(), Config[uint8, fuzzItem]{
			Apply: func(_ context.Context, table uint8, items []fuzzItem) error {
				mu.Lock()
				defer mu.Unlock()
				return logLocked(table, items)
			},
			ApplyMany: applyMany,
			Hash:      func(it fuzzItem) uint64 { return uint64(it.key) * 0x9e3779b97f4a7c15 },
			Size:      func(fuzzItem) int { return 1 },
			Workers:   int(workers%4) + 1,
			Chunk:     int(chunk%4) + 1,
			MaxApply:  int(limit>>4) % 9, // 0: Chunk
			Limit:     int64(limit%16) + 1,
		})
		defer q.Close()
		if applyMany != nil || chunk&0x80 != 0 {
			// Lanes taken along as with a slow target.
			q.mu.Lock()
			q.gatherAlways = true
			q.mu.Unlock()
		}

		appliedIDs := func() map[int]bool {
			mu.Lock()
			defer mu.Unlock()
			out := make(map[int]bool, len(log))
			for _, a := range log {
				out[a.item.id] = true
			}
			return out
		}
		// op bounds every call, so a deadlock fails instead of hanging.
		op := func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 20*time.Second)
		}
		mustAll := func(fb *fuzzBatch, what string) {
			got := appliedIDs()
			for _, a := range fb.items {
				if !got[a.item.id] {
					t.Fatalf("%s returned nil but item %d (table %d key %d) is not applied", what, a.item.id, a.table, a.item.key)
				}
			}
		}
		var allBatches []*fuzzBatch
		all := &allBatches
		// checkErr: an error must be the apply error of a failing item
		// applied already: one of the batch's own, or of another batch
		// whose chunks the same lane applied in one merged Apply call
		// (Config.MaxApply), which fails every batch in it.
		checkErr := func(_ *fuzzBatch, what string, err error) {
			if !errors.Is(err, errApply) {
				t.Fatalf("%s: unexpected error %v", what, err)
			}
			got := appliedIDs()
			for _, b := range *all {
				for _, a := range b.items {
					if a.item.fail && got[a.item.id] {
						return
					}
				}
			}
			t.Fatalf("%s failed although no failing item was applied", what)
		}
		countOf := func(fb *fuzzBatch) int {
			got := appliedIDs()
			n := 0
			for _, a := range fb.items {
				if got[a.item.id] {
					n++
				}
			}
			return n
		}

		var slots [3]*fuzzBatch
		nextID := 0
		firstOrdered := -1 // the first id added to table 2 with AddOrdered
		var asyncs []*fuzzBatch
		var flushes []flushCheck
		for i := 0; i+1 < len(ops); i += 2 {
			code, arg := ops[i], ops[i+1]
			slot := int(code>>3) % len(slots)
			fb := slots[slot]
			if fb != nil && code%8 == 5 && arg&1 == 1 {
				// CommitAsync
				if !fb.ended {
					fb.ended, fb.async, fb.result = true, true, make(chan error, 1)
					asyncs = append(asyncs, fb)
					fb := fb
					fb.b.CommitAsync(func(err error) {
						fb.doneSeen = countOf(fb)
						fb.result <- err
					})
				}
				continue
			}
			if fb == nil || code%8 == 5 {
				fb = &fuzzBatch{b: q.Begin()}
				slots[slot] = fb
				*all = append(*all, fb)
			}
			ctx, cancel := op()
			switch code % 8 {
			case 0, 1, 6, 7: // Add 1..4 items of one table
				table := arg % 3
				n := int(code>>5)%4 + 1
				items := make([]fuzzItem, n)
				for j := range items {
					items[j] = fuzzItem{key: (arg>>2 + uint8(j)) % 8, id: nextID, fail: arg == 0xff && j == 0,
						close: arg == 0xfe && j == 0}
					nextID++
				}
				var err error
				if table == 2 && arg&2 != 0 {
					err = fb.b.AddOrdered(ctx, table, items)
					if err == nil && firstOrdered < 0 && !fb.ended {
						firstOrdered = items[0].id
					}
				} else {
					err = fb.b.Add(ctx, table, items)
				}
				switch {
				case fb.ended:
					if !errors.Is(err, ErrEnded) {
						t.Fatalf("Add after the batch ended: got %v, want ErrEnded", err)
					}
				case err != nil:
					checkErr(fb, "Add", err)
				default:
					for _, it := range items {
						fb.items = append(fb.items, applied{table, it})
					}
				}
			case 2: // Flush
				err := fb.b.Flush(ctx)
				switch {
				case fb.ended:
					if !errors.Is(err, ErrEnded) {
						t.Fatalf("Flush after the batch ended: got %v, want ErrEnded", err)
					}
				case err != nil:
					checkErr(fb, "Flush", err)
				default:
					mustAll(fb, "Flush")
					flushes = append(flushes, flushCheck{applied: appliedIDs(), before: append([]*fuzzBatch(nil), asyncs...)})
				}
			case 3: // Commit
				err := fb.b.Commit(ctx)
				switch {
				case fb.ended:
					if !errors.Is(err, ErrEnded) {
						t.Fatalf("Commit after the batch ended: got %v, want ErrEnded", err)
					}
				case err != nil:
					checkErr(fb, "Commit", err)
				default:
					mustAll(fb, "Commit")
					fb.ok = true
				}
				if !fb.ended {
					fb.ended, fb.doneSeen = true, countOf(fb)
				}
			case 4: // Rollback
				if err := fb.b.Rollback(ctx); err != nil {
					t.Fatalf("Rollback: %v", err)
				}
				if !fb.ended {
					fb.ended, fb.doneSeen = true, countOf(fb)
				}
			}
			cancel()
		}
		for _, fb := range *all {
			if !fb.ended {
				ctx, cancel := op()
				if err := fb.b.Rollback(ctx); err != nil {
					t.Fatalf("final Rollback: %v", err)
				}
				cancel()
				fb.ended, fb.doneSeen = true, countOf(fb)
			}
		}
		for i, fb := range asyncs {
			select {
			case err := <-fb.result:
				mu.Lock()
				closed := closing
				mu.Unlock()
				switch {
				case err == nil:
					mustAll(fb, "CommitAsync")
					fb.ok = true
				case closed && errors.Is(err, ErrClosed):
					// dropped: only a prefix per key is applied
				default:
					checkErr(fb, "CommitAsync", err)
				}
			case <-time.After(20 * time.Second):
				t.Fatalf("the CommitAsync callback of batch %d never came", i)
			}
		}
		for _, f := range flushes {
			for _, fb := range f.before {
				if !fb.ok {
					continue
				}
				for _, a := range fb.items {
					if !f.applied[a.item.id] {
						t.Fatalf("Flush returned before item %d of a batch committed with CommitAsync before it was applied", a.item.id)
					}
				}
			}
		}
		mu.Lock()
		closed := closing
		mu.Unlock()
		if closed {
			select {
			case <-closeDone:
			case <-time.After(20 * time.Second):
				t.Fatal("Close did not return")
			}
		}
		if b := q.Bytes(); b != 0 {
			t.Fatalf("%d bytes left in the queue after every batch ended", b)
		}

		// Per table and key: increasing ids, so in Add order and each
		// item at most once.
		mu.Lock()
		if bad != "" {
			mu.Unlock()
			t.Fatal(bad)
		}
		last := make(map[[2]uint8]int)
		for _, a := range log {
			k := [2]uint8{a.table, a.item.key}
			if prev, ok := last[k]; ok && a.item.id <= prev {
				mu.Unlock()
				t.Fatalf("table %d key %d: item %d applied after item %d", a.table, a.item.key, a.item.id, prev)
			}
			last[k] = a.item.id
		}
		// Table 2 from its first AddOrdered on.
		if firstOrdered >= 0 {
			seenOrdered, lastOrdered := false, -1
			for _, a := range log {
				if a.table != 2 {
					continue
				}
				if a.item.id >= firstOrdered {
					if a.item.id <= lastOrdered {
						mu.Unlock()
						t.Fatalf("table 2: item %d applied after item %d, both added once it was ordered", a.item.id, lastOrdered)
					}
					seenOrdered, lastOrdered = true, a.item.id
				} else if seenOrdered {
					mu.Unlock()
					t.Fatalf("table 2: item %d, added before it was ordered, applied after item %d", a.item.id, lastOrdered)
				}
			}
		}
		mu.Unlock()

		got := appliedIDs()
		for i, fb := range *all {
			if n := countOf(fb); n != fb.doneSeen {
				t.Fatalf("batch %d: %d items applied after it ended (%d when it ended)", i, n-fb.doneSeen, fb.doneSeen)
			}
			if fb.ok {
				continue
			}
			// Per key, what was applied is a prefix of what was added.
			gap := make(map[[2]uint8]int)
			for _, a := range fb.items {
				k := [2]uint8{a.table, a.item.key}
				if got[a.item.id] {
					if at, ok := gap[k]; ok {
						t.Fatalf("batch %d, table %d key %d: item %d applied although the earlier item %d was not",
							i, a.table, a.item.key, a.item.id, at)
					}
				} else if _, ok := gap[k]; !ok {
					gap[k] = a.item.id
				}
			}
		}
	})
}
