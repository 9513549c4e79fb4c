package fan

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// orderRecorder is an Apply that records, per table, every item in the
// order applied and whether two applies of one table overlapped. Items
// are sequence numbers; hold delays every apply of table 1 until it is
// closed (nil: no delay).
type orderRecorder struct {
	hold chan struct{}

	mu       sync.Mutex
	running  map[int]int
	overlap  map[int]bool // tables two applies of which overlapped
	got      map[int][]int
	started1 chan struct{} // closed at the first apply of table 1
	once     sync.Once
}

func newOrderRecorder(hold chan struct{}) *orderRecorder {
	return &orderRecorder{hold: hold, running: map[int]int{}, overlap: map[int]bool{}, got: map[int][]int{}, started1: make(chan struct{})}
}

func (r *orderRecorder) apply(ctx context.Context, table int, items []int) error {
	r.mu.Lock()
	r.running[table]++
	if r.running[table] > 1 {
		r.overlap[table] = true
	}
	r.mu.Unlock()
	if table == 1 {
		r.once.Do(func() { close(r.started1) })
		if r.hold != nil {
			select {
			case <-r.hold:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	r.mu.Lock()
	r.got[table] = append(r.got[table], items...)
	r.running[table]--
	r.mu.Unlock()
	return nil
}

// TestAddOrderedKeepsOrderAcrossKeys adds items of many keys to table 1
// with AddOrdered, over several batches, with four workers: they are
// applied in the order added and never by two applies at once, while
// table 2, added with Add, is spread over lanes.
func TestAddOrderedKeepsOrderAcrossKeys(t *testing.T) {
	rec := newOrderRecorder(nil)
	q := New(context.Background(), Config[int, int]{
		Apply:   rec.apply,
		Hash:    func(i int) uint64 { return uint64(i) },
		Size:    func(int) int { return 1 },
		Workers: 4,
		Chunk:   3,
		Limit:   1 << 20,
	})
	defer q.Close()
	ctx := context.Background()
	seq := 0
	var want []int
	for range 20 {
		b := q.Begin()
		for range 5 {
			items := []int{seq, seq + 1, seq + 2, seq + 3}
			seq += 4
			want = append(want, items...)
			require.NoError(t, b.AddOrdered(ctx, 1, items))
			require.NoError(t, b.Add(ctx, 2, []int{seq, seq + 1}))
		}
		require.NoError(t, b.Commit(ctx))
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	assert.Equal(t, want, rec.got[1], "table 1's items in the order added")
	assert.False(t, rec.overlap[1], "applies of table 1 overlapped")
	assert.Equal(t, 1, len(q.tables[1]), "table 1 has one lane")
	assert.Equal(t, 4, len(q.tables[2]), "table 2 keeps its lanes")
}

// TestAddOrderedWaitsForSpreadItems spreads items of table 1 over four
// lanes with Add, holds their applies, and then adds more with AddOrdered
// from a second batch: AddOrdered must not return, nor its items be
// applied, before every earlier item is; afterwards the table has one
// lane and keeps it for Add.
func TestAddOrderedWaitsForSpreadItems(t *testing.T) {
	hold := make(chan struct{})
	rec := newOrderRecorder(hold)
	q := New(context.Background(), Config[int, int]{
		Apply:   rec.apply,
		Hash:    func(i int) uint64 { return uint64(i) },
		Size:    func(int) int { return 1 },
		Workers: 4,
		Chunk:   1,
		Limit:   1 << 20,
	})
	defer q.Close()
	ctx := context.Background()
	first := q.Begin()
	require.NoError(t, first.Add(ctx, 1, []int{0, 1, 2, 3, 4, 5, 6, 7}))
	firstDone := make(chan error, 1)
	go func() { firstDone <- first.Commit(ctx) }()
	select {
	case <-rec.started1:
	case <-time.After(time.Minute):
		t.Fatal("the spread items were not applied")
	}

	second := q.Begin()
	added := make(chan error, 1)
	go func() { added <- second.AddOrdered(ctx, 1, []int{100, 101}) }()
	select {
	case err := <-added:
		t.Fatalf("AddOrdered returned (%v) while earlier items of the table were held", err)
	default:
	}
	close(hold)
	select {
	case err := <-added:
		require.NoError(t, err)
	case <-time.After(time.Minute):
		t.Fatal("AddOrdered did not return after the earlier items were applied")
	}
	require.NoError(t, second.Add(ctx, 1, []int{102, 103}))
	require.NoError(t, second.Commit(ctx))
	require.NoError(t, <-firstDone)

	rec.mu.Lock()
	defer rec.mu.Unlock()
	got := rec.got[1]
	require.Len(t, got, 12)
	assert.ElementsMatch(t, []int{0, 1, 2, 3, 4, 5, 6, 7}, got[:8], "the spread items first")
	assert.Equal(t, []int{100, 101, 102, 103}, got[8:], "then the ordered ones, in order")
	assert.Equal(t, 1, len(q.tables[1]), "the table keeps its single lane")
}

// TestAddOrderedConcurrentBatches adds to one table from several
// goroutines, each its own batch, mixing Add and AddOrdered: every item
// is applied exactly once, and each goroutine's items in its order.
func TestAddOrderedConcurrentBatches(t *testing.T) {
	rec := newOrderRecorder(nil)
	q := New(context.Background(), Config[int, int]{
		Apply:   rec.apply,
		Hash:    func(i int) uint64 { return uint64(i) },
		Size:    func(int) int { return 1 },
		Workers: 3,
		Chunk:   2,
		Limit:   64,
	})
	defer q.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			b := q.Begin()
			for i := range 200 {
				v := g*1000 + i
				var err error
				if i >= 50 || g == 0 {
					err = b.AddOrdered(ctx, 1, []int{v})
				} else {
					err = b.Add(ctx, 1, []int{v})
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- b.Commit(ctx)
		}()
	}
	wg.Wait()
	for range 4 {
		require.NoError(t, <-errs)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	got := rec.got[1]
	require.Len(t, got, 800)
	last := map[int]int{}
	for _, v := range got {
		g := v / 1000
		if prev, ok := last[g]; ok && v%1000 >= 50 && prev > v {
			t.Fatalf("goroutine %d: %d applied after %d", g, v, prev)
		}
		last[g] = v
	}
	seen := map[int]bool{}
	for _, v := range got {
		require.False(t, seen[v], fmt.Sprintf("%d applied twice", v))
		seen[v] = true
	}
}
