package logical

import (
	"context"
	"slices"
	"strings"

	"github.com/pkg/errors"
)

// A Txn is one whole source transaction, as Transactions.Decode returns it.
type Txn struct {
	// Stamp is the position in the source just after the transaction: the
	// consistent point once the transaction is committed. A Txn with a nil
	// Stamp is skipped; return one for a message that carries nothing to
	// apply. A Txn with a Stamp and no Data moves the point without
	// opening a batch (a source heartbeat that advances its position).
	Stamp Stamp

	// Data holds the transaction's mutations by target table, each
	// table's in source order. Tables are passed to Batch.OnData one call
	// each, in the order of Table.String, so that runs are repeatable;
	// with Config.ForeignKeys the loop orders them by dependency instead.
	// The slices belong to the batch once Process passed them on; the map
	// itself is no longer used when Decode is called next, so Decode may
	// clear and reuse one map.
	Data map[Table][]Mutation

	// Source is the name passed to Batch.OnData as the source table, which
	// Config.Script routes by. Empty means each target table's Name.
	Source string
}

// Transactions is a ready Process for a dialect whose messages each carry
// one whole source transaction (or nothing): the dialect writes its reader
// (ReadInto) and a decoder, and its Process is one line:
//
//	func (d *myDialect) Process(ctx context.Context, ch <-chan logical.Message, ev logical.Events) error {
//		return logical.Transactions{Decode: d.decode}.Process(ctx, ch, ev)
//	}
//
// For each message, Process calls Decode and then
//   - skips the transaction if its Stamp is at or before the consistent
//     point: a restarted source sends again what may already be
//     committed, and committing it again after later data would undo
//     that data;
//   - opens a batch (Events.OnBegin), passes each table's mutations to
//     Batch.OnData, commits, waits for the commit's result, and then sets
//     the consistent point to the Stamp (State.SetConsistentPoint);
//   - on the rollback message (IsRollback) rolls back the batch it has
//     open, calls Reset, and carries on with the restarted source.
//
// It returns nil once ch is closed or events.Stopping() is closed, and
// ctx.Err() once ctx is cancelled. Any error from Decode or from Events
// or a Batch is returned (the loop then restarts the iteration from the
// persisted point); an open batch is rolled back first.
//
// A dialect whose transactions span several messages (begin, rows,
// commit), or that needs Events.Backfill or its own batching, writes
// Process by hand; see "A hand-written Process" in the package overview.
//
// The zero value is not usable: Decode is required. Fields may be added
// later (for example to commit several source transactions in one target
// transaction); a Transactions written as a composite literal with field
// names keeps compiling.
type Transactions struct {
	// Decode turns a message from ReadInto into the transaction it carries.
	// It is called from Process's goroutine, one message at a time, never
	// with the rollback message. An error ends Process with that error.
	Decode func(ctx context.Context, m Message) (Txn, error)

	// Reset, if set, is called after a rollback message, once the open
	// batch is rolled back: forget whatever Decode keeps across messages
	// (a partial transaction, a cache of the source's schema), since the
	// source restarts from the consistent point.
	Reset func()
}

// Process implements Dialect.Process; see Transactions.
func (p Transactions) Process(ctx context.Context, ch <-chan Message, events Events) error {
	if p.Decode == nil {
		return errors.New("logical: Transactions.Decode is nil")
	}
	r := txnRun{p: p, events: events}
	// Only this Process moves the point during its call, so the point it
	// started from and the ones it set itself are all it needs to compare
	// with; that spares a GetConsistentPoint per message.
	r.done, _ = events.GetConsistentPoint()
	stopping, cancelled := events.Stopping(), ctx.Done()
	for {
		var msg Message
		var ok bool
		// Stopping and ctx are checked before every message, so that a
		// channel that is never empty cannot keep Process from seeing them.
		if isDone(stopping) {
			return r.abandon(ctx, nil)
		}
		if isDone(cancelled) {
			return r.abandon(ctx, ctx.Err())
		}
		// A receive alone first: a select over three channels locks all
		// of them, which costs more than handling a small message.
		select {
		case msg, ok = <-ch:
		default:
			select {
			case msg, ok = <-ch:
			case <-stopping:
				return r.abandon(ctx, nil)
			case <-cancelled:
				return r.abandon(ctx, ctx.Err())
			}
		}
		if !ok {
			return r.abandon(ctx, nil)
		}
		if IsRollback(msg) {
			if err := r.abandon(ctx, nil); err != nil {
				return err
			}
			if p.Reset != nil {
				p.Reset()
			}
			continue
		}
		if err := r.handle(ctx, msg); err != nil {
			return r.abandon(ctx, err)
		}
	}
}

// txnRun is the state of one Transactions.Process call.
type txnRun struct {
	p      Transactions
	events Events
	done   Stamp   // the last point persisted: nothing at or before it is applied
	open   Batch   // the batch being filled, if any
	tables []Table // reused to sort a transaction's tables
}

// handle decodes one message and applies its transaction.
func (r *txnRun) handle(ctx context.Context, msg Message) error {
	txn, err := r.p.Decode(ctx, msg)
	if err != nil {
		return errors.Wrapf(err, "logical: Transactions.Decode of a %T", msg)
	}
	if txn.Stamp == nil || Compare(txn.Stamp, r.done) <= 0 {
		return nil // nothing to apply, or sent again after a source restart
	}
	if len(txn.Data) > 0 {
		if err := r.apply(ctx, txn); err != nil {
			return err
		}
		if err := r.commit(ctx); err != nil {
			return err
		}
	}
	if err := r.events.SetConsistentPoint(ctx, txn.Stamp); err != nil {
		return err
	}
	r.done = txn.Stamp
	return nil
}

// apply opens a batch if none is open and adds txn's data to it.
func (r *txnRun) apply(ctx context.Context, txn Txn) error {
	if r.open == nil {
		b, err := r.events.OnBegin(ctx)
		if err != nil {
			return err
		}
		r.open = b
	}
	r.tables = r.tables[:0]
	for t := range txn.Data {
		r.tables = append(r.tables, t)
	}
	if len(r.tables) > 1 {
		slices.SortFunc(r.tables, func(a, b Table) int {
			if c := strings.Compare(a.Schema, b.Schema); c != 0 {
				return c
			}
			return strings.Compare(a.Name, b.Name)
		})
	}
	for _, t := range r.tables {
		source := txn.Source
		if source == "" {
			source = t.Name
		}
		if err := r.open.OnData(ctx, source, t, txn.Data[t]); err != nil {
			return err
		}
	}
	return nil
}

// commit commits the open batch and waits for the result.
func (r *txnRun) commit(ctx context.Context) error {
	b := r.open
	r.open = nil
	select {
	case err := <-b.OnCommit(ctx):
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// abandon rolls back the open batch, if any, and returns err, or the
// rollback's error if err is nil.
func (r *txnRun) abandon(ctx context.Context, err error) error {
	if r.open == nil {
		return err
	}
	b := r.open
	r.open = nil
	if rerr := b.OnRollback(ctx); err == nil {
		err = rerr
	}
	return err
}

// isDone reports whether ch (nil: never) is closed, without blocking.
func isDone(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
