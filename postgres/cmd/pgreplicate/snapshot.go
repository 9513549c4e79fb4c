package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/logical-go/logical"
	"github.com/logical-go/logical/postgres/pglogical"
	"github.com/logical-go/logical/postgres/pgstore"
	"github.com/sirupsen/logrus"
)

// snapshotOptions are the flags of the initial copy.
type snapshotOptions struct {
	enabled      bool
	workers      int
	chunkRows    int
	poll         time.Duration
	createTables bool
}

// snapshotFlags registers the flags of the initial copy.
func snapshotFlags(fs *flag.FlagSet, o *snapshotOptions) {
	fs.BoolVar(&o.enabled, "snapshot", false, "copy the existing rows of the published tables first (and of tables that join the publication later), and add columns added at the source to the target")
	fs.IntVar(&o.workers, "snapshotWorkers", pglogical.DefaultSnapshotWorkers, "chunks copied in parallel during a snapshot")
	fs.IntVar(&o.chunkRows, "snapshotChunkRows", pglogical.DefaultSnapshotChunkRows, "rows per chunk of a snapshot")
	fs.DurationVar(&o.poll, "snapshotPoll", pglogical.DefaultSnapshotPollEvery, "how often to look for tables that joined the publication")
	fs.BoolVar(&o.createTables, "createTables", false, "with --snapshot: create missing target tables from the source's columns and primary key")
}

// check validates the flags.
func (o *snapshotOptions) check() error {
	switch {
	case o.workers < 1:
		return usageError{fmt.Sprintf("--snapshotWorkers must be at least 1, got %d", o.workers)}
	case o.chunkRows < 1:
		return usageError{fmt.Sprintf("--snapshotChunkRows must be at least 1, got %d", o.chunkRows)}
	case o.poll <= 0:
		return usageError{fmt.Sprintf("--snapshotPoll must be positive, got %s", o.poll)}
	case o.createTables && !o.enabled:
		return usageError{"--createTables needs --snapshot"}
	}
	return nil
}

// snapshotConfig returns the dialect's snapshot configuration, nil
// without --snapshot.
func snapshotConfig(ctx context.Context, o *options, pool *pgxpool.Pool, log logrus.FieldLogger) (*pglogical.SnapshotConfig, error) {
	if !o.snap.enabled {
		return nil, nil
	}
	store, err := pgstore.NewSnapshots(ctx, pool, o.stagingSchema)
	if err != nil {
		return nil, err
	}
	return &pglogical.SnapshotConfig{
		Store:        snapshotStore{store},
		Key:          o.loopName,
		Workers:      o.snap.workers,
		ChunkRows:    o.snap.chunkRows,
		PollEvery:    o.snap.poll,
		CreateTables: o.snap.createTables,
		Logger:       log,
	}, nil
}

// snapshotStore adapts pgstore.Snapshots to pglogical.SnapshotStore (the
// two packages do not import each other).
type snapshotStore struct{ *pgstore.Snapshots }

var _ pglogical.SnapshotStore = snapshotStore{}

func (s snapshotStore) Load(ctx context.Context, key string) ([]pglogical.SnapshotRecord, error) {
	recs, err := s.Snapshots.Load(ctx, key)
	out := make([]pglogical.SnapshotRecord, len(recs))
	for i, r := range recs {
		out[i] = pglogical.SnapshotRecord(r)
	}
	return out, err
}

func (s snapshotStore) Plan(ctx context.Context, key, table string, chunks []pglogical.SnapshotRecord) error {
	in := make([]pgstore.SnapshotChunk, len(chunks))
	for i, c := range chunks {
		in[i] = pgstore.SnapshotChunk(c)
	}
	return s.Snapshots.Plan(ctx, key, table, in)
}

func (s snapshotStore) SetSpec(ctx context.Context, key, table string, n int, spec json.RawMessage) error {
	return s.Snapshots.SetSpec(ctx, key, table, n, spec)
}

func (s snapshotStore) Copy(ctx context.Context, key, table string, n int, target logical.Table, where string,
	columns []string, rows io.Reader) (int64, error) {
	return s.Snapshots.Copy(ctx, key, table, n, target, where, columns, rows)
}

var _ pglogical.SnapshotIndexer = snapshotStore{}

func (s snapshotStore) DeferrableIndexes(ctx context.Context, table logical.Table) ([]pglogical.SnapshotIndex, bool, error) {
	in, empty, err := s.Snapshots.DeferrableIndexes(ctx, table)
	out := make([]pglogical.SnapshotIndex, len(in))
	for i, x := range in {
		out[i] = pglogical.SnapshotIndex(x)
	}
	return out, empty, err
}

func (s snapshotStore) DropIndexes(ctx context.Context, table logical.Table, indexes []pglogical.SnapshotIndex) error {
	return s.Snapshots.DropIndexes(ctx, table, storeIndexes(indexes))
}

func (s snapshotStore) RestoreIndexes(ctx context.Context, table logical.Table, indexes []pglogical.SnapshotIndex) error {
	return s.Snapshots.RestoreIndexes(ctx, table, storeIndexes(indexes))
}

func storeIndexes(in []pglogical.SnapshotIndex) []pgstore.SnapshotIndex {
	out := make([]pgstore.SnapshotIndex, len(in))
	for i, x := range in {
		out[i] = pgstore.SnapshotIndex(x)
	}
	return out
}

var _ pglogical.SnapshotBinaryCopier = snapshotStore{}
