package logical

import (
	"context"
	"sync"

	"github.com/logical-go/logical/internal/fan"
	"github.com/pkg/errors"
)

// fanChunk is how many mutations of one batch a shard gathers before it
// hands them over to be applied.
const fanChunk = 100

// fanMaxApply is the most mutations per Target.Apply call in fan mode: a
// shard applies what several batches queued for a table in one call, so
// that a backlog of small source transactions costs one statement per
// shard and table rather than one per transaction. It only caps what is
// queued already, so it adds no wait. 5000 rather than 1000: a 2M-row
// source transaction with pgreplicate --immediate (a COPY and a commit
// per call) took 0.79 of the lag and 0.80 of the CPU (bench/pg bulk2m,
// same run), with backlogs of small transactions unchanged.
const fanMaxApply = 5000

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
	var applyMany func(context.Context, []fan.Part[Table, Mutation]) error
	if multi, ok := target.(MultiApplier); ok {
		applyMany = func(ctx context.Context, parts []fan.Part[Table, Mutation]) error {
			tms := make([]TableMutations, len(parts))
			for i, p := range parts {
				tms[i] = TableMutations{Table: p.Table, Mutations: p.Items}
			}
			if err := multi.ApplyMulti(ctx, tms); err != nil {
				return errors.Wrapf(err, "logical: applying to %s and %d other tables", parts[0].Table, len(parts)-1)
			}
			return nil
		}
	}
	return &fanEvents{sharder: sharder, oneShard: make(map[Table]bool), q: fan.New(ctx, fan.Config[Table, Mutation]{
		Apply: func(ctx context.Context, table Table, muts []Mutation) error {
			if err := target.Apply(ctx, table, muts); err != nil {
				return errors.Wrapf(err, "logical: applying to %s", table)
			}
			return nil
		},
		ApplyMany: applyMany,
		Hash:      keyHash,
		Size:      Mutation.size,
		Workers:   cfg.FanShards,
		Chunk:     fanChunk,
		MaxApply:  fanMaxApply,
		Limit:     int64(cfg.BytesInFlight),
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

// OnCommit ends the batch without waiting: the channel receives the
// result once the workers applied everything the batch queued.
func (b *fanBatch) OnCommit(ctx context.Context) <-chan error {
	ch := make(chan error, 1)
	b.commitAsync(ctx, func(err error) {
		ch <- err
		close(ch)
	})
	return ch
}

// commit implements syncCommitter: it waits for the batch to be applied.
func (b *fanBatch) commit(ctx context.Context) error {
	err := b.b.Commit(ctx)
	if errors.Is(err, fan.ErrEnded) {
		err = ErrBatchEnded
	}
	return err
}

// commitAsync implements asyncCommitter.
func (b *fanBatch) commitAsync(_ context.Context, done func(error)) {
	b.b.CommitAsync(func(err error) {
		switch {
		case errors.Is(err, fan.ErrEnded):
			err = ErrBatchEnded
		case errors.Is(err, fan.ErrClosed):
			err = errors.Wrap(err, "logical: fan mode stopped")
		}
		done(err)
	})
}

// An asyncCommitter is a Batch that can commit without waiting for the
// commit to finish: done receives the result later, once, from any
// goroutine, and must not block. Fan batches are, and the decorators pass
// it on, so that a group of fan batches (group.go) commits without
// stopping Process while the workers apply it.
type asyncCommitter interface {
	commitAsync(ctx context.Context, done func(error))
}

var _ asyncCommitter = (*fanBatch)(nil)

// isAsync reports whether b commits asynchronously all the way down.
func isAsync(b Batch) bool {
	switch b := b.(type) {
	case *fanBatch:
		return true
	case *metricsBatch:
		return isAsync(b.Batch)
	case *scriptBatch:
		return isAsync(b.Batch)
	}
	return false
}

// commitAsyncOf commits b, asynchronously if it can, else synchronously
// (done is then called before commitAsyncOf returns).
func commitAsyncOf(ctx context.Context, b Batch, done func(error)) {
	switch b := b.(type) {
	case asyncCommitter:
		b.commitAsync(ctx, done)
	case *metricsBatch:
		if isAsync(b.Batch) {
			commitAsyncOf(ctx, b.Batch, func(err error) {
				if !errors.Is(err, ErrBatchEnded) {
					b.stats.commit(err)
				}
				done(err)
			})
			return
		}
		done(commitOf(ctx, b))
	case *scriptBatch:
		commitAsyncOf(ctx, b.Batch, done)
	default:
		done(commitOf(ctx, b))
	}
}

func (b *fanBatch) OnRollback(ctx context.Context) error { return b.b.Rollback(ctx) }

// commitAsyncLocked commits the open group of fan batches without waiting
// (fan mode, see Grouper): the group's batches receive the result once
// the workers applied it, while Process reads on and the next groups
// queue behind it. The lanes keep each key's order across groups, and a
// dialect that moves its point over each batch in order, once its result
// arrived (as pglogical does), never passes data that is not applied. The
// caller holds g.mu, has handed over what the group held, and no grouped
// batch is open.
func (g *groupBatcher) commitAsyncLocked(ctx context.Context) {
	open, waiting := g.open, g.waiting
	g.open, g.waiting, g.bytes = nil, nil, 0 // waiting belongs to the callback now
	g.applying.Add(1)
	commitAsyncOf(ctx, open, func(err error) {
		g.applying.Add(-1) // before the results wake the dialect
		deliver(waiting, err)
	})
}

// A BusyGrouper is a Grouper whose groups may be applied in the
// background: after CommitGroup returned in fan mode (Config.Immediate and
// backfills), and after StartCommitGroup returned in serial mode over a
// ChainTx (see AsyncGrouper). The Events that Process receives are
// BusyGroupers.
//
// A dialect that calls CommitGroup whenever it has nothing more to read
// (see Grouper) should skip that call while GroupBusy reports true: a
// group committed earlier is still being applied, so committing the open
// group now would not apply it any sooner, only make it smaller (and
// small groups cost a statement per table and shard each). The earlier
// group's results are still to come, and they are the dialect's cue to
// try again: a dialect that waits for the oldest result in flight
// together with its input never stalls on the open group. CommitGroup
// itself always commits, for a dialect that needs the target to have
// everything (before a schema change, say).
type BusyGrouper interface {
	Grouper
	// GroupBusy reports whether a group committed earlier is still
	// being applied in the background.
	GroupBusy() bool
}

var (
	_ BusyGrouper  = (*groupBatcher)(nil)
	_ BusyGrouper  = (*events)(nil)
	_ BusyGrouper  = (*chaosEvents)(nil)
	_ AsyncGrouper = (*chaosEvents)(nil)
)

// GroupBusy implements BusyGrouper.
func (g *groupBatcher) GroupBusy() bool { return g.applying.Load() > 0 }

// GroupBusy implements BusyGrouper.
func (e *events) GroupBusy() bool {
	g, ok := e.Batcher.(BusyGrouper)
	return ok && g.GroupBusy()
}

// GroupBusy implements BusyGrouper.
func (e *chaosEvents) GroupBusy() bool {
	g, ok := e.Events.(BusyGrouper)
	return ok && g.GroupBusy()
}
