package logical

import (
	"context"
	"sync"

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
	sharder Sharder // Config.Target, if it is one

	mu       sync.Mutex
	oneShard map[Table]bool // tables seen: true if they go to one shard
}

func newFanEvents(ctx context.Context, cfg *Config, _ *Loop) *fanEvents {
	target := cfg.Target
	sharder, _ := target.(Sharder)
	return &fanEvents{sharder: sharder, oneShard: make(map[Table]bool), q: fan.New(ctx, fan.Config[Table, Mutation]{
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
	return &fanBatch{b: e.q.Begin(), e: e}, nil
}

// ordered reports whether the mutations of table go to one shard, in
// order (see Sharder and MetaNoKey): the Target says so, or muts, or
// earlier mutations of table, are marked MetaNoKey. Once true for a
// table it stays true for the queue's life.
func (e *fanEvents) ordered(ctx context.Context, table Table, muts []Mutation) (bool, error) {
	e.mu.Lock()
	one, known := e.oneShard[table]
	e.mu.Unlock()
	if one {
		return true, nil
	}
	if !known && e.sharder != nil {
		var err error
		if one, err = e.sharder.OneShard(ctx, table); err != nil {
			return false, errors.Wrapf(err, "logical: asking the target whether %s may be spread over fan shards", table)
		}
	}
	if !one {
		for i := range muts {
			if noKey, _ := muts[i].Meta[MetaNoKey].(bool); noKey {
				one = true
				break
			}
		}
	}
	if one || !known {
		e.mu.Lock()
		e.oneShard[table] = e.oneShard[table] || one
		e.mu.Unlock()
	}
	return one, nil
}

// fanBatch is one batch of the fan queue.
type fanBatch struct {
	b *fan.Batch[Table, Mutation]
	e *fanEvents
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
	ordered, err := b.e.ordered(ctx, target, muts)
	if err != nil {
		return err
	}
	if ordered {
		err = b.b.AddOrdered(ctx, target, muts)
	} else {
		err = b.b.Add(ctx, target, muts)
	}
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
