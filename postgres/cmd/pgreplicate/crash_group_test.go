package main

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/logical-go/logical/postgres/pgstore"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// balancedSQL is pgbench's tpcb-like invariant: every transaction adds the
// same delta to an account, a teller, a branch and the history, so in any
// state where each source transaction is either entirely visible or not at
// all, the four sums are equal. One statement reads one snapshot.
const balancedSQL = `SELECT ((SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts) =
		(SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches)
	AND (SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches) =
		(SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers)
	AND (SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers) =
		(SELECT coalesce(sum(delta), 0) FROM pgbench_history))::text`

// TestCrashGroupedBacklog catches up an unthrottled backlog, so that
// transactions are grouped into large target transactions, and kills
// pgreplicate with SIGKILL several times during the catch-up. Meanwhile a
// reader checks pgbench's invariant on the target all the time: no partial
// source transaction may ever be visible. Each kill must leave the
// persisted point at or before what the target recorded, and in the end
// the target must equal the source, history rows (no primary key)
// included: nothing was applied twice.
func TestCrashGroupedBacklog(t *testing.T) {
	r := newReplication(t)
	pgbenchSchema(t, r)
	r.createSlot(t)
	_, err := pgstore.NewMemo(t.Context(), r.dst.Pool, "")
	require.NoError(t, err)
	_, err = pgstore.NewProgress(t.Context(), r.dst.Pool, "")
	require.NoError(t, err)
	pgbench(t, r.src, "-i", "-I", "g", "-s", "1", "-q")
	// The backlog: written before pgreplicate first runs.
	pgbench(t, r.src, "-n", "-c", "4", "-j", "2", "-t", "1500")

	var (
		mu         sync.Mutex
		checks     int
		violations int
	)
	ctx, cancel := context.WithCancel(context.Background())
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for ctx.Err() == nil {
			var ok string
			if err := r.dst.Pool.QueryRow(ctx, balancedSQL).Scan(&ok); err != nil {
				continue // cancelled at the end
			}
			mu.Lock()
			checks++
			if ok != "true" {
				violations++
			}
			mu.Unlock()
		}
	}()
	defer func() {
		cancel()
		<-readerDone
	}()

	killAfterProgress(t, r, 3)
	p := startProcess(t, "pgreplicate", r.args())
	got := waitEqual(t, r, 3*time.Minute, pgbenchSummary)
	t.Logf("caught up: %s", got)
	assert.Equal(t, 0, p.terminate(t), "SIGTERM stops gracefully")
	assert.Equal(t, "true", query(t, r.dst, pointVsApplied, r.slot))

	cancel()
	<-readerDone
	mu.Lock()
	defer mu.Unlock()
	t.Logf("invariant checked %d times", checks)
	assert.Positive(t, checks)
	assert.Zero(t, violations, "a partial source transaction was visible at the target")
}
