package logical

import (
	"bytes"
	"context"
	"encoding/json"
	"time"
	"unsafe"
)

// Events is what Process works with: a Batcher to write mutations, the
// State of the loop iteration, and nested backfills.
//
// Events belongs to one call of Process; it must not be used after Process
// returned.
type Events interface {
	Batcher
	State

	// Backfill runs a nested loop named loopName synchronously with
	// backfiller as its source (BackfillInto) and fan events, its own
	// consistent point persisted under loopName, and the settings of the
	// enclosing loop. It returns nil once the backfiller returned nil and
	// then Process returned nil, neither of them stopped or cancelled
	// meanwhile (a Process that works on what it read in goroutines of
	// its own is done when it returns, not when the channel is empty).
	// Any error, and a stop or cancellation before the backfill
	// finished, is returned, so an interrupted backfill is never
	// mistaken for a complete one. It does not retry. The nested loop's
	// contexts derive from ctx, so values in it (a lease that fences
	// writes) reach the backfiller and the Memo. A backfill that
	// finishes pieces in any order can use Pieces as its stamp.
	Backfill(ctx context.Context, loopName string, backfiller Backfiller) error
}

// A Batcher opens batches.
type Batcher interface {
	// OnBegin opens a batch. In serial mode that begins a target
	// transaction; in fan mode it is cheap. The caller must end every
	// batch with OnCommit or OnRollback.
	OnBegin(ctx context.Context) (Batch, error)
}

// A Batch collects the mutations of one source transaction (serial mode) or
// of any number of them (fan mode). A Batch is used by one goroutine at a
// time.
//
// A batch may be empty: OnBegin then OnCommit without OnData (or OnData
// with no mutations) is allowed in every mode; in serial mode it commits
// an empty target transaction. To move the point over a source
// transaction with nothing to apply, SetConsistentPoint alone is enough.
type Batch interface {
	// Flush waits until what was given to OnData so far is applied (fan
	// mode), returning the first apply error. In serial mode it does
	// nothing. After OnCommit or OnRollback it returns ErrBatchEnded.
	Flush(ctx context.Context) error

	// OnCommit ends the batch: serial mode commits the transaction; fan
	// mode hands the batch's mutations to the workers, and the channel
	// receives the result once they are applied. The channel receives exactly one
	// value, nil or the error, and is then closed. The consistent point
	// should only move past the batch's data once nil was received. A
	// second OnCommit, or one after OnRollback, receives ErrBatchEnded.
	OnCommit(ctx context.Context) <-chan error

	// OnData adds mutations for target, which came from the source table
	// source (used by Config.Script for routing). The batch owns muts
	// after the call: the caller must not modify the slice or its
	// elements. It may block while Config.BytesInFlight bytes are queued
	// (fan mode). Calling it after OnCommit or OnRollback returns
	// ErrBatchEnded.
	OnData(ctx context.Context, source string, target Table, muts []Mutation) error

	// OnRollback abandons the batch: serial mode rolls the transaction
	// back, fan mode drops what is not yet applied and waits for what is
	// being applied.
	OnRollback(ctx context.Context) error
}

// A Table names a table in the target.
type Table struct {
	Schema string
	Name   string
}

// String returns "schema.name".
func (t Table) String() string { return t.Schema + "." + t.Name }

// A Mutation is one row change.
type Mutation struct {
	// Before is the prior row image, if the source has it.
	Before json.RawMessage
	// Data is the new row as a JSON object; empty or null means the row
	// identified by Key is deleted.
	Data json.RawMessage
	// Key is a JSON array with the primary-key values.
	Key json.RawMessage
	// Meta holds dialect-specific values; it is never persisted.
	Meta map[string]any
	// Time is when the change took effect at the source.
	Time time.Time
}

// IsDelete reports whether m deletes its row: Data is empty or JSON null.
func (m Mutation) IsDelete() bool {
	return len(m.Data) == 0 || bytes.Equal(bytes.TrimSpace(m.Data), []byte("null"))
}

// mutationSize is the size of a Mutation value itself.
const mutationSize = int(unsafe.Sizeof(Mutation{}))

// metaEntrySize is a rough figure for one entry of Mutation.Meta.
const metaEntrySize = 64

// size is the memory m holds while it is queued, for Config.BytesInFlight:
// the value itself (a queued mutation is a copy), the capacity of its byte
// slices, and a rough figure per Meta entry. Counting the value and the
// capacities, not just the lengths of the JSON, keeps the bound close to
// the memory actually held.
func (m Mutation) size() int {
	return mutationSize + cap(m.Before) + cap(m.Data) + cap(m.Key) + metaEntrySize*len(m.Meta)
}
