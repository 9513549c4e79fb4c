package logical

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// seqTarget records, per key, the highest sequence number applied, and
// every time a key's sequence went backwards. Apply pauses for a random
// time, so that the shards finish out of order.
type seqTarget struct {
	MemoryTarget
	jitter time.Duration
	floor  time.Duration // every Apply pauses at least this long

	mu       sync.Mutex
	last     map[string]int
	reversed []string
}

func (t *seqTarget) Apply(ctx context.Context, table Table, muts []Mutation) error {
	if t.jitter > 0 {
		timer := time.NewTimer(t.floor + rand.N(t.jitter))
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, m := range muts {
		var row struct{ Seq int }
		if err := json.Unmarshal(m.Data, &row); err != nil {
			return err
		}
		k := table.String() + string(m.Key)
		if row.Seq <= t.last[k] {
			t.reversed = append(t.reversed, fmt.Sprintf("%s: %d after %d", k, row.Seq, t.last[k]))
		}
		t.last[k] = row.Seq
	}
	return nil
}

func (t *seqTarget) applied(table Table, key string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.last[table.String()+key]
}

// multiSeqTarget is a seqTarget that is a MultiApplier: fan mode then
// applies the small lanes of several tables in one call.
type multiSeqTarget struct {
	*seqTarget
	calls, tables atomic.Int64
}

func (t *multiSeqTarget) ApplyMulti(ctx context.Context, parts []TableMutations) error {
	t.calls.Add(1)
	t.tables.Add(int64(len(parts)))
	seen := make(map[Table]bool)
	for _, p := range parts {
		if seen[p.Table] || len(p.Mutations) == 0 {
			return fmt.Errorf("ApplyMulti: table %s twice, or without mutations", p.Table)
		}
		seen[p.Table] = true
		if err := t.seqTarget.Apply(ctx, p.Table, p.Mutations); err != nil {
			return err
		}
	}
	return nil
}

// TestFanGroupsResultAfterApply drives fan groups the way pglogical does,
// with groups committed without waiting and a slow, jittered target over
// four shards: each batch's result must arrive only once its mutations are
// applied (so a point moved over results in order never passes unapplied
// data), and mutations of one key must be applied in order across groups.
// With a MultiApplier target too, whose calls take the lanes of several
// tables along.
func TestFanGroupsResultAfterApply(t *testing.T) {
	t.Run("apply", func(t *testing.T) {
		testFanGroupsResultAfterApply(t, false)
	})
	t.Run("applyMulti", func(t *testing.T) {
		testFanGroupsResultAfterApply(t, true)
	})
}

func testFanGroupsResultAfterApply(t *testing.T, multi bool) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	target := &seqTarget{jitter: 300 * time.Microsecond, last: make(map[string]int)}
	var tgt Target = target
	var mt *multiSeqTarget
	if multi {
		// Slow applies, as fan mode takes lanes along only then.
		target.floor = 100 * time.Microsecond
		mt = &multiSeqTarget{seqTarget: target}
		tgt = mt
	}
	cfg := &Config{Target: tgt, FanShards: 4, GroupMax: 5}
	require.NoError(t, cfg.Preflight())
	fe := newFanEvents(ctx, cfg, nil)
	defer fe.close()
	g := newGroupBatcher(fe, cfg, true)
	tables := []Table{{"s", "a"}, {"s", "b"}}

	type inflight struct {
		result <-chan error
		wrote  map[string]int // "table key" -> seq
		table  map[string]Table
	}
	var queue []inflight
	check := func(f inflight) {
		err := recvWithin(t, f.result, "a batch's result")
		require.NoError(t, err)
		for k, seq := range f.wrote {
			key := k[len(f.table[k].String()):]
			assert.GreaterOrEqual(t, target.applied(f.table[k], key), seq, "result before %s of seq %d was applied", k, seq)
		}
	}
	seq := 0
	sawPending := false
	// Taking lanes along depends on timing (which lanes are ready when a
	// worker picks one): with a MultiApplier the test goes on past 300
	// batches until ApplyMulti was called, within a bound.
	for batch := 0; batch < 300 || mt != nil && mt.calls.Load() == 0 && batch < 10000; batch++ {
		b, err := g.OnBeginGrouped(ctx)
		require.NoError(t, err)
		f := inflight{wrote: map[string]int{}, table: map[string]Table{}}
		for range 1 + rand.IntN(4) {
			seq++
			table := tables[rand.IntN(len(tables))]
			key := fmt.Sprintf("[%d]", rand.IntN(20)) // few keys: every key is written by many groups
			m := Mutation{Key: json.RawMessage(key), Data: json.RawMessage(fmt.Sprintf(`{"seq":%d}`, seq))}
			require.NoError(t, b.OnData(ctx, "src", table, []Mutation{m}))
			f.wrote[table.String()+key] = seq
			f.table[table.String()+key] = table
		}
		f.result = b.OnCommit(ctx)
		queue = append(queue, f)
		if batch%7 == 3 {
			require.NoError(t, g.CommitGroup(ctx)) // as a dialect with nothing to read
			if len(queue[len(queue)-1].result) == 0 {
				sawPending = true // committed, not applied yet
			}
		}
		// Settle what has arrived, in order, as pglogical does.
		for len(queue) > 0 && len(queue[0].result) > 0 {
			check(queue[0])
			queue = queue[1:]
		}
	}
	require.NoError(t, g.CommitGroup(ctx))
	for _, f := range queue {
		check(f)
	}
	assert.True(t, sawPending, "CommitGroup returned before its group was applied at least once")
	if mt != nil {
		assert.Positive(t, mt.calls.Load(), "ApplyMulti was never called")
		assert.GreaterOrEqual(t, mt.tables.Load(), 2*mt.calls.Load(), "ApplyMulti calls of fewer than 2 tables")
	}
	target.mu.Lock()
	defer target.mu.Unlock()
	assert.Empty(t, target.reversed, "a key's mutations were applied out of order")
}

// TestFanGroupStoppedQueue checks that a group committed without waiting
// gets an error, not silence, when the queue closes before it is applied.
func TestFanGroupStoppedQueue(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	gate := make(chan struct{})
	target := &gatedTarget{gate: gate, started: make(chan struct{})}
	cfg := &Config{Target: target, FanShards: 1}
	require.NoError(t, cfg.Preflight())
	fe := newFanEvents(ctx, cfg, nil)
	g := newGroupBatcher(fe, cfg, true)

	b, err := g.OnBeginGrouped(ctx)
	require.NoError(t, err)
	require.NoError(t, b.OnData(ctx, "src", Table{"s", "a"}, []Mutation{{Key: json.RawMessage("[1]"), Data: json.RawMessage(`{}`)}}))
	first := b.OnCommit(ctx)
	require.NoError(t, g.CommitGroup(ctx))
	recvWithin(t, target.started, "the first apply")

	b, err = g.OnBeginGrouped(ctx)
	require.NoError(t, err)
	require.NoError(t, b.OnData(ctx, "src", Table{"s", "b"}, []Mutation{{Key: json.RawMessage("[1]"), Data: json.RawMessage(`{}`)}}))
	second := b.OnCommit(ctx)
	require.NoError(t, g.CommitGroup(ctx))

	cancel() // the first apply ends with the context; the worker then sees the close
	fe.close()
	close(gate)
	assert.Error(t, recvWithin(t, first, "the first group's result"))
	assert.Error(t, recvWithin(t, second, "the second group's result"), "the second group was never applied")
}

// recvWithin receives from ch, failing t after a minute.
func recvWithin[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(time.Minute):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// gatedTarget blocks every Apply until gate closes or ctx ends.
type gatedTarget struct {
	MemoryTarget
	gate    chan struct{}
	once    sync.Once
	started chan struct{} // closed at the first Apply
}

func (t *gatedTarget) Apply(ctx context.Context, _ Table, _ []Mutation) error {
	t.once.Do(func() { close(t.started) })
	select {
	case <-t.gate:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
