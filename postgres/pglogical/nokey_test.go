package pglogical

import (
	"context"
	"testing"

	"github.com/jackc/pglogrepl"
	"github.com/logical-go/logical"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestNoKeyMeta checks which mutations carry logical.MetaNoKey (fan mode
// then keeps their table on one shard): those of a relation with REPLICA
// IDENTITY FULL, or without a key, and not those of a keyed one; an
// insert keeps MetaInsert beside it.
func TestNoKeyMeta(t *testing.T) {
	cols := func(flags uint8) []*pglogrepl.RelationMessageColumn {
		return []*pglogrepl.RelationMessageColumn{{Flags: flags, Name: "id"}, {Flags: flags, Name: "v"}}
	}
	tuple := &pglogrepl.TupleData{Columns: []*pglogrepl.TupleDataColumn{
		{DataType: pglogrepl.TupleDataTypeText, Data: []byte("1")},
		{DataType: pglogrepl.TupleDataTypeText, Data: []byte("x")},
	}}
	for _, tc := range []struct {
		name  string
		rel   *pglogrepl.RelationMessage
		noKey bool
	}{
		{"full", &pglogrepl.RelationMessage{RelationID: 1, Namespace: "public", RelationName: "f", ReplicaIdentity: 'f', Columns: cols(1)}, true},
		{"nothing", &pglogrepl.RelationMessage{RelationID: 1, Namespace: "public", RelationName: "n", ReplicaIdentity: 'n', Columns: cols(0)}, true},
		{"keyed", &pglogrepl.RelationMessage{RelationID: 1, Namespace: "public", RelationName: "k", ReplicaIdentity: 'd',
			Columns: []*pglogrepl.RelationMessageColumn{{Flags: 1, Name: "id"}, {Name: "v"}}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			p := &processor{d: testDialect(t, Config{}), events: newFakeEvents(false, 0), rels: map[uint32]*relation{}, sources: map[logical.Table]string{}}
			require.NoError(t, p.handleWAL(ctx, tc.rel))
			require.NoError(t, p.handleWAL(ctx, &pglogrepl.BeginMessage{FinalLSN: 100}))
			require.NoError(t, p.handleWAL(ctx, &pglogrepl.InsertMessage{RelationID: 1, Tuple: tuple}))
			require.NoError(t, p.handleWAL(ctx, &pglogrepl.DeleteMessage{RelationID: 1, OldTupleType: 'K', OldTuple: tuple}))
			require.Len(t, p.pending, 2)
			for i, m := range p.pending {
				noKey, _ := m.Meta[logical.MetaNoKey].(bool)
				assert.Equal(t, tc.noKey, noKey, "mutation %d: MetaNoKey", i)
			}
			insert, _ := p.pending[0].Meta[logical.MetaInsert].(bool)
			assert.True(t, insert, "the insert keeps MetaInsert")
		})
	}
}
