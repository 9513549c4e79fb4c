package pglogical

import (
	"context"
	"encoding/json"
	"io"
	"sync"
	"testing"

	"github.com/logical-go/logical"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestChunkWhere(t *testing.T) {
	tcs := []struct {
		name string
		spec chunkSpec
		want string
	}{
		{"no key", chunkSpec{}, "true"},
		{"one chunk", chunkSpec{Key: []string{"id"}, Types: []string{"bigint"}}, "true"},
		{"first", chunkSpec{Key: []string{"id"}, Types: []string{"bigint"}, Hi: []string{"100"}},
			`("id") < ('100'::bigint)`},
		{"last", chunkSpec{Key: []string{"id"}, Types: []string{"bigint"}, Lo: []string{"100"}},
			`("id") >= ('100'::bigint)`},
		{"composite, quoted", chunkSpec{Key: []string{"a", `b"c`}, Types: []string{"text", "integer"},
			Lo: []string{"it's", "1"}, Hi: []string{"z", "2"}},
			`("a", "b""c") >= ('it''s'::text, '1'::integer) AND ("a", "b""c") < ('z'::text, '2'::integer)`},
	}
	for _, tc := range tcs {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, tc.spec.where())
		})
	}
}

// nopStore is a SnapshotStore that does nothing.
type nopStore struct{}

func (nopStore) Load(context.Context, string) ([]SnapshotRecord, error)              { return nil, nil }
func (nopStore) Plan(context.Context, string, string, []SnapshotRecord) error        { return nil }
func (nopStore) SetSpec(context.Context, string, string, int, json.RawMessage) error { return nil }
func (nopStore) Start(context.Context, string, string, int) error                    { return nil }
func (nopStore) Copy(context.Context, string, string, int, logical.Table, string, []string, io.Reader) (int64, error) {
	return 0, nil
}
func (nopStore) Columns(context.Context, logical.Table) (map[string]string, bool, error) {
	return nil, false, nil
}
func (nopStore) AddPrimaryKey(context.Context, logical.Table, []string) error   { return nil }
func (nopStore) AddColumn(context.Context, logical.Table, string, string) error { return nil }
func (nopStore) CreateTable(context.Context, logical.Table, []string, []string, []string) error {
	return nil
}

func TestSnapshotConfig(t *testing.T) {
	base := Config{SourceConn: "postgres://h/db", Slot: "s", Publications: []string{"p"}}
	for _, tc := range []struct {
		name string
		snap SnapshotConfig
		want string
	}{
		{"no store", SnapshotConfig{}, "Config.Snapshot.Store is required"},
		{"negative workers", SnapshotConfig{Store: nopStore{}, Workers: -1}, "Config.Snapshot.Workers must not be negative, got -1"},
		{"negative chunk rows", SnapshotConfig{Store: nopStore{}, ChunkRows: -5}, "Config.Snapshot.ChunkRows must not be negative, got -5"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base
			cfg.Snapshot = &tc.snap
			_, err := New(cfg)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	t.Run("defaults", func(t *testing.T) {
		cfg := base
		given := &SnapshotConfig{Store: nopStore{}}
		cfg.Snapshot = given
		d, err := New(cfg)
		require.NoError(t, err)
		got := d.cfg.Snapshot
		assert.Equal(t, "s", got.Key)
		assert.Equal(t, DefaultSnapshotWorkers, got.Workers)
		assert.Equal(t, DefaultSnapshotChunkRows, got.ChunkRows)
		assert.Equal(t, DefaultSnapshotPollEvery, got.PollEvery)
		assert.NotNil(t, got.Logger)
		assert.Zero(t, given.Workers, "the caller's config is not changed")
	})
}

// pointEvents is what snapBackfill.Process uses of the nested loop's
// Events: its point and its stop. Like the loop's, SetConsistentPoint
// fails once its context is cancelled.
type pointEvents struct {
	logical.Events // nil: Process calls nothing else
	stopping       chan struct{}
	mu             sync.Mutex
	cp             *logical.Pieces
}

func (e *pointEvents) Stopping() <-chan struct{} { return e.stopping }

func (e *pointEvents) GetConsistentPoint() (logical.Stamp, <-chan struct{}) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cp, nil
}

func (e *pointEvents) SetConsistentPoint(ctx context.Context, cp logical.Stamp) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.cp = cp.(*logical.Pieces)
	return nil
}

func (e *pointEvents) point() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cp.Names()
}

// TestSnapshotBackfillStop stops the nested backfill while a chunk
// commits: the stop cancels the copy in flight only after its rows and
// done mark committed. The point must still get the chunk (and the one
// the Store had marked done before), or a copy that the stop ended with
// every chunk done would leave the nested point short of the marks for
// good: no later round copies a table whose chunks are all done.
func TestSnapshotBackfillStop(t *testing.T) {
	tbl := &snapTable{name: "public.t", schema: "public", rel: "t"}
	c0, c1 := &snapChunk{n: 0, done: true}, &snapChunk{n: 1}
	tbl.chunks = []*snapChunk{c0, c1}
	ev := &pointEvents{stopping: make(chan struct{}), cp: logical.NewPieces()}
	b := &snapBackfill{
		g:      &snapGate{cfg: &SnapshotConfig{Workers: 2}},
		kick:   make(chan struct{}, 1),
		jobs:   []snapJob{{t: tbl, c: c1}},
		marked: logical.NewPieces(pieceName(tbl, c0)),
	}
	b.open = func(context.Context) (func(context.Context, snapJob) (int64, error), func(), error) {
		copyJob := func(ctx context.Context, j snapJob) (int64, error) {
			// The commit is in; the stop comes and cancels the copy
			// before the worker hands the chunk over.
			close(ev.stopping)
			<-ctx.Done()
			return 7, nil
		}
		return copyJob, func() {}, nil
	}
	ch := make(chan logical.Message, len(b.jobs))
	for _, j := range b.jobs {
		ch <- j
	}
	close(ch)
	err := b.Process(t.Context(), ch, ev)
	require.Error(t, err, "a stop during the copy is an error, never a finished copy")
	assert.Equal(t, []string{"public.t/0", "public.t/1"}, ev.point(),
		"the point holds every chunk that committed before the stop")
	assert.EqualValues(t, 7, b.total)
}
