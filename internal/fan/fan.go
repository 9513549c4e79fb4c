// Package fan applies items to tables concurrently while keeping the order
// of items that share a table and a key.
//
// Items are routed to lanes: one lane per table and key hash (modulo the
// lane count). A lane is applied by one goroutine at a time, in the order
// its items arrived, so two items of one key never overtake each other;
// different lanes go in parallel. Items of a lane are grouped into chunks
// of up to Chunk items; the chunks queued on a lane when it runs (of one
// batch or of several) are applied together, in order, in calls of up to
// MaxApply items. A table whose items must keep their order across keys
// (Batch.AddOrdered) has a single lane.
//
// A fixed set of worker goroutines applies ready lanes. A goroutine that
// waits for its batch (Flush, Commit, Rollback, or a full queue) applies
// ready lanes itself instead of only waiting: with a fast target it does
// all the work without a hand-off, and workers are only woken when applies
// are slow enough for parallelism to pay.
package fan

import (
	"context"
	"runtime/debug"
	"sync"
	"time"

	"github.com/pkg/errors"
)

// slowApply is the apply duration above which waiting goroutines wake
// workers rather than applying everything themselves.
const slowApply = 20 * time.Microsecond

// recentApplies is how many measured applies decide whether applies are
// slow: all of them must have taken more than slowApply. A single apply
// that was descheduled on a busy machine then does not make a fast target
// look slow (waking workers for fast applies costs more than it saves).
const recentApplies = 4

// sampleEvery is how often the duration of a fast apply is measured; while
// applies are slow, or the last measured one was, every apply is measured.
// Reading the clock twice per apply costs more than a no-op apply itself.
const sampleEvery = 8

// maxFree bounds the emptied chunk slices kept for reuse, per worker (a
// table has as many lanes as workers, and a batch of small transactions
// touches most lanes of the tables it writes).
const maxFree = 4

// compactAfter is how many applied chunks a busy lane keeps at the front
// of its queue before it drops them.
const compactAfter = 16

// newSlice is the capacity of a new lane's pending slice.
const newSlice = 8

// maxReuse is the largest capacity kept for reuse: a reused slice goes to
// any lane, and a lane may hold a single item in it, so large ones would
// hold memory that Config.Limit does not see. With maxFree it bounds that
// memory to maxFree*Workers*maxReuse items.
const maxReuse = 16

// Config configures a Queue.
type Config[T comparable, M any] struct {
	// Apply writes items to table. It is called concurrently for
	// different lanes. The queue reuses items once Apply returned. A
	// panic in Apply fails the chunk's batch with an error holding the
	// panic and its stack, as a returned error would.
	Apply func(ctx context.Context, table T, items []M) error
	// ApplyMany, if set, writes the items of several tables in one call,
	// as Apply would one after the other (in one target transaction, say).
	// While applies are slow (see slowApply), a goroutine about to apply
	// a lane with fewer than Chunk items takes other ready lanes along, up
	// to Chunk items in all,
	// so that a few items on each of several tables (a small source
	// transaction touches a few) cost one call and not one per table.
	// Each table appears once in parts, and no other call at the same
	// time has items of the same lanes. Without it, only lanes of one
	// table are taken along, and go to Apply as one call. A panic is
	// an error, as in Apply.
	ApplyMany func(ctx context.Context, parts []Part[T, M]) error
	// Hash returns the key hash of an item.
	Hash func(M) uint64
	// Size returns the bytes an item holds.
	Size func(M) int
	// Workers is the number of worker goroutines, and the number of lanes
	// per table.
	Workers int
	// Chunk is how many items of one batch a lane gathers before it
	// hands them over to be applied.
	Chunk int
	// MaxApply is the most items per Apply call: a lane that has several
	// chunks queued (of one batch or of several) applies them together,
	// in order, in calls of up to MaxApply items, so that a backlog of
	// small batches costs one call per lane and not one per batch. Zero
	// means Chunk. A chunk is never split: a call holds at least one
	// whole chunk.
	MaxApply int
	// Limit bounds the queued bytes: Add waits while adding would exceed
	// it, unless the queue is empty.
	Limit int64
}

// Part is the items of one table in an ApplyMany call, in the order in
// which they were added for each key.
type Part[T comparable, M any] struct {
	Table T
	Items []M
}

// maxGather bounds the lanes applied in one call (see Config.ApplyMany).
const maxGather = 64

// Queue is a set of lanes and the workers that apply them.
type Queue[T comparable, M any] struct {
	cfg Config[T, M]
	ctx context.Context

	mu       sync.Mutex
	work     sync.Cond // signals idle workers
	tables   map[T][]*lane[T, M]
	ready    []*lane[T, M] // lanes with queued chunks and no runner
	bytes    int64         // bytes pending or queued, not yet applied
	changed  chan struct{} // closed when a chunk completes; made lazily
	idle     int           // workers waiting on work
	closed   bool
	async    int                          // batches committed with CommitAsync whose callback is due
	took     [recentApplies]time.Duration // the last measured apply durations
	tookNext int                          // where the next one goes in took
	lastSlow bool                         // the last measured apply was slow
	slow     bool                         // all of took are slow
	applies  uint64                       // Apply calls so far, to sample their duration
	// gatherAlways makes gatherLocked take lanes along also while
	// applies are fast; for tests.
	gatherAlways bool
	free         [][]M           // emptied chunk slices, for reuse
	recent       [][]*lane[T, M] // lanes of recently used tables, in recentBuf
	recentBuf    [8][]*lane[T, M]

	wg sync.WaitGroup
}

type lane[T comparable, M any] struct {
	table        T
	pending      []M // items not yet in a chunk, all of pendingBatch; nil when empty
	pendingBytes int
	pendingBatch *Batch[T, M]
	queue        []chunk[T, M]
	busy         bool // a goroutine is applying this lane
	inReady      bool
}

type chunk[T comparable, M any] struct {
	batch *Batch[T, M]
	items []M
	bytes int
}

// New starts a Queue whose applies run under ctx. Close it when done.
func New[T comparable, M any](ctx context.Context, cfg Config[T, M]) *Queue[T, M] {
	if cfg.Workers < 1 {
		cfg.Workers = 1
	}
	if cfg.Chunk < 1 {
		cfg.Chunk = 1
	}
	if cfg.MaxApply < cfg.Chunk {
		cfg.MaxApply = cfg.Chunk
	}
	q := &Queue[T, M]{cfg: cfg, ctx: ctx, tables: make(map[T][]*lane[T, M])}
	q.recent = q.recentBuf[:0]
	q.work.L = &q.mu
	q.wg.Add(cfg.Workers)
	for range cfg.Workers {
		go q.worker()
	}
	return q
}

// Close stops the workers and waits for them. Chunks not yet applied are
// dropped; a batch still waiting applies what is left itself.
func (q *Queue[T, M]) Close() {
	q.mu.Lock()
	q.closed = true
	q.work.Broadcast()
	q.mu.Unlock()
	q.wg.Wait()
	// Nobody waits for the batches committed with CommitAsync: end them
	// here. A lane being run by a batch that waits finishes on its own.
	q.mu.Lock()
	done := q.dropAsyncLocked()
	q.mu.Unlock()
	for _, f := range done {
		f()
	}
}

// dropAsyncLocked drops the chunks of the batches committed with
// CommitAsync from the lanes nobody runs, after Close, and returns the
// callbacks to call once q.mu is released.
func (q *Queue[T, M]) dropAsyncLocked() []func() {
	var done []func()
	for _, lanes := range q.tables {
		for _, ln := range lanes {
			if ln.busy {
				continue
			}
			kept := ln.queue[:0]
			for i := range ln.queue {
				c := ln.queue[i]
				ln.queue[i] = chunk[T, M]{}
				b := c.batch
				if b.done == nil {
					kept = append(kept, c) // its batch waits and applies it
					continue
				}
				b.dropped = true
				b.outstanding--
				q.bytes -= int64(c.bytes)
				if b.outstanding == 0 {
					done = append(done, b.finishLocked())
				}
			}
			ln.queue = kept
		}
	}
	q.notifyLocked()
	return done
}

// finishLocked takes the CommitAsync callback of b, whose chunks are all
// done, and returns the call to make once q.mu is released.
func (b *Batch[T, M]) finishLocked() func() {
	done, err := b.done, b.err
	b.done = nil
	b.q.async--
	if err == nil && b.dropped {
		err = ErrClosed
	}
	return func() { done(err) }
}

// Bytes returns the bytes queued and not yet applied.
func (q *Queue[T, M]) Bytes() int64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.bytes
}

func (q *Queue[T, M]) worker() {
	defer q.wg.Done()
	q.mu.Lock()
	defer q.mu.Unlock()
	for !q.closed {
		if ln := q.popReadyLocked(); ln != nil {
			q.runSomeLocked(q.ctx, ln)
			continue
		}
		q.idle++
		q.work.Wait()
		q.idle--
	}
}

// Begin opens a batch.
func (q *Queue[T, M]) Begin() *Batch[T, M] {
	b := &Batch[T, M]{q: q}
	b.lanes = b.lanesBuf[:0]
	return b
}

// Batch is a group of items whose completion is awaited together. A Batch
// is used by one goroutine at a time.
type Batch[T comparable, M any] struct {
	q           *Queue[T, M]
	outstanding int           // chunks queued or being applied
	lanes       []*lane[T, M] // lanes that held pending items of the batch
	lanesBuf    [8]*lane[T, M]
	err         error
	dropped     bool
	ended       bool
	done        func(error) // CommitAsync's callback, until it is called
}

// ErrEnded is returned by Add after Commit or Rollback.
var ErrEnded = errors.New("batch used after OnCommit or OnRollback")

// Add queues items for table. It waits, applying ready lanes meanwhile,
// while the queue holds too many bytes. It returns the batch's first apply
// error, if one happened already.
func (b *Batch[T, M]) Add(ctx context.Context, table T, items []M) error {
	return b.add(ctx, table, items, false)
}

// AddOrdered is Add for items whose order matters across keys: table has
// a single lane from now on, so its items, of every batch, are applied in
// the order they were added. A table that had several lanes is switched
// over first: AddOrdered hands over what is pending on them and waits,
// applying ready lanes meanwhile, until they are applied, so that nothing
// queued before overtakes what comes after. Later Add calls for table use
// its single lane too.
func (b *Batch[T, M]) AddOrdered(ctx context.Context, table T, items []M) error {
	return b.add(ctx, table, items, true)
}

func (b *Batch[T, M]) add(ctx context.Context, table T, items []M, ordered bool) error {
	q := b.q
	size := 0
	for i := range items {
		size += q.cfg.Size(items[i])
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if b.ended {
		return ErrEnded
	}
	for q.bytes > 0 && q.bytes+int64(size) > q.cfg.Limit {
		if b.err != nil {
			return b.err
		}
		q.handOverAllLocked()
		if err := q.progressLocked(ctx); err != nil {
			return err
		}
	}
	if b.err != nil {
		return b.err
	}
	lanes := q.lanesLocked(table)
	if ordered && len(lanes) > 1 {
		var err error
		if lanes, err = q.orderLocked(ctx, b, table); err != nil {
			return err
		}
	}
	n := uint64(len(lanes))
	for i := range items {
		itemSize := size // one item: its size is known
		if len(items) > 1 {
			itemSize = q.cfg.Size(items[i])
		}
		ln := lanes[q.cfg.Hash(items[i])%n]
		if len(ln.pending) > 0 && ln.pendingBatch != b {
			q.handOverLocked(ln)
		}
		if ln.pending == nil {
			ln.pending = q.getSliceLocked()
			ln.pendingBatch = b
			b.lanes = append(b.lanes, ln)
		}
		if len(ln.pending) == cap(ln.pending) {
			ln.pending = q.growLocked(ln.pending)
		}
		ln.pending = append(ln.pending, items[i])
		ln.pendingBytes += itemSize
		if len(ln.pending) >= q.cfg.Chunk {
			q.handOverLocked(ln)
			q.wakeLocked(1)
		}
	}
	q.bytes += int64(size)
	return nil
}

// lanesLocked returns the lanes of table, making them on first use. A few
// recent tables are looked up in a small list first: comparing a table
// with itself is cheaper than hashing it for the map.
func (q *Queue[T, M]) lanesLocked(table T) []*lane[T, M] {
	for _, lanes := range q.recent {
		if lanes[0].table == table {
			return lanes
		}
	}
	lanes := q.tables[table]
	if lanes == nil {
		lanes = make([]*lane[T, M], q.cfg.Workers)
		for i := range lanes {
			lanes[i] = &lane[T, M]{table: table}
		}
		q.tables[table] = lanes
	}
	if len(q.recent) < len(q.recentBuf) {
		q.recent = append(q.recent, lanes)
	} else {
		copy(q.recent[1:], q.recent[:len(q.recent)-1])
		q.recent[0] = lanes
	}
	return lanes
}

// orderLocked gives table a single lane once every item queued on its
// lanes is applied (see AddOrdered), and returns it. The caller holds q.mu.
func (q *Queue[T, M]) orderLocked(ctx context.Context, b *Batch[T, M], table T) ([]*lane[T, M], error) {
	for {
		// Read again each time: another batch may add to the lanes, or
		// switch the table over, while q.mu is released.
		lanes := q.lanesLocked(table)
		if len(lanes) == 1 {
			return lanes, nil
		}
		idle := true
		for _, ln := range lanes {
			if len(ln.pending) > 0 {
				q.handOverLocked(ln)
			}
			if ln.busy || len(ln.queue) > 0 {
				idle = false
			}
		}
		if idle {
			one := []*lane[T, M]{{table: table}}
			q.tables[table] = one
			for i, r := range q.recent {
				if r[0].table == table {
					q.recent[i] = one
				}
			}
			return one, nil
		}
		q.wakeLocked(len(q.ready))
		if err := q.progressLocked(ctx); err != nil {
			return nil, err
		}
		if b.err != nil {
			return nil, b.err
		}
	}
}

// Flush waits until everything added so far is applied: the batch's
// items, and those of every batch committed with CommitAsync before, of
// any table and lane. So an item added after Flush is applied after all
// of them, whatever its key, as a change that touches several keys (a
// key move, a truncate) needs. It returns the batch's first apply error;
// the other batches report theirs to their own callbacks.
func (b *Batch[T, M]) Flush(ctx context.Context) error {
	q := b.q
	q.mu.Lock()
	defer q.mu.Unlock()
	if b.ended {
		return ErrEnded
	}
	if err := b.drainLocked(ctx); err != nil {
		return err
	}
	for q.async > 0 {
		q.wakeLocked(len(q.ready))
		if err := q.progressLocked(ctx); err != nil {
			return err
		}
	}
	return b.err
}

// Commit flushes and ends the batch.
func (b *Batch[T, M]) Commit(ctx context.Context) error {
	q := b.q
	q.mu.Lock()
	defer q.mu.Unlock()
	if b.ended {
		return ErrEnded
	}
	err := b.drainLocked(ctx)
	b.ended = true
	return err
}

// ErrClosed is what CommitAsync reports for a batch whose items were
// dropped because the queue was closed before they were applied.
var ErrClosed = errors.New("fan: the queue was closed before the batch was applied")

// CommitAsync ends the batch without waiting: its items are handed over
// to the workers, and done is called once with the batch's first apply
// error (nil once everything is applied), from a goroutine of the queue or
// from this call. done must not block, nor call the queue. After Close,
// items not yet applied are dropped and done receives ErrClosed.
// Batches committed one after another keep the order of the items of
// each key: CommitAsync does not wait, but lanes apply in order.
func (b *Batch[T, M]) CommitAsync(done func(error)) {
	q := b.q
	q.mu.Lock()
	if b.ended {
		q.mu.Unlock()
		done(ErrEnded)
		return
	}
	b.ended = true
	if q.closed {
		b.dropPendingLocked()
		b.dropped = true
		if b.outstanding > 0 {
			b.done = done
			q.async++
			finish := q.dropAsyncLocked()
			q.mu.Unlock()
			for _, f := range finish {
				f()
			}
			return
		}
	} else {
		for _, ln := range b.lanes {
			if ln.pendingBatch == b && len(ln.pending) > 0 {
				q.handOverLocked(ln)
			}
		}
		b.lanes = nil
	}
	if b.outstanding > 0 {
		b.done = done
		q.async++
		q.wakeLocked(len(q.ready))
		q.mu.Unlock()
		return
	}
	err := b.err
	if b.dropped && err == nil {
		err = ErrClosed
	}
	q.mu.Unlock()
	done(err)
}

// dropPendingLocked drops the batch's items not yet handed over.
func (b *Batch[T, M]) dropPendingLocked() {
	q := b.q
	for _, ln := range b.lanes {
		if ln.pendingBatch == b && len(ln.pending) > 0 {
			q.bytes -= int64(ln.pendingBytes)
			q.putSliceLocked(ln.pending)
			ln.pending, ln.pendingBytes, ln.pendingBatch = nil, 0, nil
		}
	}
	b.lanes = nil
}

// Rollback drops what is not yet applied, waits for what is being applied,
// and ends the batch.
func (b *Batch[T, M]) Rollback(ctx context.Context) error {
	q := b.q
	q.mu.Lock()
	defer q.mu.Unlock()
	if b.ended {
		return nil
	}
	b.ended = true
	b.dropped = true
	b.dropPendingLocked()
	for b.outstanding > 0 {
		if err := q.progressLocked(ctx); err != nil {
			return err
		}
	}
	q.notifyLocked()
	return nil
}

// drainLocked hands the batch's pending items over and waits for all its
// chunks. The caller holds q.mu.
func (b *Batch[T, M]) drainLocked(ctx context.Context) error {
	q := b.q
	for _, ln := range b.lanes {
		if ln.pendingBatch == b && len(ln.pending) > 0 {
			q.handOverLocked(ln)
		}
	}
	b.lanes = b.lanes[:0]
	for b.outstanding > 0 {
		if q.slow {
			q.wakeLocked(len(q.ready) - 1)
		}
		if err := q.progressLocked(ctx); err != nil {
			return err
		}
	}
	return b.err
}

// progressLocked applies one ready lane, or else waits until a chunk
// completes or ctx ends. The caller holds q.mu.
func (q *Queue[T, M]) progressLocked(ctx context.Context) error {
	if ln := q.popReadyLocked(); ln != nil {
		// The helper applies under the queue's context and its own, so
		// that a caller whose context ends is not stuck in an apply.
		applyCtx := q.ctx
		if ctx != q.ctx && ctx.Done() != nil {
			var cancel context.CancelFunc
			applyCtx, cancel = context.WithCancel(q.ctx)
			stop := context.AfterFunc(ctx, cancel)
			defer func() { stop(); cancel() }()
		}
		q.runSomeLocked(applyCtx, ln)
		return ctx.Err()
	}
	if q.changed == nil {
		q.changed = make(chan struct{})
	}
	changed := q.changed
	q.mu.Unlock()
	defer q.mu.Lock()
	select {
	case <-changed:
		return nil
	case <-ctx.Done():
		return errors.WithStack(ctx.Err())
	}
}

// handOverLocked turns a lane's pending items into a chunk.
func (q *Queue[T, M]) handOverLocked(ln *lane[T, M]) {
	b := ln.pendingBatch
	ln.queue = append(ln.queue, chunk[T, M]{batch: b, items: ln.pending, bytes: ln.pendingBytes})
	b.outstanding++
	ln.pending, ln.pendingBytes, ln.pendingBatch = nil, 0, nil
	if !ln.busy && !ln.inReady {
		ln.inReady = true
		q.ready = append(q.ready, ln)
	}
}

// handOverAllLocked hands over the pending items of every lane.
func (q *Queue[T, M]) handOverAllLocked() {
	for _, lanes := range q.tables {
		for _, ln := range lanes {
			if len(ln.pending) > 0 {
				q.handOverLocked(ln)
			}
		}
	}
	q.wakeLocked(len(q.ready))
}

// recordLocked notes a measured apply duration.
func (q *Queue[T, M]) recordLocked(d time.Duration) {
	q.took[q.tookNext] = d
	q.tookNext = (q.tookNext + 1) % recentApplies
	q.lastSlow = d > slowApply
	q.slow = true
	for _, t := range q.took {
		if t <= slowApply {
			q.slow = false
			break
		}
	}
}

// getSliceLocked returns an empty slice for a lane's pending items,
// reusing one whose chunk was applied if there is one.
func (q *Queue[T, M]) getSliceLocked() []M {
	if n := len(q.free); n > 0 {
		s := q.free[n-1]
		q.free[n-1] = nil
		q.free = q.free[:n-1]
		return s
	}
	return make([]M, 0, min(q.cfg.Chunk, newSlice))
}

// growLocked returns a copy of the full slice s with room for more items:
// twice the capacity, but no more than a chunk, so that a full chunk
// wastes no memory (append would give 100 items 128 slots).
func (q *Queue[T, M]) growLocked(s []M) []M {
	grown := make([]M, len(s), max(min(2*cap(s), q.cfg.Chunk), len(s)+1))
	copy(grown, s)
	q.putSliceLocked(s)
	return grown
}

// putSliceLocked keeps s, whose items are no longer needed, for reuse.
// It clears the items so that what they reference can be collected.
func (q *Queue[T, M]) putSliceLocked(s []M) {
	if cap(s) == 0 || cap(s) > maxReuse || len(q.free) >= maxFree*q.cfg.Workers {
		return
	}
	clear(s)
	q.free = append(q.free, s[:0])
}

func (q *Queue[T, M]) popReadyLocked() *lane[T, M] {
	if len(q.ready) == 0 {
		return nil
	}
	ln := q.ready[0]
	copy(q.ready, q.ready[1:])
	q.ready[len(q.ready)-1] = nil
	q.ready = q.ready[:len(q.ready)-1]
	ln.inReady = false
	return ln
}

// wakeLocked wakes up to n idle workers.
func (q *Queue[T, M]) wakeLocked(n int) {
	for i := 0; i < n && i < q.idle; i++ {
		q.work.Signal()
	}
}

func (q *Queue[T, M]) notifyLocked() {
	if q.changed != nil {
		close(q.changed)
		q.changed = nil
	}
}

// runSomeLocked applies ln, which the caller took off the ready list:
// alone until its queue is empty (runLocked), or in one call with the
// lanes gatherLocked takes along. Those of them with more chunks queued by
// then go back on the ready list. The caller holds q.mu.
func (q *Queue[T, M]) runSomeLocked(ctx context.Context, ln *lane[T, M]) {
	runs := q.gatherLocked(ln)
	if runs == nil {
		q.runLocked(ctx, ln)
		return
	}
	var parts []Part[T, M]
	for _, r := range runs {
		r.ln.busy = true
		k := 0
		for k < len(parts) && parts[k].Table != r.ln.table {
			k++
		}
		if k == len(parts) {
			parts = append(parts, Part[T, M]{Table: r.ln.table})
		}
		for _, c := range r.ln.queue[:r.end] {
			parts[k].Items = append(parts[k].Items, c.items...)
		}
	}
	var err error
	if ctx.Err() != nil {
		err = errors.WithStack(ctx.Err())
	} else {
		err = q.applyPartsLocked(ctx, parts)
	}
	for k := range parts {
		clear(parts[k].Items)
	}
	var finished []func() // CommitAsync callbacks due
	requeued := 0
	for _, r := range runs {
		// Add only appends to a busy lane's queue: its first chunks are
		// still those applied.
		finished = q.settleLocked(r.ln, r.end, err, finished)
		r.ln.busy = false
		if len(r.ln.queue) > 0 {
			r.ln.inReady = true
			q.ready = append(q.ready, r.ln)
			requeued++
		}
	}
	// The caller may be done with its batch and not come back for them.
	q.wakeLocked(requeued)
	if q.closed && requeued > 0 {
		// Close skipped these lanes while they were busy, and no worker
		// is left to run them: end what CommitAsync left on them now, as
		// Close did for the others (runLocked would have run them dry).
		finished = append(finished, q.dropAsyncLocked()...)
	}
	q.notifyLocked()
	if len(finished) > 0 {
		q.mu.Unlock()
		for _, f := range finished {
			f()
		}
		q.mu.Lock()
	}
}

// laneRun is the first chunks of a lane, applied with other lanes' (see
// gatherLocked): the chunks [0, end) of ln.queue.
type laneRun[T comparable, M any] struct {
	ln  *lane[T, M]
	end int
}

// applyPartsLocked applies parts in one call: Apply for one table, else
// ApplyMany. It releases q.mu around the call. The caller holds q.mu.
func (q *Queue[T, M]) applyPartsLocked(ctx context.Context, parts []Part[T, M]) error {
	if len(parts) == 1 {
		return q.applyLocked(ctx, parts[0].Table, parts[0].Items, nil)
	}
	var none T
	return q.applyLocked(ctx, none, nil, parts)
}

// applyLocked applies items to table, or many with ApplyMany if it is
// set, timing the call when the queue samples it (see recordLocked). It
// releases q.mu around the call. The caller holds q.mu.
func (q *Queue[T, M]) applyLocked(ctx context.Context, table T, items []M, many []Part[T, M]) error {
	q.applies++
	timed := q.slow || q.lastSlow || q.applies%sampleEvery == 0
	q.mu.Unlock()
	var start time.Time
	if timed {
		start = time.Now()
	}
	var err error
	if many == nil {
		err = q.apply(ctx, table, items)
	} else {
		err = q.applyMany(ctx, many)
	}
	var took time.Duration
	if timed {
		took = time.Since(start)
	}
	q.mu.Lock()
	if timed {
		q.recordLocked(took)
	}
	return err
}

// settleLocked ends the chunks [0, end) of ln's queue, applied with the
// result err or skipped, drops them from the queue, and appends the
// CommitAsync callbacks that are due to finished. The caller holds q.mu.
func (q *Queue[T, M]) settleLocked(ln *lane[T, M], end int, err error, finished []func()) []func() {
	for k := range ln.queue[:end] {
		finished = q.settleChunkLocked(ln.queue[k], err, finished)
	}
	n := copy(ln.queue, ln.queue[end:])
	clear(ln.queue[n:])
	ln.queue = ln.queue[:n]
	return finished
}

// settleChunkLocked ends chunk c, applied with the result err or
// skipped, and appends its batch's CommitAsync callback to finished if c
// was the batch's last chunk. The caller holds q.mu.
func (q *Queue[T, M]) settleChunkLocked(c chunk[T, M], err error, finished []func()) []func() {
	b := c.batch
	if err != nil && b.err == nil && !b.dropped {
		b.err = err
	}
	b.outstanding--
	q.bytes -= int64(c.bytes)
	q.putSliceLocked(c.items)
	if b.outstanding == 0 && b.done != nil {
		finished = append(finished, b.finishLocked())
	}
	return finished
}

// runItems returns how many chunks at the front of ln's queue, and items,
// fit in limit items: consecutive chunks of live batches (not rolled back,
// not failed); none if the first does not fit.
func (q *Queue[T, M]) runItems(ln *lane[T, M], limit int) (chunks, items int) {
	for chunks < len(ln.queue) {
		c := &ln.queue[chunks]
		if c.batch.dropped || c.batch.err != nil || items+len(c.items) > limit {
			break
		}
		items += len(c.items)
		chunks++
	}
	return chunks, items
}

// gatherLocked returns the runs of ln and of the ready lanes to apply in
// the same call, taking those lanes off the ready list: lanes of ln's
// table, or of any table with Config.ApplyMany, whose first chunks fit in
// what ln's leave of Chunk items. Lanes with a chunk's worth of items or
// more go alone, so that a backlog's lanes are still applied in parallel;
// and so do all while applies are fast (see slowApply), since copying the
// items into one call then costs more than the calls it saves.
// It returns nil if ln goes alone (also if its first chunk is of a batch
// that ended, or no other lane fits). The caller holds q.mu.
func (q *Queue[T, M]) gatherLocked(ln *lane[T, M]) []laneRun[T, M] {
	if len(q.ready) == 0 || len(ln.queue) == 0 || !(q.slow || q.gatherAlways) {
		return nil
	}
	limit := min(q.cfg.Chunk, q.cfg.MaxApply)
	end, n := q.runItems(ln, limit)
	if end == 0 || n >= limit {
		return nil
	}
	budget := limit - n
	var runs []laneRun[T, M]
	kept := q.ready[:0]
	for _, m := range q.ready {
		if budget > 0 && len(runs) < maxGather && (q.cfg.ApplyMany != nil || m.table == ln.table) {
			if e, k := q.runItems(m, budget); e > 0 {
				if runs == nil {
					runs = append(make([]laneRun[T, M], 0, 4), laneRun[T, M]{ln: ln, end: end})
				}
				runs = append(runs, laneRun[T, M]{ln: m, end: e})
				budget -= k
				m.inReady = false
				continue
			}
		}
		kept = append(kept, m)
	}
	clear(q.ready[len(kept):])
	q.ready = kept
	return runs
}

// runLocked applies the chunks of ln in order until its queue is empty,
// under ctx. Consecutive chunks go in one Apply call of up to
// Config.MaxApply items. It releases q.mu around each apply. The caller
// holds q.mu.
func (q *Queue[T, M]) runLocked(ctx context.Context, ln *lane[T, M]) {
	ln.busy = true
	var finished []func() // CommitAsync callbacks due
	// Index rather than reslice, so that the queue keeps its capacity;
	// Add may append to it while q.mu is released.
	for i := 0; i < len(ln.queue); {
		if i >= compactAfter && i >= len(ln.queue)/2 {
			// A lane that never runs dry would otherwise keep every
			// applied entry: drop them.
			n := copy(ln.queue, ln.queue[i:])
			clear(ln.queue[n:])
			ln.queue, i = ln.queue[:n], 0
		}
		// The run [i, j) of chunks applied together: those of live
		// batches, up to MaxApply items.
		j, n := i, 0
		for j < len(ln.queue) {
			c := &ln.queue[j]
			if c.batch.dropped || c.batch.err != nil {
				if j == i {
					j++ // skipped on its own below
				}
				break
			}
			if j > i && n+len(c.items) > q.cfg.MaxApply {
				break
			}
			n += len(c.items)
			j++
		}
		run := ln.queue[i:j]
		var err error
		first := run[0].batch
		switch {
		case first.dropped || first.err != nil:
			// skipped: rolled back, or already failed
		case ctx.Err() != nil:
			err = errors.WithStack(ctx.Err())
		default:
			items := run[0].items
			if len(run) > 1 {
				items = make([]M, 0, n)
				for k := range run {
					items = append(items, run[k].items...)
				}
			}
			err = q.applyLocked(ctx, ln.table, items, nil)
			if len(run) > 1 {
				clear(items)
			}
		}
		// run still aliases ln.queue[i:j]: Add only appends, and
		// compaction happens here.
		run = ln.queue[i:j]
		for k := range run {
			c := run[k]
			run[k] = chunk[T, M]{}
			finished = q.settleChunkLocked(c, err, finished)
		}
		q.notifyLocked()
		i = j
		if len(finished) > 0 {
			// The callbacks run without q.mu; Add may append to
			// ln.queue meanwhile, which the loop reads again.
			q.mu.Unlock()
			for k, f := range finished {
				f()
				finished[k] = nil
			}
			finished = finished[:0]
			q.mu.Lock()
		}
	}
	ln.queue = ln.queue[:0]
	ln.busy = false
	q.notifyLocked() // an idle lane is what orderLocked waits for
}

// applyMany is apply for Config.ApplyMany.
func (q *Queue[T, M]) applyMany(ctx context.Context, parts []Part[T, M]) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = errors.Errorf("panic in ApplyMany: %v\n%s", r, debug.Stack())
		}
	}()
	return q.cfg.ApplyMany(ctx, parts)
}

// apply calls Config.Apply, turning a panic into an error that carries the
// panic's stack. runLocked releases q.mu around the call, so a panic that
// went on up would unlock q.mu a second time on its way out, which is a
// fatal error no recover can catch; and a worker has nobody to recover it.
func (q *Queue[T, M]) apply(ctx context.Context, table T, items []M) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = errors.Errorf("panic in Apply: %v\n%s", r, debug.Stack())
		}
	}()
	return q.cfg.Apply(ctx, table, items)
}
