package pglogical

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestReadIntoUsesThePreconnection: the first ReadInto streams over the
// connection Preconnect opened instead of opening one of its own, and a
// later one (after a restart) connects again.
func TestReadIntoUsesThePreconnection(t *testing.T) {
	w := newWalsender(t)
	pre := Preconnect(w.url())
	defer pre.Close()
	<-pre.done
	require.NoError(t, pre.err)
	require.Equal(t, int32(1), w.accepted.Load(), "Preconnect connected")

	d := newTestDialect(t, w, Config{StandbyTimeout: time.Hour, SourceTimeout: -1, Preconnection: pre})
	state := newFakeState(0x100)
	_, errc := readInto(t, d, state)
	assert.Contains(t, waitStarted(t, w), `START_REPLICATION SLOT "s" LOGICAL 0/100`)
	assert.Equal(t, int32(1), w.accepted.Load(), "ReadInto opened no connection of its own")
	pre.Close() // a no-op: ReadInto owns the connection
	w.keepalive(0x200, false)
	w.nextUpdate(t) // the connection still works
	state.stop()
	require.NoError(t, <-errc)

	// A second ReadInto cannot take it again.
	state = newFakeState(0x100)
	_, errc = readInto(t, d, state)
	waitStarted(t, w)
	assert.Equal(t, int32(2), w.accepted.Load(), "the second ReadInto connected on its own")
	state.stop()
	require.NoError(t, <-errc)
}

// TestPreconnectionNotTaken: a closed, expired, failed or foreign
// preconnection is not used, and a closed or expired one is closed.
func TestPreconnectionNotTaken(t *testing.T) {
	ctx := context.Background()
	t.Run("closed", func(t *testing.T) {
		w := newWalsender(t)
		pre := Preconnect(w.url())
		<-pre.done
		pre.Close()
		assert.Nil(t, pre.take(ctx, w.url()))
		require.NotNil(t, pre.conn)
		assert.True(t, pre.conn.IsClosed())
	})
	t.Run("expired", func(t *testing.T) {
		old := preconnectMaxAge
		preconnectMaxAge = time.Millisecond
		t.Cleanup(func() { preconnectMaxAge = old })
		w := newWalsender(t)
		pre := Preconnect(w.url())
		<-pre.done
		require.NoError(t, pre.err)
		deadline := time.Now().Add(30 * time.Second)
		for w.terminated.Load() == 0 {
			require.True(t, time.Now().Before(deadline), "the expired connection was not closed")
			time.Sleep(time.Millisecond) // bounded poll for the expiry timer
		}
		assert.Nil(t, pre.take(ctx, w.url()))
	})
	t.Run("other source", func(t *testing.T) {
		w := newWalsender(t)
		pre := Preconnect(w.url())
		defer pre.Close()
		assert.Nil(t, pre.take(ctx, w.url()+"&application_name=x"))
		assert.False(t, pre.closed, "still there for its own source")
	})
	t.Run("failed", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		addr := ln.Addr().String()
		require.NoError(t, ln.Close()) // nothing listens there now
		url := "postgres://u@" + addr + "/db?sslmode=disable&connect_timeout=5"
		pre := Preconnect(url)
		defer pre.Close()
		assert.Nil(t, pre.take(ctx, url))
		require.Error(t, pre.err)
	})
	t.Run("nil", func(t *testing.T) {
		var pre *Preconnection
		assert.Nil(t, pre.take(ctx, "x"))
		pre.Close()
	})
	t.Run("context ends first", func(t *testing.T) {
		// A listener that never answers the startup message.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		defer ln.Close()
		url := "postgres://u@" + ln.Addr().String() + "/db?sslmode=disable"
		pre := Preconnect(url)
		defer pre.Close()
		short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		assert.Nil(t, pre.take(short, url))
		select {
		case <-pre.done:
		default:
			t.Fatal("the attempt to connect goes on")
		}
	})
}
