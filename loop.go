package logical

import (
	"context"
	"encoding"
	"encoding/json"
	"fmt"
	"reflect"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/logical-go/logical/internal/backoff"
	"github.com/logical-go/logical/internal/notify"
	"github.com/logical-go/logical/internal/stopper"
	"github.com/pkg/errors"
	"github.com/sirupsen/logrus"
)

// channelBuffer is the capacity of the channel between ReadInto and
// Process. It is small so that a slow consumer pushes back on the source
// quickly, and large enough to absorb the jitter between the two sides.
const channelBuffer = 32

// leaseJitter bounds the random time added to a busy lease's expiration
// before the next Acquire, so that waiting processes do not all retry at
// once.
const leaseJitter = 100 * time.Millisecond

// leaseMinWait is the least time the loop waits after a busy lease before
// it calls Acquire again, even if the reported expiration has passed
// already (a holder whose clock runs behind): 50ms plus the jitter keeps
// such a standby from calling Acquire in a tight loop, and costs little
// when the lease is really free.
const leaseMinWait = 50 * time.Millisecond

// mode is how an iteration fills and applies.
type mode int

const (
	modeSerial    mode = iota // ReadInto, transactional batches
	modeImmediate             // ReadInto, fan batches
	modeBackfill              // BackfillInto, fan batches
)

func (m mode) String() string {
	switch m {
	case modeSerial:
		return "serial"
	case modeImmediate:
		return "immediate"
	default:
		return "backfill"
	}
}

// A Loop runs one dialect: it restarts either side on failure, persists the
// consistent point, and switches between backfill and streaming. Its
// methods are safe for concurrent use.
type Loop struct {
	factory *Factory
	cfg     LoopConfig
	name    string
	dialect Dialect // as configured
	active  Dialect // what runs: dialect, maybe wrapped with chaos
	log     logrus.FieldLogger

	stop       *stopper.Context // the loop's lifetime
	stopped    chan struct{}
	ownFactory bool // made by the Start shortcut
	nested     bool // an Events.Backfill sub-loop

	initial Stamp
	cp      notify.Var[Stamp] // the persisted point
	cpMu    sync.Mutex        // serializes setConsistentPoint

	order *fkOrder // dependency levels when Config.ForeignKeys is on

	retry      *backoff.Policy
	retryMu    sync.Mutex
	retryPoint Stamp     // the point at the last failure
	retryAt    time.Time // when the last delay ends

	stats statsKeeper
}

func newLoop(f *Factory, cfg LoopConfig, stop *stopper.Context) *Loop {
	l := &Loop{
		factory: f,
		cfg:     cfg,
		name:    cfg.LoopName,
		dialect: cfg.Dialect,
		active:  cfg.Dialect,
		log:     f.cfg.Logger.WithField("loop", cfg.LoopName),
		stop:    stop,
		stopped: make(chan struct{}),
		retry:   backoff.New(f.cfg.RetryDelay, f.cfg.MaxRetryDelay),
	}
	if f.cfg.ChaosProb > 0 {
		l.active = WithChaosSeed(cfg.Dialect, f.cfg.ChaosProb, f.cfg.ChaosSeed)
	}
	l.stats.init(cfg.LoopName, f.cfg.Observer)
	return l
}

// prepare checks what can only be checked against the dialect and the
// target, and loads the initial point.
func (l *Loop) prepare(ctx context.Context) error {
	if err := l.checkZeroStamp(); err != nil {
		return err
	}
	if def := l.cfg.DefaultConsistentPoint; def != "" {
		if _, err := l.parseDefault(); err != nil {
			return err
		}
	}
	if orderer, ok := l.factory.cfg.Target.(Orderer); ok && !l.nested {
		order, err := loadOrder(ctx, orderer.(Target), l.cfg.TargetSchema)
		if err != nil {
			return errors.Wrapf(err, "logical: loop %q", l.name)
		}
		if l.factory.cfg.ForeignKeys {
			l.order = order
		} else if len(order.levels) > 1 {
			return errors.Errorf("logical: loop %q: schema %q has foreign keys (%d dependency levels) but Config.ForeignKeys is off",
				l.name, l.cfg.TargetSchema, len(order.levels))
		}
	}
	cp, err := l.loadPoint(ctx)
	if err != nil {
		return err
	}
	l.initial = cp
	l.cp.Set(cp)
	l.stats.setPoint(cp)
	return nil
}

// checkZeroStamp makes sure the persisted point can be read back: json
// can only unmarshal into a non-nil pointer. Without this check a loop
// would start, persist points, and fail at its next iteration.
func (l *Loop) checkZeroStamp() error {
	zero := l.dialect.ZeroStamp()
	if zero == nil {
		return errors.Errorf("logical: loop %q: Dialect.ZeroStamp returned nil", l.name)
	}
	if v := reflect.ValueOf(zero); v.Kind() != reflect.Pointer || v.IsNil() {
		return errors.Errorf("logical: loop %q: Dialect.ZeroStamp returned %T, which the persisted consistent point cannot be unmarshalled into; return a non-nil pointer",
			l.name, zero)
	}
	return nil
}

// parseDefault parses LoopConfig.DefaultConsistentPoint.
func (l *Loop) parseDefault() (Stamp, error) {
	zero := l.dialect.ZeroStamp()
	tu, ok := zero.(encoding.TextUnmarshaler)
	if !ok {
		return nil, errors.Errorf("logical: loop %q: LoopConfig.DefaultConsistentPoint is set but the stamp %T does not implement encoding.TextUnmarshaler",
			l.name, zero)
	}
	if err := tu.UnmarshalText([]byte(l.cfg.DefaultConsistentPoint)); err != nil {
		return nil, errors.Wrapf(err, "logical: loop %q: LoopConfig.DefaultConsistentPoint %q cannot be parsed into %T",
			l.name, l.cfg.DefaultConsistentPoint, zero)
	}
	return zero, nil
}

// loadPoint reads the persisted point, or the default one.
func (l *Loop) loadPoint(ctx context.Context) (Stamp, error) {
	memo := l.factory.cfg.Memo
	buf, err := memo.Get(ctx, l.name)
	if err != nil {
		return nil, errors.Wrapf(err, "logical: loop %q: reading the consistent point", l.name)
	}
	if len(buf) == 0 {
		if l.cfg.DefaultConsistentPoint != "" {
			return l.parseDefault()
		}
		zero := l.dialect.ZeroStamp()
		if zero == nil {
			return nil, errors.Errorf("logical: loop %q: ZeroStamp returned nil", l.name)
		}
		return zero, nil
	}
	zero := l.dialect.ZeroStamp()
	if err := json.Unmarshal(buf, zero); err != nil {
		where := ""
		if fm, ok := memo.(*FileMemo); ok {
			where = " in " + fm.Path(l.name)
		}
		return nil, errors.Wrapf(err, "logical: loop %q: the stored consistent point %q%s cannot be decoded into %T",
			l.name, truncate(buf, 80), where, zero)
	}
	return zero, nil
}

func truncate(buf []byte, n int) string {
	if len(buf) <= n {
		return string(buf)
	}
	return string(buf[:n]) + "..."
}

// Dialect returns the dialect as configured, without the chaos wrapper.
func (l *Loop) Dialect() Dialect { return l.dialect }

// Name returns LoopConfig.LoopName.
func (l *Loop) Name() string { return l.name }

// GetConsistentPoint returns the latest persisted consistent point and a
// channel that closes when it changes.
func (l *Loop) GetConsistentPoint() (Stamp, <-chan struct{}) { return l.cp.Get() }

// GetInitialPoint returns the point the loop started from, as loaded by
// Start.
func (l *Loop) GetInitialPoint() Stamp { return l.initial }

// Stopped is closed once every goroutine of the loop has exited.
func (l *Loop) Stopped() <-chan struct{} { return l.stopped }

// Stop starts a graceful stop: State.Stopping closes at once, and the
// contexts given to the dialect are cancelled after grace (at once if grace
// is zero). It returns at once; wait on Stopped. It is idempotent, and a
// later call can only shorten the grace period.
func (l *Loop) Stop(grace time.Duration) { l.stop.Stop(grace) }

// release frees the loop's resources once it has ended.
func (l *Loop) release() {
	l.factory.forget(l)
	l.stop.Release()
	if l.ownFactory {
		l.factory.Stop(0) // before Stopped closes, so that it implies this
	}
	close(l.stopped)
}

// done reports whether the loop has been asked to stop.
func (l *Loop) done() bool { return l.stop.IsStopping() || l.stop.Err() != nil }

// run is the loop's goroutine: iterations until shutdown.
func (l *Loop) run() {
	defer l.release()
	if l.factory.cfg.Observer != nil {
		defer l.observeTicks()()
	}
	l.log.WithField("stamp", stampString(l.initial)).Info("loop started")
	defer l.log.Info("loop stopped")
	for first := true; !l.done(); first = false {
		res := l.runOnce(first)
		if l.done() {
			return
		}
		var delay time.Duration
		switch {
		case res.err != nil:
			l.stats.processRestart(res.err)
			delay = l.nextDelay()
			logRestart(l.log.WithError(res.err).WithField("delay", delay), res.err, "loop iteration failed; restarting")
		case res.switched:
			continue // a mode switch is no failure: start the next mode at once
		default:
			delay = l.factory.cfg.RetryDelay
			l.log.WithField("delay", delay).Debug("loop iteration ended; restarting")
		}
		if !sleep(l.stop, delay) {
			return
		}
	}
}

// observeTicks starts the goroutine that shows the observer a snapshot
// every statsTick, so that a growing Lag is exported while nothing
// happens. The returned function stops it and waits for it to exit.
func (l *Loop) observeTicks() (stop func()) {
	done := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(statsTick)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				l.stats.tick()
			case <-done:
				return
			}
		}
	}()
	return func() {
		close(done)
		<-exited
	}
}

// backwardsCause is logged when a restart was caused by a point going
// backwards.
const backwardsCause = "consistent point went backwards: Process did not skip messages at or before the consistent point, " +
	"so replayed messages may have been applied over newer data (a deleted row can come back); restarting"

// logRestart logs a restart after err as a warning, or as an error when
// err is ErrPointBackwards: then the damage is likely done already, and
// the message says what probably caused it.
func logRestart(log logrus.FieldLogger, err error, msg string) {
	if errors.Is(err, ErrPointBackwards) {
		log.Error(backwardsCause)
		return
	}
	log.Warn(msg)
}

// nextDelay returns the pause before the next retry. The backoff restarts
// from Config.RetryDelay when the consistent point advanced since the last
// failure or the last attempt ran for at least Config.MaxRetryDelay.
func (l *Loop) nextDelay() time.Duration {
	cp := l.cp.Peek()
	now := time.Now()
	l.retryMu.Lock()
	defer l.retryMu.Unlock()
	if l.retryPoint != nil && Compare(cp, l.retryPoint) > 0 ||
		!l.retryAt.IsZero() && now.Sub(l.retryAt) >= l.factory.cfg.MaxRetryDelay {
		l.retry.Reset()
	}
	d := l.retry.Next()
	l.retryPoint = cp
	l.retryAt = now.Add(d)
	return d
}

// sleep waits for d, and reports false if ctx stopped first.
func sleep(ctx *stopper.Context, d time.Duration) bool {
	if d <= 0 {
		return !ctx.IsStopping() && ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Stopping():
		return false
	case <-ctx.Done():
		return false
	}
}

// result is how an iteration ended.
type result struct {
	err       error
	switched  bool // stopped for a mode switch
	completed bool // the fill function returned nil without being stopped
	processed bool // Process returned nil while the iteration was neither stopping nor cancelled
}

// runOnce is one iteration: lease, point, strategy, then the two sides.
func (l *Loop) runOnce(first bool) result {
	var leaseCtx context.Context
	if lessor, ok := l.active.(Lessor); ok && !l.nested {
		lease, err := l.acquire(lessor)
		if err != nil || lease == nil {
			return result{err: err}
		}
		defer lease.Release()
		leaseCtx = lease.Context()
	}
	iter := l.stop.Child(leaseCtx)
	defer iter.Release()
	// The point loaded by Start is stale once a lease was waited for:
	// another holder may have moved it meanwhile, and resuming from the
	// old one would replay and persist a point behind the stored one.
	if !first || leaseCtx != nil {
		cp, err := l.loadPoint(iter)
		if err != nil {
			return result{err: err}
		}
		l.cpMu.Lock()
		l.stats.setPoint(cp)
		l.cp.Set(cp)
		l.cpMu.Unlock()
	}
	// The target's schema may have changed since (a table created, a
	// foreign key added: a table missing from the order fails the
	// iteration), so each later iteration reads the order again.
	if !first && l.order != nil {
		order, err := loadOrder(iter, l.factory.cfg.Target, l.cfg.TargetSchema)
		if err != nil {
			return result{err: errors.Wrapf(err, "logical: loop %q", l.name)}
		}
		l.order = order
	}
	res := l.iterate(iter, l.chooseMode(), true)
	if leaseCtx != nil && leaseCtx.Err() != nil && !l.done() {
		l.log.Info("lease lost")
		if res.err == nil {
			res.err = errors.Errorf("logical: loop %q: lease lost", l.name)
		}
	}
	return res
}

// acquire calls Acquire until it succeeds, waiting out busy leases. It
// returns (nil, nil) if the loop stopped meanwhile.
func (l *Loop) acquire(lessor Lessor) (Lease, error) {
	for {
		lease, err := lessor.Acquire(l.stop)
		if err == nil {
			if lease == nil {
				return nil, errors.Errorf("logical: loop %q: Acquire returned no lease and no error", l.name)
			}
			l.log.Info("lease acquired")
			return lease, nil
		}
		if l.done() {
			return nil, nil
		}
		busy, ok := IsLeaseBusy(err)
		if !ok {
			return nil, errors.Wrapf(err, "logical: loop %q: acquiring the lease", l.name)
		}
		wait := busyWait(time.Until(busy.Expiration))
		l.log.WithField("wait", wait).Debug("lease busy; waiting")
		if !sleep(l.stop, wait) {
			return nil, nil
		}
	}
}

// busyWait returns how long to wait for a lease that is busy for another
// until: at least leaseMinWait, plus jitter.
func busyWait(until time.Duration) time.Duration {
	return max(until, leaseMinWait) + jitter(leaseJitter)
}

// chooseMode picks the strategy for the current point.
func (l *Loop) chooseMode() mode {
	if _, ok := l.active.(Backfiller); ok && l.factory.cfg.BackfillWindow > 0 {
		if ts, ok := l.cp.Peek().(TimeStamp); ok && time.Since(ts.AsTime()) >= l.factory.cfg.BackfillWindow {
			return modeBackfill
		}
	}
	if l.factory.cfg.Immediate {
		return modeImmediate
	}
	return modeSerial
}

// iterate runs the source and the processor (and the mode watcher) until
// they have all exited.
func (l *Loop) iterate(iter *stopper.Context, m mode, retry bool) result {
	log := l.log.WithField("mode", m.String())
	log.WithField("stamp", stampString(l.cp.Peek())).Debug("iteration starting")
	l.stats.iteration(m == modeBackfill)

	fill := l.active.ReadInto
	if m == modeBackfill {
		fill = l.active.(Backfiller).BackfillInto
	}
	state := &iterState{loop: l, stop: iter}
	ev := &events{iterState: state}
	var closeFan func()
	if m == modeSerial {
		ev.Batcher = decorate(&serialEvents{target: l.factory.cfg.Target}, &l.factory.cfg, l.order, l)
	} else {
		fe := newFanEvents(iter, &l.factory.cfg, l)
		ev.Batcher = decorate(fe, &l.factory.cfg, l.order, l)
		closeFan = fe.close
	}
	group := newGroupBatcher(ev.Batcher, &l.factory.cfg, m != modeSerial)
	ev.Batcher = group

	var (
		mu        sync.Mutex
		firstErr  error
		completed bool
		processed bool
		switched  atomic.Bool
		srcClosed atomic.Bool
	)
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
		iter.Cancel()
	}

	ch := make(chan Message, channelBuffer)
	sides := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // the source
		defer wg.Done()
		done, err := l.source(iter, ch, state, fill, retry, log)
		mu.Lock()
		completed = done
		mu.Unlock()
		srcClosed.Store(true)
		close(ch)
		if err != nil {
			fail(errors.Wrapf(err, "logical: loop %q: source", l.name))
		}
	}()
	go func() { // the processor
		defer wg.Done()
		err := callProcess(l.active, iter, ch, ev)
		if err == nil && !iter.IsStopping() && iter.Err() == nil {
			mu.Lock()
			processed = true
			mu.Unlock()
		}
		group.abandon(context.WithoutCancel(iter))
		if err == nil && !srcClosed.Load() && !iter.IsStopping() {
			err = errors.New("Process returned unexpectedly (before the channel was closed and without a stop)")
		}
		if err != nil && !iter.IsStopping() {
			fail(errors.Wrapf(err, "logical: loop %q: Process", l.name))
		} else if err != nil {
			log.WithError(err).Debug("Process ended with an error after the iteration was stopped")
		}
	}()
	var watcher sync.WaitGroup
	if _, ok := l.active.(Backfiller); ok && l.factory.cfg.BackfillWindow > 0 && !l.nested {
		watcher.Add(1)
		go func() {
			defer watcher.Done()
			if l.watchMode(iter, m, sides, log) {
				switched.Store(true)
			}
		}()
	}
	wg.Wait()
	close(sides)
	watcher.Wait()
	if closeFan != nil {
		closeFan()
	}

	res := result{err: firstErr, switched: switched.Load(), completed: completed, processed: processed}
	// The backfill has caught up when the watcher switched, and also when
	// the backfiller finished before the watcher saw a young point.
	caughtUp := res.switched || res.err == nil && res.completed && l.chooseMode() != modeBackfill
	if m == modeBackfill && caughtUp && l.cfg.WaitAfterBackfill != nil {
		log.Debug("backfill caught up; waiting for WaitAfterBackfill")
		select {
		case <-l.cfg.WaitAfterBackfill:
		case <-l.stop.Stopping():
		case <-l.stop.Done():
		}
	}
	return res
}

// source runs the fill function, restarting it after errors with a
// rollback message in between. completed reports that it returned nil
// without being asked to stop. Without retry, the first error is returned.
func (l *Loop) source(
	iter *stopper.Context, ch chan Message, state State,
	fill func(context.Context, chan<- Message, State) error, retry bool, log logrus.FieldLogger,
) (completed bool, _ error) {
	for {
		err := callFill(fill, iter, ch, state)
		if iter.IsStopping() || iter.Err() != nil {
			if err != nil {
				log.WithError(err).Debug("source ended with an error after the iteration was stopped or cancelled")
			}
			return false, nil
		}
		if err == nil {
			return true, nil
		}
		if !retry {
			return false, err
		}
		l.stats.sourceRestart(errors.Wrapf(err, "logical: loop %q: source", l.name))
		if !l.deliverRollback(iter, ch) {
			if iter.IsStopping() || iter.Err() != nil {
				return false, nil
			}
			return false, errors.Wrap(err, "the consumer is not keeping up, so the rollback after this source error could not be delivered")
		}
		delay := l.nextDelay()
		logRestart(log.WithError(err).WithField("delay", delay), err, "source failed; restarting it from the consistent point")
		if !sleep(iter, delay) {
			return false, nil
		}
	}
}

// deliverRollback puts the rollback sentinel into ch. The spec asks for a
// send without waiting; a full buffer is the normal state of a source that
// is faster than its consumer, though, so this waits for room for up to
// Config.ApplyTimeout before it gives up (and the iteration restarts).
func (l *Loop) deliverRollback(iter *stopper.Context, ch chan Message) bool {
	select {
	case ch <- rollback:
		return true
	default:
	}
	t := time.NewTimer(l.factory.cfg.ApplyTimeout)
	defer t.Stop()
	select {
	case ch <- rollback:
		return true
	case <-t.C:
	case <-iter.Stopping():
	case <-iter.Done():
	}
	return false
}

// watchMode stops the iteration when the consistent point calls for the
// other mode, and reports whether it did. It only looks at new points: an
// idle source does not flip modes.
func (l *Loop) watchMode(iter *stopper.Context, m mode, done <-chan struct{}, log logrus.FieldLogger) bool {
	window := l.factory.cfg.BackfillWindow
	_, changed := l.cp.Get()
	for {
		select {
		case <-changed:
		case <-done:
			return false
		case <-iter.Stopping():
			return false
		case <-iter.Done():
			return false
		}
		var cp Stamp
		cp, changed = l.cp.Get()
		ts, ok := cp.(TimeStamp)
		if !ok {
			continue
		}
		age := time.Since(ts.AsTime())
		switch {
		case m == modeBackfill && age < window:
			log.WithField("stamp", stampString(cp)).Debug("backfill caught up; switching to streaming")
		case m != modeBackfill && age >= window:
			log.WithField("stamp", stampString(cp)).WithField("lag", age).Warn("fell behind the backfill window; switching to backfill")
		default:
			continue
		}
		iter.Stop(l.factory.cfg.ApplyTimeout)
		return true
	}
}

// setConsistentPoint persists cp and then publishes it. iter is the
// iteration the call comes from: once it is cancelled (a lost lease, the
// end of the grace period) the point is refused, so that a late call
// cannot persist a point behind one a new lease holder stored meanwhile.
func (l *Loop) setConsistentPoint(ctx context.Context, cp Stamp, iter context.Context) error {
	if cp == nil {
		return errors.Errorf("logical: loop %q: SetConsistentPoint with a nil stamp", l.name)
	}
	l.cpMu.Lock()
	defer l.cpMu.Unlock()
	cur := l.cp.Peek()
	switch Compare(cp, cur) {
	case 0:
		return markf(ErrPointStalled, "logical: loop %q: %s: %s -> %s", l.name, ErrPointStalled, stampString(cur), stampString(cp))
	case -1:
		return markf(ErrPointBackwards, "logical: loop %q: %s: %s -> %s", l.name, ErrPointBackwards, stampString(cur), stampString(cp))
	}
	buf, err := json.Marshal(cp)
	if err != nil {
		return errors.Wrapf(err, "logical: loop %q: encoding the consistent point", l.name)
	}
	if err := iter.Err(); err != nil {
		return errors.Wrapf(err, "logical: loop %q: SetConsistentPoint %s after the iteration was cancelled", l.name, stampString(cp))
	}
	// Put runs under the iteration, whose cancellation by a lost lease is
	// synchronous, so a Memo that checks its context as it writes never
	// stores a point after the lease moved on; the caller's ctx (a
	// timeout, say) is honoured too.
	putCtx := context.Context(iter)
	if ctx.Done() != iter.Done() {
		merged, cancel := context.WithCancel(iter)
		defer cancel()
		defer context.AfterFunc(ctx, cancel)()
		putCtx = merged
	}
	if err := l.factory.cfg.Memo.Put(putCtx, l.name, buf); err != nil {
		return errors.Wrapf(err, "logical: loop %q: persisting the consistent point", l.name)
	}
	// Stats first, so that whoever wakes up on the new point reads stats
	// that already include it.
	l.stats.setPoint(cp)
	l.cp.Set(cp)
	return nil
}

// stampString formats a stamp for logs and errors.
func stampString(s Stamp) string {
	if s == nil {
		return "<nil>"
	}
	if str, ok := s.(fmt.Stringer); ok {
		return str.String()
	}
	if buf, err := json.Marshal(s); err == nil {
		return string(buf) // every stamp has a JSON form; a pointer's address says nothing
	}
	return fmt.Sprintf("%+v", s)
}

// callFill calls a fill function, turning a panic into an error.
func callFill(fill func(context.Context, chan<- Message, State) error, ctx context.Context, ch chan<- Message, state State) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = errors.Errorf("panic in the source: %v\n%s", r, debug.Stack())
		}
	}()
	return fill(ctx, ch, state)
}

// callProcess calls Process, turning a panic into an error.
func callProcess(d Dialect, ctx context.Context, ch <-chan Message, ev Events) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = errors.Errorf("panic in Process: %v\n%s", r, debug.Stack())
		}
	}()
	return d.Process(ctx, ch, ev)
}

// iterState is the State of one iteration.
type iterState struct {
	loop *Loop
	stop *stopper.Context
}

var _ State = (*iterState)(nil)

func (s *iterState) GetConsistentPoint() (Stamp, <-chan struct{}) { return s.loop.cp.Get() }
func (s *iterState) GetTargetDB() string                          { return s.loop.cfg.TargetSchema }
func (s *iterState) Stopping() <-chan struct{}                    { return s.stop.Stopping() }
func (s *iterState) SetConsistentPoint(ctx context.Context, cp Stamp) error {
	return s.loop.setConsistentPoint(ctx, cp, s.stop)
}

// events is the Events of one iteration.
type events struct {
	Batcher
	*iterState
}

var _ Events = (*events)(nil)

// Backfill implements Events.
func (e *events) Backfill(ctx context.Context, loopName string, backfiller Backfiller) error {
	return e.loop.backfill(ctx, e.stop, loopName, backfiller)
}
