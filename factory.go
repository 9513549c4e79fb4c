package logical

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/logical-go/logical/internal/stopper"
	"github.com/pkg/errors"
)

// A Factory starts loops that share one Config, and stops them together.
type Factory struct {
	cfg  Config
	stop *stopper.Context

	mu    sync.Mutex
	loops map[string]*Loop // running loops (and nested backfills) by name
	wg    sync.WaitGroup   // one per loop goroutine
	bg    sync.WaitGroup   // one per Immediate batcher

	immediateMu sync.Mutex
	immediate   map[string]*fanEvents
}

// NewFactory validates cfg (see Config.Preflight) and returns a Factory.
// Cancelling ctx stops every loop at once (a hard stop); Stop stops them
// gracefully.
func NewFactory(ctx context.Context, cfg *Config) (*Factory, error) {
	if cfg == nil {
		return nil, errors.New("logical: Config is nil")
	}
	if err := cfg.Preflight(); err != nil {
		return nil, err
	}
	return &Factory{
		cfg:   *cfg,
		stop:  stopper.New(ctx),
		loops: make(map[string]*Loop),
	}, nil
}

// Start is a shortcut for a Factory with one loop. Stop the loop with
// Loop.Stop; its Factory goes with it.
func Start(ctx context.Context, cfg *Config, loop *LoopConfig) (*Loop, error) {
	f, err := NewFactory(ctx, cfg)
	if err != nil {
		return nil, err
	}
	l, err := f.start(loop, true)
	if err != nil {
		f.Stop(0)
		return nil, err
	}
	return l, nil
}

// Start validates cfg, loads the loop's consistent point and starts the
// loop in the background. It fails if the configuration is invalid, a loop
// of the same name is running, the stored point cannot be read, or the
// target's foreign keys need Config.ForeignKeys.
func (f *Factory) Start(cfg *LoopConfig) (*Loop, error) { return f.start(cfg, false) }

// start is Start; own marks f as made for this loop alone (the Start
// shortcut), so that the loop stops f when it ends. It is set before the
// loop goroutine starts, which reads it.
func (f *Factory) start(cfg *LoopConfig, own bool) (*Loop, error) {
	if cfg == nil {
		return nil, errors.New("logical: LoopConfig is nil")
	}
	if err := cfg.Preflight(); err != nil {
		return nil, err
	}
	l, err := f.newLoop(*cfg, f.stop)
	if err != nil {
		return nil, err
	}
	l.ownFactory = own
	ctx := l.stop
	if err := l.prepare(ctx); err != nil {
		l.release()
		return nil, err
	}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		l.run()
	}()
	return l, nil
}

// newLoop registers a loop under cfg.LoopName, as a child of parent.
func (f *Factory) newLoop(cfg LoopConfig, parent *stopper.Context) (*Loop, error) {
	if parent.IsStopping() || parent.Err() != nil {
		return nil, errors.Errorf("logical: loop %q: the factory is stopped", cfg.LoopName)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, dup := f.loops[cfg.LoopName]; dup {
		return nil, errors.Errorf("logical: LoopConfig.LoopName %q is already running in this factory", cfg.LoopName)
	}
	l := newLoop(f, cfg, parent.Child(nil))
	f.loops[cfg.LoopName] = l
	return l, nil
}

// forget unregisters l.
func (f *Factory) forget(l *Loop) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.loops[l.name] == l {
		delete(f.loops, l.name)
	}
}

// Stop starts a graceful stop of every loop: State.Stopping closes at once,
// and the contexts given to the dialects are cancelled after grace. It
// returns at once; use Wait to wait for the loops. No loop can be started
// afterwards.
func (f *Factory) Stop(grace time.Duration) {
	f.stop.Stop(grace)
}

// Wait blocks until every loop of the factory has exited (after Stop, after
// the factory's context was cancelled, or after each loop was stopped on
// its own) and returns nil then. Once the factory itself is stopped it also
// waits for the workers of its Immediate batchers.
func (f *Factory) Wait() error {
	f.wg.Wait()
	if f.stop.IsStopping() || f.stop.Err() != nil {
		f.bg.Wait()
	}
	return nil
}

// Config returns a copy of the factory's configuration, defaults applied.
func (f *Factory) Config() Config { return f.cfg }

// Immediate returns a Batcher that writes to targetSchema in fan mode,
// through the factory's Script (and foreign-key ordering, if on), without a
// source loop. Batches from it may be used from several goroutines, one
// goroutine per batch. Its workers stop with the factory.
func (f *Factory) Immediate(targetSchema string) (Batcher, error) {
	if f.stop.IsStopping() || f.stop.Err() != nil {
		return nil, errors.New("logical: Immediate: the factory is stopped")
	}
	f.immediateMu.Lock()
	defer f.immediateMu.Unlock()
	if ev, ok := f.immediate[targetSchema]; ok {
		return ev.batcher, nil
	}
	var order *fkOrder
	if f.cfg.ForeignKeys {
		var err error
		if order, err = loadOrder(f.stop, f.cfg.Target, targetSchema); err != nil {
			return nil, err
		}
	}
	fe := newFanEvents(f.stop, &f.cfg, nil)
	fe.batcher = decorate(fe, &f.cfg, order, nil)
	if f.immediate == nil {
		f.immediate = make(map[string]*fanEvents)
	}
	f.immediate[targetSchema] = fe
	f.bg.Add(1)
	go func() {
		defer f.bg.Done()
		select {
		case <-f.stop.Stopping():
		case <-f.stop.Done():
		}
		fe.close()
	}()
	return fe.batcher, nil
}

// jitter returns a random duration in [0, max).
func jitter(max time.Duration) time.Duration {
	if max <= 0 {
		return 0
	}
	return rand.N(max)
}
