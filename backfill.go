package logical

import (
	"context"

	"github.com/logical-go/logical/internal/stopper"
	"github.com/pkg/errors"
)

// backfill runs a nested loop for Events.Backfill: synchronously, under
// the calling iteration, with its own consistent point, fan events and no
// retries.
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
	}
	sub.log.WithField("stamp", stampString(sub.cp.Peek())).Info("nested backfill finished")
	return nil
}
