package logical

import "context"

// State is what a dialect knows of its loop: the consistent point, and
// whether it is being asked to stop. All methods are safe for concurrent
// use.
type State interface {
	// GetConsistentPoint returns the latest persisted consistent point and
	// a channel that is closed when it changes.
	GetConsistentPoint() (Stamp, <-chan struct{})

	// GetTargetDB returns LoopConfig.TargetSchema.
	GetTargetDB() string

	// SetConsistentPoint persists cp and then publishes it: the value
	// returned by GetConsistentPoint and its notification change only
	// after the Memo accepted it, so a point a crash would lose is never
	// observed. It returns when both are done. A point that is not
	// strictly after the current one is an error, as is a failed Memo.Put
	// (the point is then unchanged): ErrPointStalled for an equal point,
	// ErrPointBackwards for an earlier one (match with errors.Is).
	// Concurrent calls are serialized.
	//
	// Call it only once the batches holding the data up to cp reported
	// nil from OnCommit. The loop keeps cp itself (as the current point,
	// compared with the next one, and in Loop.Stats): do not modify it
	// afterwards, pass a new Stamp each time. An error is best returned
	// from Process, which ends the iteration.
	SetConsistentPoint(ctx context.Context, cp Stamp) error

	// Stopping is closed when the loop iteration is asked to stop, for
	// shutdown or for a switch between backfill and streaming. Return
	// promptly when it closes; the context is cancelled once the grace
	// period ends.
	Stopping() <-chan struct{}
}
