package logical_test

import (
	"context"
	"io"
	"runtime"
	"testing"
	"time"

	"github.com/logical-go/logical"
	"github.com/logical-go/logical/logicaltest"
	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"
)

// waitLong bounds every wait in these tests; it is generous because the
// race detector on a shared two-core machine is slow.
const waitLong = 60 * time.Second

// quietLogger discards logs unless -v is given.
func quietLogger(t testing.TB) logrus.FieldLogger {
	l := logrus.New()
	if !testing.Verbose() {
		l.SetOutput(io.Discard)
	}
	l.SetLevel(logrus.DebugLevel)
	return l.WithField("test", t.Name())
}

// waitForSeq waits until the loop's point reaches seq.
func waitForSeq(t testing.TB, l *logical.Loop, seq int) {
	t.Helper()
	deadline := time.NewTimer(waitLong)
	defer deadline.Stop()
	for {
		cp, changed := l.GetConsistentPoint()
		if cp.(*logicaltest.Stamp).Seq >= seq {
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("consistent point stuck at %v, want %d", cp, seq)
		}
	}
}

// seqOf returns the loop's point.
func seqOf(l *logical.Loop) int {
	cp, _ := l.GetConsistentPoint()
	return cp.(*logicaltest.Stamp).Seq
}

// waitStopped waits for the loop's goroutines to exit.
func waitStopped(t testing.TB, l *logical.Loop) {
	t.Helper()
	select {
	case <-l.Stopped():
	case <-time.After(waitLong):
		t.Fatal("loop did not stop")
	}
}

// waitChan waits for ch to close or deliver.
func waitChan[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitLong):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// goroutines returns a function that checks, with a bounded poll, that the
// number of goroutines came back to what it is now.
func goroutines(t testing.TB) func() {
	before := runtime.NumGoroutine()
	return func() {
		t.Helper()
		deadline := time.Now().Add(waitLong)
		for {
			now := runtime.NumGoroutine()
			if now <= before {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				n := runtime.Stack(buf, true)
				t.Fatalf("goroutines: %d before, %d after\n%s", before, now, buf[:n])
			}
			runtime.Gosched()
			time.Sleep(5 * time.Millisecond) // polling interval, not a wait for a condition
		}
	}
}

// fastConfig is a Config with quick retries.
func fastConfig(t testing.TB, target logical.Target) *logical.Config {
	return &logical.Config{
		Target:        target,
		RetryDelay:    time.Millisecond,
		MaxRetryDelay: 10 * time.Millisecond,
		Logger:        quietLogger(t),
	}
}

// startLoop starts a loop and registers its stop.
func startLoop(t testing.TB, cfg *logical.Config, lc *logical.LoopConfig) *logical.Loop {
	t.Helper()
	l, err := logical.Start(context.Background(), cfg, lc)
	require.NoError(t, err)
	t.Cleanup(func() {
		l.Stop(0)
		<-l.Stopped()
	})
	return l
}
