package fan

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCommitAsyncClosed closes the queue while its only worker applies a
// chunk of table 1 and a batch committed with CommitAsync waits for table
// 2: nobody will apply that one, and its callback must say so (ErrClosed)
// rather than never come. Table 1's batch, applied, reports nil.
func TestCommitAsyncClosed(t *testing.T) {
	started, gate := make(chan struct{}), make(chan struct{})
	q := New(context.Background(), Config[int, int]{
		Apply: func(_ context.Context, table int, _ []int) error {
			if table == 1 {
				close(started)
				<-gate
			}
			return nil
		},
		Hash:    func(int) uint64 { return 0 },
		Size:    func(int) int { return 1 },
		Workers: 1,
		Chunk:   10,
		Limit:   1 << 20,
	})
	results := make(chan error, 2)
	first := q.Begin()
	require.NoError(t, first.Add(context.Background(), 1, []int{1}))
	first.CommitAsync(func(err error) { results <- err })
	recv(t, started)
	second := q.Begin()
	require.NoError(t, second.Add(context.Background(), 2, []int{1}))
	secondDone := make(chan error, 1)
	second.CommitAsync(func(err error) { secondDone <- err })

	closed := make(chan struct{})
	go func() { q.Close(); close(closed) }()
	waitLocked(t, q, "Close to start", func() bool { return q.closed })
	close(gate) // the worker finishes table 1, then sees the close
	recv(t, closed)
	assert.NoError(t, recvErr(t, results))
	assert.ErrorIs(t, recvErr(t, secondDone), ErrClosed)
	assert.Zero(t, q.Bytes(), "the dropped chunk's bytes are released")
}

func recv(t *testing.T, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(time.Minute):
		t.Fatal("timed out")
	}
}

func recvErr(t *testing.T, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(time.Minute):
		t.Fatal("timed out waiting for a CommitAsync callback")
		return nil
	}
}
