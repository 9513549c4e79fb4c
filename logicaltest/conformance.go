package logicaltest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/logical-go/logical"
	"github.com/sirupsen/logrus"
)

// TB is the part of testing.TB that Conformance uses. *testing.T
// implements it; a test of a conformance check can implement it too. As
// with testing, Fatalf must end the calling goroutine (runtime.Goexit).
type TB interface {
	Helper()
	Logf(format string, args ...any)
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// DefaultConformanceTimeout is Conformance.Timeout when it is zero.
const DefaultConformanceTimeout = 30 * time.Second

// Conformance checks that a Dialect keeps the contract the loop relies on.
// A dialect author points it at a constructor of their dialect:
//
//	func TestConformance(t *testing.T) {
//		logicaltest.Conformance{
//			NewDialect: func(t logicaltest.TB) logical.Dialect { return mydialect.New(...) },
//		}.Run(t)
//	}
//
// The checks drive the dialect directly, with a fake State and Events that
// record every batch and apply committed ones to a logical.MemoryTarget
// (one transaction per batch); no loop is involved, so a failure points at
// the dialect. They verify that:
//   - ReadInto returns promptly once State.Stopping() closes, even while
//     nobody reads its channel, and once its context is cancelled;
//   - ReadInto does not return at the end of its source: it waits for
//     more, or for Stopping (in a loop, a nil return ends the iteration and
//     the next one starts only after Config.RetryDelay);
//   - Process returns promptly once Events.Stopping() closes (with nil) and
//     once its context is cancelled;
//   - Process returns nil once its channel is closed, having committed
//     batches and set the consistent point after them, in increasing order;
//   - ReadInto resumes strictly after the consistent point it is given: a
//     run from a point in the middle produces the same committed data, point
//     by point, as the uninterrupted run, and nothing from before it;
//   - Process survives a rollback message (logical.IsRollback) in the middle
//     of the stream: it rolls back the batch it has open, never commits it,
//     and the data committed after the restart is again that of the
//     uninterrupted run;
//   - Process skips messages at or before the consistent point: after a
//     rollback, the source sends again from the point before the current
//     one, and nothing is committed twice;
//   - every point Process set, persisted as JSON and read back into a fresh
//     ZeroStamp(), compares equal to itself, and ZeroStamp returns a new
//     pointer on each call.
//
// What the dialect must offer:
//   - ReadInto, started from the dialect's ZeroStamp, sends Messages
//     messages without Process running, and Process sets at least three
//     consistent points for them (three complete transactions). No check
//     reads more than these from the source, except the check at the end
//     of the source, which reads on from the last point until the source
//     has sent nothing for a moment (at most Messages messages more, and
//     it says so if it did not reach the end). A source with fewer
//     messages fails every check that needs them;
//   - reading from the same point yields the same data again (as a log
//     does), so that runs can be compared by table, key and kind of each
//     mutation;
//   - Process does not need Events.Backfill (the fake returns an error);
//   - Process handles messages it is given whatever its Events' point is
//     (the resume check processes the messages read from a point with the
//     fake starting at the zero stamp, so that a Process which skips what
//     is already committed cannot hide a ReadInto that replays it).
//
// Every failure says which contract was broken.
type Conformance struct {
	// NewDialect returns a fresh dialect over the same source. It is
	// called once per check, from the check's goroutine; use t.Cleanup to
	// release what it opens. Required.
	NewDialect func(t TB) logical.Dialect
	// Messages is how many messages the checks read from the source after
	// the zero stamp; the source must hold at least these. Default 20.
	Messages int
	// Schema is what State.GetTargetDB returns. Default "conformance".
	Schema string
	// Timeout bounds every wait: how long "promptly" may be, and how long
	// reading or processing Messages messages may take. A wait that runs
	// out fails its check. Default DefaultConformanceTimeout.
	Timeout time.Duration
	// Check, if set, is called with the target after the uninterrupted
	// run of Messages messages, to check the rows the dialect wrote.
	Check func(t TB, target *logical.MemoryTarget)
}

// RunDialect runs the Conformance checks with the defaults against the
// dialects newDialect returns.
func RunDialect(t TB, newDialect func(t TB) logical.Dialect) {
	t.Helper()
	Conformance{NewDialect: newDialect}.Run(t)
}

// conformanceCheck is one named check.
type conformanceCheck struct {
	name string
	run  func(c *Conformance, t TB)
}

var conformanceChecks = []conformanceCheck{
	{"ReadInto returns once Stopping closes", (*Conformance).readIntoStops},
	{"ReadInto returns once ctx is cancelled", (*Conformance).readIntoCancels},
	{"Process returns once Stopping closes", (*Conformance).processStops},
	{"Process returns once ctx is cancelled", (*Conformance).processCancels},
	{"Process returns nil once the channel is closed", (*Conformance).processDrains},
	{"ReadInto resumes after the consistent point", (*Conformance).resumes},
	{"Process rolls back on a rollback message", (*Conformance).rollsBack},
	{"Process skips messages at or before the consistent point", (*Conformance).skipsReplays},
	{"ReadInto waits at the end of the source", (*Conformance).readIntoWaits},
	{"a persisted point reads back into ZeroStamp", (*Conformance).zeroStampRoundTrips},
}

// Run runs every check. With a *testing.T each check is a subtest;
// otherwise each runs in its own goroutine, one after the other, so that a
// Fatalf in one does not skip the others.
func (c Conformance) Run(t TB) {
	t.Helper()
	if c.NewDialect == nil {
		t.Fatalf("logicaltest: Conformance.NewDialect is required")
		return
	}
	if c.Messages < 0 || c.Timeout < 0 {
		t.Fatalf("logicaltest: Conformance.Messages and Conformance.Timeout must not be negative, got %d and %v", c.Messages, c.Timeout)
		return
	}
	if c.Messages == 0 {
		c.Messages = 20
	}
	if c.Schema == "" {
		c.Schema = "conformance"
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultConformanceTimeout
	}
	for _, chk := range conformanceChecks {
		if tt, ok := t.(*testing.T); ok {
			tt.Run(chk.name, func(t *testing.T) { chk.run(&c, t) })
			continue
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			chk.run(&c, t)
		}()
		<-done
	}
}

// state is the fake State and Events: it enforces increasing points like
// the loop, and records batches and the data committed before each point.
type state struct {
	schema   string
	target   *logical.MemoryTarget
	stopping chan struct{}
	stopOnce sync.Once

	mu       sync.Mutex
	clock    int64 // orders events
	cp       logical.Stamp
	changed  chan struct{}
	pending  []string // committed mutations not yet followed by a point
	segments []segment
	rejected []logical.Stamp // points refused as not after the current one
	batches  []*fakeBatch
}

// segment is the data committed before a consistent point.
type segment struct {
	point logical.Stamp
	key   string // the point's JSON
	muts  []string
}

var _ logical.Events = (*state)(nil)

func newState(schema string, from logical.Stamp) *state {
	return &state{
		schema:   schema,
		target:   logical.NewMemoryTarget(),
		stopping: make(chan struct{}),
		cp:       from,
		changed:  make(chan struct{}),
	}
}

func (s *state) stop() { s.stopOnce.Do(func() { close(s.stopping) }) }

func (s *state) tickLocked() int64 { s.clock++; return s.clock }

func (s *state) now() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tickLocked()
}

func (s *state) GetConsistentPoint() (logical.Stamp, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cp, s.changed
}

func (s *state) GetTargetDB() string { return s.schema }

func (s *state) Stopping() <-chan struct{} { return s.stopping }

func (s *state) SetConsistentPoint(_ context.Context, cp logical.Stamp) error {
	if cp == nil {
		return fmt.Errorf("logicaltest: SetConsistentPoint with a nil stamp")
	}
	key, err := json.Marshal(cp)
	if err != nil {
		return fmt.Errorf("logicaltest: the stamp %T cannot be encoded as JSON: %v", cp, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tickLocked()
	if logical.Compare(s.cp, cp) >= 0 {
		s.rejected = append(s.rejected, cp)
		return fmt.Errorf("logicaltest: consistent point not after the current one: %s -> %s", show(s.cp), show(cp))
	}
	s.segments = append(s.segments, segment{point: cp, key: string(key), muts: s.pending})
	s.pending = nil
	s.cp = cp
	close(s.changed)
	s.changed = make(chan struct{})
	return nil
}

func (s *state) Backfill(context.Context, string, logical.Backfiller) error {
	return fmt.Errorf("logicaltest: Conformance does not support Events.Backfill")
}

func (s *state) OnBegin(ctx context.Context) (logical.Batch, error) {
	tx, err := s.target.Begin(ctx)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b := &fakeBatch{s: s, tx: tx, begun: s.tickLocked()}
	s.batches = append(s.batches, b)
	return b, nil
}

// uncommitted returns the data committed since the last point.
func (s *state) uncommitted() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.pending...)
}

// snapshot returns copies of what was recorded.
func (s *state) snapshot() (segments []segment, rejected []logical.Stamp, batches []fakeBatch) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, b := range s.batches {
		batches = append(batches, fakeBatch{begun: b.begun, ended: b.ended, committed: b.committed, rolledBack: b.rolledBack, rows: b.rows})
	}
	return append([]segment(nil), s.segments...), append([]logical.Stamp(nil), s.rejected...), batches
}

// fakeBatch applies through a MemoryTarget transaction and records what
// happened to it.
type fakeBatch struct {
	s  *state
	tx logical.TargetTx

	// guarded by s.mu
	begun, ended          int64
	committed, rolledBack bool
	rows                  []string
}

func (b *fakeBatch) Flush(context.Context) error { return nil }

func (b *fakeBatch) OnData(ctx context.Context, _ string, table logical.Table, muts []logical.Mutation) error {
	b.s.mu.Lock()
	ended := b.ended != 0
	b.s.mu.Unlock()
	if ended {
		return fmt.Errorf("logicaltest: OnData after OnCommit or OnRollback")
	}
	if err := b.tx.Apply(ctx, table, muts); err != nil {
		return err
	}
	b.s.mu.Lock()
	defer b.s.mu.Unlock()
	for _, m := range muts {
		kind := "upsert"
		if m.IsDelete() {
			kind = "delete"
		}
		b.rows = append(b.rows, fmt.Sprintf("%s %s %s", kind, table, compact(m.Key)))
	}
	return nil
}

func (b *fakeBatch) OnCommit(ctx context.Context) <-chan error {
	ch := make(chan error, 1)
	defer close(ch)
	b.s.mu.Lock()
	ended := b.ended != 0
	b.s.mu.Unlock()
	if ended {
		ch <- fmt.Errorf("logicaltest: OnCommit after OnCommit or OnRollback")
		return ch
	}
	err := b.tx.Commit(ctx)
	b.s.mu.Lock()
	b.ended = b.s.tickLocked()
	if err == nil {
		b.committed = true
		b.s.pending = append(b.s.pending, b.rows...)
	}
	b.s.mu.Unlock()
	ch <- err
	return ch
}

func (b *fakeBatch) OnRollback(ctx context.Context) error {
	b.s.mu.Lock()
	if b.ended != 0 {
		b.s.mu.Unlock()
		return nil
	}
	b.ended = b.s.tickLocked()
	b.rolledBack = true
	b.s.mu.Unlock()
	return b.tx.Rollback(ctx)
}

func show(s logical.Stamp) string {
	if s == nil {
		return "<nil>"
	}
	if str, ok := s.(fmt.Stringer); ok {
		return str.String()
	}
	if buf, err := json.Marshal(s); err == nil {
		return string(buf)
	}
	return fmt.Sprintf("%+v", s)
}

// read runs ReadInto from point from until it sent n messages, then stops
// it through State.Stopping and waits for it to return. A ReadInto that
// returns, or stops sending, before it sent n messages fails the read: the
// checks need what they ask for, and never pass without it.
func (c *Conformance) read(d logical.Dialect, from logical.Stamp, n int) ([]logical.Message, error) {
	st := newState(c.Schema, from)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := make(chan logical.Message)
	done := make(chan error, 1)
	go func() { done <- d.ReadInto(ctx, ch, st) }()
	timer := time.NewTimer(c.Timeout)
	defer timer.Stop()
	var msgs []logical.Message
	for len(msgs) < n {
		select {
		case m := <-ch:
			msgs = append(msgs, m)
		case err := <-done:
			return msgs, fmt.Errorf("ReadInto from %s returned (%v) after only %d of the %d messages the checks need; the source must hold Conformance.Messages messages after the zero stamp (see Conformance)", show(from), err, len(msgs), n)
		case <-timer.C:
			cancel()
			return msgs, fmt.Errorf("ReadInto from %s sent only %d of the %d messages the checks need within %v; the source must hold Conformance.Messages messages after the zero stamp (see Conformance)", show(from), len(msgs), n, c.Timeout)
		}
	}
	st.stop()
	select {
	case <-done:
		return msgs, nil
	case <-timer.C:
		cancel()
		select {
		case <-done:
		case <-time.After(c.Timeout):
		}
		return msgs, notStopped{c.Timeout}
	}
}

// notStopped is read's error when ReadInto ignored State.Stopping; the
// messages it sent are still usable.
type notStopped struct{ timeout time.Duration }

func (e notStopped) Error() string {
	return fmt.Sprintf("ReadInto did not return within %v after State.Stopping() closed (contract: ReadInto returns promptly once state.Stopping() is closed, also while blocked sending)", e.timeout)
}

// mustRead is read for the checks that need messages: a ReadInto that
// ignores Stopping is reported by its own check, so here it only logs.
func (c *Conformance) mustRead(t TB, d logical.Dialect, from logical.Stamp, n int) []logical.Message {
	t.Helper()
	msgs, err := c.read(d, from, n)
	var ns notStopped
	switch {
	case errors.As(err, &ns):
		t.Logf("%v; carrying on with the messages it sent", err)
	case err != nil:
		t.Fatalf("contract broken: %v", err)
	}
	return msgs
}

// processRun is the outcome of one Process run.
type processRun struct {
	state     *state
	err       error
	sending   int64         // the clock just before the rollback was sent; 0 if none
	delivered int64         // the clock once the rollback was received; 0 if none
	atRestart logical.Stamp // the consistent point when the rollback was received
	feedErr   error         // from the source after the rollback
}

// feed is what process hands to Process: msgs; then, if rollback is set,
// the rollback message; then, if from is set, what ReadInto sends from the
// point from returns for the consistent point of that moment, until
// Process has set a point at or after goal (as the loop does after a
// source failure). Then the channel is closed.
type feed struct {
	msgs     []logical.Message
	rollback bool
	from     func(cp logical.Stamp) logical.Stamp
	goal     logical.Stamp
}

// process runs Process over what f describes, starting from point from.
func (c *Conformance) process(d logical.Dialect, from logical.Stamp, f feed) (*processRun, error) {
	var sentinel logical.Message
	if f.rollback {
		var err error
		if sentinel, err = rollbackSentinel(); err != nil {
			return nil, err
		}
	}
	st := newState(c.Schema, from)
	run := &processRun{state: st}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := make(chan logical.Message)
	done := make(chan error, 1)
	go func() { done <- d.Process(ctx, ch, st) }()
	fed := make(chan struct{})
	go func() {
		defer close(fed)
		for _, m := range f.msgs {
			select {
			case ch <- m:
			case <-ctx.Done():
				return
			}
		}
		if f.rollback {
			run.sending = st.now()
			select {
			case ch <- sentinel:
			case <-ctx.Done():
				return
			}
			run.delivered = st.now()
			run.atRestart, _ = st.GetConsistentPoint()
		}
		if f.from != nil {
			cp, _ := st.GetConsistentPoint()
			if err := c.pipe(ctx, d, f.from(cp), ch, st, f.goal); err != nil {
				run.feedErr = err
				return
			}
		}
		close(ch)
	}()
	timer := time.NewTimer(c.Timeout)
	defer timer.Stop()
	select {
	case run.err = <-done:
		cancel()
		<-fed
		return run, nil
	case <-timer.C:
		cancel()
		<-fed
		select {
		case <-done:
		case <-time.After(c.Timeout):
		}
		if run.feedErr != nil {
			return run, run.feedErr
		}
		return run, fmt.Errorf("Process did not return within %v of being handed its messages and a closed channel (contract: Process returns nil after its channel is closed)", c.Timeout)
	}
}

// pipe runs ReadInto from point from and hands what it sends to Process
// through ch until Process, whose State is st, has set a point at or after
// goal. A source that returns first fails, with what it was asked for.
func (c *Conformance) pipe(ctx context.Context, d logical.Dialect, from logical.Stamp, ch chan<- logical.Message, st *state, goal logical.Stamp) error {
	rst := newState(c.Schema, from)
	rctx, rcancel := context.WithCancel(ctx)
	defer rcancel()
	src := make(chan logical.Message)
	rdone := make(chan error, 1)
	go func() { rdone <- d.ReadInto(rctx, src, rst) }()
	returned := false
	defer func() {
		if returned {
			return
		}
		rst.stop()
		t := time.NewTimer(c.Timeout)
		defer t.Stop()
		select {
		case <-rdone:
		case <-t.C: // reported by the check that ReadInto returns once Stopping closes
		}
	}()
	n := 0
	for {
		cp, changed := st.GetConsistentPoint()
		if logical.Compare(cp, goal) >= 0 {
			return nil
		}
		select {
		case m := <-src:
			n++
			select {
			case ch <- m:
			case <-ctx.Done():
				return nil
			}
		case <-changed:
		case err := <-rdone:
			returned = true
			return fmt.Errorf("ReadInto from %s returned (%v) after %d messages, before Process reached the point %s of the uninterrupted run; the source must hold Conformance.Messages messages after the zero stamp (see Conformance)", show(from), err, n, show(goal))
		case <-ctx.Done():
			return nil
		}
	}
}

// dialect returns a new dialect, failing the check if there is none.
func (c *Conformance) dialect(t TB) logical.Dialect {
	t.Helper()
	d := c.NewDialect(t)
	if d == nil {
		t.Fatalf("logicaltest: Conformance.NewDialect returned nil")
	}
	if d.ZeroStamp() == nil {
		t.Fatalf("contract broken: ZeroStamp returned nil")
	}
	return d
}

// cleanRun is the uninterrupted run every other run is compared with.
type cleanRun struct {
	msgs     []logical.Message
	run      *processRun
	segments []segment
	// goal is the point before the last one: the other runs feed Process
	// until it reaches that point. (The last one may depend on when the
	// channel closed, for a Process that commits what it holds then.)
	goal logical.Stamp
}

// clean reads c.Messages messages from the zero stamp and processes them.
// It fails the check unless Process set at least three consistent points:
// the checks that compare runs need them.
func (c *Conformance) clean(t TB, d logical.Dialect) cleanRun {
	t.Helper()
	msgs := c.mustRead(t, d, d.ZeroStamp(), c.Messages)
	run, err := c.process(d, d.ZeroStamp(), feed{msgs: msgs})
	if err != nil {
		t.Fatalf("contract broken: %v", err)
	}
	if run.err != nil {
		t.Fatalf("contract broken: Process returned %v for %d messages and a closed channel, want nil", run.err, len(msgs))
	}
	segments, _, _ := run.state.snapshot()
	if len(segments) < 3 {
		t.Fatalf("Process set %d consistent points for %d messages; the checks need at least three (set the point after each committed transaction, and make Conformance.Messages large enough for three complete transactions)", len(segments), len(msgs))
	}
	return cleanRun{msgs: msgs, run: run, segments: segments, goal: segments[len(segments)-2].point}
}

// upToGoal returns the clean run's segments up to its goal.
func (r cleanRun) upToGoal() []segment {
	var out []segment
	for _, s := range r.segments {
		if logical.Compare(s.point, r.goal) <= 0 {
			out = append(out, s)
		}
	}
	return out
}

func (c *Conformance) readIntoStops(t TB) {
	d := c.dialect(t)
	if _, err := c.read(d, d.ZeroStamp(), 1); err != nil {
		t.Errorf("contract broken: %v", err)
	}
}

func (c *Conformance) readIntoCancels(t TB) {
	d := c.dialect(t)
	st := newState(c.Schema, d.ZeroStamp())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := make(chan logical.Message)
	done := make(chan error, 1)
	go func() { done <- d.ReadInto(ctx, ch, st) }()
	timer := time.NewTimer(c.Timeout)
	defer timer.Stop()
	select {
	case <-ch:
	case err := <-done:
		t.Fatalf("contract broken: ReadInto returned (%v) before sending a message or being stopped", err)
	case <-timer.C:
		t.Fatalf("ReadInto sent no message within %v", c.Timeout)
	}
	cancel() // State.Stopping stays open, and nobody reads ch
	select {
	case <-done:
	case <-timer.C:
		t.Errorf("contract broken: ReadInto did not return within %v after its context was cancelled (contract: ReadInto returns promptly once ctx is cancelled, also while blocked sending)", c.Timeout)
	}
}

// conformanceQuiet is how long readIntoWaits waits for another message
// before it takes the source to be at its end.
const conformanceQuiet = 200 * time.Millisecond

// readIntoWaits reads from the last point of the clean run to the end of
// the source, and checks that ReadInto then waits for State.Stopping
// instead of returning.
func (c *Conformance) readIntoWaits(t TB) {
	d := c.dialect(t)
	clean := c.clean(t, d)
	last := clean.segments[len(clean.segments)-1]
	st := newState(c.Schema, last.point)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := make(chan logical.Message)
	done := make(chan error, 1)
	go func() { done <- d.ReadInto(ctx, ch, st) }()
	timer := time.NewTimer(c.Timeout)
	defer timer.Stop()
	// Read until the source goes quiet, for at most Messages messages.
	quiet := min(conformanceQuiet, c.Timeout)
	idle := time.NewTimer(quiet)
	defer idle.Stop()
	for more := 0; ; {
		select {
		case <-ch:
			if more++; more >= c.Messages {
				t.Logf("the source holds more than %d messages after %s, so the end of the source was not reached and the wait there not checked", c.Messages, show(last.point))
				return
			}
			idle.Reset(quiet)
			continue
		case err := <-done:
			if err == nil {
				t.Fatalf("contract broken: ReadInto returned nil at the end of its source, %d messages after %s, without State.Stopping() being closed; in a loop that ends the iteration, and what the source receives later is read only after Config.RetryDelay (10s by default). At the end of the source, wait for new data, state.Stopping() or ctx", more, show(last.point))
			}
			t.Fatalf("contract broken: ReadInto returned %v at the end of its source, %d messages after %s, without being stopped; in a loop that counts as a source failure (rollback, restart after Config.RetryDelay). At the end of the source, wait for new data, state.Stopping() or ctx", err, more, show(last.point))
		case <-idle.C:
		}
		break
	}
	st.stop()
	select {
	case <-done:
	case <-timer.C:
		t.Logf("ReadInto did not return after State.Stopping() closed at the end of the source (see the check that ReadInto returns once Stopping closes)")
	}
}

// zeroStampRoundTrips reads each point the clean run set back from its
// JSON into a fresh ZeroStamp, as the loop does when it resumes.
func (c *Conformance) zeroStampRoundTrips(t TB) {
	d := c.dialect(t)
	a, b := d.ZeroStamp(), d.ZeroStamp()
	if v := reflect.ValueOf(a); v.Kind() != reflect.Pointer {
		t.Fatalf("contract broken: ZeroStamp returned %T, which is no pointer, so the persisted point cannot be unmarshalled into it (ZeroStamp returns a new pointer that json.Unmarshal can fill)", a)
	}
	if any(a) == any(b) || reflect.ValueOf(a).Pointer() == reflect.ValueOf(b).Pointer() {
		t.Fatalf("contract broken: ZeroStamp returned the same %T twice; it must return a new stamp on each call, since the loop unmarshals the persisted point into it", a)
	}
	clean := c.clean(t, d)
	for _, s := range clean.segments {
		fresh := d.ZeroStamp()
		if err := json.Unmarshal([]byte(s.key), fresh); err != nil {
			t.Fatalf("contract broken: the consistent point %s, persisted as %s, cannot be unmarshalled into a fresh ZeroStamp() (%T): %v", show(s.point), s.key, fresh, err)
		}
		if logical.Compare(fresh, s.point) != 0 {
			t.Fatalf("contract broken: the consistent point %s, persisted as %s and read back into a fresh ZeroStamp(), is %s, which does not compare equal to it; a Stamp must survive a JSON round trip, since a restarted loop resumes from what it reads back", show(s.point), s.key, show(fresh))
		}
	}
}

// processUntil starts Process over a channel that stays open, sends it the
// first message, calls stop and reports Process's result.
func (c *Conformance) processUntil(t TB, stop func(st *state, cancel context.CancelFunc)) (error, bool) {
	t.Helper()
	d := c.dialect(t)
	msgs := c.mustRead(t, d, d.ZeroStamp(), 1)
	st := newState(c.Schema, d.ZeroStamp())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := make(chan logical.Message, 1)
	ch <- msgs[0]
	done := make(chan error, 1)
	go func() { done <- d.Process(ctx, ch, st) }()
	stop(st, cancel)
	timer := time.NewTimer(c.Timeout)
	defer timer.Stop()
	select {
	case err := <-done:
		return err, true
	case <-timer.C:
		cancel()
		return nil, false
	}
}

func (c *Conformance) processStops(t TB) {
	err, ok := c.processUntil(t, func(st *state, _ context.CancelFunc) { st.stop() })
	switch {
	case !ok:
		t.Errorf("contract broken: Process did not return within %v after Events.Stopping() closed (contract: Process returns promptly once events.Stopping() is closed, while its channel stays open)", c.Timeout)
	case err != nil:
		t.Errorf("contract broken: Process returned %v after Events.Stopping() closed, want nil", err)
	}
}

func (c *Conformance) processCancels(t TB) {
	_, ok := c.processUntil(t, func(_ *state, cancel context.CancelFunc) { cancel() })
	if !ok {
		t.Errorf("contract broken: Process did not return within %v after its context was cancelled (contract: Process returns promptly once ctx is cancelled, while its channel stays open)", c.Timeout)
	}
}

func (c *Conformance) processDrains(t TB) {
	d := c.dialect(t)
	clean := c.clean(t, d)
	_, rejected, batches := clean.run.state.snapshot()
	if len(rejected) > 0 {
		t.Errorf("contract broken: Process set consistent points that were not after the current one: %s", showAll(rejected))
	}
	committed := 0
	for _, b := range batches {
		if b.committed {
			committed++
		}
		if b.ended == 0 {
			t.Errorf("contract broken: Process returned with a batch neither committed nor rolled back (every batch ends with OnCommit or OnRollback)")
		}
	}
	if committed == 0 {
		t.Errorf("Process committed no batch for %d messages; Conformance.Messages must cover at least two transactions", len(clean.msgs))
	}
	if c.Check != nil {
		c.Check(t, clean.run.state.target)
	}
}

func (c *Conformance) resumes(t TB) {
	d := c.dialect(t)
	clean := c.clean(t, d)
	want := clean.upToGoal()
	mid := want[(len(want)-2)/2] // before the goal
	d2 := c.dialect(t)
	// Process starts from the zero stamp here, so that it cannot hide
	// replayed messages by skipping what is at or before its point.
	run, err := c.process(d2, d2.ZeroStamp(), feed{from: func(logical.Stamp) logical.Stamp { return mid.point }, goal: clean.goal})
	if err != nil {
		t.Fatalf("contract broken: %v", err)
	}
	if run.err != nil {
		t.Fatalf("contract broken: Process returned %v for the messages ReadInto sent from %s, want nil", run.err, show(mid.point))
	}
	got, _, _ := run.state.snapshot()
	if len(got) == 0 {
		t.Fatalf("Process set no consistent point for the messages ReadInto sent from %s", show(mid.point))
	}
	if logical.Compare(got[0].point, mid.point) <= 0 {
		t.Fatalf("contract broken: ReadInto did not resume after the consistent point it was given: started from %s, its messages led to the point %s, which is not after it (ReadInto must start strictly after state.GetConsistentPoint(), not from the beginning)",
			show(mid.point), show(got[0].point))
	}
	compareSegments(t, "resuming from "+show(mid.point), want, got, mid.point)
}

func (c *Conformance) rollsBack(t TB) {
	d := c.dialect(t)
	clean := c.clean(t, d)
	want := clean.upToGoal()
	sawOpen := false
	for at := 1; at < len(clean.msgs) && at <= 10 && !sawOpen; at++ {
		d := c.dialect(t)
		// After the rollback the source restarts from the point of that
		// moment, and runs until Process is where the clean run got.
		run, err := c.process(d, d.ZeroStamp(), feed{
			msgs: clean.msgs[:at], rollback: true,
			from: func(cp logical.Stamp) logical.Stamp { return cp }, goal: clean.goal,
		})
		if err != nil {
			t.Fatalf("contract broken: with a rollback message before message %d: %v", at, err)
		}
		if run.feedErr != nil {
			t.Fatalf("contract broken: after the rollback: %v", run.feedErr)
		}
		if run.err != nil {
			t.Fatalf("contract broken: Process returned %v with a rollback message before message %d; a rollback must not break it", run.err, at)
		}
		got, rejected, batches := run.state.snapshot()
		if len(rejected) > 0 {
			t.Fatalf("contract broken: after a rollback message before message %d, Process set the point %s, which is not after the current one", at, show(rejected[0]))
		}
		for _, b := range batches {
			// The clock is read on both sides of the rollback's send, and
			// Process may roll its batch back before the read after it: a
			// batch rolled back between the two reads was open too.
			rolledBackByIt := b.rolledBack && b.ended >= run.sending && b.begun <= run.delivered
			if !rolledBackByIt && (b.begun > run.delivered || b.ended != 0 && b.ended < run.delivered) {
				continue
			}
			sawOpen = true
			if b.committed {
				t.Fatalf("contract broken: the batch open when the rollback message arrived (before message %d) was committed; Process must roll it back", at)
			}
			if !b.rolledBack {
				t.Errorf("contract broken: the batch open when the rollback message arrived (before message %d) was never rolled back", at)
			}
		}
		compareSegments(t, fmt.Sprintf("a rollback before message %d", at), want, got, nil)
		if t, ok := t.(interface{ Failed() bool }); ok && t.Failed() {
			return
		}
	}
	if !sawOpen {
		t.Logf("no batch was open when a rollback message arrived (the dialect commits each message before reading the next), so only recovery was checked")
	}
}

// skipsReplays sends a rollback before the last message, and then the
// messages from the point before the current one, as a source does that
// restarted while Process was still committing: Process must skip what is
// at or before its consistent point.
func (c *Conformance) skipsReplays(t TB) {
	d := c.dialect(t)
	clean := c.clean(t, d)
	var replayFrom logical.Stamp
	// The point before the one Process has reached, as a source sees it
	// that restarted while Process was still committing.
	from := func(cp logical.Stamp) logical.Stamp {
		replayFrom = d.ZeroStamp()
		for _, s := range clean.segments {
			if logical.Compare(s.point, cp) >= 0 {
				break
			}
			replayFrom = s.point
		}
		return replayFrom
	}
	// The latest rollback after which Process is still short of the goal,
	// so that the replay is followed by new data.
	var run *processRun
	var err error
	for at := len(clean.msgs) - 1; at >= 1; at-- {
		d2 := c.dialect(t)
		run, err = c.process(d2, d2.ZeroStamp(), feed{msgs: clean.msgs[:at], rollback: true, from: from, goal: clean.goal})
		if run == nil {
			t.Fatalf("contract broken: %v", err)
		}
		if logical.Compare(run.atRestart, clean.goal) < 0 {
			break
		}
	}
	got, rejected, _ := run.state.snapshot()
	what := fmt.Sprintf("a rollback at the point %s, after which the restarted source sent again the messages from %s", show(run.atRestart), show(replayFrom))
	if len(rejected) > 0 {
		t.Fatalf("contract broken: after %s, Process committed them again and set the point %s, which is not after the current one; it must skip messages at or before the consistent point (committing an old transaction again after later ones undoes the later ones, for example brings a deleted row back)", what, show(rejected[0]))
	}
	if err != nil {
		t.Fatalf("contract broken: with a rollback before the last message and messages sent again: %v", err)
	}
	if c := logical.Compare(run.atRestart, clean.goal); c >= 0 || logical.Compare(run.atRestart, d.ZeroStamp()) == 0 {
		t.Fatalf("with a rollback before any of the %d messages, Process was at the zero stamp or at %s already; the replay check needs a rollback between (make Conformance.Messages large enough)", len(clean.msgs), show(clean.goal))
	}
	if pending := run.state.uncommitted(); len(pending) > 0 {
		t.Fatalf("contract broken: after %s, Process committed data without setting a point after it: %v; it must skip messages at or before the consistent point", what, pending)
	}
	if run.err != nil {
		t.Fatalf("contract broken: Process returned %v after %s; it must skip them and carry on", run.err, what)
	}
	compareSegments(t, what, clean.upToGoal(), got, nil)
}

// compareSegments checks that got, the data committed per point of a run
// starting after from, matches want, that of the uninterrupted run.
func compareSegments(t TB, what string, want, got []segment, from logical.Stamp) {
	t.Helper()
	last := want[len(want)-1].point
	var expect []segment
	for _, s := range want {
		if from == nil || logical.Compare(from, s.point) < 0 {
			expect = append(expect, s)
		}
	}
	var actual []segment
	for _, s := range got {
		if logical.Compare(s.point, last) <= 0 {
			actual = append(actual, s)
		}
	}
	if len(actual) == 0 {
		t.Errorf("contract broken: after %s, Process set no consistent point up to %s", what, show(last))
		return
	}
	n := min(len(expect), len(actual))
	for i := 0; i < n; i++ {
		e, a := expect[i], actual[i]
		if logical.Compare(e.point, a.point) != 0 {
			t.Errorf("contract broken: after %s, consistent point #%d is %s, want %s as in the uninterrupted run", what, i+1, show(a.point), show(e.point))
			return
		}
		if strings.Join(e.muts, "\n") != strings.Join(a.muts, "\n") {
			t.Errorf("contract broken: after %s, the data committed before point %s differs from the uninterrupted run:\n got: %v\nwant: %v", what, show(a.point), a.muts, e.muts)
			return
		}
	}
	if len(actual) < len(expect) && logical.Compare(got[len(got)-1].point, last) >= 0 {
		t.Errorf("contract broken: after %s, points are missing: got %d up to %s, want %d", what, len(actual), show(last), len(expect))
	}
}

func showAll(stamps []logical.Stamp) string {
	parts := make([]string, len(stamps))
	for i, s := range stamps {
		parts[i] = show(s)
	}
	return strings.Join(parts, ", ")
}

// The rollback message is unexported in package logical; the checks obtain
// the real one from a tiny loop whose source fails once.
var (
	rollbackOnce sync.Once
	rollbackMsg  logical.Message
	rollbackErr  error
)

func rollbackSentinel() (logical.Message, error) {
	rollbackOnce.Do(func() {
		d := &failOnce{found: make(chan logical.Message, 1)}
		logger := logrus.New()
		logger.SetOutput(io.Discard)
		l, err := logical.Start(context.Background(),
			&logical.Config{Target: logical.NewMemoryTarget(), RetryDelay: time.Millisecond, Logger: logger},
			&logical.LoopConfig{Dialect: d, LoopName: "logicaltest-rollback"})
		if err != nil {
			rollbackErr = fmt.Errorf("logicaltest: obtaining the rollback message: %v", err)
			return
		}
		defer func() {
			l.Stop(0)
			<-l.Stopped()
		}()
		select {
		case rollbackMsg = <-d.found:
		case <-time.After(DefaultConformanceTimeout):
			rollbackErr = fmt.Errorf("logicaltest: obtaining the rollback message: the loop delivered none")
		}
	})
	return rollbackMsg, rollbackErr
}

// failOnce fails its first ReadInto and hands the rollback message that
// follows to found.
type failOnce struct {
	calls int
	mu    sync.Mutex
	found chan logical.Message
}

func (d *failOnce) ZeroStamp() logical.Stamp { return &Stamp{Seq: -1} }

func (d *failOnce) ReadInto(ctx context.Context, _ chan<- logical.Message, state logical.State) error {
	d.mu.Lock()
	d.calls++
	first := d.calls == 1
	d.mu.Unlock()
	if first {
		return fmt.Errorf("logicaltest: failing once to obtain the rollback message")
	}
	select {
	case <-state.Stopping():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (d *failOnce) Process(ctx context.Context, ch <-chan logical.Message, events logical.Events) error {
	for {
		select {
		case m, ok := <-ch:
			if !ok {
				return nil
			}
			if logical.IsRollback(m) {
				select {
				case d.found <- m:
				default:
				}
			}
		case <-events.Stopping():
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
