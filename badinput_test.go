package logical_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/logical-go/logical"
	"github.com/logical-go/logical/logicaltest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// badDialect misbehaves as its functions say; by default ReadInto waits for
// a stop and Process drains the channel. Each call is signalled on calls.
type badDialect struct {
	readInto func(ctx context.Context, ch chan<- logical.Message, state logical.State) error
	process  func(ctx context.Context, ch <-chan logical.Message, ev logical.Events) error
	calls    chan string
}

func newBadDialect() *badDialect { return &badDialect{calls: make(chan string, 100)} }

func (d *badDialect) signal(what string) {
	select {
	case d.calls <- what:
	default:
	}
}

func (d *badDialect) ReadInto(ctx context.Context, ch chan<- logical.Message, state logical.State) error {
	d.signal("ReadInto")
	if d.readInto != nil {
		return d.readInto(ctx, ch, state)
	}
	select {
	case <-state.Stopping():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (d *badDialect) Process(ctx context.Context, ch <-chan logical.Message, ev logical.Events) error {
	d.signal("Process")
	if d.process != nil {
		return d.process(ctx, ch, ev)
	}
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return nil
			}
		case <-ev.Stopping():
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (d *badDialect) ZeroStamp() logical.Stamp { return &logicaltest.Stamp{Seq: -1} }

// waitCalls waits until what was called n times.
func waitCalls(t *testing.T, d *badDialect, what string, n int) {
	t.Helper()
	deadline := time.After(waitLong)
	for n > 0 {
		select {
		case got := <-d.calls:
			if got == what {
				n--
			}
		case <-deadline:
			t.Fatalf("%s was not called again: the loop did not restart it", what)
		}
	}
}

// oneRow is a batch's worth of data for the bad-input dialects.
var oneRow = []logical.Mutation{{Key: json.RawMessage(`[1]`), Data: json.RawMessage(`{"k":1}`)}}

var badTable = logical.Table{Schema: "s", Name: "t"}

// TestBadDialect runs dialects that break their contract. Each must give a
// clear error (Stats.LastError), the loop must restart the failed side
// (the failing call happens again) rather than crash or wedge, and it must
// still stop cleanly and leave no goroutine.
func TestBadDialect(t *testing.T) {
	for _, tc := range []struct {
		name      string
		dialect   func() *badDialect
		again     string // the call that must happen again after the failure
		wantErr   string
		immediate bool
	}{
		{
			name: "Process returns nil early",
			dialect: func() *badDialect {
				d := newBadDialect()
				d.process = func(context.Context, <-chan logical.Message, logical.Events) error { return nil }
				return d
			},
			again:   "Process",
			wantErr: "Process returned unexpectedly",
		},
		{
			name: "ReadInto panics",
			dialect: func() *badDialect {
				d := newBadDialect()
				d.readInto = func(context.Context, chan<- logical.Message, logical.State) error { panic("reader exploded") }
				return d
			},
			again:   "ReadInto",
			wantErr: "panic in the source: reader exploded",
		},
		{
			name: "Process panics",
			dialect: func() *badDialect {
				d := newBadDialect()
				d.process = func(context.Context, <-chan logical.Message, logical.Events) error {
					var m map[string]int
					m["x"]++ // a nil map write: a runtime panic
					return nil
				}
				return d
			},
			again:   "Process",
			wantErr: "panic in Process: assignment to entry in nil map",
		},
		{
			name: "Process panics mid-batch",
			dialect: func() *badDialect {
				d := newBadDialect()
				d.process = func(ctx context.Context, _ <-chan logical.Message, ev logical.Events) error {
					b, err := ev.OnBegin(ctx)
					if err != nil {
						return err
					}
					if err := b.OnData(ctx, "src", badTable, oneRow); err != nil {
						return err
					}
					panic("decoder exploded")
				}
				return d
			},
			again:   "Process",
			wantErr: "panic in Process: decoder exploded",
		},
		{
			name:      "OnData after OnCommit (serial)",
			dialect:   func() *badDialect { return dataAfterCommit() },
			again:     "Process",
			wantErr:   "batch used after OnCommit or OnRollback",
			immediate: false,
		},
		{
			name:      "OnData after OnCommit (fan)",
			dialect:   func() *badDialect { return dataAfterCommit() },
			again:     "Process",
			wantErr:   "batch used after OnCommit or OnRollback",
			immediate: true,
		},
		{
			name: "OnData after OnRollback",
			dialect: func() *badDialect {
				d := newBadDialect()
				d.process = func(ctx context.Context, _ <-chan logical.Message, ev logical.Events) error {
					b, err := ev.OnBegin(ctx)
					if err != nil {
						return err
					}
					if err := b.OnRollback(ctx); err != nil {
						return err
					}
					return b.OnData(ctx, "src", badTable, oneRow)
				}
				return d
			},
			again:   "Process",
			wantErr: "batch used after OnCommit or OnRollback",
		},
		{
			name: "a point that goes backwards",
			dialect: func() *badDialect {
				d := newBadDialect()
				d.process = func(ctx context.Context, _ <-chan logical.Message, ev logical.Events) error {
					return ev.SetConsistentPoint(ctx, &logicaltest.Stamp{Seq: -5})
				}
				return d
			},
			again:   "Process",
			wantErr: "consistent point going backwards",
		},
		{
			name: "a nil point",
			dialect: func() *badDialect {
				d := newBadDialect()
				d.process = func(ctx context.Context, _ <-chan logical.Message, ev logical.Events) error {
					return ev.SetConsistentPoint(ctx, nil)
				}
				return d
			},
			again:   "Process",
			wantErr: "SetConsistentPoint with a nil stamp",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leak := goroutines(t)
			d := tc.dialect()
			cfg := fastConfig(t, logicaltest.NewRecorder())
			cfg.Immediate = tc.immediate
			l, err := logical.Start(context.Background(), cfg, &logical.LoopConfig{Dialect: d, LoopName: "bad", TargetSchema: "s"})
			require.NoError(t, err)
			waitCalls(t, d, tc.again, 3)
			st := l.Stats()
			assert.Contains(t, st.LastError, tc.wantErr)
			if tc.again == "ReadInto" {
				assert.Positive(t, st.SourceRestarts, "the source alone is restarted")
			} else {
				assert.Contains(t, st.LastError, `loop "bad"`, "the error names the loop")
				assert.Positive(t, st.ProcessRestarts)
			}

			start := time.Now()
			l.Stop(time.Second)
			waitStopped(t, l)
			assert.Less(t, time.Since(start), time.Second+stopMargin)
			leak()
		})
	}
}

// dataAfterCommit commits a batch and then adds to it.
func dataAfterCommit() *badDialect {
	d := newBadDialect()
	d.process = func(ctx context.Context, _ <-chan logical.Message, ev logical.Events) error {
		b, err := ev.OnBegin(ctx)
		if err != nil {
			return err
		}
		if err := b.OnData(ctx, "src", badTable, oneRow); err != nil {
			return err
		}
		if err := <-b.OnCommit(ctx); err != nil {
			return err
		}
		return b.OnData(ctx, "src", badTable, oneRow)
	}
	return d
}

// TestBadDialectIgnoresStopping: a dialect that ignores Stopping on both
// sides is ended by the cancellation after the grace period.
func TestBadDialectIgnoresStopping(t *testing.T) {
	leak := goroutines(t)
	d := newBadDialect()
	d.readInto = func(ctx context.Context, _ chan<- logical.Message, _ logical.State) error {
		<-ctx.Done()
		return ctx.Err()
	}
	d.process = func(ctx context.Context, _ <-chan logical.Message, _ logical.Events) error {
		<-ctx.Done()
		return ctx.Err()
	}
	l, err := logical.Start(context.Background(), fastConfig(t, logicaltest.NewRecorder()), &logical.LoopConfig{Dialect: d, LoopName: "deaf"})
	require.NoError(t, err)
	waitCalls(t, d, "Process", 1)
	const grace = 200 * time.Millisecond
	start := time.Now()
	l.Stop(grace)
	waitStopped(t, l)
	took := time.Since(start)
	assert.GreaterOrEqual(t, took, grace, "cancelled before the grace period ended")
	assert.Less(t, took, grace+stopMargin)
	leak()
}

// badZero is a dialect whose ZeroStamp can be anything.
type badZero struct {
	badDialect
	zero func() logical.Stamp
}

func (d *badZero) ZeroStamp() logical.Stamp { return d.zero() }

// TestBadZeroStamp: a ZeroStamp that json cannot unmarshal into fails
// Start at once, naming the loop and the type, rather than after the
// first point was persisted.
func TestBadZeroStamp(t *testing.T) {
	for _, tc := range []struct {
		name    string
		zero    func() logical.Stamp
		wantErr string
	}{
		{"a value, not a pointer", func() logical.Stamp { return valueStamp{} }, "returned logical_test.valueStamp"},
		{"a nil pointer", func() logical.Stamp { return (*logicaltest.Stamp)(nil) }, "returned *logicaltest.Stamp"},
		{"nil", func() logical.Stamp { return nil }, "ZeroStamp returned nil"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leak := goroutines(t)
			d := &badZero{badDialect: *newBadDialect(), zero: tc.zero}
			_, err := logical.Start(context.Background(), fastConfig(t, logicaltest.NewRecorder()), &logical.LoopConfig{Dialect: d, LoopName: "zero"})
			require.Error(t, err)
			assert.Contains(t, err.Error(), `loop "zero"`)
			assert.Contains(t, err.Error(), tc.wantErr)
			leak()
		})
	}
}
