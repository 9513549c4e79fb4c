package pglogical

import (
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/logical-go/logical"
	"github.com/pkg/errors"
)

// LSN is a position in PostgreSQL's write-ahead log, the consistent point
// of the pglogical dialect. Time is the source's commit time of the
// transaction that ends at the LSN (or the server time of a keepalive), for
// lag metrics; it plays no part in ordering.
//
// Its text form is PostgreSQL's "XXX/XXX" (hexadecimal high and low 32
// bits), so LoopConfig.DefaultConsistentPoint can be given as "0/16B3748".
// Its JSON form is {"lsn":"0/16B3748","time":"..."}; a bare JSON string in
// the text form is accepted too.
type LSN struct {
	Pos  uint64
	Time time.Time
}

var (
	_ logical.TimeStamp   = LSN{}
	_ logical.OffsetStamp = LSN{}
	_ logical.TimeStamp   = (*LSN)(nil)
)

// ParseLSN parses PostgreSQL's text form of an LSN, "XXX/XXX".
func ParseLSN(s string) (uint64, error) {
	hi, lo, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return 0, errors.Errorf("pglogical: LSN %q: want the form XXX/XXX", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, errors.Errorf("pglogical: LSN %q: bad high half", s)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, errors.Errorf("pglogical: LSN %q: bad low half", s)
	}
	return h<<32 | l, nil
}

// FormatLSN returns PostgreSQL's text form of pos.
func FormatLSN(pos uint64) string {
	var buf [17]byte
	return string(appendLSN(buf[:0], pos))
}

// appendLSN appends the text form of pos to buf. (fmt.Sprintf cost more
// than the rest of recording a transaction's progress.)
func appendLSN(buf []byte, pos uint64) []byte {
	start := len(buf)
	buf = strconv.AppendUint(buf, pos>>32, 16)
	buf = append(buf, '/')
	buf = strconv.AppendUint(buf, uint64(uint32(pos)), 16)
	for i := start; i < len(buf); i++ {
		if c := buf[i]; 'a' <= c && c <= 'f' {
			buf[i] = c - 'a' + 'A'
		}
	}
	return buf
}

// String returns the text form, "XXX/XXX".
func (l LSN) String() string { return FormatLSN(l.Pos) }

// Less implements logical.Stamp. other must be an LSN or *LSN; a nil
// *LSN sorts first.
func (l LSN) Less(other logical.Stamp) bool {
	switch o := other.(type) {
	case LSN:
		return l.Pos < o.Pos
	case *LSN:
		return o != nil && l.Pos < o.Pos
	default:
		return false
	}
}

// AsTime implements logical.TimeStamp.
func (l LSN) AsTime() time.Time { return l.Time }

// AsOffset implements logical.OffsetStamp: the WAL position in bytes.
func (l LSN) AsOffset() uint64 { return l.Pos }

// MarshalText implements encoding.TextMarshaler.
func (l LSN) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler; the time is cleared.
func (l *LSN) UnmarshalText(text []byte) error {
	pos, err := ParseLSN(string(text))
	if err != nil {
		return err
	}
	*l = LSN{Pos: pos}
	return nil
}

type lsnJSON struct {
	LSN  string    `json:"lsn"`
	Time time.Time `json:"time,omitzero"`
}

// MarshalJSON implements json.Marshaler.
func (l LSN) MarshalJSON() ([]byte, error) {
	return json.Marshal(lsnJSON{LSN: l.String(), Time: l.Time})
}

// UnmarshalJSON implements json.Unmarshaler.
func (l *LSN) UnmarshalJSON(buf []byte) error {
	var s string
	if err := json.Unmarshal(buf, &s); err == nil {
		return l.UnmarshalText([]byte(s))
	}
	var v lsnJSON
	if err := json.Unmarshal(buf, &v); err != nil {
		return errors.Wrap(err, "pglogical: decoding an LSN")
	}
	pos, err := ParseLSN(v.LSN)
	if err != nil {
		return err
	}
	*l = LSN{Pos: pos, Time: v.Time}
	return nil
}

// stampPos returns the position of a stamp of this dialect; nil and
// foreign stamps are 0.
func stampPos(s logical.Stamp) uint64 {
	switch v := s.(type) {
	case LSN:
		return v.Pos
	case *LSN:
		if v != nil {
			return v.Pos
		}
	}
	return 0
}
