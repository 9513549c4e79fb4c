package logical

import (
	"encoding/json"
	"slices"
	"strconv"

	"github.com/pkg/errors"
)

// Pieces is a Stamp for a backfill that copies its source in independent
// pieces (key ranges, partitions, files) that finish in any order: the
// set of the pieces done, each named by the dialect. A point that is one
// position cannot say "pieces 1, 2 and 5": resuming from the first piece
// not done would copy again everything done after it.
//
// Less is strict inclusion: p.Less(q) when every piece of p is in q and q
// has more. Two sets neither of which holds the other are not ordered
// (Compare returns 0), so a SetConsistentPoint with a set that lost a
// piece, or that only differs, fails as stalled or going backwards. The
// points one loop sets are a chain (each holds the last plus at least one
// piece), which is the total order Stamp asks for. Once a backfill has
// started, its points form such a chain as long as it only adds: build
// each point with With from the current one, and set them one at a time
// (SetConsistentPoint requires each after the last, so a backfill that
// finishes pieces on several goroutines merges and sets under one lock).
//
// A Pieces is immutable: With returns a new set, so a point that was
// published can be read by anyone while the next one is built. Its JSON
// form is the sorted array of names; the zero value (and a nil *Pieces)
// is the empty set, and &Pieces{} is a ZeroStamp that json.Unmarshal can
// fill.
type Pieces struct {
	done map[string]struct{}
}

var _ Stamp = (*Pieces)(nil)

// NewPieces returns the set of names.
func NewPieces(names ...string) *Pieces {
	return (*Pieces)(nil).With(names...)
}

// With returns p plus names; p is unchanged. It returns p itself when p
// already has every name.
func (p *Pieces) With(names ...string) *Pieces {
	grows := false
	for _, n := range names {
		if !p.Has(n) {
			grows = true
			break
		}
	}
	if !grows && p != nil {
		return p
	}
	out := &Pieces{done: make(map[string]struct{}, p.Len()+len(names))}
	if p != nil {
		for n := range p.done {
			out.done[n] = struct{}{}
		}
	}
	for _, n := range names {
		out.done[n] = struct{}{}
	}
	return out
}

// Has reports whether piece name is done.
func (p *Pieces) Has(name string) bool {
	if p == nil {
		return false
	}
	_, ok := p.done[name]
	return ok
}

// Len returns how many pieces are done.
func (p *Pieces) Len() int {
	if p == nil {
		return 0
	}
	return len(p.done)
}

// Names returns the pieces done, sorted.
func (p *Pieces) Names() []string {
	out := make([]string, 0, p.Len())
	if p != nil {
		for n := range p.done {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// Less implements Stamp: strict inclusion. A stamp that is no *Pieces is
// never after p.
func (p *Pieces) Less(other Stamp) bool {
	q, ok := other.(*Pieces)
	if !ok || p.Len() >= q.Len() {
		return false
	}
	if p != nil {
		for n := range p.done {
			if !q.Has(n) {
				return false
			}
		}
	}
	return true
}

// String returns the number of pieces done, for logs.
func (p *Pieces) String() string {
	return strconv.Itoa(p.Len()) + " pieces"
}

// MarshalJSON implements json.Marshaler: the sorted array of names.
func (p *Pieces) MarshalJSON() ([]byte, error) {
	return json.Marshal(p.Names())
}

// UnmarshalJSON implements json.Unmarshaler; null is the empty set. A
// name that appears twice is an error, as no MarshalJSON writes one.
func (p *Pieces) UnmarshalJSON(buf []byte) error {
	var names []string
	if err := json.Unmarshal(buf, &names); err != nil {
		return errors.Wrap(err, "logical: Pieces is a JSON array of strings")
	}
	done := make(map[string]struct{}, len(names))
	for _, n := range names {
		if _, dup := done[n]; dup {
			return errors.Errorf("logical: Pieces has %q twice", n)
		}
		done[n] = struct{}{}
	}
	p.done = done
	return nil
}
