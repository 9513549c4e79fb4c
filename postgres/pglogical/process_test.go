package pglogical

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/logical-go/logical"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDecodeUnknownType(t *testing.T) {
	m, err := decode(new(rowDecoder), []byte{'X', 1, 2, 3})
	require.NoError(t, err)
	p := &processor{d: &Dialect{}, rels: map[uint32]*relation{}}
	err = p.handle(context.Background(), m)
	require.ErrorContains(t, err, `'X'`)

	_, err = decode(new(rowDecoder), []byte{byte(pglogrepl.MessageTypeBegin), 1}) // truncated
	assert.Error(t, err)
	_, err = decode(new(rowDecoder), nil)
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

func TestAppendJSONStringMatchesEncodingJSON(t *testing.T) {
	for _, s := range []string{
		"", "plain", `quo"te`, `back\slash`, "tab\tnew\nline\rcr", "\x00\x01\x1f\x7f",
		"<html>&amp;", "ünïcødé ✓ 𝄞", "\u2028\u2029", "bad \xff utf8 \xe2\x82", "trailing \xc3",
	} {
		t.Run(s, func(t *testing.T) {
			got := appendJSONString([]byte("x"), []byte(s))
			require.Equal(t, byte('x'), got[0], "appends to what is there")
			got = got[1:]
			require.True(t, json.Valid(got), "valid JSON: %s", got)
			want, err := json.Marshal(s)
			require.NoError(t, err)
			var gotS, wantS string
			require.NoError(t, json.Unmarshal(got, &gotS))
			require.NoError(t, json.Unmarshal(want, &wantS))
			assert.Equal(t, wantS, gotS, "decodes to what encoding/json's encoding decodes to")
		})
	}
}

func TestRowJSONQuotesColumnNames(t *testing.T) {
	rel := &relation{source: "public.t", name: "t", columns: []string{`we"ird`, "ok"}, key: []int{1}}
	tuple := &pglogrepl.TupleData{Columns: []*pglogrepl.TupleDataColumn{
		{DataType: pglogrepl.TupleDataTypeText, Data: []byte("a\"b")},
		{DataType: pglogrepl.TupleDataTypeText, Data: []byte(`1`)},
	}}
	for range 2 { // the second time from the cached names
		data, err := rowJSON(rel, tuple)
		require.NoError(t, err)
		assert.JSONEq(t, `{"we\"ird":"a\"b","ok":"1"}`, string(data))
	}
	tuple.Columns[0].DataType = 'b'
	_, err := rowJSON(rel, tuple)
	assert.ErrorContains(t, err, `unsupported format`)
}

// progressSpy records the OnData calls of a batch.
type progressSpy struct {
	logical.Batch
	muts []logical.Mutation
}

func (b *progressSpy) OnData(_ context.Context, _ string, _ logical.Table, muts []logical.Mutation) error {
	b.muts = append(b.muts, muts...)
	return nil
}

type fixedProgress struct{}

func (fixedProgress) Table() logical.Table { return logical.Table{Schema: "s", Name: "progress"} }
func (fixedProgress) Applied(context.Context, string) (string, bool, error) {
	return "", false, nil
}

// The progress row is put together by hand; it must say what
// encoding/json would.
func TestRecordProgressRow(t *testing.T) {
	for _, slot := range []string{"slot_1", `we"ird\ slot <&>`} {
		p := &processor{d: &Dialect{cfg: Config{Slot: slot, Progress: fixedProgress{}}}}
		spy := &progressSpy{}
		require.NoError(t, p.record(context.Background(), spy, 0x1_0000_00AB, time.Time{}))
		require.NoError(t, p.record(context.Background(), spy, 0xFFFFFFFF_FFFFFFFF, time.Time{}))
		require.Len(t, spy.muts, 2)
		for i, want := range []string{"1/AB", "FFFFFFFF/FFFFFFFF"} {
			var key []string
			require.NoError(t, json.Unmarshal(spy.muts[i].Key, &key), "key %s", spy.muts[i].Key)
			assert.Equal(t, []string{slot}, key)
			var data map[string]string
			require.NoError(t, json.Unmarshal(spy.muts[i].Data, &data), "data %s", spy.muts[i].Data)
			assert.Equal(t, map[string]string{"key": slot, "lsn": want}, data)
		}
		assert.Equal(t, uint64(0xFFFFFFFF_FFFFFFFF), p.recorded)
	}
}
