// Package logical runs logical-replication pipelines. A product supplies a
// Dialect, which knows how to read and decode one kind of source; the
// package supplies the rest: a supervised loop around the dialect, a
// persisted consistent point to resume from, batching into a Target,
// leases, backfill, foreign-key ordering, and graceful shutdown.
//
// # What you supply
//
// A Dialect has three methods. ReadInto reads the source from the
// consistent point and sends messages (any values) into a channel. Process
// receives them and turns them into batches of mutations through Events:
// OnBegin opens a Batch, OnData adds mutations for a table, OnCommit ends
// it, and SetConsistentPoint records that everything up to a Stamp is
// safely in the target. ZeroStamp returns the stamp type to decode the
// persisted point into.
//
// Most sources deliver whole transactions, each with a position. For them
// the package has a ready Process: Transactions calls the dialect's
// decoder for each message and does the rest (skipping what a restarted
// source sends again, one batch per source transaction, commit, then the
// point, rollback, stop), so the dialect writes only its reader and its
// decoder. A dialect that needs more writes Process itself, see "A
// hand-written Process" below.
//
// A Stamp is any ordered position in the source (an LSN, a GTID set, a
// timestamp) that round-trips through encoding/json. A TimeStamp also knows
// its time, which enables backfill and lag metrics; an OffsetStamp has a
// numeric offset.
//
// Besides the dialect, a Config names the Target (where mutations land;
// MemoryTarget is one for tests) and the Memo (where consistent points are
// kept; MemoryMemo and the crash-safe FileMemo are provided).
//
// # Lifecycle
//
// NewFactory validates a Config; Factory.Start validates a LoopConfig,
// loads the loop's consistent point (Loop.GetInitialPoint) and starts the
// loop in the background. Start does both for a single loop.
//
// Each iteration of a loop acquires the lease (if the dialect is a Lessor),
// loads the consistent point, chooses a strategy, and runs ReadInto and
// Process in two goroutines around a small channel. When both have
// returned, the iteration ends, and a new one starts after
// Config.RetryDelay, until the loop is stopped.
//
// # The consistent point
//
// State.SetConsistentPoint persists a point first and publishes it second:
// GetConsistentPoint, and the channel it returns, change only after the
// Memo stored the point. Anything that observes the point, for example a
// dialect acknowledging its source so it can discard old log, therefore
// never sees a point that a crash would lose. Points must strictly
// increase. The loop keeps the Stamp value it was given (as the current
// point, for comparison with the next one, and in Loop.Stats), so a stamp
// must not be modified once passed to SetConsistentPoint: pass a new one
// each time, and never modify the one GetConsistentPoint returns.
//
// After a restart the loop resumes from the persisted point, so mutations
// after it may be applied again: the guarantee is at-least-once. How to get
// "nothing applied twice":
//   - Within an iteration, skip every message at or before the consistent
//     point: after a source error the restarted ReadInto sends again from
//     the point it saw, which can be behind what Process committed
//     meanwhile. Committing an old transaction again after newer ones would
//     undo the newer ones (a deleted row comes back, for good).
//     Transactions does this; logicaltest.Conformance checks it.
//   - Across restarts (a crash, a failed Process, a moved lease), what was
//     committed after the persisted point is applied again, in order and
//     before anything newer. Targets that upsert and delete by key
//     (MemoryTarget, the PostgreSQL target) end in the same state as if it
//     was applied once.
//   - A target that must never see a transaction twice (appends, counters)
//     needs serial mode and the point stored in the same target
//     transaction as the data: for example a row holding the stamp written
//     to a progress table in each batch, and a Memo whose Get reads that
//     row, so that the data and its point commit or fail together.
//
// # Failures and rollback
//
// When ReadInto returns an error, the loop puts a rollback message into the
// channel (see IsRollback), waits, and calls ReadInto again from the
// consistent point. Process sees the rollback message, drops whatever batch
// it has open, and carries on; it must skip messages at or before the
// consistent point, which the restarted source may send again. When Process
// returns an error, the whole iteration is stopped and restarted. Panics in
// either are recovered and treated as errors. Repeated failures back off
// exponentially from Config.RetryDelay up to Config.MaxRetryDelay.
//
// Misuse is reported with errors that match a sentinel with errors.Is:
// ErrPointStalled and ErrPointBackwards from SetConsistentPoint,
// ErrBatchEnded from a Batch used after it ended. A point going backwards
// is logged at error level: it usually means Process applied replayed
// messages it should have skipped.
//
// When ReadInto returns nil without being asked to stop, the loop takes the
// source to be finished: it closes the channel, Process drains it and
// returns, the iteration ends, and the next one starts after
// Config.RetryDelay (10s by default) with a new lease and the point loaded
// again. So at the end of a source that may still grow, ReadInto waits (for
// new data, State.Stopping or ctx) instead of returning, or new data
// arrives a RetryDelay late.
//
// # A hand-written Process
//
// A Process has one goroutine and this shape (here for a source whose
// transactions span several messages, the last one marking the commit; a
// record carries the position of its transaction):
//
//	func (d *rowLedger) Process(ctx context.Context, ch <-chan logical.Message, ev logical.Events) error {
//		done, _ := ev.GetConsistentPoint() // only this Process moves the point
//		var batch logical.Batch            // open while a source transaction is
//		drop := func() {
//			if batch != nil {
//				_ = batch.OnRollback(ctx)
//				batch = nil
//			}
//		}
//		defer drop()
//		for {
//			var msg logical.Message
//			var ok bool
//			select {
//			case msg, ok = <-ch:
//			case <-ev.Stopping():
//				return nil
//			case <-ctx.Done():
//				return ctx.Err()
//			}
//			if !ok {
//				return nil // the source stopped for good; a partial transaction is dropped
//			}
//			if logical.IsRollback(msg) {
//				drop() // the source restarts from the consistent point
//				continue
//			}
//			rec := d.decode(msg, ev.GetTargetDB())
//			if logical.Compare(rec.stamp, done) <= 0 {
//				continue // sent again by a restarted source: committed already
//			}
//			if batch == nil {
//				var err error
//				if batch, err = ev.OnBegin(ctx); err != nil {
//					return err
//				}
//			}
//			if err := batch.OnData(ctx, rec.source, rec.table, rec.muts); err != nil {
//				return err
//			}
//			if !rec.last {
//				continue
//			}
//			err := <-batch.OnCommit(ctx)
//			batch = nil
//			if err != nil {
//				return err
//			}
//			if err := ev.SetConsistentPoint(ctx, rec.stamp); err != nil { // a new stamp each time
//				return err
//			}
//			done = rec.stamp
//		}
//	}
//
// Every receive also selects on Stopping and ctx, so Process returns while
// its channel stays open; the rollback message drops the open batch; the
// point moves only after OnCommit reported nil; nothing at or before the
// point is applied again. The repository's tests run this code through
// logicaltest.Conformance.
//
// # Serial and fan batches
//
// In serial mode (the default) each Batch is one target transaction, so
// source transactions are preserved exactly. In fan mode (Config.Immediate,
// and backfill) mutations are applied by Config.FanShards concurrent
// Target.Apply calls without transactions, in chunks; mutations of one
// table and key are always applied in the order given, and
// Config.BytesInFlight bounds the memory queued per loop. A shard that is
// about to apply only a few mutations takes along the few that are ready
// for other keys and tables (a small source transaction leaves some on
// several tables): those of its own table in the same Apply call, and
// those of other tables too if the Target is a MultiApplier, in one
// ApplyMulti call (pgstore: one transaction, one round trip).
//
// # Grouping
//
// A backlog of small source transactions is dominated by the cost of a
// target commit each. The Events given to Process are a Grouper: a
// dialect that opens its batches with OnBeginGrouped, and calls
// CommitGroup as soon as it has nothing more to read, gets consecutive
// batches merged into one target transaction (in fan mode: one hand-over
// to the workers, applied while the dialect reads on), up to Config.GroupMax batches, with the rows of each table
// merged into one Target call. On an idle source each group is a single
// batch committed at once, so grouping adds no latency. Groups end only
// between batches: a source transaction is never visible in part, and
// whatever a batch records about its position in the target (a progress
// row) commits with its data. The OnCommit result of a grouped batch
// arrives when its group commits; the dialect moves its consistent point
// in order as results arrive.
//
// An empty batch (OnBegin, then OnCommit without OnData, or OnData with no
// mutations) is allowed in either mode; in serial mode it commits an empty
// target transaction. To move the point over a source transaction with
// nothing to apply, SetConsistentPoint alone is enough.
//
// # Backfill and streaming
//
// A dialect that is also a Backfiller can read its source faster without
// transactional consistency. With Config.BackfillWindow set, an iteration
// whose consistent point is a TimeStamp older than the window backfills
// (BackfillInto, fan batches); once the point is within the window the loop
// switches back to streaming (ReadInto), and it switches to backfill again
// if it falls behind. Events.Backfill runs a nested, synchronous backfill
// with its own consistent point, for example for a newly added table.
//
// # Leases
//
// A dialect that is a Lessor must hold a lease before it runs, so that
// of several processes only one replicates. A LeaseBusyError makes the loop
// wait until the lease expires; losing the lease (its Context is cancelled)
// cancels the iteration, and the loop tries to acquire it again.
// MemoryLeases is an in-process implementation.
//
// # Shutdown
//
// Loop.Stop and Factory.Stop start a graceful stop: State.Stopping closes,
// and dialects should return promptly. After the grace period the
// contexts passed to the dialect are cancelled. Loop.Stopped closes and
// Factory.Wait returns once every goroutine of the loop has exited.
// Cancelling the Factory's context is a hard stop.
//
// # Testing a dialect
//
// Package logicaltest has a generator dialect, a recording Target that can
// enforce foreign keys, and a conformance check for your own dialect.
// WithChaos wraps a dialect so that its calls fail at random; a correct
// dialect still converges to the exact target state.
package logical
