package logical_test

import (
	"context"
	"strings"
	"testing"

	"github.com/logical-go/logical"
	"github.com/logical-go/logical/logicaltest"
	"github.com/stretchr/testify/assert"
)

// rowLedger sends the ledger one row per message, so that a transaction
// spans messages and needs the hand-written Process of the package
// overview, which is the Process below, verbatim.
type rowLedger struct{ ledgerSource }

// ledgerRecord is one row of a transaction; Last marks its end.
type ledgerRecord struct {
	Pos  int // the transaction's position
	Row  ledgerRow
	Last bool
}

var _ logical.Dialect = (*rowLedger)(nil)

func (d *rowLedger) ReadInto(ctx context.Context, ch chan<- logical.Message, st logical.State) error {
	cp, _ := st.GetConsistentPoint()
	for i := int(*cp.(*ledgerPos)) + 1; ; i++ {
		var recs []logical.Message
		if i < d.n {
			txn := ledgerAt(i)
			for j, r := range txn.Rows {
				recs = append(recs, ledgerRecord{Pos: i, Row: r, Last: j == len(txn.Rows)-1})
			}
		}
		if len(recs) == 0 {
			select { // the end of the source
			case <-st.Stopping():
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		for _, m := range recs {
			select {
			case ch <- m:
			case <-st.Stopping():
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
}

// decode returns what Process needs of a message.
func (d *rowLedger) decode(msg logical.Message, schema string) (rec struct {
	stamp  logical.Stamp
	source string
	table  logical.Table
	muts   []logical.Mutation
	last   bool
}) {
	r := msg.(ledgerRecord)
	p := ledgerPos(r.Pos)
	rec.stamp, rec.source, rec.last = &p, r.Row.Table, r.Last
	rec.table = logical.Table{Schema: schema, Name: r.Row.Table}
	rec.muts = []logical.Mutation{r.Row.mutation()}
	return rec
}

// doc.go begin

func (d *rowLedger) Process(ctx context.Context, ch <-chan logical.Message, ev logical.Events) error {
	done, _ := ev.GetConsistentPoint() // only this Process moves the point
	var batch logical.Batch            // open while a source transaction is
	drop := func() {
		if batch != nil {
			_ = batch.OnRollback(ctx)
			batch = nil
		}
	}
	defer drop()
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
			return nil // the source stopped for good; a partial transaction is dropped
		}
		if logical.IsRollback(msg) {
			drop() // the source restarts from the consistent point
			continue
		}
		rec := d.decode(msg, ev.GetTargetDB())
		if logical.Compare(rec.stamp, done) <= 0 {
			continue // sent again by a restarted source: committed already
		}
		if batch == nil {
			var err error
			if batch, err = ev.OnBegin(ctx); err != nil {
				return err
			}
		}
		if err := batch.OnData(ctx, rec.source, rec.table, rec.muts); err != nil {
			return err
		}
		if !rec.last {
			continue
		}
		err := <-batch.OnCommit(ctx)
		batch = nil
		if err != nil {
			return err
		}
		if err := ev.SetConsistentPoint(ctx, rec.stamp); err != nil { // a new stamp each time
			return err
		}
		done = rec.stamp
	}
}

// doc.go end

// TestDocProcess keeps the package overview's hand-written Process
// identical to rowLedger's, and runs the conformance kit on it.
func TestDocProcess(t *testing.T) {
	code := between(t, "doc_test.go", "// doc.go begin", "// doc.go end")
	doc := between(t, "doc.go", "// # A hand-written Process", "// # ")
	var lines []string
	for _, line := range strings.Split(doc, "\n") {
		if strings.HasPrefix(line, "//\t") {
			lines = append(lines, strings.TrimPrefix(line, "//\t"))
		} else if line == "//" && len(lines) > 0 {
			lines = append(lines, "")
		}
	}
	assert.Equal(t, code, strings.TrimSpace(strings.Join(lines, "\n")), "doc.go's hand-written Process must be rowLedger.Process in doc_test.go, verbatim")

	ft := logicaltest.Conformance{NewDialect: func(logicaltest.TB) logical.Dialect { return &rowLedger{ledgerSource{n: 10}} }}
	ft.Run(t)
}
