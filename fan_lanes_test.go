package logical_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/logical-go/logical"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// sharderTarget is a funcTarget that is a logical.Sharder for the tables
// in one, and counts the OneShard calls per table.
type sharderTarget struct {
	funcTarget
	one map[logical.Table]bool

	mu    sync.Mutex
	asked map[logical.Table]int
}

var _ logical.Sharder = (*sharderTarget)(nil)

func (s *sharderTarget) OneShard(_ context.Context, table logical.Table) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.asked[table]++
	return s.one[table], nil
}

// TestFanOneShardTables writes tables of three kinds through fan mode
// with eight shards and a jittered target, in many batches: one the
// Target (a Sharder) wants on one shard, one whose mutations carry
// MetaNoKey from the 30th batch on, and one spread by key. The first two
// must be applied in the order given across all keys (the second from the
// first marked mutation on), the third in each key's order; the Target is
// asked once per table.
func TestFanOneShardTables(t *testing.T) {
	sharded := logical.Table{Schema: "s", Name: "sharded"}
	nokey := logical.Table{Schema: "s", Name: "nokey"}
	spread := logical.Table{Schema: "s", Name: "spread"}
	const markedFrom = 30 // the first batch whose mutations of nokey are marked

	var mu sync.Mutex
	lastSeq := map[logical.Table]int{}
	lastKeySeq := map[string]int{}
	var reversed []string
	target := &sharderTarget{one: map[logical.Table]bool{sharded: true}, asked: map[logical.Table]int{}}
	target.apply = func(_ context.Context, table logical.Table, muts []logical.Mutation) error {
		if rand.IntN(3) == 0 {
			time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
		}
		mu.Lock()
		defer mu.Unlock()
		for _, m := range muts {
			var row struct{ Seq int }
			if err := json.Unmarshal(m.Data, &row); err != nil {
				return err
			}
			k := table.String() + string(m.Key)
			if row.Seq < lastKeySeq[k] {
				reversed = append(reversed, fmt.Sprintf("%s: %d after %d (same key)", k, row.Seq, lastKeySeq[k]))
			}
			lastKeySeq[k] = row.Seq
			marked, _ := m.Meta[logical.MetaNoKey].(bool)
			ordered := table == sharded || marked
			if ordered && row.Seq < lastSeq[table] {
				reversed = append(reversed, fmt.Sprintf("%s: %d after %d", table, row.Seq, lastSeq[table]))
			}
			lastSeq[table] = max(lastSeq[table], row.Seq)
		}
		return nil
	}
	cfg := fastConfig(t, target)
	cfg.FanShards = 8
	b := immediateBatcher(t, cfg)
	ctx := context.Background()
	seq := 0
	for batch := range 60 {
		bt, err := b.OnBegin(ctx)
		require.NoError(t, err)
		for _, table := range []logical.Table{sharded, nokey, spread} {
			var muts []logical.Mutation
			for range 10 {
				m := logical.Mutation{
					Key:  json.RawMessage(fmt.Sprintf("[%d]", rand.IntN(40))),
					Data: json.RawMessage(fmt.Sprintf(`{"seq":%d}`, seq)),
				}
				seq++
				if table == nokey && batch >= markedFrom {
					m.Meta = map[string]any{logical.MetaNoKey: true}
				}
				muts = append(muts, m)
			}
			require.NoError(t, bt.OnData(ctx, "src", table, muts))
		}
		require.NoError(t, <-bt.OnCommit(ctx))
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reversed) > 0 {
		t.Errorf("%d mutations applied out of order, the first: %v", len(reversed), reversed[:min(len(reversed), 5)])
	}
	target.mu.Lock()
	defer target.mu.Unlock()
	assert.Equal(t, map[logical.Table]int{sharded: 1, nokey: 1, spread: 1}, target.asked, "OneShard calls per table")
}
