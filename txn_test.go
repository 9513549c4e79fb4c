package logical_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/logical-go/logical"
	"github.com/logical-go/logical/logicaltest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The ledger is a simple transactional source: transaction i updates an
// account, adds an entry and, every third time, deletes an older entry.
// ledgerSource is its reader, shared by the two dialects below.

type ledgerPos int

func (p *ledgerPos) Less(o logical.Stamp) bool { return *p < *o.(*ledgerPos) }

type ledgerRow struct {
	Table  string
	Key    int
	Value  string
	Delete bool
}

type ledgerTxn struct {
	Pos  int
	Rows []ledgerRow
}

func ledgerAt(i int) ledgerTxn {
	rows := []ledgerRow{{Table: "accounts", Key: i % 4, Value: fmt.Sprint("balance ", i)}, {Table: "entries", Key: i, Value: fmt.Sprint("entry ", i)}}
	if i%3 == 2 {
		rows = append(rows, ledgerRow{Table: "entries", Key: i - 2, Delete: true})
	}
	return ledgerTxn{Pos: i, Rows: rows}
}

func (r ledgerRow) mutation() logical.Mutation {
	m := logical.Mutation{Key: json.RawMessage(fmt.Sprintf("[%d]", r.Key))}
	if !r.Delete {
		m.Data, _ = json.Marshal(map[string]string{"value": r.Value})
	}
	return m
}

// begin: the reader, the same for both dialects

type ledgerSource struct{ n int }

func (s *ledgerSource) ZeroStamp() logical.Stamp { p := ledgerPos(-1); return &p }

func (s *ledgerSource) ReadInto(ctx context.Context, ch chan<- logical.Message, st logical.State) error {
	cp, _ := st.GetConsistentPoint()
	for i := int(*cp.(*ledgerPos)) + 1; i <= s.n; i++ {
		var msg logical.Message
		if i < s.n {
			msg = ledgerAt(i)
		} else {
			ch = nil // at the end, wait for a stop
		}
		select {
		case ch <- msg:
		case <-st.Stopping():
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// end

// begin: the Process written against the raw interface

type rawLedger struct{ ledgerSource }

func (d *rawLedger) Process(ctx context.Context, ch <-chan logical.Message, ev logical.Events) error {
	cp, _ := ev.GetConsistentPoint()
	done := int(*cp.(*ledgerPos))
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
		if logical.IsRollback(msg) {
			continue // no batch is open between messages
		}
		txn := msg.(ledgerTxn)
		if txn.Pos <= done {
			continue // sent again by a restarted source
		}
		byTable := map[logical.Table][]logical.Mutation{}
		var tables []logical.Table
		for _, r := range txn.Rows {
			t := logical.Table{Schema: ev.GetTargetDB(), Name: r.Table}
			if _, seen := byTable[t]; !seen {
				tables = append(tables, t)
			}
			byTable[t] = append(byTable[t], r.mutation())
		}
		b, err := ev.OnBegin(ctx)
		if err != nil {
			return err
		}
		for _, t := range tables {
			if err := b.OnData(ctx, t.Name, t, byTable[t]); err != nil {
				_ = b.OnRollback(ctx)
				return err
			}
		}
		select {
		case err := <-b.OnCommit(ctx):
			if err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
		p := ledgerPos(txn.Pos)
		if err := ev.SetConsistentPoint(ctx, &p); err != nil {
			return err
		}
		done = txn.Pos
	}
}

// end

// begin: the Process written with logical.Transactions

type ledger struct{ ledgerSource }

func (d *ledger) Process(ctx context.Context, ch <-chan logical.Message, ev logical.Events) error {
	return logical.Transactions{Decode: func(_ context.Context, msg logical.Message) (logical.Txn, error) {
		txn := msg.(ledgerTxn)
		data := map[logical.Table][]logical.Mutation{}
		for _, r := range txn.Rows {
			t := logical.Table{Schema: ev.GetTargetDB(), Name: r.Table}
			data[t] = append(data[t], r.mutation())
		}
		p := ledgerPos(txn.Pos)
		return logical.Txn{Stamp: &p, Data: data}, nil
	}}.Process(ctx, ch, ev)
}

// end

var (
	_ logical.Dialect = (*rawLedger)(nil)
	_ logical.Dialect = (*ledger)(nil)
)

// codeLines counts the lines of code (not blank, not only a comment) in
// the section of txn_test.go that starts with "// begin: "+what.
func codeLines(t *testing.T, what string) int {
	t.Helper()
	n := 0
	for _, line := range strings.Split(between(t, "txn_test.go", "// begin: "+what, "// end"), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "//") {
			n++
		}
	}
	return n
}

// TestTransactionsHalvesADialect shows the same ledger dialect twice, with
// a hand-written Process and with logical.Transactions: both pass the
// conformance kit, and the second is at most half the library-facing
// lines of the first (reader included).
func TestTransactionsHalvesADialect(t *testing.T) {
	reader := codeLines(t, "the reader")
	raw := reader + codeLines(t, "the Process written against the raw interface")
	helped := reader + codeLines(t, "the Process written with logical.Transactions")
	t.Logf("library-facing lines: %d with a hand-written Process, %d with logical.Transactions (the reader is %d of each)", raw, helped, reader)
	assert.LessOrEqual(t, 2*helped, raw, "the dialect with logical.Transactions must be at most half the lines of the hand-written one")

	t.Run("hand-written", func(t *testing.T) {
		logicaltest.RunDialect(t, func(logicaltest.TB) logical.Dialect { return &rawLedger{ledgerSource{n: 24}} })
	})
	t.Run("with Transactions", func(t *testing.T) {
		logicaltest.RunDialect(t, func(logicaltest.TB) logical.Dialect { return &ledger{ledgerSource{n: 24}} })
	})
	t.Run("both write the same rows in a loop", func(t *testing.T) {
		var counts [2][2]int
		for i, d := range []logical.Dialect{&rawLedger{ledgerSource{n: 24}}, &ledger{ledgerSource{n: 24}}} {
			target := logicaltest.NewRecorder()
			l := startLoop(t, fastConfig(t, target), &logical.LoopConfig{Dialect: d, LoopName: "ledger", TargetSchema: "s"})
			waitForPoint(t, l, func(s logical.Stamp) bool { return *s.(*ledgerPos) == 23 })
			l.Stop(0)
			waitStopped(t, l)
			counts[i] = [2]int{target.Count(logical.Table{Schema: "s", Name: "accounts"}), target.Count(logical.Table{Schema: "s", Name: "entries"})}
		}
		assert.Equal(t, [2]int{4, 16}, counts[0], "accounts and entries after 24 transactions, 8 of which deleted an entry")
		assert.Equal(t, counts[0], counts[1])
	})
}

// waitForPoint waits until the loop's point satisfies ok.
func waitForPoint(t *testing.T, l *logical.Loop, ok func(logical.Stamp) bool) {
	t.Helper()
	deadline := time.NewTimer(waitLong)
	defer deadline.Stop()
	for {
		cp, changed := l.GetConsistentPoint()
		if ok(cp) {
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("consistent point stuck at %v", cp)
		}
	}
}

// txnEvents is a fake Events that records what Transactions does.
type txnEvents struct {
	logical.Events // nil: only the methods below are used
	cp             logical.Stamp
	stopping       chan struct{}
	log            []string
}

func (e *txnEvents) GetConsistentPoint() (logical.Stamp, <-chan struct{}) { return e.cp, nil }
func (e *txnEvents) GetTargetDB() string                                  { return "s" }
func (e *txnEvents) Stopping() <-chan struct{}                            { return e.stopping }
func (e *txnEvents) SetConsistentPoint(_ context.Context, cp logical.Stamp) error {
	e.log = append(e.log, fmt.Sprint("point ", *cp.(*ledgerPos)))
	e.cp = cp
	return nil
}
func (e *txnEvents) OnBegin(context.Context) (logical.Batch, error) {
	e.log = append(e.log, "begin")
	return txnBatch{e}, nil
}

type txnBatch struct{ e *txnEvents }

func (b txnBatch) Flush(context.Context) error { return nil }
func (b txnBatch) OnData(_ context.Context, source string, t logical.Table, muts []logical.Mutation) error {
	b.e.log = append(b.e.log, fmt.Sprintf("data %s from %s: %d", t, source, len(muts)))
	return nil
}
func (b txnBatch) OnCommit(context.Context) <-chan error {
	b.e.log = append(b.e.log, "commit")
	ch := make(chan error, 1)
	ch <- nil
	close(ch)
	return ch
}
func (b txnBatch) OnRollback(context.Context) error {
	b.e.log = append(b.e.log, "rollback")
	return nil
}

// runTransactions runs p over msgs and a closed channel.
func runTransactions(p logical.Transactions, msgs ...logical.Message) (*txnEvents, error) {
	zero := ledgerPos(-1)
	ev := &txnEvents{cp: &zero, stopping: make(chan struct{})}
	ch := make(chan logical.Message, len(msgs))
	for _, m := range msgs {
		ch <- m
	}
	close(ch)
	return ev, p.Process(context.Background(), ch, ev)
}

func TestTransactions(t *testing.T) {
	pos := func(i int) *ledgerPos { p := ledgerPos(i); return &p }
	row := func(k int) []logical.Mutation {
		return []logical.Mutation{{Key: json.RawMessage(fmt.Sprintf("[%d]", k)), Data: json.RawMessage(`{}`)}}
	}
	a, b := logical.Table{Schema: "s", Name: "a"}, logical.Table{Schema: "s", Name: "b"}

	t.Run("one batch per transaction, tables in order, then the point", func(t *testing.T) {
		ev, err := runTransactions(logical.Transactions{Decode: func(_ context.Context, m logical.Message) (logical.Txn, error) {
			return m.(logical.Txn), nil
		}},
			logical.Txn{Stamp: pos(0), Data: map[logical.Table][]logical.Mutation{b: row(1), a: row(2)}},
			logical.Txn{Stamp: pos(1), Data: map[logical.Table][]logical.Mutation{a: row(3)}, Source: "src"},
		)
		require.NoError(t, err)
		assert.Equal(t, []string{
			"begin", "data s.a from a: 1", "data s.b from b: 1", "commit", "point 0",
			"begin", "data s.a from src: 1", "commit", "point 1",
		}, ev.log)
	})

	t.Run("replays, empty and stampless transactions", func(t *testing.T) {
		ev, err := runTransactions(logical.Transactions{Decode: func(_ context.Context, m logical.Message) (logical.Txn, error) {
			return m.(logical.Txn), nil
		}},
			logical.Txn{Stamp: pos(0), Data: map[logical.Table][]logical.Mutation{a: row(1)}},
			logical.Txn{Stamp: pos(0), Data: map[logical.Table][]logical.Mutation{a: row(1)}}, // sent again
			logical.Txn{Data: map[logical.Table][]logical.Mutation{a: row(9)}},                // no stamp: skipped
			logical.Txn{Stamp: pos(1)}, // a heartbeat
		)
		require.NoError(t, err)
		assert.Equal(t, []string{"begin", "data s.a from a: 1", "commit", "point 0", "point 1"}, ev.log)
	})

	t.Run("a source failure calls Reset", func(t *testing.T) {
		d := &resetLedger{ledger: ledger{ledgerSource{n: 10}}, resets: make(chan struct{}, 1)}
		l := startLoop(t, fastConfig(t, logicaltest.NewRecorder()), &logical.LoopConfig{Dialect: d, LoopName: "reset", TargetSchema: "s"})
		waitForPoint(t, l, func(s logical.Stamp) bool { return *s.(*ledgerPos) == 9 })
		l.Stop(0)
		waitStopped(t, l)
		select {
		case <-d.resets:
		default:
			t.Fatal("Reset was not called after the source failed")
		}
	})

	t.Run("a decode error ends Process", func(t *testing.T) {
		bad := errors.New("bad message")
		_, err := runTransactions(logical.Transactions{Decode: func(context.Context, logical.Message) (logical.Txn, error) {
			return logical.Txn{}, bad
		}}, 1)
		require.ErrorIs(t, err, bad)
		assert.Contains(t, err.Error(), "Transactions.Decode of a int")
	})

	t.Run("Decode is required", func(t *testing.T) {
		_, err := runTransactions(logical.Transactions{})
		assert.ErrorContains(t, err, "Transactions.Decode is nil")
	})

	t.Run("Stopping ends Process with nil while the channel stays open", func(t *testing.T) {
		zero := ledgerPos(-1)
		ev := &txnEvents{cp: &zero, stopping: make(chan struct{})}
		close(ev.stopping)
		err := logical.Transactions{Decode: func(context.Context, logical.Message) (logical.Txn, error) {
			return logical.Txn{}, nil
		}}.Process(context.Background(), make(chan logical.Message), ev)
		assert.NoError(t, err)
	})
}

// resetLedger is a ledger whose first ReadInto fails and whose Process
// reports calls of Reset.
type resetLedger struct {
	ledger
	failed atomic.Bool
	resets chan struct{}
}

func (d *resetLedger) ReadInto(ctx context.Context, ch chan<- logical.Message, st logical.State) error {
	if !d.failed.Swap(true) {
		return errors.New("the first read fails")
	}
	return d.ledger.ReadInto(ctx, ch, st)
}

func (d *resetLedger) Process(ctx context.Context, ch <-chan logical.Message, ev logical.Events) error {
	return logical.Transactions{
		Decode: func(_ context.Context, msg logical.Message) (logical.Txn, error) {
			txn := msg.(ledgerTxn)
			p := ledgerPos(txn.Pos)
			return logical.Txn{Stamp: &p, Data: map[logical.Table][]logical.Mutation{{Schema: "s", Name: "entries"}: {txn.Rows[1].mutation()}}}, nil
		},
		Reset: func() {
			select {
			case d.resets <- struct{}{}:
			default:
			}
		},
	}.Process(ctx, ch, ev)
}

// emptyBatches commits one empty batch per ledger transaction.
type emptyBatches struct{ ledgerSource }

func (d *emptyBatches) Process(ctx context.Context, ch <-chan logical.Message, ev logical.Events) error {
	for {
		select {
		case msg, ok := <-ch:
			if !ok {
				return nil
			}
			txn, isTxn := msg.(ledgerTxn)
			if !isTxn {
				continue
			}
			b, err := ev.OnBegin(ctx)
			if err != nil {
				return err
			}
			if err := b.OnData(ctx, "none", logical.Table{Schema: "s", Name: "entries"}, nil); err != nil {
				return err
			}
			if err := <-b.OnCommit(ctx); err != nil {
				return err
			}
			p := ledgerPos(txn.Pos)
			if err := ev.SetConsistentPoint(ctx, &p); err != nil {
				return err
			}
		case <-ev.Stopping():
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// TestEmptyBatch backs the Batch doc: a batch without mutations commits
// in every mode.
func TestEmptyBatch(t *testing.T) {
	for _, mode := range []string{"serial", "immediate", "foreign keys"} {
		t.Run(mode, func(t *testing.T) {
			target := logicaltest.NewRecorder()
			if mode == "foreign keys" {
				target.Chain(logical.Table{Schema: "s", Name: "accounts"}, logical.Table{Schema: "s", Name: "entries"})
			}
			cfg := fastConfig(t, target)
			cfg.Immediate = mode == "immediate"
			cfg.ForeignKeys = mode == "foreign keys"
			l := startLoop(t, cfg, &logical.LoopConfig{Dialect: &emptyBatches{ledgerSource{n: 5}}, LoopName: "empty", TargetSchema: "s"})
			waitForPoint(t, l, func(s logical.Stamp) bool { return *s.(*ledgerPos) == 4 })
			assert.Equal(t, uint64(5), l.Stats().CommitsOK)
		})
	}
}
