package logical

import (
	"context"
	"reflect"

	"github.com/logical-go/logical/internal/stopper"
	"github.com/pkg/errors"
)

// backfill runs a nested loop for Events.Backfill: synchronously, under
// the calling iteration, with its own consistent point, fan events and no
// retries. It is complete when BackfillInto returned nil and then Process
// returned nil, neither of them stopped or cancelled; anything else is an
// error.
func (l *Loop) backfill(ctx context.Context, parent *stopper.Context, name string, bf Backfiller) error {
	if bf == nil {
		return errors.Errorf("logical: loop %q: Backfill with a nil Backfiller", l.name)
	}
	if name == "" {
		return errors.Errorf("logical: loop %q: Backfill needs a loop name", l.name)
	}
	cfg := l.cfg
	cfg.LoopName = name
	cfg.Dialect = bf
	cfg.WaitAfterBackfill = nil
	// The enclosing loop's default point is a position of its own stamp:
	// a backfiller with a stamp of another type (the set of pieces of a
	// table copy under an LSN-stamped stream) starts from its zero
	// stamp, instead of failing to parse it.
	if reflect.TypeOf(bf.ZeroStamp()) != reflect.TypeOf(l.dialect.ZeroStamp()) {
		cfg.DefaultConsistentPoint = ""
	}
	sub, err := l.factory.newLoop(cfg, parent)
	if err != nil {
		return err
	}
	sub.nested = true
	defer sub.release()
	iter := sub.stop.Child(ctx)
	defer iter.Release()
	if err := sub.prepare(iter); err != nil {
		return err
	}
	sub.log.WithField("stamp", stampString(sub.initial)).Info("nested backfill started")
	res := sub.iterate(iter, modeBackfill, false)
	switch {
	case res.err != nil:
		return res.err
	case !res.completed:
		return errors.Errorf("logical: backfill %q: stopped before the backfiller finished", name)
	case !res.processed:
		// BackfillInto may hand everything over and return long before
		// Process has applied it (a backfill that works on what it read
		// in goroutines of its own): only a Process that returned nil
		// without a stop has finished.
		return errors.Errorf("logical: backfill %q: stopped before Process finished what the backfiller sent", name)
	}
	sub.log.WithField("stamp", stampString(sub.cp.Peek())).Info("nested backfill finished")
	return nil
}
