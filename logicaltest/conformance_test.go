package logicaltest_test

import (
	"context"
	"encoding/json"
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

	t.Run("a source that ends is read to its end", func(t *testing.T) {
		ft := runFake(logicaltest.Conformance{
			NewDialect: func(logicaltest.TB) logical.Dialect { return logicaltest.NewGenerator(30) },
			Messages:   20,
		})
		assert.Empty(t, ft.failures())
		assert.False(t, anyContains(ft.logs, "end of the source was not reached"), "logs: %v", ft.logs)
	})

	t.Run("a longer source says the end was not checked", func(t *testing.T) {
		ft := runFake(logicaltest.Conformance{NewDialect: generator(1), Messages: 6})
		assert.Empty(t, ft.failures())
		assert.True(t, anyContains(ft.logs, "end of the source was not reached"), "logs: %v", ft.logs)
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

// tape is a small hand-written dialect over the messages 0..n-1, one
// transaction each, with switches for mistakes the checks must catch.
type tape struct {
	n           int
	returnAtEnd bool // ReadInto returns nil after the last message
	noSkip      bool // Process applies messages at or before the point
	lossy       bool // the stamp loses its position in JSON
}

// tapeStamp is tape's stamp; lossyStamp is one whose JSON form is empty.
type (
	tapeStamp  struct{ Pos int }
	lossyStamp struct {
		Pos int `json:"-"`
	}
)

func (s *tapeStamp) Less(o logical.Stamp) bool  { return s.Pos < o.(*tapeStamp).Pos }
func (s *lossyStamp) Less(o logical.Stamp) bool { return s.Pos < o.(*lossyStamp).Pos }

func (d *tape) stamp(pos int) logical.Stamp {
	if d.lossy {
		return &lossyStamp{Pos: pos}
	}
	return &tapeStamp{Pos: pos}
}

func (d *tape) pos(s logical.Stamp) int {
	if l, ok := s.(*lossyStamp); ok {
		return l.Pos
	}
	return s.(*tapeStamp).Pos
}

func (d *tape) ZeroStamp() logical.Stamp { return d.stamp(-1) }

func (d *tape) ReadInto(ctx context.Context, ch chan<- logical.Message, st logical.State) error {
	cp, _ := st.GetConsistentPoint()
	for i := d.pos(cp) + 1; i < d.n; i++ {
		select {
		case ch <- i:
		case <-st.Stopping():
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if d.returnAtEnd {
		return nil
	}
	select {
	case <-st.Stopping():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (d *tape) Process(ctx context.Context, ch <-chan logical.Message, ev logical.Events) error {
	tbl := logical.Table{Schema: ev.GetTargetDB(), Name: "tape"}
	for {
		var msg logical.Message
		var ok bool
		select {
		case msg, ok = <-ch:
		case <-ev.Stopping():
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
		if !ok {
			return nil
		}
		i, isPos := msg.(int)
		if !isPos {
			continue // the rollback: nothing is held across messages
		}
		if cp, _ := ev.GetConsistentPoint(); !d.noSkip && i <= d.pos(cp) {
			continue
		}
		b, err := ev.OnBegin(ctx)
		if err != nil {
			return err
		}
		mut := logical.Mutation{Key: json.RawMessage(fmt.Sprintf("[%d]", i)), Data: json.RawMessage(`{"v":1}`)}
		if err := b.OnData(ctx, "tape", tbl, []logical.Mutation{mut}); err != nil {
			_ = b.OnRollback(ctx)
			return err
		}
		if err := <-b.OnCommit(ctx); err != nil {
			return err
		}
		if err := ev.SetConsistentPoint(ctx, d.stamp(i)); err != nil {
			return err
		}
	}
}

// TestConformanceTape runs the kit on a correct tape that holds exactly
// Messages messages: no check needs more than that.
func TestConformanceTape(t *testing.T) {
	ft := runFake(logicaltest.Conformance{
		NewDialect: func(logicaltest.TB) logical.Dialect { return &tape{n: 12} },
		Messages:   12,
	})
	assert.Empty(t, ft.failures())
	assert.False(t, anyContains(ft.logs, "end of the source was not reached"), "logs: %v", ft.logs)
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
		{
			name: "Process does not skip what is at or before the point",
			new:  func() logical.Dialect { return &tape{n: 14, noSkip: true} },
			wants: [][]string{
				{"contract broken", "sent again the messages from", "committed them again", "must skip messages at or before the consistent point"},
			},
		},
		{
			name: "ReadInto returns at the end of the source",
			new:  func() logical.Dialect { return &tape{n: 14, returnAtEnd: true} },
			wants: [][]string{
				{"contract broken", "ReadInto returned nil at the end of its source", "without State.Stopping() being closed", "Config.RetryDelay"},
			},
		},
		{
			name: "the persisted point does not read back",
			new:  func() logical.Dialect { return &tape{n: 14, lossy: true} },
			wants: [][]string{
				{"contract broken", "read back into a fresh ZeroStamp()", "does not compare equal", "JSON round trip"},
			},
		},
		{
			name: "ZeroStamp hands out one shared stamp",
			new:  func() logical.Dialect { return sharedZero{&tape{n: 14}, &tapeStamp{Pos: -1}} },
			wants: [][]string{
				{"contract broken", "ZeroStamp returned the same", "new stamp on each call"},
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

// sharedZero returns one stamp from every ZeroStamp call.
type sharedZero struct {
	*tape
	zero *tapeStamp
}

func (d sharedZero) ZeroStamp() logical.Stamp { return d.zero }

func TestConformanceConfiguration(t *testing.T) {
	t.Run("NewDialect is required", func(t *testing.T) {
		ft := runFake(logicaltest.Conformance{})
		assert.True(t, anyContains(ft.failures(), "Conformance.NewDialect is required"))
	})
	t.Run("negative values are rejected", func(t *testing.T) {
		ft := runFake(logicaltest.Conformance{NewDialect: generator(1), Messages: -1})
		assert.True(t, anyContains(ft.failures(), "Conformance.Messages", "must not be negative"))
	})
	t.Run("too few messages for three transactions", func(t *testing.T) {
		ft := runFake(logicaltest.Conformance{NewDialect: generator(1), Messages: 2})
		assert.True(t, anyContains(ft.failures(), "at least three"), "got %v", ft.failures())
	})
	t.Run("a source with fewer messages than asked for", func(t *testing.T) {
		ft := runFake(logicaltest.Conformance{
			NewDialect: func(logicaltest.TB) logical.Dialect { return logicaltest.NewGenerator(5) },
			Messages:   10,
			Timeout:    300 * time.Millisecond,
		})
		assert.True(t, anyContains(ft.failures(), "sent only 5 of the 10 messages"), "got %v", ft.failures())
	})
	t.Run("a source too short fails every check that needs it", func(t *testing.T) {
		// Each check that compares runs needs the Messages messages; none
		// may wait out a timeout and pass without them.
		ft := runFake(logicaltest.Conformance{
			NewDialect: func(logicaltest.TB) logical.Dialect { return &tape{n: 5, returnAtEnd: true} },
			Messages:   10,
			Timeout:    300 * time.Millisecond,
		})
		short := 0
		for _, f := range ft.failures() {
			if strings.Contains(f, "returned (<nil>) after only 5 of the 10 messages the checks need") {
				short++
			}
		}
		assert.Equal(t, 6, short, "the six checks that read Messages messages each fail; got %v", ft.failures())
	})
}
