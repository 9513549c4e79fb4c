package logical

import (
	"context"
	"io"
	"runtime"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

// idleDialect reads and processes nothing until it is stopped.
type idleDialect struct{}

type idleStamp struct{ N int }

func (s *idleStamp) Less(other Stamp) bool { return s.N < other.(*idleStamp).N }

func (idleDialect) ZeroStamp() Stamp { return &idleStamp{} }

func (idleDialect) ReadInto(ctx context.Context, _ chan<- Message, state State) error {
	select {
	case <-state.Stopping():
	case <-ctx.Done():
	}
	return nil
}

func (idleDialect) Process(ctx context.Context, ch <-chan Message, ev Events) error {
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return nil
			}
		case <-ev.Stopping():
			return nil
		case <-ctx.Done():
			return nil
		}
	}
}

// cancellingMemo cancels the loop's context while Start loads the point,
// so that the loop goroutine ends as soon as it runs.
type cancellingMemo struct {
	*MemoryMemo
	cancel context.CancelFunc
}

func (m *cancellingMemo) Get(ctx context.Context, key string) ([]byte, error) {
	m.cancel()
	return m.MemoryMemo.Get(ctx, key)
}

// TestStartStopsItsOwnFactory: the Factory made by the Start shortcut is
// stopped when its loop ends, also when the loop ends at once. Start used
// to mark the factory as the loop's own after the loop goroutine was
// running: a data race (seen by -race), and a loop that ended first left
// its factory running.
func TestStartStopsItsOwnFactory(t *testing.T) {
	log := logrus.New()
	log.SetOutput(io.Discard)
	wait := func(t *testing.T, l *Loop) {
		t.Helper()
		select {
		case <-l.Stopped():
		case <-time.After(time.Minute):
			t.Fatal("loop did not stop")
		}
		if !l.factory.stop.IsStopping() {
			t.Fatal("the loop's own factory was not stopped")
		}
	}
	t.Run("a loop that ends at once", func(t *testing.T) {
		for range 50 {
			ctx, cancel := context.WithCancel(context.Background())
			cfg := &Config{Target: NewMemoryTarget(), Memo: &cancellingMemo{MemoryMemo: NewMemoryMemo(), cancel: cancel}, Logger: log}
			l, err := Start(ctx, cfg, &LoopConfig{Dialect: idleDialect{}, LoopName: "own"})
			if err != nil {
				t.Fatal(err)
			}
			wait(t, l)
		}
	})
	t.Run("Stop right after Start", func(t *testing.T) {
		before := runtime.NumGoroutine()
		for range 50 {
			l, err := Start(context.Background(), &Config{Target: NewMemoryTarget(), Logger: log}, &LoopConfig{Dialect: idleDialect{}, LoopName: "own"})
			if err != nil {
				t.Fatal(err)
			}
			l.Stop(0)
			wait(t, l)
		}
		deadline := time.Now().Add(time.Minute)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				t.Fatalf("goroutines: %d before, %d after", before, runtime.NumGoroutine())
			}
			time.Sleep(5 * time.Millisecond) // polling interval
		}
	})
}
