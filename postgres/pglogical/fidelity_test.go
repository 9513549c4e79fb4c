package pglogical

import (
	"testing"

	"github.com/jackc/pglogrepl"
	"github.com/logical-go/logical"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// targetDB is the part of logical.Events that relation handling uses.
type targetDB struct {
	logical.Events
	schema string
}

func (s targetDB) GetTargetDB() string { return s.schema }

func TestTargetSchema(t *testing.T) {
	m := map[string]string{"s1": "a"}
	assert.Equal(t, "a", TargetSchema("s1", m, "x"), "mapped")
	assert.Equal(t, "x", TargetSchema("s2", m, "x"), "the loop's target schema")
	assert.Equal(t, "s2", TargetSchema("s2", m, ""), "the source's own")
}

// TestRelationCollision checks that two source tables that would land in
// one target table are an error naming both, and that a relation sent
// again (after a reconnect, or changed) is not.
func TestRelationCollision(t *testing.T) {
	rel := func(id uint32, schema string) *pglogrepl.RelationMessage {
		return &pglogrepl.RelationMessage{RelationID: id, Namespace: schema, RelationName: "dup",
			Columns: []*pglogrepl.RelationMessageColumn{{Name: "id", Flags: 1}}}
	}
	p := &processor{d: &Dialect{cfg: Config{SchemaMap: map[string]string{"s2": "s1"}}}, events: targetDB{},
		rels: map[uint32]*relation{}, sources: map[logical.Table]string{}}
	require.NoError(t, p.relation(rel(1, "s1")))
	require.NoError(t, p.relation(rel(1, "s1")), "the same relation again")
	require.NoError(t, p.relation(rel(3, "s3")))
	err := p.relation(rel(2, "s2"))
	assert.ErrorContains(t, err, "s1.dup and s2.dup")
}

// TestFullOldRowFillsUnchanged checks that the full old row (REPLICA
// IDENTITY FULL) supplies the unchanged TOAST values of the new one, and
// that the key of an old key-only tuple becomes a JSON object.
func TestFullOldRowFillsUnchanged(t *testing.T) {
	text := func(s string) *pglogrepl.TupleDataColumn {
		return &pglogrepl.TupleDataColumn{DataType: pglogrepl.TupleDataTypeText, Data: []byte(s)}
	}
	toast := &pglogrepl.TupleDataColumn{DataType: pglogrepl.TupleDataTypeToast}
	rel := &relation{source: "public.t", name: "t", columns: []string{"id", "big"}, key: []int{0}}
	old := &pglogrepl.TupleData{Columns: []*pglogrepl.TupleDataColumn{text("1"), text("large")}}
	new := &pglogrepl.TupleData{Columns: []*pglogrepl.TupleDataColumn{text("2"), toast}}
	data, err := rowJSON(rel, withOldValues(new, old))
	require.NoError(t, err)
	assert.JSONEq(t, `{"id":"2","big":"large"}`, string(data))
	assert.Equal(t, pglogrepl.TupleDataTypeToast, new.Columns[1].DataType, "the new tuple itself is unchanged")

	key, err := keyObjectJSON(rel, old)
	require.NoError(t, err)
	assert.JSONEq(t, `{"id":"1"}`, string(key))
}
