package logical

import (
	"context"

	"github.com/logical-go/logical/internal/fan"
	"github.com/pkg/errors"
)

// fanChunk is the most mutations per Target.Apply call in fan mode.
const fanChunk = 100

// fanEvents applies batches through Config.FanShards workers, outside of
// transactions.
type fanEvents struct {
	q       *fan.Queue[Table, Mutation]
	batcher Batcher // the decorated form, for Factory.Immediate
}

func newFanEvents(ctx context.Context, cfg *Config, _ *Loop) *fanEvents {
	target := cfg.Target
	return &fanEvents{q: fan.New(ctx, fan.Config[Table, Mutation]{
		Apply: func(ctx context.Context, table Table, muts []Mutation) error {
			if err := target.Apply(ctx, table, muts); err != nil {
				return errors.Wrapf(err, "logical: applying to %s", table)
			}
			return nil
		},
		Hash:    keyHash,
		Size:    Mutation.size,
		Workers: cfg.FanShards,
		Chunk:   fanChunk,
		Limit:   int64(cfg.BytesInFlight),
	})}
}

// keyHash is FNV-1a over the mutation's key.
func keyHash(m Mutation) uint64 {
	h := uint64(14695981039346656037)
	for _, c := range m.Key {
		h ^= uint64(c)
		h *= 1099511628211
	}
	return h
}

func (e *fanEvents) close() { e.q.Close() }

func (e *fanEvents) OnBegin(context.Context) (Batch, error) {
	return &fanBatch{b: e.q.Begin()}, nil
}

// fanBatch is one batch of the fan queue.
type fanBatch struct {
	b *fan.Batch[Table, Mutation]
}

func (b *fanBatch) Flush(ctx context.Context) error {
	err := b.b.Flush(ctx)
	if errors.Is(err, fan.ErrEnded) {
		return ErrBatchEnded
	}
	return err
}

func (b *fanBatch) OnData(ctx context.Context, _ string, target Table, muts []Mutation) error {
	if len(muts) == 0 {
		return nil
	}
	err := b.b.Add(ctx, target, muts)
	if errors.Is(err, fan.ErrEnded) {
		return ErrBatchEnded
	}
	return err
}

func (b *fanBatch) OnCommit(ctx context.Context) <-chan error { return result1(b.commit(ctx)) }

// commit implements syncCommitter.
func (b *fanBatch) commit(ctx context.Context) error {
	err := b.b.Commit(ctx)
	if errors.Is(err, fan.ErrEnded) {
		err = ErrBatchEnded
	}
	return err
}

func (b *fanBatch) OnRollback(ctx context.Context) error { return b.b.Rollback(ctx) }
