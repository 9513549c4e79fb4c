package pglogical

import (
	"context"
	"encoding/json"
	"io"
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
