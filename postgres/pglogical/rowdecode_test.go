package pglogical

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/jackc/pglogrepl"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// testCol is a column of a test tuple: kind 'n', 'u', 't' or 'b'.
type testCol struct {
	kind byte
	val  string
}

// appendTuple appends the pgoutput TupleData of cols.
func appendTuple(buf []byte, cols ...testCol) []byte {
	buf = binary.BigEndian.AppendUint16(buf, uint16(len(cols)))
	for _, c := range cols {
		buf = append(buf, c.kind)
		if c.kind == 't' || c.kind == 'b' {
			buf = binary.BigEndian.AppendUint32(buf, uint32(len(c.val)))
			buf = append(buf, c.val...)
		}
	}
	return buf
}

// rowMessage encodes a pgoutput row change: typ 'I', 'U' or 'D'; oldKind
// 'K' or 'O' with old, or 0 for none.
func rowMessage(typ byte, rel uint32, oldKind byte, old, new []testCol) []byte {
	buf := binary.BigEndian.AppendUint32([]byte{typ}, rel)
	if oldKind != 0 {
		buf = appendTuple(append(buf, oldKind), old...)
	}
	if typ != 'D' {
		buf = appendTuple(append(buf, 'N'), new...)
	}
	return buf
}

// parseWithPglogrepl is pglogrepl.Parse with its panics as errors.
func parseWithPglogrepl(data []byte) (m pglogrepl.Message, err error) {
	defer func() {
		if r := recover(); r != nil {
			m, err = nil, assert.AnError
		}
	}()
	return pglogrepl.Parse(data)
}

func TestRowDecoderMatchesPglogrepl(t *testing.T) {
	t1, t2 := testCol{'t', "1"}, testCol{'t', "zwei"}
	null, toast, empty := testCol{'n', ""}, testCol{'u', ""}, testCol{'t', ""}
	escapes := testCol{'t', "q\"uo\\te\n\t\x00\x01 ünï ✓ \xff"}
	huge := testCol{'t', strings.Repeat("x", 3*bytesChunk)}
	wide := make([]testCol, 2*colsChunk)
	for i := range wide {
		wide[i] = testCol{'t', strings.Repeat("w", i%7)}
	}
	tests := []struct {
		name string
		data []byte
	}{
		{"insert", rowMessage('I', 7, 0, nil, []testCol{t1, t2, null})},
		{"insert of escapes and non-ASCII", rowMessage('I', 7, 0, nil, []testCol{escapes, empty})},
		{"insert of a binary value", rowMessage('I', 7, 0, nil, []testCol{{'b', "\x00\x01\x02"}})},
		{"update without columns", rowMessage('U', 7, 0, nil, nil)},
		{"insert of a huge value", rowMessage('I', 7, 0, nil, []testCol{t1, huge})},
		{"insert of many columns", rowMessage('I', 7, 0, nil, wide)},
		{"update", rowMessage('U', 8, 0, nil, []testCol{t1, toast, null})},
		{"update with the old key", rowMessage('U', 8, 'K', []testCol{t1, null, null}, []testCol{t2, toast, empty})},
		{"update with the old row", rowMessage('U', 8, 'O', []testCol{t1, t2, null}, []testCol{t2, toast, t1})},
		{"update of a huge value", rowMessage('U', 8, 'O', []testCol{t1, huge}, []testCol{t1, huge})},
		{"delete by key", rowMessage('D', 9, 'K', []testCol{t1, null}, nil)},
		{"delete with the old row", rowMessage('D', 9, 'O', []testCol{t1, escapes, null}, nil)},
		{"trailing bytes are ignored", append(rowMessage('I', 7, 0, nil, []testCol{t1}), "extra"...)},
	}
	var d rowDecoder
	var all []pglogrepl.Message
	var wants []pglogrepl.Message
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want, err := pglogrepl.Parse(tt.data)
			require.NoError(t, err)
			input := bytes.Clone(tt.data)
			got, err := d.decode(input)
			require.NoError(t, err)
			assert.Equal(t, want, got)
			assert.Equal(t, want.Type(), got.Type())
			// The receive buffer is reused for the next message.
			for i := range input {
				input[i] = 0xEE
			}
			assert.Equal(t, want, got, "the message must not alias its input")
			all, wants = append(all, got), append(wants, want)
		})
	}
	// Many more messages carve new chunks; the earlier ones stay intact.
	for i := 0; i < 10*colsChunk; i++ {
		_, err := d.decode(rowMessage('U', 1, 'O', []testCol{t1, t2, escapes}, []testCol{t2, t1, null}))
		require.NoError(t, err)
	}
	assert.Equal(t, wants, all, "messages decoded before changed")
}

func TestRowDecoderRejectsMalformed(t *testing.T) {
	valid := [][]byte{
		rowMessage('I', 7, 0, nil, []testCol{{'t', "abc"}, {'n', ""}, {'t', ""}}),
		rowMessage('U', 7, 'O', []testCol{{'t', "abc"}, {'u', ""}}, []testCol{{'t', "de"}, {'n', ""}}),
		rowMessage('D', 7, 'K', []testCol{{'t', "abc"}}, nil),
	}
	for _, data := range valid {
		// Every truncation of a valid message.
		for n := 0; n < len(data); n++ {
			var d rowDecoder
			_, err := d.decodeRow(data[:n])
			assert.Error(t, err, "%q cut at %d", data, n)
		}
	}
	bad := map[string][]byte{
		"unknown column kind":         rowMessage('I', 7, 0, nil, []testCol{{'x', ""}}),
		"insert tuple type K":         append(binary.BigEndian.AppendUint32([]byte{'I'}, 7), 'K', 0, 0),
		"update tuple type X":         append(binary.BigEndian.AppendUint32([]byte{'U'}, 7), 'X', 0, 0),
		"update without N":            append(appendTuple(append(binary.BigEndian.AppendUint32([]byte{'U'}, 7), 'K'), testCol{'t', "1"}), 'X', 0, 0),
		"delete tuple type N":         append(binary.BigEndian.AppendUint32([]byte{'D'}, 7), 'N', 0, 0),
		"a length beyond the message": append(binary.BigEndian.AppendUint32([]byte{'I'}, 7), 'N', 0, 1, 't', 0xff, 0xff, 0xff, 0xff, 'a'),
		"not a row change":            append(binary.BigEndian.AppendUint32([]byte{'B'}, 7), 'N', 0, 0),
	}
	for name, data := range bad {
		t.Run(name, func(t *testing.T) {
			var d rowDecoder
			_, err := d.decode(data)
			require.Error(t, err)
			assert.Contains(t, err.Error(), "malformed pgoutput message")
		})
	}
}

// FuzzRowDecoder checks the row decoder against pglogrepl on any input:
// it never panics, and what it decodes pglogrepl decodes the same.
func FuzzRowDecoder(f *testing.F) {
	f.Add(rowMessage('I', 7, 0, nil, []testCol{{'t', "1"}, {'n', ""}, {'u', ""}}))
	f.Add(rowMessage('U', 7, 'K', []testCol{{'t', "1"}}, []testCol{{'t', "2"}}))
	f.Add(rowMessage('U', 7, 'O', []testCol{{'t', "1"}, {'b', "x"}}, []testCol{{'t', "2"}, {'u', ""}}))
	f.Add(rowMessage('D', 7, 'O', []testCol{{'t', "ü"}}, nil))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 || (data[0] != 'I' && data[0] != 'U' && data[0] != 'D') {
			return
		}
		var d rowDecoder
		got, err := d.decode(bytes.Clone(data))
		if err != nil {
			return
		}
		want, err := parseWithPglogrepl(data)
		if err != nil {
			// pglogrepl wants a byte more than an insert without
			// columns has.
			if data[0] != 'I' || len(data) > 8 {
				t.Fatalf("pglogrepl rejects %q (%v), the row decoder does not", data, err)
			}
			return
		}
		if !assert.Equal(t, want, got) {
			t.Fatalf("%q", data)
		}
	})
}

// BenchmarkDecodeRow compares the row decoder with pglogrepl.Parse on a
// pgbench_accounts update.
func BenchmarkDecodeRow(b *testing.B) {
	data := rowMessage('U', 16384, 0, nil, []testCol{{'t', "73921"}, {'t', "1"}, {'t', "-2481"},
		{'t', strings.Repeat(" ", 84)}})
	b.Run("rowDecoder", func(b *testing.B) {
		b.ReportAllocs()
		var d rowDecoder
		for b.Loop() {
			if _, err := decode(&d, data); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("pglogrepl", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := pglogrepl.Parse(data); err != nil {
				b.Fatal(err)
			}
		}
	})
}
