package logical_test

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/logical-go/logical"
)

// README begin: the README's "A dialect in 30 lines" is this, verbatim.

type counter int // the stamp: a position in the source

func (c *counter) Less(o logical.Stamp) bool { return *c < *o.(*counter) }

type words struct{ list []string }

func (d *words) ZeroStamp() logical.Stamp { c := counter(-1); return &c }

func (d *words) ReadInto(ctx context.Context, ch chan<- logical.Message, st logical.State) error {
	cp, _ := st.GetConsistentPoint() // start just after what is persisted
	for i := int(*cp.(*counter)) + 1; i <= len(d.list); i++ {
		if i == len(d.list) {
			ch = nil // the end of the source: wait for a stop, do not return
		}
		select {
		case ch <- i:
		case <-st.Stopping():
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func (d *words) Process(ctx context.Context, ch <-chan logical.Message, ev logical.Events) error {
	tbl := logical.Table{Schema: ev.GetTargetDB(), Name: "words"}
	return logical.Transactions{Decode: func(_ context.Context, msg logical.Message) (logical.Txn, error) {
		i := msg.(int) // one message, one source transaction
		row, _ := json.Marshal(map[string]string{"word": d.list[i]})
		mut := logical.Mutation{Key: json.RawMessage(fmt.Sprintf("[%d]", i)), Data: row}
		c := counter(i) // the point once this transaction is committed
		return logical.Txn{Stamp: &c, Data: map[logical.Table][]logical.Mutation{tbl: {mut}}}, nil
	}}.Process(ctx, ch, ev) // skips replays, commits, then sets the point
}

// README end

func ExampleStart() {
	target := logical.NewMemoryTarget()
	loop, err := logical.Start(context.Background(),
		&logical.Config{Target: target},
		&logical.LoopConfig{Dialect: &words{list: []string{"alpha", "beta", "gamma"}}, LoopName: "words", TargetSchema: "demo"})
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

	tbl := logical.Table{Schema: "demo", Name: "words"}
	row, _ := target.Get(tbl, "[1]")
	fmt.Println(target.Count(tbl), string(row))
	// Output: 3 {"word":"beta"}
}
