package fan

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// fuzzItem is what the fuzzed queue carries: a key, a unique id in the
// order of Add calls, and whether applying it fails.
type fuzzItem struct {
	key  uint8
	id   int
	fail bool
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
}

// FuzzQueue drives a queue with a random sequence of Begin, Add, Flush,
// Commit and Rollback over up to three open batches (one goroutine, as the
// loop does) and checks it against a simple model:
//   - items of one table and key are applied in the order they were added,
//     each at most once;
//   - after a successful Flush or Commit every item the batch added so far
//     is applied; an error is the apply error of one of its own items;
//   - a batch that rolled back or failed has, per key, applied a prefix of
//     its items (never a later one without the earlier), and nothing of a
//     batch is applied once Commit or Rollback returned;
//   - a batch refuses Add, Flush and Commit once ended; no bytes are left.
func FuzzQueue(f *testing.F) {
	f.Add([]byte{0, 1, 0, 2, 0, 3, 2, 0, 3, 0}, uint8(2), uint8(2), uint16(4))
	f.Add([]byte{0, 5, 8, 5, 0, 6, 4, 0, 3, 0, 3, 8}, uint8(1), uint8(1), uint16(1))
	f.Add([]byte{0, 0xff, 0, 1, 0, 2, 3, 0, 5, 9, 0, 1, 2, 0}, uint8(3), uint8(3), uint16(64))
	f.Add([]byte{5, 0, 0, 4, 8, 4, 16, 4, 0, 4, 4, 0, 12, 0, 20, 0}, uint8(4), uint8(1), uint16(2))
	f.Fuzz(func(t *testing.T, ops []byte, workers, chunk uint8, limit uint16) {
		if len(ops) > 400 {
			ops = ops[:400]
		}
		var mu sync.Mutex
		var log []applied
		q := New(context.Background(), Config[uint8, fuzzItem]{
			Apply: func(_ context.Context, table uint8, items []fuzzItem) error {
				mu.Lock()
				defer mu.Unlock()
				var err error
				for _, it := range items {
					log = append(log, applied{table, it})
					if it.fail {
						err = errApply
					}
				}
				return err
			},
			Hash:    func(it fuzzItem) uint64 { return uint64(it.key) * 0x9e3779b97f4a7c15 },
			Size:    func(fuzzItem) int { return 1 },
			Workers: int(workers%4) + 1,
			Chunk:   int(chunk%4) + 1,
			Limit:   int64(limit%16) + 1,
		})
		defer q.Close()

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
		// checkErr: an error must be the apply error of one of the
		// batch's own items, applied already.
		checkErr := func(fb *fuzzBatch, what string, err error) {
			if !errors.Is(err, errApply) {
				t.Fatalf("%s: unexpected error %v", what, err)
			}
			got := appliedIDs()
			for _, a := range fb.items {
				if a.item.fail && got[a.item.id] {
					return
				}
			}
			t.Fatalf("%s failed although none of the batch's failing items was applied", what)
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
		var all []*fuzzBatch
		nextID := 0
		for i := 0; i+1 < len(ops); i += 2 {
			code, arg := ops[i], ops[i+1]
			slot := int(code>>3) % len(slots)
			fb := slots[slot]
			if fb == nil || code%8 == 5 {
				fb = &fuzzBatch{b: q.Begin()}
				slots[slot] = fb
				all = append(all, fb)
			}
			ctx, cancel := op()
			switch code % 8 {
			case 0, 1, 6, 7: // Add 1..4 items of one table
				table := arg % 3
				n := int(code>>5)%4 + 1
				items := make([]fuzzItem, n)
				for j := range items {
					items[j] = fuzzItem{key: (arg>>2 + uint8(j)) % 8, id: nextID, fail: arg == 0xff && j == 0}
					nextID++
				}
				err := fb.b.Add(ctx, table, items)
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
		for _, fb := range all {
			if !fb.ended {
				ctx, cancel := op()
				if err := fb.b.Rollback(ctx); err != nil {
					t.Fatalf("final Rollback: %v", err)
				}
				cancel()
				fb.ended, fb.doneSeen = true, countOf(fb)
			}
		}
		if b := q.Bytes(); b != 0 {
			t.Fatalf("%d bytes left in the queue after every batch ended", b)
		}

		// Per table and key: increasing ids, so in Add order and each
		// item at most once.
		mu.Lock()
		last := make(map[[2]uint8]int)
		for _, a := range log {
			k := [2]uint8{a.table, a.item.key}
			if prev, ok := last[k]; ok && a.item.id <= prev {
				mu.Unlock()
				t.Fatalf("table %d key %d: item %d applied after item %d", a.table, a.item.key, a.item.id, prev)
			}
			last[k] = a.item.id
		}
		mu.Unlock()

		got := appliedIDs()
		for i, fb := range all {
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
