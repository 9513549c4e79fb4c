package pglogical

import (
	"context"
	"testing"

	"github.com/jackc/pglogrepl"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDecodeUnknownType(t *testing.T) {
	m, err := decode([]byte{'X', 1, 2, 3})
	require.NoError(t, err)
	p := &processor{d: &Dialect{}, rels: map[uint32]*relation{}}
	err = p.handle(context.Background(), m)
	require.ErrorContains(t, err, `'X'`)

	_, err = decode([]byte{byte(pglogrepl.MessageTypeBegin), 1}) // truncated
	assert.Error(t, err)
	_, err = decode(nil)
	assert.Error(t, err)
}

func TestRowAndKeyJSON(t *testing.T) {
	rel := &relation{source: "public.t", name: "t", columns: []string{"id", "big", "n"}, key: []int{0}}
	tuple := &pglogrepl.TupleData{Columns: []*pglogrepl.TupleDataColumn{
		{DataType: pglogrepl.TupleDataTypeText, Data: []byte(`7`)},
		{DataType: pglogrepl.TupleDataTypeToast},
		{DataType: pglogrepl.TupleDataTypeNull},
	}}
	data, err := rowJSON(rel, tuple)
	require.NoError(t, err)
	assert.JSONEq(t, `{"id":"7","n":null}`, string(data), "unchanged TOAST values are left out")
	key, err := keyJSON(rel, tuple)
	require.NoError(t, err)
	assert.JSONEq(t, `["7"]`, string(key))

	rel.key = []int{1}
	_, err = keyJSON(rel, tuple)
	assert.ErrorContains(t, err, `"big"`)
}

func TestNewValidates(t *testing.T) {
	for _, cfg := range []Config{
		{Slot: "s", Publications: []string{"p"}},
		{SourceConn: "postgres://h/db", Publications: []string{"p"}},
		{SourceConn: "postgres://h/db", Slot: "s"},
		{SourceConn: "postgres://h/db", Slot: "s", Publications: []string{""}},
		{SourceConn: "postgres://h/db", Slot: "s", Publications: []string{"p"}, StandbyTimeout: -1},
	} {
		_, err := New(cfg)
		assert.Error(t, err, "%+v", cfg)
	}
	d, err := New(Config{SourceConn: "postgres://u:secret@h/db", Slot: "s", Publications: []string{"p"}})
	require.NoError(t, err)
	assert.Equal(t, DefaultStandbyTimeout, d.cfg.PointEvery)
	assert.NotContains(t, d.String(), "secret")
}
