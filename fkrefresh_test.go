package logical_test

import (
	"context"
	"encoding/json"
	"sync/atomic"
	"testing"
	"time"

	"github.com/logical-go/logical"
	"github.com/logical-go/logical/logicaltest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// newTableDialect writes one row into a table that the target's
// foreign-key order did not have when the loop started (a table created
// meanwhile, as a snapshot of a new table does).
type newTableDialect struct {
	table     logical.Table
	processes atomic.Int32
	failed    chan struct{} // closed after the first Process failed
	done      chan struct{} // closed once the row is committed
}

func (d *newTableDialect) ZeroStamp() logical.Stamp { return &logicaltest.Stamp{} }

func (d *newTableDialect) ReadInto(ctx context.Context, ch chan<- logical.Message, state logical.State) error {
	select {
	case ch <- "row":
	case <-state.Stopping():
		return nil
	case <-ctx.Done():
		return nil
	}
	select {
	case <-state.Stopping():
	case <-ctx.Done():
	}
	return nil
}

func (d *newTableDialect) Process(ctx context.Context, ch <-chan logical.Message, events logical.Events) error {
	n := d.processes.Add(1)
	for {
		select {
		case <-ch:
		case <-events.Stopping():
			return nil
		}
		b, err := events.OnBegin(ctx)
		if err != nil {
			return err
		}
		mut := logical.Mutation{Key: json.RawMessage(`[1]`), Data: json.RawMessage(`{"k":1}`)}
		if err := b.OnData(ctx, "", d.table, []logical.Mutation{mut}); err != nil {
			_ = b.OnRollback(ctx)
			if n == 1 {
				close(d.failed)
			}
			return err
		}
		if err := <-b.OnCommit(ctx); err != nil {
			return err
		}
		close(d.done)
	}
}

// TestForeignKeyOrderRefresh: a table missing from the foreign-key order
// fails the iteration, and the next one reads the order again, so a table
// created at the target while the loop runs is replicated without a
// restart of the Factory.
func TestForeignKeyOrderRefresh(t *testing.T) {
	target := logical.NewMemoryTarget()
	parent := logical.Table{Schema: "s", Name: "parent"}
	child := logical.Table{Schema: "s", Name: "child"}
	target.SetOrder([][]logical.Table{{parent}})
	cfg := fastConfig(t, target)
	cfg.ForeignKeys = true
	d := &newTableDialect{table: child, failed: make(chan struct{}), done: make(chan struct{})}
	l := startLoop(t, cfg, &logical.LoopConfig{Dialect: d, LoopName: "fk", TargetSchema: "s"})
	select {
	case <-d.failed:
	case <-time.After(time.Minute):
		t.Fatal("the row of the unknown table did not fail")
	}
	target.SetOrder([][]logical.Table{{parent}, {child}})
	select {
	case <-d.done:
	case <-time.After(time.Minute):
		t.Fatal("the row was not replicated after the order changed")
	}
	_, ok := target.Get(child, "[1]")
	require.True(t, ok)
	assert.GreaterOrEqual(t, d.processes.Load(), int32(2))
	l.Stop(time.Second)
}
