package logical

import "time"

// A Stamp is a position in the source: an LSN, a GTID set, a resolved
// timestamp. Stamps of one dialect are totally ordered by Less.
//
// The loop persists the consistent point as the stamp's encoding/json form
// and reads it back into the value returned by Dialect.ZeroStamp, so a Stamp
// must survive a JSON round trip. A stamp that also implements
// encoding.TextUnmarshaler can be given as LoopConfig.DefaultConsistentPoint;
// note that encoding/json then only accepts a JSON string for it, so such a
// stamp should implement encoding.TextMarshaler (or json.Marshaler) too.
type Stamp interface {
	// Less reports whether the receiver sorts strictly before other. It is
	// only ever called with stamps of the same dialect.
	Less(other Stamp) bool
}

// Compare returns -1, 0 or +1 as a sorts before, with or after b. A nil
// stamp sorts before any non-nil one.
func Compare(a, b Stamp) int {
	switch {
	case a == nil && b == nil:
		return 0
	case a == nil:
		return -1
	case b == nil:
		return 1
	case a.Less(b):
		return -1
	case b.Less(a):
		return 1
	default:
		return 0
	}
}

// A TimeStamp is a Stamp that knows when, at the source, it was written.
// Only TimeStamps can trigger backfill mode (Config.BackfillWindow), and
// they feed the lag metrics.
type TimeStamp interface {
	Stamp
	AsTime() time.Time
}

// An OffsetStamp is a Stamp with a numeric offset (a WAL position, a log
// offset); the offset is reported as a metric.
type OffsetStamp interface {
	Stamp
	AsOffset() uint64
}
