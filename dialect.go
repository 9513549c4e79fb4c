package logical

import "context"

// A Message is whatever a dialect's ReadInto sends to its Process: a decoded
// WAL record, a row of a changefeed. The loop never looks inside one, with a
// single exception: the rollback sentinel, see IsRollback.
type Message any

// rollbackMessage is the type of the sentinel the loop injects into the
// channel when the source fails. It is unexported so that no dialect can
// forge one.
type rollbackMessage struct{}

// rollback is the one sentinel value.
var rollback Message = rollbackMessage{}

// IsRollback reports whether m is the loop's rollback sentinel. Process
// receives it after ReadInto failed: the source restarts from the consistent
// point, so Process must roll back any batch it has open and forget any
// partial transaction. It is true for nothing else.
func IsRollback(m Message) bool {
	_, ok := m.(rollbackMessage)
	return ok
}

// A Dialect reads and decodes one kind of source. It is the one thing a
// product must write; the loop does the rest.
//
// The loop calls ReadInto and Process concurrently, each from its own
// goroutine, and at most one call of each is running for a loop at any
// time. Both are called again after a failure: a returned error is logged
// by the loop, which then restarts the failed side (see ReadInto and
// Process for the details). Both must return promptly once
// state.Stopping() is closed or ctx is cancelled.
type Dialect interface {
	// ReadInto reads the source, starting just after the consistent point
	// (state.GetConsistentPoint), and sends messages into ch. It owns
	// nothing after a send.
	//
	// It returns nil once state.Stopping() closes, and ctx.Err() once ctx
	// is cancelled, also while blocked sending. At the end of what the
	// source holds now, it waits for more (or for the stop) instead of
	// returning: a nil return tells the loop the source is finished, so
	// the loop closes ch, Process drains it and returns, the iteration
	// ends, and the next one starts after Config.RetryDelay (10s by
	// default) with the lease acquired and the point loaded again; new
	// data would arrive a RetryDelay late. Return nil without a stop only
	// for a source that has really ended.
	//
	// An error makes the loop put a rollback message into ch, wait
	// Config.RetryDelay (backing off on repeated errors) and call ReadInto
	// again; the consistent point is where the new call must start. The
	// loop keeps Process running meanwhile. ReadInto must not close ch:
	// the loop does, once the source stops for good, so a Process that
	// ranges over ch always ends.
	ReadInto(ctx context.Context, ch chan<- Message, state State) error

	// Process receives what ReadInto sent and turns it into batches of
	// mutations through events, setting the consistent point (through
	// events, which is also the State) once the data up to a point is
	// committed. For a source whose messages are whole transactions,
	// Transactions is a ready Process; the package overview shows the
	// skeleton of a hand-written one.
	//
	// After a rollback message (IsRollback), roll back the open batch and
	// forget any partial transaction: the restarted ReadInto sends again
	// from the consistent point it saw when it restarted. Messages sent
	// before the failure may still arrive ahead of the rollback and be
	// committed, so the new stream can repeat what Process already
	// committed: skip messages at or before the current consistent point.
	// Committing them again after newer data would undo that data.
	//
	// It returns nil after ch is closed or once events.Stopping() is
	// closed (check it in every receive: ch stays open while the loop
	// stops), and returns once ctx is cancelled; returning nil at any
	// other time is treated as an error. An error ends the loop iteration:
	// both sides are stopped, and a new iteration starts after
	// Config.RetryDelay from the persisted point.
	Process(ctx context.Context, ch <-chan Message, events Events) error

	// ZeroStamp returns a new stamp that encoding/json can unmarshal the
	// persisted consistent point into (usually a pointer to a zero value).
	// It is also the starting point when nothing was persisted and no
	// LoopConfig.DefaultConsistentPoint is given.
	ZeroStamp() Stamp
}

// A Backfiller is a Dialect that can also read its source in a faster,
// non-transactional way, for example by scanning tables or by reading a
// changefeed without waiting for resolved timestamps.
//
// The loop uses BackfillInto instead of ReadInto when Config.BackfillWindow
// is set and the consistent point is a TimeStamp older than the window, and
// for Events.Backfill. Batches are then applied in fan mode, without source
// transaction boundaries. Without this interface a dialect always streams.
type Backfiller interface {
	Dialect
	// BackfillInto has the contract of ReadInto, except at the end of the
	// source: it returns nil once it has sent what the source held when
	// the call started. Events.Backfill counts only that as a finished
	// backfill. In the automatic mode (Config.BackfillWindow) the
	// iteration then ends, and the next one starts after
	// Config.RetryDelay: it streams (ReadInto) if the consistent point is
	// now within the window, and backfills again from the point if not.
	// So for a source that keeps growing, do not chase its end (the next
	// call picks up the rest), and make a call that finds nothing new
	// cheap: an idle source whose newest data is older than the window
	// repeats such a call every RetryDelay. While a backfill runs, the
	// loop switches to streaming as soon as a point within the window is
	// set, by closing state.Stopping(), without waiting for the return.
	BackfillInto(ctx context.Context, ch chan<- Message, state State) error
}
