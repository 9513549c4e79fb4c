package main

import (
	"syscall"
	"testing"
	"time"

	"github.com/logical-go/logical/postgres/internal/pgtest"
	"github.com/logical-go/logical/postgres/pgstore"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// pointVsApplied is true when the persisted consistent point is at or
// before the position the target recorded in the same transaction as its
// data. No persisted point yet (a kill before the first one) is true; a
// point without any recorded progress is false.
const pointVsApplied = `SELECT coalesce((
		SELECT (convert_from(m.value, 'UTF8')::jsonb->>'lsn')::pg_lsn <=
			coalesce((SELECT p.lsn FROM _logical.progress p WHERE p.key = $1), '0/0'::pg_lsn)
		FROM _logical.memo m WHERE m.key = $1), true)::text`

// TestCrash kills pgreplicate with SIGKILL several times while pgbench
// runs. Each time, the persisted point must not be ahead of the data the
// target has; in the end the target must equal the source, history rows
// (which have no primary key) included, so nothing was applied twice.
func TestCrash(t *testing.T) {
	r := newReplication(t)
	pgbenchSchema(t, r)
	r.createSlot(t)
	// The staging tables exist before the first process, for the checks.
	_, err := pgstore.NewMemo(t.Context(), r.dst.Pool, "")
	require.NoError(t, err)
	_, err = pgstore.NewProgress(t.Context(), r.dst.Pool, "")
	require.NoError(t, err)
	pgbench(t, r.src, "-i", "-I", "g", "-s", "1", "-q")

	load := pgbenchCmd(r.src, "-n", "-c", "4", "-j", "2", "-T", "20", "-R", "100")
	require.NoError(t, load.Start())
	loadDone := make(chan struct{})
	var loadErr error
	go func() {
		defer close(loadDone)
		loadErr = load.Wait()
	}()
	t.Cleanup(func() {
		_ = load.Process.Signal(syscall.SIGKILL)
		<-loadDone
	})

	killAfterProgress(t, r, 4)
	select {
	case <-loadDone:
		require.NoError(t, loadErr, "pgbench")
	case <-time.After(2 * time.Minute):
		t.Fatal("pgbench did not finish")
	}

	p := startProcess(t, "pgreplicate", r.args())
	got := waitEqual(t, r, 3*time.Minute, pgbenchSummary)
	t.Logf("caught up: %s", got)
	assert.Equal(t, 0, p.terminate(t), "SIGTERM stops gracefully")
	assert.Equal(t, "true", query(t, r.dst, pointVsApplied, r.slot))
}

// TestFailover runs two pgreplicate processes with a lease: only the
// holder streams; when it is killed, the other takes over once the lease
// expires, and the target ends equal to the source.
func TestFailover(t *testing.T) {
	r := newReplication(t, `CREATE TABLE kv (k INT PRIMARY KEY, v TEXT)`)
	r.createSlot(t)
	const lease = 3 * time.Second
	procs := map[string]*process{}
	for _, name := range []string{"alpha", "beta"} {
		args := r.args("--lease", lease.String())
		args[1] = pgtest.WithParam(t, r.src.URL, "application_name", name) // --sourceConn
		procs[name] = startProcess(t, name, args)
	}

	// Rows keep coming while the processes take turns.
	stopWriting := make(chan struct{})
	wrote := make(chan int, 1)
	go func() {
		n := 0
		defer func() { wrote <- n }()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopWriting:
				return
			case <-tick.C:
			}
			n++
			if _, err := r.src.Pool.Exec(t.Context(), `INSERT INTO kv VALUES ($1::int, md5($1::int::text))`, n); err != nil {
				t.Errorf("insert: %v", err)
				return
			}
		}
	}()
	var stopped bool
	stop := func() int {
		if !stopped {
			stopped = true
			close(stopWriting)
		}
		return <-wrote
	}
	t.Cleanup(func() {
		if !stopped {
			stop()
		}
	})

	// streaming returns the application names of the replication
	// connections of the two processes.
	streaming := func() []string {
		rows, err := r.src.Pool.Query(t.Context(),
			`SELECT application_name FROM pg_stat_replication WHERE application_name IN ('alpha', 'beta') ORDER BY 1`)
		require.NoError(t, err)
		defer rows.Close()
		var names []string
		for rows.Next() {
			var n string
			require.NoError(t, rows.Scan(&n))
			names = append(names, n)
		}
		require.NoError(t, rows.Err())
		return names
	}
	var holder string
	pgtest.Eventually(t, time.Minute, "one process to stream", func() bool {
		names := streaming()
		require.LessOrEqual(t, len(names), 1, "both stream: %v", names)
		if len(names) == 1 {
			holder = names[0]
		}
		return holder != ""
	})
	// For a while, only the holder streams.
	watchUntil := time.Now().Add(2 * lease)
	pgtest.Eventually(t, time.Minute, "a few lease terms", func() bool {
		names := streaming()
		require.Equal(t, []string{holder}, names, "exactly the holder streams")
		return time.Now().After(watchUntil)
	})
	standby := map[string]string{"alpha": "beta", "beta": "alpha"}[holder]

	killed := time.Now()
	procs[holder].kill(t)
	pgtest.Eventually(t, lease+time.Minute, "the standby to take over", func() bool {
		names := streaming()
		require.LessOrEqual(t, len(names), 1, "both stream: %v", names)
		return len(names) == 1 && names[0] == standby
	})
	t.Logf("%s took over from %s %s after the kill (lease %s)", standby, holder, time.Since(killed).Round(100*time.Millisecond), lease)

	n := stop()
	require.Positive(t, n)
	got := waitEqual(t, r, 2*time.Minute, `SELECT count(*) || ' ' || md5(coalesce(string_agg(kv::text, ',' ORDER BY k), '')) FROM kv`)
	t.Logf("%d rows written, target: %s", n, got)
	assert.Equal(t, 0, procs[standby].terminate(t))
}

// killAfterProgress starts pgreplicate kills times, each time lets it
// record new progress in the target and kills it with SIGKILL, checking
// after each kill that the persisted point is not ahead of the applied data.
func killAfterProgress(t *testing.T, r *replication, kills int) {
	t.Helper()
	last := "0/0"
	for i := range kills {
		p := startProcess(t, "pgreplicate", r.args())
		// Let it apply something new, then kill it mid-stream.
		pgtest.Eventually(t, 2*time.Minute, "progress before a kill", func() bool {
			return query(t, r.dst, `SELECT ($1::pg_lsn < coalesce((SELECT lsn FROM _logical.progress WHERE key = $2), '0/0'))::text`,
				last, r.slot) == "true"
		})
		p.kill(t)
		last = query(t, r.dst, `SELECT coalesce((SELECT lsn::text FROM _logical.progress WHERE key = $1), '0/0')`, r.slot)
		assert.NotEqual(t, "false", query(t, r.dst, pointVsApplied, r.slot),
			"kill %d: the persisted point is ahead of the applied data", i+1)
		// A kill between the first commit and the first persisted
		// point leaves no point yet.
		t.Logf("kill %d: applied up to %s, point %s", i+1, last,
			query(t, r.dst, `SELECT coalesce((SELECT convert_from(value, 'UTF8') FROM _logical.memo WHERE key = $1), 'none yet')`, r.slot))
	}
}
