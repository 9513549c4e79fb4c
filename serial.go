package logical

import (
	"context"

	"github.com/pkg/errors"
)

// serialEvents opens one target transaction per batch.
type serialEvents struct {
	target Target
}

func (e *serialEvents) OnBegin(ctx context.Context) (Batch, error) {
	tx, err := e.target.Begin(ctx)
	if err != nil {
		return nil, errors.Wrap(err, "logical: beginning a target transaction")
	}
	return &serialBatch{tx: tx}, nil
}

// serialBatch applies through one TargetTx.
type serialBatch struct {
	tx    TargetTx
	ended bool
}

func (b *serialBatch) Flush(context.Context) error {
	if b.ended {
		return ErrBatchEnded
	}
	return nil
}

func (b *serialBatch) OnData(ctx context.Context, _ string, target Table, muts []Mutation) error {
	if b.ended {
		return ErrBatchEnded
	}
	if len(muts) == 0 {
		return nil
	}
	if err := b.tx.Apply(ctx, target, muts); err != nil {
		// Wrapf only on failure: its arguments would be boxed on every call.
		return errors.Wrapf(err, "logical: applying to %s", target)
	}
	return nil
}

func (b *serialBatch) OnCommit(ctx context.Context) <-chan error { return result1(b.commit(ctx)) }

// commit implements syncCommitter.
func (b *serialBatch) commit(ctx context.Context) error {
	if b.ended {
		return ErrBatchEnded
	}
	b.ended = true
	return errors.Wrap(b.tx.Commit(ctx), "logical: committing the target transaction")
}

// commitChain implements chainCommitter.
func (b *serialBatch) commitChain(ctx context.Context) (Batch, func() error, bool) {
	ct, ok := b.tx.(ChainTx)
	if !ok || b.ended {
		return nil, nil, false
	}
	b.ended = true
	next, result := ct.CommitChain(ctx)
	wait := func() error {
		return errors.Wrap(<-result, "logical: committing the target transaction")
	}
	if next == nil {
		return nil, wait, true
	}
	return &serialBatch{tx: next}, wait, true
}

func (b *serialBatch) OnRollback(ctx context.Context) error {
	if b.ended {
		return nil
	}
	b.ended = true
	return errors.Wrap(b.tx.Rollback(ctx), "logical: rolling back the target transaction")
}

// A syncCommitter is a Batch whose OnCommit finishes before it returns.
// Decorators call commit instead of OnCommit, which spares the channel of
// the inner batch: one allocation per batch on the hot path.
type syncCommitter interface {
	// commit does what OnCommit does and returns its result.
	commit(ctx context.Context) error
}

// A chainCommitter is a Batch that can commit without waiting for the
// result, over a ChainTx.
type chainCommitter interface {
	// commitChain ends the batch like commit but returns at once: wait
	// returns the commit's result (call it once, from any goroutine) and
	// next is the batch that follows on the same target session (nil if
	// there is none). ok is false if the batch cannot chain; nothing was
	// done then.
	commitChain(ctx context.Context) (next Batch, wait func() error, ok bool)
}

var (
	_ chainCommitter = (*serialBatch)(nil)
	_ chainCommitter = (*metricsBatch)(nil)
	_ syncCommitter  = (*serialBatch)(nil)
	_ syncCommitter  = (*fanBatch)(nil)
)

// commitOf commits b, synchronously if it can.
func commitOf(ctx context.Context, b Batch) error {
	if sc, ok := b.(syncCommitter); ok {
		return sc.commit(ctx)
	}
	return <-b.OnCommit(ctx)
}

// result1 returns a closed channel holding err.
func result1(err error) <-chan error {
	ch := make(chan error, 1)
	ch <- err
	close(ch)
	return ch
}
