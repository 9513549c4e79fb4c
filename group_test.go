package logical

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// observedTarget is a MemoryTarget that checks an invariant after every
// commit of a target transaction and counts the Apply calls.
type observedTarget struct {
	*MemoryTarget
	check func() error

	mu      sync.Mutex
	commits int
	applies int
	errs    []error
}

func (t *observedTarget) Begin(ctx context.Context) (TargetTx, error) {
	tx, err := t.MemoryTarget.Begin(ctx)
	if err != nil {
		return nil, err
	}
	return &observedTx{TargetTx: tx, t: t}, nil
}

type observedTx struct {
	TargetTx
	t *observedTarget
}

func (x *observedTx) Apply(ctx context.Context, table Table, muts []Mutation) error {
	x.t.mu.Lock()
	x.t.applies++
	x.t.mu.Unlock()
	return x.TargetTx.Apply(ctx, table, muts)
}

func (x *observedTx) Commit(ctx context.Context) error {
	if err := x.TargetTx.Commit(ctx); err != nil {
		return err
	}
	x.t.mu.Lock()
	defer x.t.mu.Unlock()
	x.t.commits++
	if err := x.t.check(); err != nil {
		x.t.errs = append(x.t.errs, err)
	}
	return nil
}

var groupTables = []Table{{"s", "a"}, {"s", "b"}, {"s", "c"}}

// sourceTxn applies source transaction i: one row into each table, in
// separate OnData calls.
func sourceTxn(t *testing.T, ctx context.Context, b Batch, i int) {
	for _, table := range groupTables {
		m := Mutation{Key: json.RawMessage(fmt.Sprintf("[%d]", i)), Data: json.RawMessage(fmt.Sprintf(`{"id":%d}`, i))}
		require.NoError(t, b.OnData(ctx, "src", table, []Mutation{m}))
	}
}

// newObservedGroup returns a groupBatcher over serial events into an
// observed MemoryTarget whose invariant is that no source transaction is
// visible in part: every table has the same rows.
func newObservedGroup(max int) (*groupBatcher, *observedTarget) {
	mem := NewMemoryTarget()
	target := &observedTarget{MemoryTarget: mem}
	target.check = func() error {
		want := mem.Keys(groupTables[0])
		for _, table := range groupTables[1:] {
			if got := mem.Keys(table); fmt.Sprint(got) != fmt.Sprint(want) {
				return fmt.Errorf("after commit %d: %s has %v, %s has %v", target.commits, groupTables[0], want, table, got)
			}
		}
		return nil
	}
	cfg := &Config{GroupMax: max, BytesInFlight: DefaultBytesInFlight}
	return newGroupBatcher(&serialEvents{target: target}, cfg, false), target
}

func TestGroupCommitsWholeSourceTransactions(t *testing.T) {
	ctx := context.Background()
	g, target := newObservedGroup(7)
	var results []<-chan error
	const n = 50
	for i := range n {
		b, err := g.OnBeginGrouped(ctx)
		require.NoError(t, err)
		sourceTxn(t, ctx, b, i)
		results = append(results, b.OnCommit(ctx))
	}
	// Batches 0..48 went in groups of 7; the last one waits for
	// CommitGroup.
	select {
	case err := <-results[n-1]:
		t.Fatalf("the last batch's result (%v) arrived before its group committed", err)
	default:
	}
	require.NoError(t, g.CommitGroup(ctx))
	for i, ch := range results {
		assert.NoError(t, <-ch, "batch %d", i)
	}
	assert.Empty(t, target.errs, "a partial source transaction was visible")
	assert.Equal(t, (n+6)/7, target.commits, "one target commit per group")
	assert.Equal(t, 3*((n+6)/7), target.applies, "the rows of a group are merged: one Apply per table and group")
	for _, table := range groupTables {
		assert.Equal(t, n, target.Count(table))
	}
}

func TestGroupRollbackDropsTheWholeGroup(t *testing.T) {
	ctx := context.Background()
	g, target := newObservedGroup(100)
	var results []<-chan error
	for i := range 3 {
		b, err := g.OnBeginGrouped(ctx)
		require.NoError(t, err)
		sourceTxn(t, ctx, b, i)
		results = append(results, b.OnCommit(ctx))
	}
	b, err := g.OnBeginGrouped(ctx)
	require.NoError(t, err)
	sourceTxn(t, ctx, b, 3)
	assert.ErrorIs(t, g.CommitGroup(ctx), errGroupBusy, "a group cannot commit with an open batch")
	_, err = g.OnBeginGrouped(ctx)
	assert.ErrorIs(t, err, errGroupBusy, "one grouped batch at a time")

	require.NoError(t, b.OnRollback(ctx))
	for i, ch := range results {
		assert.ErrorIs(t, <-ch, ErrGroupRolledBack, "batch %d", i)
	}
	assert.ErrorIs(t, b.OnData(ctx, "src", groupTables[0], []Mutation{{Key: json.RawMessage("[9]")}}), ErrBatchEnded)
	assert.Zero(t, target.commits)
	for _, table := range groupTables {
		assert.Zero(t, target.Count(table), "nothing of the group was applied")
	}

	// The group is gone; the next one starts afresh.
	b, err = g.OnBeginGrouped(ctx)
	require.NoError(t, err)
	sourceTxn(t, ctx, b, 4)
	res := b.OnCommit(ctx)
	require.NoError(t, g.CommitGroup(ctx))
	require.NoError(t, <-res)
	assert.Equal(t, 1, target.Count(groupTables[0]))
	assert.Empty(t, target.errs)
}

func TestGroupPlainOnBeginCommitsTheGroupFirst(t *testing.T) {
	ctx := context.Background()
	g, target := newObservedGroup(100)
	b, err := g.OnBeginGrouped(ctx)
	require.NoError(t, err)
	sourceTxn(t, ctx, b, 1)
	res := b.OnCommit(ctx)
	plain, err := g.OnBegin(ctx)
	require.NoError(t, err)
	select {
	case err := <-res:
		require.NoError(t, err)
	default:
		t.Fatal("OnBegin did not commit the open group")
	}
	sourceTxn(t, ctx, plain, 2)
	require.NoError(t, <-plain.OnCommit(ctx))
	assert.Equal(t, 2, target.commits)
	assert.Empty(t, target.errs)
}

func TestGroupFlushHandsOverWhatIsHeld(t *testing.T) {
	ctx := context.Background()
	g, target := newObservedGroup(100)
	b, err := g.OnBeginGrouped(ctx)
	require.NoError(t, err)
	sourceTxn(t, ctx, b, 1)
	assert.Zero(t, target.applies, "rows are held to be merged")
	// A dialect flushes before something that must stay after the rows
	// so far (a truncate, say).
	require.NoError(t, b.Flush(ctx))
	assert.Equal(t, 3, target.applies, "Flush hands over every held table")
	res := b.OnCommit(ctx)
	require.NoError(t, g.CommitGroup(ctx))
	require.NoError(t, <-res)
	assert.Equal(t, 3, target.applies)
	assert.Equal(t, []string{"[1]"}, target.Keys(groupTables[2]))
}

func TestGroupAbandonRollsBack(t *testing.T) {
	ctx := context.Background()
	g, target := newObservedGroup(100)
	b, err := g.OnBeginGrouped(ctx)
	require.NoError(t, err)
	sourceTxn(t, ctx, b, 1)
	res := b.OnCommit(ctx)
	g.abandon(ctx)
	assert.ErrorIs(t, <-res, ErrGroupRolledBack)
	assert.Zero(t, target.commits)
	assert.NoError(t, g.CommitGroup(ctx), "nothing left to commit")
}

func TestGroupMaxValidated(t *testing.T) {
	cfg := &Config{Target: NewMemoryTarget(), GroupMax: -1}
	assert.ErrorContains(t, cfg.Preflight(), "Config.GroupMax")
	cfg.GroupMax = 0
	require.NoError(t, cfg.Preflight())
	assert.Equal(t, DefaultGroupMax, cfg.GroupMax)
}

// A dialect may hand over adjacent parts of one slice in separate OnData
// calls: the group must not append into the part it was given, which
// would overwrite what the next call handed over.
func TestGroupDoesNotWriteIntoTheCallersSlice(t *testing.T) {
	ctx := context.Background()
	g, target := newObservedGroup(100)
	target.check = func() error { return nil }
	b, err := g.OnBeginGrouped(ctx)
	require.NoError(t, err)
	all := make([]Mutation, 3)
	for i := range all {
		all[i] = Mutation{Key: json.RawMessage(fmt.Sprintf("[%d]", i+1)), Data: json.RawMessage(fmt.Sprintf(`{"id":%d}`, i+1))}
	}
	a, c := groupTables[0], groupTables[1]
	require.NoError(t, b.OnData(ctx, "src", a, all[0:1]))
	require.NoError(t, b.OnData(ctx, "src", c, all[1:2]))
	require.NoError(t, b.OnData(ctx, "src", a, all[2:3]))
	res := b.OnCommit(ctx)
	require.NoError(t, g.CommitGroup(ctx))
	require.NoError(t, <-res)
	assert.Equal(t, []string{"[1]", "[3]"}, target.Keys(a))
	assert.Equal(t, []string{"[2]"}, target.Keys(c), "the second table must keep its own row")
}

// A plain OnBegin while a grouped batch is open would start a second
// target transaction beside the group's, which can wait on the group's
// locks for good: it is refused.
func TestGroupPlainOnBeginWhileGroupedBatchOpen(t *testing.T) {
	ctx := context.Background()
	g, _ := newObservedGroup(100)
	b, err := g.OnBeginGrouped(ctx)
	require.NoError(t, err)
	sourceTxn(t, ctx, b, 1)
	_, err = g.OnBegin(ctx)
	require.ErrorIs(t, err, errGroupBusy)
	require.NoError(t, b.OnRollback(ctx))
}

// recordingBatcher is a Batcher whose batches record the size of every
// OnData call.
type recordingBatcher struct {
	mu    sync.Mutex
	sizes []int
}

func (r *recordingBatcher) OnBegin(context.Context) (Batch, error) { return &recordingBatch{r: r}, nil }

type recordingBatch struct{ r *recordingBatcher }

func (b *recordingBatch) OnData(_ context.Context, _ string, _ Table, muts []Mutation) error {
	b.r.mu.Lock()
	defer b.r.mu.Unlock()
	b.r.sizes = append(b.r.sizes, len(muts))
	return nil
}
func (b *recordingBatch) Flush(context.Context) error           { return nil }
func (b *recordingBatch) OnCommit(context.Context) <-chan error { return result1(nil) }
func (b *recordingBatch) OnRollback(context.Context) error      { return nil }

// TestGroupHandsOverByMode: a group hands a table's held mutations over
// once it holds groupFlushRows of them in serial mode (each hand-over is a
// statement at the target) and groupFlushRowsFan in fan mode (where the
// workers gather their own calls and the sooner they have rows the
// better); the rest goes at the group's commit.
func TestGroupHandsOverByMode(t *testing.T) {
	for _, tc := range []struct {
		name string
		fan  bool
		at   int
	}{{"serial", false, groupFlushRows}, {"fan", true, groupFlushRowsFan}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			inner := &recordingBatcher{}
			g := newGroupBatcher(inner, &Config{GroupMax: 1 << 20, BytesInFlight: DefaultBytesInFlight}, tc.fan)
			n := 2*tc.at + 7
			var results []<-chan error
			for i := range n {
				b, err := g.OnBeginGrouped(ctx)
				require.NoError(t, err)
				m := Mutation{Key: json.RawMessage(fmt.Sprintf("[%d]", i)), Data: json.RawMessage(`{}`)}
				require.NoError(t, b.OnData(ctx, "src", groupTables[0], []Mutation{m}))
				results = append(results, b.OnCommit(ctx))
			}
			require.NoError(t, g.CommitGroup(ctx))
			for _, r := range results {
				require.NoError(t, <-r)
			}
			assert.Equal(t, []int{tc.at, tc.at, 7}, inner.sizes)
		})
	}
}
