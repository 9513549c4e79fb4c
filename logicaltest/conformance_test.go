package logicaltest_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/logical-go/logical"
	"github.com/logical-go/logical/logicaltest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeTB records what a conformance run reports. Like testing, Fatalf ends
// the calling goroutine.
type fakeTB struct {
	mu       sync.Mutex
	errors   []string
	fatals   []string
	logs     []string
	cleanups []func()
}

var _ logicaltest.TB = (*fakeTB)(nil)

func (f *fakeTB) Helper() {}

func (f *fakeTB) Logf(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.logs = append(f.logs, fmt.Sprintf(format, args...))
}

func (f *fakeTB) Errorf(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errors = append(f.errors, fmt.Sprintf(format, args...))
}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.fatals = append(f.fatals, fmt.Sprintf(format, args...))
	f.mu.Unlock()
	runtime.Goexit()
}

func (f *fakeTB) Cleanup(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cleanups = append(f.cleanups, fn)
}

// failures returns every Errorf and Fatalf message.
func (f *fakeTB) failures() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append(append([]string(nil), f.errors...), f.fatals...)
}

// runFake runs c against a fakeTB, in a goroutine of its own as testing
// would, and returns what it reported.
func runFake(c logicaltest.Conformance) *fakeTB {
	ft := &fakeTB{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Run(ft)
	}()
	<-done
	for i := len(ft.cleanups) - 1; i >= 0; i-- {
		ft.cleanups[i]()
	}
	return ft
}

// anyContains reports whether a message contains all of parts.
func anyContains(msgs []string, parts ...string) bool {
	for _, m := range msgs {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(m, p)
		}
		if ok {
			return true
		}
	}
	return false
}

func generator(perCommit int) func(logicaltest.TB) logical.Dialect {
	return func(logicaltest.TB) logical.Dialect {
		g := logicaltest.NewGenerator(1000)
		g.PerCommit = perCommit
		return g
	}
}

func TestConformanceGenerator(t *testing.T) {
	t.Run("as subtests of a real test", func(t *testing.T) {
		logicaltest.RunDialect(t, generator(1))
	})

	t.Run("batches spanning messages are rolled back", func(t *testing.T) {
		var rows int
		ft := runFake(logicaltest.Conformance{
			NewDialect: generator(3),
			Messages:   12,
			Check: func(_ logicaltest.TB, target *logical.MemoryTarget) {
				for _, tbl := range logicaltest.Tables("conformance", 4) {
					rows += target.Count(tbl)
				}
			},
		})
		assert.Empty(t, ft.failures())
		assert.False(t, anyContains(ft.logs, "no batch was open"), "the rollback hit an open batch: %v", ft.logs)
		assert.Equal(t, 12*4, rows, "Check saw the rows of the uninterrupted run")
	})

	t.Run("one commit per message cannot roll back and says so", func(t *testing.T) {
		ft := runFake(logicaltest.Conformance{NewDialect: generator(1), Messages: 6})
		assert.Empty(t, ft.failures())
		assert.True(t, anyContains(ft.logs, "no batch was open"), "logs: %v", ft.logs)
	})
}

// deafState hides Stopping from the dialect.
type deafState struct{ logical.State }

func (deafState) Stopping() <-chan struct{} { return nil }

type deafEvents struct{ logical.Events }

func (deafEvents) Stopping() <-chan struct{} { return nil }

// ignoresStopping is a generator that never sees State.Stopping close.
type ignoresStopping struct{ *logicaltest.Generator }

func (d ignoresStopping) ReadInto(ctx context.Context, ch chan<- logical.Message, st logical.State) error {
	return d.Generator.ReadInto(ctx, ch, deafState{st})
}

func (d ignoresStopping) Process(ctx context.Context, ch <-chan logical.Message, ev logical.Events) error {
	return d.Generator.Process(ctx, ch, deafEvents{ev})
}

// fromZeroState claims the consistent point is the zero stamp.
type fromZeroState struct{ logical.State }

func (fromZeroState) GetConsistentPoint() (logical.Stamp, <-chan struct{}) {
	return &logicaltest.Stamp{Seq: -1}, nil
}

// restartsFromZero is a generator whose ReadInto ignores the point.
type restartsFromZero struct{ *logicaltest.Generator }

func (d restartsFromZero) ReadInto(ctx context.Context, ch chan<- logical.Message, st logical.State) error {
	return d.Generator.ReadInto(ctx, ch, fromZeroState{st})
}

// dropsRollbacks is a generator whose Process never sees a rollback, so it
// carries on with the batch it has open.
type dropsRollbacks struct{ *logicaltest.Generator }

func (d dropsRollbacks) Process(ctx context.Context, ch <-chan logical.Message, ev logical.Events) error {
	filtered := make(chan logical.Message)
	go func() {
		defer close(filtered)
		for m := range ch {
			if logical.IsRollback(m) {
				continue
			}
			select {
			case filtered <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	return d.Generator.Process(ctx, filtered, ev)
}

func TestConformanceCatchesBrokenDialects(t *testing.T) {
	tests := []struct {
		name  string
		new   func() logical.Dialect
		wants [][]string // each a set of parts one failure message must hold
	}{
		{
			name: "ReadInto and Process ignore Stopping",
			new:  func() logical.Dialect { return ignoresStopping{logicaltest.NewGenerator(1000)} },
			wants: [][]string{
				{"contract broken", "ReadInto did not return", "State.Stopping() closed"},
				{"contract broken", "Process did not return", "Events.Stopping() closed"},
			},
		},
		{
			name: "ReadInto restarts from zero",
			new:  func() logical.Dialect { return restartsFromZero{logicaltest.NewGenerator(1000)} },
			wants: [][]string{
				{"contract broken", "ReadInto did not resume after the consistent point", "not from the beginning"},
			},
		},
		{
			name: "Process ignores rollbacks",
			new: func() logical.Dialect {
				g := logicaltest.NewGenerator(1000)
				g.PerCommit = 3
				return dropsRollbacks{g}
			},
			wants: [][]string{
				{"contract broken", "open when the rollback message arrived", "was committed"},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			ft := runFake(logicaltest.Conformance{
				NewDialect: func(logicaltest.TB) logical.Dialect { return tc.new() },
				Messages:   12,
				Timeout:    300 * time.Millisecond,
			})
			failures := ft.failures()
			require.NotEmpty(t, failures, "the broken dialect passed")
			for _, want := range tc.wants {
				assert.True(t, anyContains(failures, want...), "no failure mentions %q; got:\n%s", want, strings.Join(failures, "\n"))
			}
			t.Logf("%d failures in %v", len(failures), time.Since(start))
		})
	}
}

func TestConformanceConfiguration(t *testing.T) {
	t.Run("NewDialect is required", func(t *testing.T) {
		ft := runFake(logicaltest.Conformance{})
		assert.True(t, anyContains(ft.failures(), "Conformance.NewDialect is required"))
	})
	t.Run("negative values are rejected", func(t *testing.T) {
		ft := runFake(logicaltest.Conformance{NewDialect: generator(1), Messages: -1})
		assert.True(t, anyContains(ft.failures(), "Conformance.Messages", "must not be negative"))
	})
	t.Run("too few messages for two transactions", func(t *testing.T) {
		ft := runFake(logicaltest.Conformance{NewDialect: generator(1), Messages: 1})
		assert.True(t, anyContains(ft.failures(), "at least two"), "got %v", ft.failures())
	})
	t.Run("a source with fewer messages than asked for", func(t *testing.T) {
		ft := runFake(logicaltest.Conformance{
			NewDialect: func(logicaltest.TB) logical.Dialect { return logicaltest.NewGenerator(5) },
			Messages:   10,
			Timeout:    300 * time.Millisecond,
		})
		assert.True(t, anyContains(ft.failures(), "sent only 5 of the 10 messages"), "got %v", ft.failures())
	})
}
