// Package logicaltest helps test dialects and the loop: a generator
// dialect, a recording target that can enforce foreign keys, and
// RunDialect, a conformance check for a user's own Dialect.
package logicaltest

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/logical-go/logical"
)

// Stamp is the generator's consistent point: the number of the last
// message and its time at the source.
type Stamp struct {
	Seq  int       `json:"seq"`
	Time time.Time `json:"time"`
}

var (
	_ logical.TimeStamp   = (*Stamp)(nil)
	_ logical.OffsetStamp = (*Stamp)(nil)
)

// Less implements logical.Stamp.
func (s *Stamp) Less(other logical.Stamp) bool { return s.Seq < other.(*Stamp).Seq }

// AsTime implements logical.TimeStamp.
func (s *Stamp) AsTime() time.Time { return s.Time }

// AsOffset implements logical.OffsetStamp; the zero stamp has offset 0.
func (s *Stamp) AsOffset() uint64 { return uint64(s.Seq + 1) }

// String returns the sequence number.
func (s *Stamp) String() string { return strconv.Itoa(s.Seq) }

// MarshalText writes "seq" or, with a time, "seq@RFC3339 time". Because
// the stamp is an encoding.TextUnmarshaler, encoding/json uses these for
// its persisted form too.
func (s *Stamp) MarshalText() ([]byte, error) {
	if s.Time.IsZero() {
		return []byte(strconv.Itoa(s.Seq)), nil
	}
	return []byte(strconv.Itoa(s.Seq) + "@" + s.Time.Format(time.RFC3339Nano)), nil
}

// UnmarshalText parses what MarshalText writes; a bare sequence number is
// enough for LoopConfig.DefaultConsistentPoint.
func (s *Stamp) UnmarshalText(text []byte) error {
	seq, at, hasTime := strings.Cut(string(text), "@")
	n, err := strconv.Atoi(seq)
	if err != nil {
		return fmt.Errorf("logicaltest: stamp %q does not start with a sequence number", text)
	}
	var t time.Time
	if hasTime {
		if t, err = time.Parse(time.RFC3339Nano, at); err != nil {
			return fmt.Errorf("logicaltest: stamp %q has a bad time: %v", text, err)
		}
	}
	s.Seq, s.Time = n, t
	return nil
}
