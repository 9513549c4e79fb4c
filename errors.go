package logical

import (
	"fmt"

	"github.com/pkg/errors"
)

// Errors a caller can branch on with errors.Is. The loop and its batches
// return them wrapped, with the loop, the stamps or the call in the text.
var (
	// ErrPointStalled is returned by State.SetConsistentPoint when the
	// point equals the current one. Nothing is persisted and the point
	// is unchanged; a dialect that returns the error from Process
	// restarts the iteration (after Config.RetryDelay, with backoff),
	// which resumes from the persisted point.
	ErrPointStalled = errors.New("consistent point stalled")

	// ErrPointBackwards is returned by State.SetConsistentPoint when the
	// point is before the current one. Nothing is persisted and the
	// point is unchanged. It usually means that Process did not skip the
	// messages at or before the consistent point it resumed from, and
	// may have applied replayed messages over newer data already (a
	// deleted row coming back). A dialect that returns the error from
	// Process restarts the iteration like any error, and the loop logs
	// it at error level with that likely cause.
	ErrPointBackwards = errors.New("consistent point going backwards")

	// ErrBatchEnded is returned by Batch.OnData and Batch.Flush, and
	// sent by Batch.OnCommit, once the batch ended with OnCommit or
	// OnRollback (OnRollback of an ended batch is a no-op). Nothing is
	// applied; a dialect that returns it from Process restarts the
	// iteration, which resumes from the persisted point.
	ErrBatchEnded = errors.New("logical: batch used after OnCommit or OnRollback")
)

// markedError has its own text and matches a sentinel with errors.Is.
type markedError struct {
	msg      string
	sentinel error
}

func (e *markedError) Error() string { return e.msg }
func (e *markedError) Unwrap() error { return e.sentinel }

// markf returns an error with the formatted text, a stack, and sentinel
// to match with errors.Is. Unlike errors.Wrapf, the text need not end
// with the sentinel's.
func markf(sentinel error, format string, args ...any) error {
	return errors.WithStack(&markedError{msg: fmt.Sprintf(format, args...), sentinel: sentinel})
}
