package stopper

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestChildAlsoCancelsSynchronously: cancelling also (a lease) has
// cancelled the child by the time cancel returns, so no work can start
// under the child afterwards.
func TestChildAlsoCancelsSynchronously(t *testing.T) {
	parent := New(context.Background())
	defer parent.Release()
	lease, cancel := context.WithCancel(context.Background())
	child := parent.Child(lease)
	defer child.Release()
	require.NoError(t, child.Err())
	cancel()
	assert.ErrorIs(t, child.Err(), context.Canceled, "checked right after cancel, without waiting")
	assert.NoError(t, parent.Err(), "the parent is not affected")
}

func TestChildFollowsParent(t *testing.T) {
	for _, tc := range []struct {
		name string
		also context.Context
	}{
		{"without also", nil},
		{"with also", context.Background()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parent := New(context.Background())
			child := parent.Child(tc.also)
			defer child.Release()
			parent.Stop(time.Hour)
			select {
			case <-child.Stopping():
			default:
				t.Fatal("the child is not stopping after its parent's Stop")
			}
			assert.NoError(t, child.Err(), "cancellation waits for the grace period")
			parent.Release()
			select {
			case <-child.Done():
			case <-time.After(time.Minute):
				t.Fatal("the child was not cancelled with its parent")
			}
		})
	}
}
