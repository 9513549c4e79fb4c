package logical_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/logical-go/logical"
)

// counter is the stamp of the tiny example dialect: a position in a list.
type counter int

func (c *counter) Less(other logical.Stamp) bool { return *c < *other.(*counter) }

// listDialect replicates a fixed list of words, one transaction each.
type listDialect struct{ words []string }

func (d *listDialect) ZeroStamp() logical.Stamp { c := counter(-1); return &c }

// ReadInto sends the positions after the consistent point, then waits.
func (d *listDialect) ReadInto(ctx context.Context, ch chan<- logical.Message, state logical.State) error {
	cp, _ := state.GetConsistentPoint()
	for i := int(*cp.(*counter)) + 1; i < len(d.words); i++ {
		select {
		case ch <- i:
		case <-state.Stopping():
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	<-state.Stopping()
	return nil
}

// Process writes each word as one row and then moves the consistent point.
func (d *listDialect) Process(ctx context.Context, ch <-chan logical.Message, events logical.Events) error {
	table := logical.Table{Schema: events.GetTargetDB(), Name: "words"}
	for {
		var msg logical.Message
		select {
		case msg = <-ch:
		case <-events.Stopping():
			return nil
		}
		if msg == nil || logical.IsRollback(msg) {
			continue // nothing is held across messages, so nothing to undo
		}
		i := msg.(int)
		if cp, _ := events.GetConsistentPoint(); i <= int(*cp.(*counter)) {
			continue // sent again after a source restart
		}
		batch, err := events.OnBegin(ctx)
		if err != nil {
			return err
		}
		row, _ := json.Marshal(map[string]string{"word": d.words[i]})
		mut := logical.Mutation{Key: json.RawMessage("[" + strconv.Itoa(i) + "]"), Data: row}
		if err := batch.OnData(ctx, "words", table, []logical.Mutation{mut}); err != nil {
			_ = batch.OnRollback(ctx)
			return err
		}
		if err := <-batch.OnCommit(ctx); err != nil {
			return err
		}
		c := counter(i)
		if err := events.SetConsistentPoint(ctx, &c); err != nil {
			return err
		}
	}
}

func ExampleStart() {
	target := logical.NewMemoryTarget()
	dialect := &listDialect{words: []string{"alpha", "beta", "gamma"}}
	loop, err := logical.Start(context.Background(),
		&logical.Config{Target: target},
		&logical.LoopConfig{Dialect: dialect, LoopName: "words", TargetSchema: "demo"})
	if err != nil {
		fmt.Println(err)
		return
	}
	// Wait until the last word is committed.
	for {
		cp, changed := loop.GetConsistentPoint()
		if *cp.(*counter) == 2 {
			break
		}
		select {
		case <-changed:
		case <-time.After(time.Minute):
			fmt.Println("timed out")
			return
		}
	}
	loop.Stop(time.Second)
	<-loop.Stopped()

	row, _ := target.Get(logical.Table{Schema: "demo", Name: "words"}, "[1]")
	fmt.Println(target.Count(logical.Table{Schema: "demo", Name: "words"}), string(row))
	// Output: 3 {"word":"beta"}
}
