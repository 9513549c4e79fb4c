package logical_test

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/logical-go/logical"
	"github.com/logical-go/logical/logicaltest"
)

// groupedGenerator is the generator with a Process that groups: each
// message is a grouped batch of one mutation per table, the group commits
// when nothing more is queued, and the point moves to the group's last
// message after that. It is how a dialect uses logical.Grouper.
type groupedGenerator struct {
	*logicaltest.Generator
	applied int // messages applied, read after the loop stopped
}

func (g *groupedGenerator) Process(ctx context.Context, ch <-chan logical.Message, events logical.Events) error {
	grouper, ok := events.(logical.Grouper)
	if !ok {
		return fmt.Errorf("events %T is no Grouper", events)
	}
	tables := logicaltest.Tables(events.GetTargetDB(), benchTables)
	type inflight struct {
		msg    logicaltest.Message
		result <-chan error
	}
	var pending []inflight
	var last *logicaltest.Message
	commit := func() error {
		if len(pending) == 0 {
			return nil
		}
		if err := grouper.CommitGroup(ctx); err != nil {
			return err
		}
		for _, p := range pending {
			if err := <-p.result; err != nil {
				return err
			}
			last = &p.msg
		}
		pending = pending[:0]
		return events.SetConsistentPoint(ctx, &logicaltest.Stamp{Seq: last.Seq, Time: last.Time})
	}
	for {
		var msg logical.Message
		var ok bool
		select {
		case msg, ok = <-ch:
		case <-events.Stopping():
			return commit()
		}
		if !ok {
			return commit()
		}
		if logical.IsRollback(msg) {
			continue // no faults in the benchmarks
		}
		m := msg.(logicaltest.Message)
		if last != nil && m.Seq <= last.Seq {
			continue
		}
		batch, err := grouper.OnBeginGrouped(ctx)
		if err != nil {
			return err
		}
		for _, t := range tables {
			mut := logical.Mutation{
				Key:  json.RawMessage(strconv.Itoa(m.Seq)),
				Data: json.RawMessage(fmt.Sprintf(`{"k":%d,"table":%q}`, m.Seq, t.Name)),
				Time: m.Time,
			}
			mut.Key = append(append([]byte{'['}, mut.Key...), ']')
			if err := batch.OnData(ctx, "generator", t, []logical.Mutation{mut}); err != nil {
				_ = batch.OnRollback(ctx)
				return err
			}
		}
		pending = append(pending, inflight{msg: m, result: batch.OnCommit(ctx)})
		g.applied++
		if len(ch) == 0 {
			if err := commit(); err != nil {
				return err
			}
		}
	}
}

// commitTarget is a nopTarget whose transactions take commit to commit,
// slept: a round trip and a WAL flush.
type commitTarget struct {
	nopTarget
	commit time.Duration
}

func (t *commitTarget) Begin(context.Context) (logical.TargetTx, error) {
	return commitTx{d: t.commit}, nil
}

type commitTx struct {
	nopTx
	d time.Duration
}

func (x commitTx) Commit(context.Context) error {
	time.Sleep(x.d)
	return nil
}

// BenchmarkGroup measures the grouping path (groupedGenerator through the
// loop's Grouper) against a bare pipeline that groups the same way (one
// commit when its channel is empty), on a target whose commits are free
// and on one where each commit takes 1ms (slept). The ungrouped serial
// loop on the second target would take over 1ms per message.
func BenchmarkGroup(b *testing.B) {
	for _, commit := range []time.Duration{0, time.Millisecond} {
		name := fmt.Sprintf("commit=%s", commit)
		b.Run(name+"/baseline", func(b *testing.B) { runGroupBaseline(b, commit) })
		b.Run(name+"/grouped", func(b *testing.B) {
			gen := &groupedGenerator{Generator: logicaltest.NewGenerator(b.N)}
			runDialect(b, &logical.Config{Target: &commitTarget{commit: commit}}, gen, func() int { return gen.applied })
		})
	}
}

// runDialect runs d in a loop until its point reaches b.N-1.
func runDialect(b *testing.B, cfg *logical.Config, d logical.Dialect, seen func() int) {
	b.Helper()
	cfg.Logger = benchLogger()
	cfg.Memo = logical.NewMemoryMemo()
	b.ReportAllocs()
	runtime.GC()
	b.ResetTimer()
	m := startMeter()
	l, err := logical.Start(context.Background(), cfg, &logical.LoopConfig{Dialect: d, LoopName: "bench", TargetSchema: "s"})
	if err != nil {
		b.Fatal(err)
	}
	waitPoint(b, l, b.N-1)
	l.Stop(time.Second)
	<-l.Stopped()
	m.report(b)
	b.StopTimer()
	if got := seen(); got != b.N {
		b.Fatalf("generator saw %d distinct messages, want %d", got, b.N)
	}
}

// runGroupBaseline is the bare pipeline of runBaseline, grouping: it
// applies each message's mutations at once, and when its channel is
// empty it commits (sleeping commit) and stores the point.
func runGroupBaseline(b *testing.B, commit time.Duration) {
	b.ReportAllocs()
	tables := logicaltest.Tables("s", benchTables)
	ctx := context.Background()
	target := &nopTarget{}
	memo := make(map[string][]byte)
	runtime.GC()
	b.ResetTimer()
	meter := startMeter()
	ch := make(chan logical.Message, 32)
	go func() {
		for i := range b.N {
			ch <- logicaltest.Message{Seq: i, Time: time.Now()}
		}
		close(ch)
	}()
	grouped := 0
	for msg := range ch {
		m := msg.(logicaltest.Message)
		for _, t := range tables {
			mut := logical.Mutation{
				Key:  json.RawMessage(strconv.Itoa(m.Seq)),
				Data: json.RawMessage(fmt.Sprintf(`{"k":%d,"table":%q}`, m.Seq, t.Name)),
				Time: m.Time,
			}
			mut.Key = append(append([]byte{'['}, mut.Key...), ']')
			if err := target.Apply(ctx, t, []logical.Mutation{mut}); err != nil {
				b.Fatal(err)
			}
		}
		grouped++
		if len(ch) == 0 || grouped == logical.DefaultGroupMax {
			if commit > 0 {
				time.Sleep(commit)
			}
			buf, err := json.Marshal(&logicaltest.Stamp{Seq: m.Seq, Time: m.Time})
			if err != nil {
				b.Fatal(err)
			}
			memo["bench"] = buf
			grouped = 0
		}
	}
	meter.report(b)
}
