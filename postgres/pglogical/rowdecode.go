package pglogical

import (
	"encoding/binary"

	"github.com/jackc/pglogrepl"
	"github.com/pkg/errors"
)

// rowDecoder decodes the pgoutput messages of row changes (Insert, Update,
// Delete) into the same pglogrepl messages pglogrepl.Parse makes, with
// far fewer allocations: pglogrepl allocates every column and copies its
// value byte by byte, which was most of what ReadInto allocated. Here the
// message is copied once, every value aliases that copy, and the copies,
// columns and messages are carved from chunks shared by many messages.
// A chunk is never written again once carved, so a message stays valid
// for as long as anybody holds it (the garbage collector keeps its chunks);
// a chunk only lives a little longer than the messages in it.
//
// It is used by one goroutine (ReadInto's). Malformed input is an error,
// never a panic.
type rowDecoder struct {
	bytes []byte                       // free space for copies of messages
	cols  []pglogrepl.TupleDataColumn  // free columns
	ptrs  []*pglogrepl.TupleDataColumn // free column pointers
	ins   []pglogrepl.InsertMessage
	upd   []pglogrepl.UpdateMessage
	del   []pglogrepl.DeleteMessage
	tups  []pglogrepl.TupleData
}

// Chunk sizes of a rowDecoder. A message larger than a quarter of
// bytesChunk gets a copy of its own, as does a tuple of more than a
// quarter of colsChunk columns.
const (
	bytesChunk = 64 << 10
	colsChunk  = 1024
	msgChunk   = 128
)

// errShort is a message that ends before its contents do.
var errShort = errors.New("it ends early")

// decode decodes data, a pgoutput Insert ('I'), Update ('U') or Delete
// ('D') message including its type byte. Like pglogrepl.Parse it ignores
// bytes after the message's last tuple.
func (d *rowDecoder) decode(data []byte) (pglogrepl.Message, error) {
	msg, err := d.decodeRow(data)
	if err != nil {
		return nil, errors.Wrapf(err, "pglogical: malformed pgoutput message of type %q", data[0])
	}
	return msg, nil
}

func (d *rowDecoder) decodeRow(data []byte) (pglogrepl.Message, error) {
	// Check the structure, and count the columns, before anything is
	// allocated.
	var n1, n2, end int
	var err error
	if len(data) < 6 {
		return nil, errShort
	}
	typ, kind := data[0], data[5]
	switch typ {
	case 'I':
		if kind != 'N' {
			return nil, errors.Errorf("tuple type %q, want N", kind)
		}
		n1, end, err = scanTuple(data, 6)
	case 'U':
		at := 6
		if kind == 'K' || kind == 'O' {
			if n2, at, err = scanTuple(data, 6); err != nil {
				return nil, err
			}
			if at >= len(data) {
				return nil, errShort
			}
			if data[at] != 'N' {
				return nil, errors.Errorf("tuple type %q after the old tuple, want N", data[at])
			}
			at++
		} else if kind != 'N' {
			return nil, errors.Errorf("tuple type %q, want K, O or N", kind)
		}
		n1, end, err = scanTuple(data, at)
	case 'D':
		if kind != 'K' && kind != 'O' {
			return nil, errors.Errorf("tuple type %q, want K or O", kind)
		}
		n1, end, err = scanTuple(data, 6)
	default:
		return nil, errors.Errorf("not a row change")
	}
	if err != nil {
		return nil, err
	}

	buf := d.copyOf(data[:end])
	rel := binary.BigEndian.Uint32(buf[1:5])
	switch typ {
	case 'I':
		m := carve(&d.ins)
		m.RelationID, m.Tuple = rel, d.tuple(buf, 6, n1)
		m.SetType(pglogrepl.MessageTypeInsert)
		return m, nil
	case 'U':
		m := carve(&d.upd)
		m.RelationID = rel
		at := 6
		if kind == 'K' || kind == 'O' {
			m.OldTupleType = kind
			m.OldTuple = d.tuple(buf, 6, n2)
			_, at, _ = scanTuple(buf, 6)
			at++
		}
		m.NewTuple = d.tuple(buf, at, n1)
		m.SetType(pglogrepl.MessageTypeUpdate)
		return m, nil
	default:
		m := carve(&d.del)
		m.RelationID, m.OldTupleType, m.OldTuple = rel, kind, d.tuple(buf, 6, n1)
		m.SetType(pglogrepl.MessageTypeDelete)
		return m, nil
	}
}

// scanTuple checks the TupleData at data[at:] and returns its number of
// columns and the index after it.
func scanTuple(data []byte, at int) (n, end int, err error) {
	if len(data)-at < 2 {
		return 0, 0, errShort
	}
	n = int(binary.BigEndian.Uint16(data[at:]))
	at += 2
	for i := 0; i < n; i++ {
		if at >= len(data) {
			return 0, 0, errShort
		}
		switch data[at] {
		case pglogrepl.TupleDataTypeNull, pglogrepl.TupleDataTypeToast:
			at++
		case pglogrepl.TupleDataTypeText, pglogrepl.TupleDataTypeBinary:
			if len(data)-at < 5 {
				return 0, 0, errShort
			}
			size := binary.BigEndian.Uint32(data[at+1:])
			at += 5
			if uint64(size) > uint64(len(data)-at) {
				return 0, 0, errShort
			}
			at += int(size)
		default:
			return 0, 0, errors.Errorf("column %d has unknown kind %q", i+1, data[at])
		}
	}
	return n, at, nil
}

// tuple builds the TupleData of n columns at buf[at:], checked by
// scanTuple; its values alias buf.
func (d *rowDecoder) tuple(buf []byte, at, n int) *pglogrepl.TupleData {
	t := carve(&d.tups)
	t.ColumnNum = uint16(n)
	cols, ptrs := d.columns(n)
	at += 2
	for i := range cols {
		c := &cols[i]
		c.DataType = buf[at]
		at++
		if c.DataType == pglogrepl.TupleDataTypeText || c.DataType == pglogrepl.TupleDataTypeBinary {
			c.Length = binary.BigEndian.Uint32(buf[at:])
			at += 4
			c.Data = buf[at : at+int(c.Length) : at+int(c.Length)]
			at += int(c.Length)
		}
		ptrs[i] = c
	}
	if n > 0 {
		t.Columns = ptrs
	}
	return t
}

// copyOf returns a copy of data that nothing else uses.
func (d *rowDecoder) copyOf(data []byte) []byte {
	if len(data) > bytesChunk/4 {
		return append([]byte(nil), data...)
	}
	if len(data) > len(d.bytes) {
		d.bytes = make([]byte, bytesChunk)
	}
	out := d.bytes[:len(data):len(data)]
	d.bytes = d.bytes[len(data):]
	copy(out, data)
	return out
}

// columns returns n zero columns and n pointers to fill.
func (d *rowDecoder) columns(n int) ([]pglogrepl.TupleDataColumn, []*pglogrepl.TupleDataColumn) {
	if n > colsChunk/4 {
		return make([]pglogrepl.TupleDataColumn, n), make([]*pglogrepl.TupleDataColumn, n)
	}
	if n > len(d.cols) {
		d.cols = make([]pglogrepl.TupleDataColumn, colsChunk)
	}
	if n > len(d.ptrs) {
		d.ptrs = make([]*pglogrepl.TupleDataColumn, colsChunk)
	}
	cols, ptrs := d.cols[:n:n], d.ptrs[:n:n]
	d.cols, d.ptrs = d.cols[n:], d.ptrs[n:]
	return cols, ptrs
}

// carve hands out the next element of chunk, a fresh chunk of msgChunk
// elements once it is used up; what it handed out is never reused.
func carve[T any](chunk *[]T) *T {
	if len(*chunk) == 0 {
		*chunk = make([]T, msgChunk)
	}
	v := &(*chunk)[0]
	*chunk = (*chunk)[1:]
	return v
}
