package logical

import (
	"context"
	"sync"
	"testing"

	"github.com/pkg/errors"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// chainTarget is a MemoryTarget whose transactions are ChainTxs: a
// background commit waits for a value on gate, and the next transaction
// of a chain commits nothing if the one before it failed.
type chainTarget struct {
	*MemoryTarget
	gate chan struct{}

	mu        sync.Mutex
	begins    int
	rollbacks int
	fail      error // the next commit fails with it
}

func newChainTarget() *chainTarget {
	return &chainTarget{MemoryTarget: NewMemoryTarget(), gate: make(chan struct{}, 8)}
}

func (t *chainTarget) Begin(ctx context.Context) (TargetTx, error) {
	t.mu.Lock()
	t.begins++
	t.mu.Unlock()
	tx, err := t.MemoryTarget.Begin(ctx)
	if err != nil {
		return nil, err
	}
	return &chainTx{TargetTx: tx, t: t}, nil
}

type chainTx struct {
	TargetTx
	t    *chainTarget
	prev <-chan error // the result of the transaction before it in its chain
}

// waitPrev is the error of the transaction before x, if that failed.
func (x *chainTx) waitPrev() error {
	if x.prev == nil {
		return nil
	}
	if err := <-x.prev; err != nil {
		return errors.Wrap(err, "the transaction before failed")
	}
	return nil
}

func (x *chainTx) Commit(ctx context.Context) error {
	if err := x.waitPrev(); err != nil {
		_ = x.TargetTx.Rollback(ctx)
		return err
	}
	x.t.mu.Lock()
	err := x.t.fail
	x.t.fail = nil
	x.t.mu.Unlock()
	if err != nil {
		_ = x.TargetTx.Rollback(ctx)
		return err
	}
	return x.TargetTx.Commit(ctx)
}

func (x *chainTx) Rollback(ctx context.Context) error {
	_ = x.waitPrev()
	x.t.mu.Lock()
	x.t.rollbacks++
	x.t.mu.Unlock()
	return x.TargetTx.Rollback(ctx)
}

func (x *chainTx) CommitChain(ctx context.Context) (TargetTx, <-chan error) {
	result := make(chan error, 1)
	link := make(chan error, 1)
	go func() {
		<-x.t.gate
		err := x.Commit(ctx)
		link <- err
		result <- err
	}()
	tx, _ := x.t.MemoryTarget.Begin(ctx)
	return &chainTx{TargetTx: tx, t: x.t, prev: link}, result
}

var _ ChainTx = (*chainTx)(nil)

// newChainGroup is a groupBatcher over serial events with metrics (both
// chain) into a chainTarget.
func newChainGroup() (*groupBatcher, *chainTarget) {
	target := newChainTarget()
	inner := &metricsBatcher{inner: &serialEvents{target: target}, stats: &statsKeeper{}}
	return newGroupBatcher(inner, &Config{GroupMax: 100, BytesInFlight: DefaultBytesInFlight}, false), target
}

func TestGroupCommitsInTheBackgroundOverAChainTx(t *testing.T) {
	ctx := context.Background()
	g, target := newChainGroup()
	b, err := g.OnBeginGrouped(ctx)
	require.NoError(t, err)
	sourceTxn(t, ctx, b, 1)
	r1 := b.OnCommit(ctx)
	// The commit waits for the gate: StartCommitGroup must not.
	require.NoError(t, g.StartCommitGroup(ctx))
	assert.Zero(t, len(r1), "the result arrives with the commit")

	// The next group is read meanwhile, in the transaction that follows
	// on the same session.
	b, err = g.OnBeginGrouped(ctx)
	require.NoError(t, err)
	sourceTxn(t, ctx, b, 2)
	r2 := b.OnCommit(ctx)
	assert.Equal(t, 1, target.begins, "the next group uses the chained transaction")

	target.gate <- struct{}{}
	require.NoError(t, <-r1)
	assert.Equal(t, 1, target.Count(groupTables[0]))
	target.gate <- struct{}{}
	require.NoError(t, g.CommitGroup(ctx), "CommitGroup waits for its background commit")
	require.NoError(t, <-r2)
	for _, table := range groupTables {
		assert.Equal(t, 2, target.Count(table))
	}

	// A plain batch follows on the session too, after the groups.
	b, err = g.OnBeginGrouped(ctx)
	require.NoError(t, err)
	sourceTxn(t, ctx, b, 3)
	r3 := b.OnCommit(ctx)
	require.NoError(t, g.StartCommitGroup(ctx))
	target.gate <- struct{}{}
	plain, err := g.OnBegin(ctx)
	require.NoError(t, err)
	select {
	case err := <-r3:
		require.NoError(t, err)
	default:
		t.Fatal("OnBegin returned before the group committing in the background delivered its result")
	}
	sourceTxn(t, ctx, plain, 4)
	require.NoError(t, <-plain.OnCommit(ctx))
	assert.Equal(t, 1, target.begins)
	assert.Equal(t, 4, target.Count(groupTables[2]))
	g.abandon(ctx)
	assert.Zero(t, target.rollbacks, "no spare transaction was left")
}

func TestGroupAfterAFailedBackgroundCommitFails(t *testing.T) {
	ctx := context.Background()
	g, target := newChainGroup()
	target.fail = errors.New("commit refused")
	b, err := g.OnBeginGrouped(ctx)
	require.NoError(t, err)
	sourceTxn(t, ctx, b, 1)
	r1 := b.OnCommit(ctx)
	require.NoError(t, g.StartCommitGroup(ctx))
	b, err = g.OnBeginGrouped(ctx)
	require.NoError(t, err)
	sourceTxn(t, ctx, b, 2)
	r2 := b.OnCommit(ctx)
	target.gate <- struct{}{}
	target.gate <- struct{}{}
	assert.Error(t, g.CommitGroup(ctx))
	assert.ErrorContains(t, <-r1, "commit refused")
	assert.ErrorContains(t, <-r2, "the transaction before failed")
	for _, table := range groupTables {
		assert.Zero(t, target.Count(table), "nothing of either group was applied")
	}
	g.abandon(ctx)
	assert.Equal(t, 1, target.rollbacks, "abandon ends the spare transaction")
}
