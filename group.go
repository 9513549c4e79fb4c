package logical

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/pkg/errors"
)

// A Grouper puts consecutive batches into one target transaction (serial
// mode) or one hand-over to the fan queue (fan mode), so that a backlog of
// small source transactions costs one commit per group instead of one per
// transaction. The Events that Process receives from the loop are
// Groupers in every mode; a dialect opts in by calling OnBeginGrouped
// instead of OnBegin, and in exchange promises not to wait for a grouped
// batch's OnCommit result before it called CommitGroup.
//
// Grouping adds no latency on an idle source: the dialect calls
// CommitGroup as soon as it has nothing more to read (for a channel
// reader: when len(ch) == 0), and the group commits at once. While a
// backlog is queued, the group grows until Config.GroupMax batches or
// Config.BytesInFlight bytes of mutation data, and commits then.
//
// A group is applied as a whole: in serial mode its batches commit or roll
// back together, so each source transaction stays atomic at the target,
// and a dialect that records its progress in the target through each
// batch (as pglogical's Progress does) stays exactly-once. A consistent
// point may move past a grouped batch only once its OnCommit channel
// received nil.
//
// Loop.Stats counts a group as one commit: it counts target commits.
//
// The methods are called from Process's goroutine. OnBeginGrouped and
// CommitGroup are safe for concurrent use; a grouped batch, like any
// Batch, is used from one goroutine at a time, and one grouped batch at a
// time may be open (OnBegin or OnBeginGrouped fail while it is).
type Grouper interface {
	// OnBeginGrouped opens a batch like OnBegin, except that it may
	// share the group of the grouped batches before it. Its OnCommit
	// ends the batch and returns at once; the channel receives the
	// result when the group commits: on CommitGroup, when the group
	// reached its bounds, or at a plain OnBegin. OnRollback of a grouped
	// batch rolls back its whole group: the OnCommit channels of the
	// batches before it receive ErrGroupRolledBack. Opening a grouped
	// batch while another is open is an error.
	OnBeginGrouped(ctx context.Context) (Batch, error)

	// CommitGroup commits the open group, if any. In serial mode it
	// returns after the result is in the OnCommit channel of each of its
	// batches, and returns that result too. In fan mode it hands the
	// group to the workers and returns nil at once: the results arrive
	// in the channels once the group is applied, while the dialect reads
	// on (see BusyGrouper); a dialect that needs everything applied
	// waits for those channels. It is an error while a grouped batch is
	// open (between OnBeginGrouped and its OnCommit).
	CommitGroup(ctx context.Context) error
}

// An AsyncGrouper is a Grouper whose groups can commit in the background:
// the dialect reads and groups the next transactions while the target
// commits the last group. The Events that Process receives are
// AsyncGroupers; a group commits in the background when the target allows
// it (serial mode over a ChainTx, and fan mode, where CommitGroup does
// too), and otherwise before StartCommitGroup returns. While a group
// commits in the background, GroupBusy (BusyGrouper) reports true; a
// dialect that starts the next commit only then gets big groups without
// idling the target.
type AsyncGrouper interface {
	Grouper
	// StartCommitGroup starts to commit the open group, if any, and
	// returns without waiting for the result, which arrives in the
	// OnCommit channel of each of its batches. Groups commit in the order
	// they were started; a group never commits after an earlier one
	// failed (its channels receive an error too). An error means the
	// group could not be started (a grouped batch is open, or handing its
	// mutations over failed; the group's channels receive the error).
	StartCommitGroup(ctx context.Context) error
}

// ErrGroupRolledBack is what the OnCommit channel of a grouped batch
// receives when a later batch of the same group rolled back (see
// Grouper) before the group committed. Nothing of the batch was applied
// (serial mode) or some of it may have been (fan mode); the dialect must
// not move its consistent point past it, and should read it again (a
// dialect usually restarts from the consistent point anyway after the
// failure that made it roll back).
var ErrGroupRolledBack = errors.New("logical: the batch's group was rolled back by a later batch")

// errGroupBusy is returned by CommitGroup and OnBeginGrouped while a
// grouped batch is open.
var errGroupBusy = errors.New("logical: a grouped batch is still open (call OnCommit or OnRollback first)")

// groupBatcher implements Grouper over the decorated base strategy of an
// iteration: a group is one batch of inner.
type groupBatcher struct {
	inner    Batcher
	maxCount int // Config.GroupMax
	maxBytes int // Config.BytesInFlight
	// flushRows is groupFlushRows, or groupFlushRowsFan in fan mode.
	flushRows int

	// Groups committing in the background (fan mode, serial mode over a
	// ChainTx) and not yet applied: GroupBusy.
	applying atomic.Int32

	mu      sync.Mutex
	open    Batch         // the group's batch of inner; nil if none
	current *groupedBatch // the group's batch not yet ended
	waiting []chan error  // OnCommit channels of the group's ended batches
	bytes   int           // mutation data given to the group

	// Mutations held back to be handed to open together, per source and
	// target table, in order of first appearance: a group of many small
	// transactions then costs one OnData per table and not one per
	// transaction.
	held  map[heldKey]*heldMuts
	order []*heldMuts

	// A group committing in the background (chainCommitter): pending
	// closes once its results are in its batches' channels. spare is the
	// batch that follows it on the same target session, which the next
	// group (or a plain OnBegin) uses. One group at a time commits in the
	// background; the next waits for it before it starts.
	pending chan struct{}
	spare   Batch
}

// heldKey is what OnData calls that can be merged have in common.
type heldKey struct {
	source string
	target Table
}

// heldMuts are the held mutations of one heldKey.
type heldMuts struct {
	key  heldKey
	muts []Mutation
	// last is how many were handed over the last time, up to
	// heldCapMax: the capacity a new muts starts with, so that it does
	// not grow (copying every mutation) one append at a time in each
	// group.
	last int
}

// groupFlushRows (serial mode) and groupFlushRowsFan (fan mode) are how
// many mutations of one table a group holds before it hands them over. In
// serial mode each hand-over is a statement per set of columns at the
// target, so the larger, the less the target spends per row: at 5000
// rather than 1000, the target backend of a serial catch-up of small
// transactions used 5-34% less CPU in each of 5 rounds (pgbench backlog,
// bench/pg), and 20000 gave no more. In fan mode a hand-over only queues
// the mutations for the workers, which gather their own calls (up to
// fanMaxApply), so a larger one saves no statement and only delays the
// workers; fan mode keeps 1000 (a 2M-row source transaction took 4-22%
// longer at 5000 in each of 3 rounds, though that is within this shared
// machine's noise).
const (
	groupFlushRows    = 5000
	groupFlushRowsFan = 1000
)

// heldCapMax bounds the capacity a table's held mutations start with
// (heldMuts.last), so that a table that had many in one group costs
// little in the next when it has few.
const heldCapMax = 256

var (
	_ Batcher      = (*groupBatcher)(nil)
	_ Grouper      = (*groupBatcher)(nil)
	_ AsyncGrouper = (*groupBatcher)(nil)
	_ AsyncGrouper = (*events)(nil)
)

// newGroupBatcher groups the batches of inner, a fan-mode Batcher if fan.
func newGroupBatcher(inner Batcher, cfg *Config, fan bool) *groupBatcher {
	flush := groupFlushRows
	if fan {
		flush = groupFlushRowsFan
	}
	return &groupBatcher{inner: inner, maxCount: cfg.GroupMax, maxBytes: cfg.BytesInFlight, flushRows: flush}
}

// OnBegin implements Batcher: it commits an open group without an open
// batch first, so that batches keep their order at the target.
func (g *groupBatcher) OnBegin(ctx context.Context) (Batch, error) {
	g.mu.Lock()
	if g.current != nil {
		g.mu.Unlock()
		return nil, errGroupBusy // a second target transaction beside the group's would wait on its locks
	}
	_ = g.commitLocked(ctx, false) // the result went to the group's channels
	defer g.mu.Unlock()
	// The spare follows the last group on its session; on another one,
	// the batch would not see that group's writes before it committed.
	g.waitPendingLocked()
	if b := g.spare; b != nil {
		g.spare = nil
		return b, nil
	}
	return g.inner.OnBegin(ctx)
}

// OnBeginGrouped implements Grouper.
func (g *groupBatcher) OnBeginGrouped(ctx context.Context) (Batch, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.current != nil {
		return nil, errGroupBusy
	}
	if g.open == nil && g.spare != nil {
		g.open, g.spare = g.spare, nil
	}
	if g.open == nil {
		b, err := g.inner.OnBegin(ctx)
		if err != nil {
			return nil, err
		}
		g.open = b
	}
	g.current = &groupedBatch{g: g}
	return g.current, nil
}

// CommitGroup implements Grouper.
func (g *groupBatcher) CommitGroup(ctx context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.current != nil {
		return errGroupBusy
	}
	err := g.commitLocked(ctx, false)
	g.waitPendingLocked()
	return err
}

// StartCommitGroup implements AsyncGrouper.
func (g *groupBatcher) StartCommitGroup(ctx context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.current != nil {
		return errGroupBusy
	}
	return g.commitLocked(ctx, true)
}

// commitLocked commits the open group and hands its result to every
// waiting batch: in the background if async is set and the group's batch
// can chain, else before it returns. The caller holds g.mu and no grouped
// batch is open.
func (g *groupBatcher) commitLocked(ctx context.Context, async bool) error {
	if g.open == nil {
		return nil
	}
	err := g.handOverLocked(ctx)
	if err == nil && isAsync(g.open) {
		g.commitAsyncLocked(ctx) // fan.go
		return nil
	}
	if err != nil {
		_ = g.open.OnRollback(ctx)
		g.deliverLocked(err)
		return err
	}
	if cc, ok := g.open.(chainCommitter); ok {
		g.waitPendingLocked()
		if next, wait, ok := cc.commitChain(ctx); ok {
			waiting := g.waiting
			g.open, g.waiting, g.bytes = nil, nil, 0
			g.spare = next
			done := make(chan struct{})
			g.pending = done
			g.applying.Add(1) // GroupBusy
			var err error
			go func() {
				err = wait()
				g.applying.Add(-1) // before the results wake the dialect
				deliver(waiting, err)
				close(done)
			}()
			if async {
				return nil
			}
			<-done
			return err
		}
	}
	err = commitOf(ctx, g.open)
	g.deliverLocked(err)
	return err
}

// waitPendingLocked waits until the group committing in the background,
// if any, delivered its results. The caller holds g.mu (the background
// commit does not take it).
func (g *groupBatcher) waitPendingLocked() {
	if g.pending != nil {
		<-g.pending
		g.pending = nil
	}
}

// hold adds muts to what the group holds for source and target, and hands
// that over once it is many.
func (g *groupBatcher) hold(ctx context.Context, source string, target Table, muts []Mutation) error {
	k := heldKey{source: source, target: target}
	h := g.held[k]
	if h == nil {
		if g.held == nil {
			g.held = make(map[heldKey]*heldMuts)
		}
		h = &heldMuts{key: k}
		g.held[k] = h
		g.order = append(g.order, h)
	}
	switch {
	case h.muts == nil && len(muts) >= h.last:
		// The group owns muts now, but not the array beyond them: cap
		// it, so that a later append copies instead of writing into
		// what the caller may still use for other calls.
		h.muts = muts[:len(muts):len(muts)]
	case h.muts == nil:
		h.muts = append(make([]Mutation, 0, h.last), muts...)
	default:
		h.muts = append(h.muts, muts...)
	}
	if len(h.muts) < g.flushRows {
		return nil
	}
	out := h.muts
	h.muts, h.last = nil, min(len(out), heldCapMax)
	return g.open.OnData(ctx, source, target, out)
}

// handOverLocked gives open everything the group holds.
func (g *groupBatcher) handOverLocked(ctx context.Context) error {
	var err error
	for _, h := range g.order {
		if len(h.muts) > 0 && err == nil {
			err = g.open.OnData(ctx, h.key.source, h.key.target, h.muts)
		}
		h.muts, h.last = nil, min(len(h.muts), heldCapMax)
	}
	if len(g.order) > maxHeldKeys {
		g.dropHeldLocked()
	}
	return err
}

// maxHeldKeys is how many tables the group remembers from one group to
// the next, so that a steady set of tables allocates nothing per group.
const maxHeldKeys = 256

// deliverLocked ends the group: each waiting batch receives err. The
// caller holds g.mu.
func (g *groupBatcher) deliverLocked(err error) {
	deliver(g.waiting, err)
	clear(g.waiting)
	g.open, g.waiting, g.bytes = nil, g.waiting[:0], 0
}

// deliver sends err to each of a group's waiting batches, whether the
// group committed before its commit call returned or in the background.
func deliver(waiting []chan error, err error) {
	for _, ch := range waiting {
		ch <- err
		close(ch)
	}
}

// abandon rolls back a group left open when Process returned; nobody is
// left to read its results.
func (g *groupBatcher) abandon(ctx context.Context) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.open != nil {
		if g.current != nil {
			g.current.ended = true
			g.current = nil
		}
		g.dropHeldLocked()
		_ = g.open.OnRollback(ctx)
		g.deliverLocked(ErrGroupRolledBack)
	}
	g.waitPendingLocked()
	if g.spare != nil {
		_ = g.spare.OnRollback(ctx)
		g.spare = nil
	}
}

// dropHeldLocked forgets what the group holds, and its tables.
func (g *groupBatcher) dropHeldLocked() {
	for _, h := range g.order {
		h.muts = nil
	}
	clear(g.held)
	clear(g.order)
	g.order = g.order[:0]
}

// groupedBatch is one batch of a group.
type groupedBatch struct {
	g     *groupBatcher
	ended bool
}

// Flush hands over what the group holds and flushes the group's batch, so
// that what comes after (a truncate, say) stays after it.
func (b *groupedBatch) Flush(ctx context.Context) error {
	if b.ended {
		return ErrBatchEnded
	}
	g := b.g
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.handOverLocked(ctx); err != nil {
		return err
	}
	return g.open.Flush(ctx)
}

// OnData holds muts back to merge them with the group's other mutations
// of the same tables; the order of the mutations of one table is kept,
// that of different tables is not (only a target with foreign keys could
// tell, and the loop orders those itself with Config.ForeignKeys).
func (b *groupedBatch) OnData(ctx context.Context, source string, target Table, muts []Mutation) error {
	if b.ended {
		return ErrBatchEnded
	}
	if len(muts) == 0 {
		return nil
	}
	g := b.g
	g.mu.Lock()
	defer g.mu.Unlock()
	for i := range muts {
		g.bytes += muts[i].size()
	}
	if err := g.hold(ctx, source, target, muts); err != nil {
		return err
	}
	if g.bytes >= g.maxBytes {
		return g.handOverLocked(ctx)
	}
	return nil
}

// OnCommit ends the batch; the group commits now if it reached its
// bounds.
func (b *groupedBatch) OnCommit(ctx context.Context) <-chan error {
	if b.ended {
		return result1(ErrBatchEnded)
	}
	b.ended = true
	g := b.g
	g.mu.Lock()
	defer g.mu.Unlock()
	g.current = nil
	ch := make(chan error, 1)
	g.waiting = append(g.waiting, ch)
	if len(g.waiting) >= g.maxCount || g.bytes >= g.maxBytes {
		_ = g.commitLocked(ctx, true)
	}
	return ch
}

// OnRollback rolls back the whole group.
func (b *groupedBatch) OnRollback(ctx context.Context) error {
	if b.ended {
		return nil
	}
	b.ended = true
	g := b.g
	g.mu.Lock()
	defer g.mu.Unlock()
	g.current = nil
	g.dropHeldLocked()
	err := g.open.OnRollback(ctx)
	g.deliverLocked(ErrGroupRolledBack)
	return err
}

// OnBeginGrouped implements Grouper.
func (e *events) OnBeginGrouped(ctx context.Context) (Batch, error) {
	if g, ok := e.Batcher.(Grouper); ok {
		return g.OnBeginGrouped(ctx)
	}
	return e.Batcher.OnBegin(ctx)
}

// CommitGroup implements Grouper.
func (e *events) CommitGroup(ctx context.Context) error {
	if g, ok := e.Batcher.(Grouper); ok {
		return g.CommitGroup(ctx)
	}
	return nil
}

// StartCommitGroup implements AsyncGrouper.
func (e *events) StartCommitGroup(ctx context.Context) error {
	if g, ok := e.Batcher.(AsyncGrouper); ok {
		return g.StartCommitGroup(ctx)
	}
	return e.CommitGroup(ctx)
}
