package logicaltest

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/logical-go/logical"
)

// Message is what the generator's source sends: one per sequence number.
type Message struct {
	Seq  int
	Time time.Time
}

// Generator is a fake dialect: it emits messages 0..N-1, each of which
// Process applies as one transaction holding one mutation (key [seq]) for
// each table, and then sets the consistent point to the message. ReadInto
// waits for a stop once all messages are sent; BackfillInto returns.
//
// Process is logical.Transactions over a decoder of these messages, unless
// PerCommit asks for several messages per batch.
//
// It counts its calls and remembers which messages Process received, for
// assertions. Set the fields before the loop starts.
type Generator struct {
	// N is the number of messages.
	N int
	// Tables receive one mutation per message; default Tables(schema, 4)
	// in the loop's target schema.
	Tables []logical.Table
	// Base and Step give message i the time Base + i*Step. A zero Base
	// means the time the message is sent.
	Base time.Time
	Step time.Duration
	// Source names the source table in OnData (default "generator").
	Source string
	// PerCommit, if > 1, makes Process put that many messages in one
	// batch and set the point once per batch (as real dialects do).
	PerCommit int

	readInto, readIntoExits atomic.Int64
	process, processExits   atomic.Int64
	backfill, backfillExits atomic.Int64
	rollbacks               atomic.Int64

	mu       sync.Mutex
	seen     []int32 // times Process handled each sequence number
	distinct int     // entries of seen above zero
}

var _ logical.Backfiller = (*Generator)(nil)

// NewGenerator returns a generator of n messages.
func NewGenerator(n int) *Generator { return &Generator{N: n} }

// Tables returns n tables named t0..t(n-1) in schema.
func Tables(schema string, n int) []logical.Table {
	out := make([]logical.Table, n)
	for i := range out {
		out[i] = logical.Table{Schema: schema, Name: "t" + strconv.Itoa(i)}
	}
	return out
}

// ZeroStamp implements logical.Dialect: sequence -1, before message 0.
func (g *Generator) ZeroStamp() logical.Stamp { return &Stamp{Seq: -1} }

// ReadInto implements logical.Dialect.
func (g *Generator) ReadInto(ctx context.Context, ch chan<- logical.Message, state logical.State) error {
	g.readInto.Add(1)
	defer g.readIntoExits.Add(1)
	if err := g.emit(ctx, ch, state); err != nil || stopping(state) {
		return err
	}
	select {
	case <-state.Stopping():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// BackfillInto implements logical.Backfiller: the same messages, and it
// returns once all are sent.
func (g *Generator) BackfillInto(ctx context.Context, ch chan<- logical.Message, state logical.State) error {
	g.backfill.Add(1)
	defer g.backfillExits.Add(1)
	return g.emit(ctx, ch, state)
}

// isClosed reports whether ch (nil: never) is closed, without blocking.
func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func stopping(state logical.State) bool {
	select {
	case <-state.Stopping():
		return true
	default:
		return false
	}
}

// emit sends the messages after the consistent point.
func (g *Generator) emit(ctx context.Context, ch chan<- logical.Message, state logical.State) error {
	cp, _ := state.GetConsistentPoint()
	stopping, done := state.Stopping(), ctx.Done()
	for i := cp.(*Stamp).Seq + 1; i < g.N; i++ {
		t := g.Base.Add(time.Duration(i) * g.Step)
		if g.Base.IsZero() {
			t = time.Now()
		}
		if isClosed(stopping) {
			return nil
		}
		if isClosed(done) {
			return ctx.Err()
		}
		msg := Message{Seq: i, Time: t}
		// Try the send alone first: a select over three channels locks all
		// of them, which costs more than the rest of a message here.
		select {
		case ch <- msg:
			continue
		default:
		}
		select {
		case ch <- msg:
		case <-stopping:
			return nil
		case <-done:
			return ctx.Err()
		}
	}
	return nil
}

// Process implements logical.Dialect. With PerCommit <= 1 each message is
// one source transaction and Process is logical.Transactions over a
// decoder; with PerCommit > 1 it is a hand-written Process that keeps a
// batch open across messages.
func (g *Generator) Process(ctx context.Context, ch <-chan logical.Message, events logical.Events) error {
	g.process.Add(1)
	defer g.processExits.Add(1)
	tables := g.Tables
	if tables == nil {
		tables = Tables(events.GetTargetDB(), 4)
	}
	source := g.Source
	if source == "" {
		source = "generator"
	}
	if g.PerCommit > 1 {
		return g.processGrouped(ctx, ch, events, tables, source)
	}
	data := make(map[logical.Table][]logical.Mutation, len(tables))
	return logical.Transactions{
		Decode: func(_ context.Context, msg logical.Message) (logical.Txn, error) {
			m, ok := msg.(Message)
			if !ok {
				return logical.Txn{}, fmt.Errorf("logicaltest: the generator received a %T, want a logicaltest.Message", msg)
			}
			g.markSeen(m.Seq)
			clear(data) // Transactions is done with the map of the last message
			for _, t := range tables {
				data[t] = []logical.Mutation{g.mutation(m, t)}
			}
			return logical.Txn{Stamp: &Stamp{Seq: m.Seq, Time: m.Time}, Data: data, Source: source}, nil
		},
		Reset: func() { g.rollbacks.Add(1) },
	}.Process(ctx, ch, events)
}

// mutation is the row message m writes into table t.
func (g *Generator) mutation(m Message, t logical.Table) logical.Mutation {
	key := append(strconv.AppendInt(append(make([]byte, 0, 8), '['), int64(m.Seq), 10), ']')
	return logical.Mutation{
		Key:  key,
		Data: json.RawMessage(fmt.Sprintf(`{"k":%d,"table":%q}`, m.Seq, t.Name)),
		Time: m.Time,
	}
}

// processGrouped is Process for PerCommit > 1: a batch holds PerCommit
// messages, and the point is set once per batch.
func (g *Generator) processGrouped(ctx context.Context, ch <-chan logical.Message, events logical.Events, tables []logical.Table, source string) error {
	per := g.PerCommit
	var batch logical.Batch
	var last Message
	pending := 0
	// done is the last message known to be persisted: the point when
	// Process started, then each point it set itself (nothing else sets
	// the point while Process runs). Tracking it here spares a
	// GetConsistentPoint, which allocates a channel, per message.
	start, _ := events.GetConsistentPoint()
	done := start.(*Stamp).Seq
	fail := func(err error) error {
		if batch != nil {
			_ = batch.OnRollback(ctx)
		}
		return err
	}
	commit := func() error {
		err := <-batch.OnCommit(ctx)
		batch = nil
		if err != nil {
			return err
		}
		if err := events.SetConsistentPoint(ctx, &Stamp{Seq: last.Seq, Time: last.Time}); err != nil {
			return err
		}
		done = last.Seq
		pending = 0
		return nil
	}
	stopping, ctxDone := events.Stopping(), ctx.Done()
	for {
		var msg logical.Message
		var ok bool
		if isClosed(stopping) {
			return fail(nil)
		}
		if isClosed(ctxDone) {
			return fail(ctx.Err())
		}
		// Try the receive alone first, as in emit.
		select {
		case msg, ok = <-ch:
		default:
			select {
			case msg, ok = <-ch:
			case <-stopping:
				return fail(nil)
			case <-ctxDone:
				return fail(ctx.Err())
			}
		}
		if !ok {
			if batch != nil {
				return commit()
			}
			return nil
		}
		if logical.IsRollback(msg) {
			g.rollbacks.Add(1)
			if batch != nil {
				_ = batch.OnRollback(ctx)
				batch, pending = nil, 0
			}
			continue
		}
		m, ok := msg.(Message)
		if !ok {
			return fail(fmt.Errorf("logicaltest: the generator received a %T, want a logicaltest.Message", msg))
		}
		g.markSeen(m.Seq)
		// A restarted source sends again from the consistent point it saw,
		// which may be behind what this side committed meanwhile: skip
		// what is already done or already in the open batch.
		if m.Seq <= done || batch != nil && m.Seq <= last.Seq {
			continue
		}
		if batch == nil {
			var err error
			if batch, err = events.OnBegin(ctx); err != nil {
				return err
			}
		}
		for _, t := range tables {
			if err := batch.OnData(ctx, source, t, []logical.Mutation{g.mutation(m, t)}); err != nil {
				return fail(err)
			}
		}
		last = m
		pending++
		if pending >= per || m.Seq == g.N-1 {
			if err := commit(); err != nil {
				return err
			}
		}
	}
}

// markSeen counts message seq as received by Process. A slice indexed by the sequence number
// keeps this bookkeeping cheap, so benchmarks measure the loop rather than
// a growing map.
func (g *Generator) markSeen(seq int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if seq >= len(g.seen) {
		g.seen = append(g.seen, make([]int32, max(seq+1, g.N)-len(g.seen))...)
	}
	if g.seen[seq] == 0 {
		g.distinct++
	}
	g.seen[seq]++
}

// Seen returns how many distinct messages Process received. A message sent
// again after a source restart, and skipped, is counted again by
// SeenCount but not here.
func (g *Generator) Seen() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.distinct
}

// SeenCount returns how often Process received message seq, including
// repeats it skipped because they were at or before the consistent point.
func (g *Generator) SeenCount(seq int) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if seq < 0 || seq >= len(g.seen) {
		return 0
	}
	return int(g.seen[seq])
}

// Calls returns how often each entry point was called and how often it
// returned.
func (g *Generator) Calls() GeneratorCalls {
	return GeneratorCalls{
		ReadInto: g.readInto.Load(), ReadIntoExits: g.readIntoExits.Load(),
		Process: g.process.Load(), ProcessExits: g.processExits.Load(),
		BackfillInto: g.backfill.Load(), BackfillIntoExits: g.backfillExits.Load(),
		Rollbacks: g.rollbacks.Load(),
	}
}

// GeneratorCalls counts a Generator's calls.
type GeneratorCalls struct {
	ReadInto, ReadIntoExits         int64
	Process, ProcessExits           int64
	BackfillInto, BackfillIntoExits int64
	Rollbacks                       int64
}
