package pglogical

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/logical-go/logical"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// keepingEvents hands out batches that keep what OnData gives them and
// append to it, as a batch that owns the mutations may.
type keepingEvents struct {
	*fakeEvents
	kept [][]logical.Mutation
}

func (e *keepingEvents) OnBegin(context.Context) (logical.Batch, error) {
	return &keepingBatch{fakeBatch: &fakeBatch{e: e.fakeEvents}, e: e}, nil
}

type keepingBatch struct {
	*fakeBatch
	e *keepingEvents
}

func (b *keepingBatch) OnData(_ context.Context, _ string, _ logical.Table, muts []logical.Mutation) error {
	b.e.kept = append(b.e.kept, append(muts, logical.Mutation{Data: []byte(`"appended"`)}))
	return nil
}

// TestFlushHandsOverItsOwnMutations checks that the mutations of each
// flush stay as they were handed over while Process queues the next ones
// in the same array, even when the batch appends to them.
func TestFlushHandsOverItsOwnMutations(t *testing.T) {
	ctx := context.Background()
	events := &keepingEvents{fakeEvents: newFakeEvents(false, 0)}
	p := &processor{d: testDialect(t, Config{}), events: events, rels: map[uint32]*relation{}, sources: map[logical.Table]string{}}
	for id, name := range []string{"a", "b"} {
		require.NoError(t, p.handleWAL(ctx, &pglogrepl.RelationMessage{RelationID: uint32(id), Namespace: "public", RelationName: name,
			ReplicaIdentity: 'd', Columns: []*pglogrepl.RelationMessageColumn{{Flags: 1, Name: "id"}}}))
	}
	require.NoError(t, p.handleWAL(ctx, &pglogrepl.BeginMessage{FinalLSN: 100}))
	// The tables alternate: every row is a flush of its own, and more
	// rows than one array holds.
	rows := 3*pendingChunk + 5
	for i := range rows {
		tuple := &pglogrepl.TupleData{Columns: []*pglogrepl.TupleDataColumn{
			{DataType: pglogrepl.TupleDataTypeText, Data: fmt.Appendf(nil, "%d", i)}}}
		require.NoError(t, p.handleWAL(ctx, &pglogrepl.InsertMessage{RelationID: uint32(i % 2), Tuple: tuple}))
	}
	require.NoError(t, p.flush(ctx))
	require.Len(t, events.kept, rows)
	for i, muts := range events.kept {
		require.Len(t, muts, 2)
		assert.JSONEq(t, fmt.Sprintf(`{"id":"%d"}`, i), string(muts[0].Data), "flush %d", i)
		assert.Equal(t, `"appended"`, string(muts[1].Data), "flush %d: what the batch appended was overwritten", i)
	}
}

// TestRecordHandsOverItsOwnRows checks that the progress rows, whose data
// and slices are carved from shared arrays, stay as they were handed over
// while later ones are recorded, even when the batch appends to them.
func TestRecordHandsOverItsOwnRows(t *testing.T) {
	ctx := context.Background()
	events := &keepingEvents{fakeEvents: newFakeEvents(false, 0)}
	p := &processor{d: testDialect(t, Config{Progress: fakeProgress{}}), events: events, rels: map[uint32]*relation{}, sources: map[logical.Table]string{}}
	batch, err := events.OnBegin(ctx)
	require.NoError(t, err)
	var appended [][]byte
	rows := 3 * pendingChunk
	for i := range rows {
		require.NoError(t, p.record(ctx, batch, uint64(i+1)<<8, time.Unix(1, 0)))
		last := events.kept[len(events.kept)-1]
		appended = append(appended, append(last[0].Data, "garbage"...))
	}
	require.Len(t, events.kept, rows)
	for i, muts := range events.kept {
		require.Len(t, muts, 2)
		assert.JSONEq(t, fmt.Sprintf(`{"key":"s","lsn":"%s"}`, FormatLSN(uint64(i+1)<<8)), string(muts[0].Data), "row %d", i)
		assert.Equal(t, `"appended"`, string(muts[1].Data), "row %d: what the batch appended was overwritten", i)
		assert.Equal(t, string(muts[0].Data)+"garbage", string(appended[i]), "row %d", i)
	}
}
