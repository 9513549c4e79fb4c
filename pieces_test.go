package logical_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"

	"github.com/logical-go/logical"
	"github.com/logical-go/logical/logicaltest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPieces(t *testing.T) {
	t.Run("Less is strict inclusion, consistent with Compare", func(t *testing.T) {
		empty := &logical.Pieces{}
		a := logical.NewPieces("a")
		ab := logical.NewPieces("a", "b")
		b := logical.NewPieces("b")
		for _, tc := range []struct {
			name string
			x, y logical.Stamp
			want int
		}{
			{"empty before one", empty, a, -1},
			{"subset before superset", a, ab, -1},
			{"superset after subset", ab, a, 1},
			{"equal sets", ab, logical.NewPieces("b", "a"), 0},
			{"disjoint sets are not ordered", a, b, 0},
			{"overlapping sets are not ordered", logical.NewPieces("a", "c"), ab, 0},
			{"nil pieces is the empty set", (*logical.Pieces)(nil), empty, 0},
			{"nil stamp first", nil, empty, -1},
		} {
			t.Run(tc.name, func(t *testing.T) {
				assert.Equal(t, tc.want, logical.Compare(tc.x, tc.y))
				assert.Equal(t, -tc.want, logical.Compare(tc.y, tc.x), "antisymmetric")
			})
		}
		assert.False(t, a.Less(&logicaltest.Stamp{Seq: 1}), "another stamp type is never after")
	})

	t.Run("With returns a new set and leaves the old one", func(t *testing.T) {
		a := logical.NewPieces("a")
		ab := a.With("b")
		assert.Equal(t, []string{"a"}, a.Names())
		assert.Equal(t, []string{"a", "b"}, ab.Names())
		assert.Same(t, ab, ab.With("a", "b"), "nothing new: the same set")
		assert.True(t, ab.Has("b"))
		assert.False(t, a.Has("b"))
		assert.Equal(t, 2, ab.Len())
		assert.Equal(t, "2 pieces", ab.String())
	})

	t.Run("JSON round trip", func(t *testing.T) {
		for _, p := range []*logical.Pieces{{}, logical.NewPieces("x"), logical.NewPieces("public.t/3", "public.t/1", `we"ird`)} {
			buf, err := json.Marshal(p)
			require.NoError(t, err)
			got := &logical.Pieces{}
			require.NoError(t, json.Unmarshal(buf, got))
			assert.Equal(t, p.Names(), got.Names())
			assert.Zero(t, logical.Compare(p, got))
		}
		buf, err := json.Marshal(logical.NewPieces("b", "a"))
		require.NoError(t, err)
		assert.JSONEq(t, `["a","b"]`, string(buf), "sorted, so equal sets persist equal bytes")
		got := logical.NewPieces("old")
		require.NoError(t, json.Unmarshal([]byte(`null`), got))
		assert.Zero(t, got.Len(), "null is the empty set")
	})

	t.Run("bad JSON is an error naming what is wrong", func(t *testing.T) {
		for _, tc := range []struct{ in, want string }{
			{`{"a":1}`, "JSON array of strings"},
			{`[1]`, "JSON array of strings"},
			{`["a","a"]`, `"a" twice`},
		} {
			err := json.Unmarshal([]byte(tc.in), &logical.Pieces{})
			require.Error(t, err, tc.in)
			assert.Contains(t, err.Error(), tc.want)
		}
	})
}

// pieceBackfiller backfills named pieces in parallel, each as one batch
// of one row, and sets the merged set of pieces done as its point after
// each: the shape of a chunked table copy. With hold > 0 it applies that
// many pieces, takes the rest from the channel without applying them,
// and once the channel is closed waits for a stop and returns nil: a
// Process that got everything and finished only part of it.
type pieceBackfiller struct {
	pieces  []string
	workers int
	hold    int
	drained chan struct{} // closed once, with hold, the channel was seen closed
	once    sync.Once

	mu       sync.Mutex
	reserved int
	applied  map[string]int
}

var _ logical.Backfiller = (*pieceBackfiller)(nil)

var piecesTable = logical.Table{Schema: "gen", Name: "pieces"}

func newPieceBackfiller(n, workers, hold int) *pieceBackfiller {
	b := &pieceBackfiller{workers: workers, hold: hold, drained: make(chan struct{}), applied: make(map[string]int)}
	for i := range n {
		b.pieces = append(b.pieces, fmt.Sprintf("piece/%d", i))
	}
	return b
}

func (b *pieceBackfiller) ZeroStamp() logical.Stamp { return &logical.Pieces{} }

func (b *pieceBackfiller) ReadInto(ctx context.Context, ch chan<- logical.Message, state logical.State) error {
	return b.BackfillInto(ctx, ch, state)
}

func (b *pieceBackfiller) BackfillInto(ctx context.Context, ch chan<- logical.Message, state logical.State) error {
	cp, _ := state.GetConsistentPoint()
	done, _ := cp.(*logical.Pieces)
	for _, p := range b.pieces {
		if done.Has(p) {
			continue
		}
		select {
		case ch <- p:
		case <-state.Stopping():
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func (b *pieceBackfiller) Process(ctx context.Context, ch <-chan logical.Message, events logical.Events) error {
	var setMu sync.Mutex // points are set one at a time, each the last plus one piece
	errs := make(chan error, b.workers)
	for range b.workers {
		go func() { errs <- b.work(ctx, ch, events, &setMu) }()
	}
	var first error
	for range b.workers {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

func (b *pieceBackfiller) work(ctx context.Context, ch <-chan logical.Message, events logical.Events, setMu *sync.Mutex) error {
	for {
		var msg logical.Message
		var ok bool
		select {
		case msg, ok = <-ch:
		case <-events.Stopping():
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
		if !ok {
			if b.hold == 0 {
				return nil
			}
			b.once.Do(func() { close(b.drained) })
			select {
			case <-events.Stopping():
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if logical.IsRollback(msg) || !b.reserve() {
			continue
		}
		name := msg.(string)
		batch, err := events.OnBegin(ctx)
		if err != nil {
			return err
		}
		key, _ := json.Marshal([]string{name})
		if err := batch.OnData(ctx, "src", piecesTable, []logical.Mutation{{Key: key, Data: json.RawMessage(`{"v":1}`)}}); err != nil {
			return err
		}
		if err := <-batch.OnCommit(ctx); err != nil {
			return err
		}
		b.note(name)
		setMu.Lock()
		cp, _ := events.GetConsistentPoint()
		err = events.SetConsistentPoint(ctx, cp.(*logical.Pieces).With(name))
		setMu.Unlock()
		if err != nil {
			return err
		}
	}
}

// reserve reports whether a piece may be applied: always without a hold,
// the first hold pieces with one.
func (b *pieceBackfiller) reserve() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.hold > 0 && b.reserved >= b.hold {
		return false
	}
	b.reserved++
	return true
}

func (b *pieceBackfiller) note(name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.applied[name]++
}

func (b *pieceBackfiller) appliedCounts() map[string]int {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[string]int, len(b.applied))
	for k, v := range b.applied {
		out[k] = v
	}
	return out
}

// TestNestedBackfillInPieces: a backfill that applies pieces on several
// goroutines persists the set of pieces done under its name; a stop after
// BackfillInto handed everything over, but before Process applied it, is
// an error (never mistaken for complete), and the next backfill of the
// name copies only the pieces not done.
func TestNestedBackfillInPieces(t *testing.T) {
	const n = 20
	memo := logical.NewMemoryMemo()
	r := logicaltest.NewRecorder()

	// The first run applies a quarter, takes the rest without applying
	// it, and is stopped once the channel is closed: BackfillInto has
	// returned nil by then.
	leak := goroutines(t)
	held := newPieceBackfiller(n, 4, n/4)
	d := newNester("pieces", held)
	cfg := fastConfig(t, r)
	cfg.Memo = memo
	l := startLoop(t, cfg, &logical.LoopConfig{Dialect: d, LoopName: "outer", TargetSchema: "gen"})
	waitChan(t, held.drained, "Process seeing the channel closed")
	l.Stop(waitLong)
	err := waitChan(t, d.result, "the stopped backfill")
	require.Error(t, err, "a Process stopped before it applied what BackfillInto sent is no complete backfill")
	assert.Contains(t, err.Error(), `backfill "pieces": stopped before Process finished`)
	waitStopped(t, l)
	leak()

	buf, err := memo.Get(context.Background(), "pieces")
	require.NoError(t, err)
	stored := &logical.Pieces{}
	require.NoError(t, json.Unmarshal(buf, stored))
	before := held.appliedCounts()
	require.Len(t, before, n/4, "the pieces applied before the stop")
	for p := range before {
		assert.True(t, stored.Has(p), "piece %s applied and persisted", p)
	}
	assert.Equal(t, n/4, stored.Len(), "exactly the pieces applied are persisted")

	// The second run resumes from the stored set: only the rest.
	all := newPieceBackfiller(n, 4, 0)
	d = newNester("pieces", all)
	cfg = fastConfig(t, r)
	cfg.Memo = memo
	l = startLoop(t, cfg, &logical.LoopConfig{Dialect: d, LoopName: "outer2", TargetSchema: "gen"})
	require.NoError(t, waitChan(t, d.result, "the resumed backfill"))
	after := all.appliedCounts()
	for _, p := range all.pieces {
		assert.Equal(t, 1, before[p]+after[p], "piece %s applied exactly once over both runs", p)
	}
	assert.Equal(t, n, r.Count(piecesTable))
	buf, err = memo.Get(context.Background(), "pieces")
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(buf, stored))
	assert.ElementsMatch(t, all.pieces, stored.Names(), "every piece done")
	l.Stop(0)
	waitStopped(t, l)
}

// TestNestedBackfillOfAnotherStamp: a nested backfill whose stamp is of
// another type than the enclosing loop's does not inherit the enclosing
// loop's DefaultConsistentPoint (which it could not parse).
func TestNestedBackfillOfAnotherStamp(t *testing.T) {
	bf := newPieceBackfiller(3, 2, 0)
	d := newNester("other", bf)
	r := logicaltest.NewRecorder()
	startLoop(t, fastConfig(t, r), &logical.LoopConfig{Dialect: d, LoopName: "outer", TargetSchema: "gen", DefaultConsistentPoint: "-1"})
	require.NoError(t, waitChan(t, d.result, "the nested backfill"))
	assert.Equal(t, 3, r.Count(piecesTable))
}
