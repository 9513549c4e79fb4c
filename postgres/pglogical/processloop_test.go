package pglogical

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/logical-go/logical"
	"github.com/logical-go/logical/postgres/internal/pgtest"
	"github.com/pkg/errors"
	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// These tests run Process over scripted messages and fake Events, without
// a server.

// fakeEvents records what Process does. With grouping set it is a
// logical.Grouper whose groups commit on CommitGroup (or a plain OnBegin).
type fakeEvents struct {
	grouping bool

	mu       sync.Mutex
	point    uint64
	changed  chan struct{}
	stopping chan struct{}
	log      []string      // "begin", "data t n", "flush", "commit", "rollback", "group n", "point X/X"
	committs chan string   // each target commit, as logged
	waiting  []chan error  // grouped batches' results
	open     *fakeBatch    // the grouped batch not yet ended
	calls    int           // GetConsistentPoint calls
	opened   chan struct{} // closed at the first OnBegin/OnBeginGrouped
	openOnce sync.Once
}

func newFakeEvents(grouping bool, point uint64) *fakeEvents {
	return &fakeEvents{grouping: grouping, point: point, changed: make(chan struct{}),
		stopping: make(chan struct{}), committs: make(chan string, 100), opened: make(chan struct{})}
}

func (e *fakeEvents) logf(format string, args ...any) {
	e.log = append(e.log, fmt.Sprintf(format, args...))
}

func (e *fakeEvents) entries() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.log...)
}

func (e *fakeEvents) GetConsistentPoint() (logical.Stamp, <-chan struct{}) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.calls++
	return &LSN{Pos: e.point}, e.changed
}

func (e *fakeEvents) getCalls() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.calls
}

func (e *fakeEvents) GetTargetDB() string { return "dst" }

func (e *fakeEvents) SetConsistentPoint(_ context.Context, cp logical.Stamp) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	pos := stampPos(cp)
	if pos <= e.point {
		return errors.Errorf("point going backwards: %s -> %s", FormatLSN(e.point), FormatLSN(pos))
	}
	e.point = pos
	e.logf("point %s", FormatLSN(pos))
	close(e.changed)
	e.changed = make(chan struct{})
	return nil
}

func (e *fakeEvents) Stopping() <-chan struct{} { return e.stopping }

func (e *fakeEvents) Backfill(context.Context, string, logical.Backfiller) error {
	return errors.New("no backfill")
}

func (e *fakeEvents) OnBegin(context.Context) (logical.Batch, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.commitGroupLocked()
	e.logf("begin")
	e.openOnce.Do(func() { close(e.opened) })
	return &fakeBatch{e: e}, nil
}

func (e *fakeEvents) OnBeginGrouped(ctx context.Context) (logical.Batch, error) {
	if !e.grouping {
		return e.OnBegin(ctx)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.open != nil {
		return nil, errors.New("a grouped batch is open")
	}
	e.logf("begin grouped")
	e.openOnce.Do(func() { close(e.opened) })
	e.open = &fakeBatch{e: e, grouped: true}
	return e.open, nil
}

func (e *fakeEvents) CommitGroup(context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.open != nil {
		return errors.New("CommitGroup with an open batch")
	}
	e.commitGroupLocked()
	return nil
}

func (e *fakeEvents) commitGroupLocked() {
	if len(e.waiting) == 0 {
		return
	}
	entry := fmt.Sprintf("group %d", len(e.waiting))
	e.logf("%s", entry)
	for _, ch := range e.waiting {
		ch <- nil
		close(ch)
	}
	e.waiting = nil
	e.committs <- entry
}

type fakeBatch struct {
	e       *fakeEvents
	grouped bool
	ended   bool
}

func (b *fakeBatch) Flush(context.Context) error {
	b.e.mu.Lock()
	defer b.e.mu.Unlock()
	b.e.logf("flush")
	return nil
}

func (b *fakeBatch) OnData(_ context.Context, _ string, table logical.Table, muts []logical.Mutation) error {
	b.e.mu.Lock()
	defer b.e.mu.Unlock()
	if b.ended {
		return errors.New("OnData after the end")
	}
	if table.Name == "progress" {
		var row map[string]string
		_ = json.Unmarshal(muts[0].Data, &row)
		b.e.logf("progress %s", row["lsn"])
		return nil
	}
	b.e.logf("data %s %d", table, len(muts))
	return nil
}

func (b *fakeBatch) OnCommit(context.Context) <-chan error {
	b.e.mu.Lock()
	defer b.e.mu.Unlock()
	b.ended = true
	ch := make(chan error, 1)
	if b.grouped {
		b.e.open = nil
		b.e.waiting = append(b.e.waiting, ch)
		return ch
	}
	b.e.logf("commit")
	b.e.committs <- "commit"
	ch <- nil
	close(ch)
	return ch
}

func (b *fakeBatch) OnRollback(context.Context) error {
	b.e.mu.Lock()
	defer b.e.mu.Unlock()
	b.ended = true
	b.e.logf("rollback")
	if b.grouped {
		b.e.open = nil
		for _, ch := range b.e.waiting {
			ch <- logical.ErrGroupRolledBack
			close(ch)
		}
		b.e.waiting = nil
	}
	return nil
}

var _ logical.Grouper = (*fakeEvents)(nil)

// fakeProgress is a Progress that reports a fixed position.
type fakeProgress struct{ applied string }

func (p fakeProgress) Table() logical.Table {
	return logical.Table{Schema: "staging", Name: "progress"}
}
func (p fakeProgress) Applied(context.Context, string) (string, bool, error) {
	return p.applied, p.applied != "", nil
}

// Scripted messages.
var testRel = walMessage{msg: &pglogrepl.RelationMessage{RelationID: 1, Namespace: "public", RelationName: "t",
	Columns: []*pglogrepl.RelationMessageColumn{{Flags: 1, Name: "id"}, {Name: "v"}}}}

func beginMsg(final uint64) walMessage {
	return walMessage{msg: &pglogrepl.BeginMessage{FinalLSN: pglogrepl.LSN(final), CommitTime: time.Unix(1, 0)}}
}

func insertMsg(id int) walMessage {
	return walMessage{msg: &pglogrepl.InsertMessage{RelationID: 1, Tuple: &pglogrepl.TupleData{Columns: []*pglogrepl.TupleDataColumn{
		{DataType: pglogrepl.TupleDataTypeText, Data: []byte(fmt.Sprint(id))},
		{DataType: pglogrepl.TupleDataTypeText, Data: []byte("x")},
	}}}}
}

func commitMsg(end uint64) walMessage {
	return walMessage{msg: &pglogrepl.CommitMessage{CommitLSN: pglogrepl.LSN(end - 8), TransactionEndLSN: pglogrepl.LSN(end),
		CommitTime: time.Unix(1, 0)}}
}

// keyMoveMsg is an update that moves row from to key to, leaving its v
// an unchanged TOAST value (not sent): a key move that must be applied
// alone (see addAlone).
func keyMoveMsg(from, to int) walMessage {
	return walMessage{msg: &pglogrepl.UpdateMessage{RelationID: 1, OldTupleType: pglogrepl.UpdateMessageTupleTypeKey,
		OldTuple: &pglogrepl.TupleData{Columns: []*pglogrepl.TupleDataColumn{
			{DataType: pglogrepl.TupleDataTypeText, Data: []byte(fmt.Sprint(from))},
			{DataType: pglogrepl.TupleDataTypeNull},
		}},
		NewTuple: &pglogrepl.TupleData{Columns: []*pglogrepl.TupleDataColumn{
			{DataType: pglogrepl.TupleDataTypeText, Data: []byte(fmt.Sprint(to))},
			{DataType: pglogrepl.TupleDataTypeToast},
		}}}}
}

// txn is a source transaction of one insert ending at end.
func txn(end uint64, id int) []logical.Message {
	return []logical.Message{beginMsg(end - 8), insertMsg(id), commitMsg(end)}
}

func testDialect(t *testing.T, cfg Config) *Dialect {
	cfg.SourceConn, cfg.Slot, cfg.Publications = "postgres://h/db", "s", []string{"p"}
	d, err := New(cfg)
	require.NoError(t, err)
	return d
}

// runProcess runs Process over the messages (all queued before it
// starts), then closes the channel and returns the log and the error.
func runProcess(t *testing.T, d *Dialect, ev *fakeEvents, msgs []logical.Message) ([]string, error) {
	ch := make(chan logical.Message, len(msgs))
	for _, m := range msgs {
		ch <- m
	}
	close(ch)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := d.Process(ctx, ch, ev)
	return ev.entries(), err
}

func concat(parts ...[]logical.Message) []logical.Message {
	var out []logical.Message
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func TestProcessScripted(t *testing.T) {
	for _, tc := range []struct {
		name     string
		grouping bool
		progress string // the target's recorded position; "" for no Progress
		point    uint64
		msgs     []logical.Message
		want     []string
	}{
		{
			name: "without grouping each transaction commits on its own",
			msgs: concat([]logical.Message{testRel}, txn(0x100, 1), txn(0x200, 2)),
			want: []string{"begin", "data dst.t 1", "commit", "point 0/100", "begin", "data dst.t 1", "commit", "point 0/200"},
		},
		{
			name:     "a queued backlog is one group and one point",
			grouping: true,
			msgs:     concat([]logical.Message{testRel}, txn(0x100, 1), txn(0x200, 2), txn(0x300, 3)),
			want: []string{"begin grouped", "data dst.t 1", "begin grouped", "data dst.t 1", "begin grouped", "data dst.t 1",
				"group 3", "point 0/300"},
		},
		{
			name:     "each grouped transaction records its progress in its own batch",
			grouping: true,
			progress: "0/10",
			msgs:     concat([]logical.Message{testRel}, txn(0x100, 1), txn(0x200, 2)),
			// The target's own record becomes the point first.
			want: []string{"point 0/10", "begin grouped", "data dst.t 1", "progress 0/100", "begin grouped", "data dst.t 1",
				"progress 0/200", "group 2", "point 0/200"},
		},
		{
			name:     "transactions at or before the point are skipped",
			grouping: true,
			point:    0x200,
			msgs:     concat([]logical.Message{testRel}, txn(0x100, 1), txn(0x200, 2), txn(0x300, 3)),
			want:     []string{"begin grouped", "data dst.t 1", "group 1", "point 0/300"},
		},
		{
			name:     "a keepalive behind grouped transactions moves the point only after their commit",
			grouping: true,
			msgs:     concat([]logical.Message{testRel}, txn(0x100, 1), []logical.Message{keepalive{walEnd: 0x500}}, txn(0x600, 2)),
			want:     []string{"begin grouped", "data dst.t 1", "begin grouped", "data dst.t 1", "group 2", "point 0/600"},
		},
		{
			name:     "a trailing keepalive behind grouped transactions becomes the point after them",
			grouping: true,
			msgs:     concat([]logical.Message{testRel}, txn(0x100, 1), []logical.Message{keepalive{walEnd: 0x500}}),
			want:     []string{"begin grouped", "data dst.t 1", "group 1", "point 0/500"},
		},
		{
			name:     "a rollback inside a group drops the group, the replay applies it",
			grouping: true,
			msgs: concat([]logical.Message{testRel}, txn(0x100, 1), []logical.Message{beginMsg(0x1f8), insertMsg(2), logical.Message(rollbackSentinel())},
				txn(0x100, 1), txn(0x200, 2)),
			want: []string{"begin grouped", "data dst.t 1", "begin grouped", "rollback",
				"begin grouped", "data dst.t 1", "begin grouped", "data dst.t 1", "group 2", "point 0/200"},
		},
		{
			// The regression test for a key move applied before the
			// insert of its old key in fan mode: the move was the first
			// change of its transaction, which had no batch yet, so the
			// Flush before it was skipped, while its group held the
			// insert of an earlier transaction (or that group was still
			// being applied). The fan queue applies different keys in
			// any order between Flush calls.
			name:     "a key move that opens its transaction is flushed before and after",
			grouping: true,
			msgs: concat([]logical.Message{testRel}, txn(0x100, 1),
				[]logical.Message{beginMsg(0x1f8), keyMoveMsg(1, 101), commitMsg(0x200)}),
			want: []string{"begin grouped", "data dst.t 1", "begin grouped", "flush", "data dst.t 1", "flush",
				"group 2", "point 0/200"},
		},
		{
			name: "a key move flushes before and after without grouping too",
			msgs: concat([]logical.Message{testRel}, txn(0x100, 1),
				[]logical.Message{beginMsg(0x1f8), insertMsg(2), keyMoveMsg(1, 101), commitMsg(0x200)}),
			want: []string{"begin", "data dst.t 1", "commit", "point 0/100",
				"begin", "data dst.t 1", "flush", "data dst.t 1", "flush", "commit", "point 0/200"},
		},
		{
			name:     "a rollback between transactions commits the group",
			grouping: true,
			msgs:     concat([]logical.Message{testRel}, txn(0x100, 1), []logical.Message{logical.Message(rollbackSentinel())}, txn(0x100, 1)),
			want:     []string{"begin grouped", "data dst.t 1", "group 1", "point 0/100"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{PointEvery: -1}
			if tc.progress != "" {
				cfg.Progress = fakeProgress{applied: tc.progress}
			}
			ev := newFakeEvents(tc.grouping, tc.point)
			log, err := runProcess(t, testDialect(t, cfg), ev, tc.msgs)
			require.NoError(t, err)
			assert.Equal(t, tc.want, log)
		})
	}
}

// rollbackSentinel is the loop's rollback message, taken from a loop
// that is made to send one.
func rollbackSentinel() logical.Message { return sentinel }

// sentinel is found once: the loop's rollback message is the only
// message for which logical.IsRollback is true, and the loop hands it to
// Process after ReadInto failed.
var sentinel = func() logical.Message {
	d := &sentinelDialect{got: make(chan logical.Message, 1)}
	quiet := logrus.New()
	quiet.SetOutput(io.Discard)
	f, err := logical.NewFactory(context.Background(), &logical.Config{Target: logical.NewMemoryTarget(),
		RetryDelay: time.Millisecond, Logger: quiet})
	if err != nil {
		panic(err)
	}
	if _, err := f.Start(&logical.LoopConfig{Dialect: d, LoopName: "sentinel"}); err != nil {
		panic(err)
	}
	m := <-d.got
	f.Stop(0)
	_ = f.Wait()
	return m
}()

type sentinelDialect struct {
	got  chan logical.Message
	once sync.Once
}

func (d *sentinelDialect) ReadInto(ctx context.Context, _ chan<- logical.Message, _ logical.State) error {
	return errors.New("fail once")
}

func (d *sentinelDialect) Process(ctx context.Context, ch <-chan logical.Message, _ logical.Events) error {
	for m := range ch {
		if logical.IsRollback(m) {
			d.once.Do(func() { d.got <- m })
		}
	}
	return nil
}

func (d *sentinelDialect) ZeroStamp() logical.Stamp { return &LSN{} }

// TestProcessIdleCommitsAtOnce: a single transaction on an idle source
// (nothing queued behind it) commits its group as soon as its Commit was
// read, with no timer involved: PointEvery is an hour and Process keeps
// running, waiting for the next message. The group is committed before
// Process reads again: the unbuffered send of one more message (the
// relation again, which changes nothing) returns only once Process is
// back at its receive, and by then the commit must have happened, so a
// commit put off to any timer, however short, fails the test.
func TestProcessIdleCommitsAtOnce(t *testing.T) {
	d := testDialect(t, Config{PointEvery: time.Hour})
	ev := newFakeEvents(true, 0)
	ch := make(chan logical.Message) // unbuffered: nothing is ever queued
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { done <- d.Process(ctx, ch, ev) }()
	for _, m := range concat([]logical.Message{testRel}, txn(0x100, 1), []logical.Message{testRel}) {
		ch <- m
	}
	select {
	case got := <-ev.committs:
		assert.Equal(t, "group 1", got)
	default:
		t.Fatal("Process read on before it committed the transaction of an idle source")
	}
	close(ev.stopping)
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Process did not return after the stop")
	}
	assert.Equal(t, []string{"begin grouped", "data dst.t 1", "group 1", "point 0/100"}, ev.entries())
}

// TestProcessNoSpinWhileTransactionOpen is the regression test for a
// busy loop: with a Progress table, a keepalive moved the committed
// position past the recorded one within PointEvery of the last point, and
// a transaction opened; when PointEvery passed, the point could not be
// set before the transaction's commit, and the wake-up timer was re-armed
// with zero, again and again (~100k wake-ups in 200 ms).
func TestProcessNoSpinWhileTransactionOpen(t *testing.T) {
	for _, grouping := range []bool{false, true} {
		t.Run(fmt.Sprintf("grouping=%v", grouping), func(t *testing.T) {
			d := testDialect(t, Config{PointEvery: 20 * time.Millisecond, Progress: fakeProgress{applied: "0/100"}})
			ev := newFakeEvents(grouping, 0x100)
			// All queued at once, so that the second keepalive comes well
			// within PointEvery of the point the first one set.
			msgs := []logical.Message{keepalive{walEnd: 0x200}, keepalive{walEnd: 0x300}, testRel, beginMsg(0x3f8), insertMsg(1)}
			ch := make(chan logical.Message, len(msgs))
			for _, m := range msgs {
				ch <- m
			}
			done := make(chan error, 1)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go func() { done <- d.Process(ctx, ch, ev) }()

			// Wait until the transaction's batch is open, then let PointEvery
			// pass several times over while nothing arrives.
			select {
			case <-ev.opened:
			case <-time.After(10 * time.Second):
				t.Fatal("no batch was opened")
			}
			pgtest.Eventually(t, 10*time.Second, "Process to read every message", func() bool { return len(ch) == 0 })
			before := ev.getCalls()
			const spin = 1000
			deadline := time.After(200 * time.Millisecond)
		watch:
			for {
				select {
				case <-deadline:
					break watch
				case <-time.After(time.Millisecond):
					if ev.getCalls()-before > spin {
						break watch
					}
				}
			}
			wakeups := ev.getCalls() - before
			assert.Less(t, wakeups, 10, "Process woke up %d times with nothing to do", wakeups)

			// The commit then records and sets the point.
			ch <- commitMsg(0x400)
			close(ch)
			select {
			case err := <-done:
				require.NoError(t, err)
			case <-time.After(10 * time.Second):
				t.Fatal("Process did not return")
			}
			log := strings.Join(ev.entries(), ", ")
			assert.Contains(t, log, "progress 0/400")
			assert.Contains(t, log, "point 0/400")
		})
	}
}
