package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/logical-go/logical/postgres/internal/pgtest"
	"github.com/logical-go/logical/postgres/pglogical"
	"github.com/logical-go/logical/postgres/pgstore"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The fault tests run pgreplicate (in serial mode, with the target's
// progress table) against a load, inject one kind of fault, and then
// require that it recovers by itself within recoverWithin of the fault
// ending, that the slot never confirmed more than the target had durably
// applied, and that the target equals the source row for row.

// recoverWithin bounds how long after a fault ends the target must have
// caught up with the source: the retry delay's back-off after a few
// seconds of failures (200ms doubling: under 7s) plus the catch-up.
const recoverWithin = 45 * time.Second

// faultFlags are short timeouts, so that the faults are noticed quickly.
var faultFlags = []string{"--sourceTimeout", "2s", "--standbyTimeout", "300ms"}

const faultSchema = `CREATE TABLE kv (k BIGINT PRIMARY KEY, v BIGINT NOT NULL, t TEXT)`

// kvSummary is the count and a checksum of every row.
const kvSummary = `SELECT count(*) || ' ' || md5(coalesce(string_agg(kv::text, ',' ORDER BY k), '')) FROM kv`

// load writes small transactions (inserts, updates, deletes) into kv
// until stopped, ignoring errors (the source may be restarting).
type load struct {
	stop func() int // stops the load and returns the transactions committed
}

func startLoad(t *testing.T, db *pgtest.DB) *load {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var mu sync.Mutex
	committed := 0
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			next := int64(w) << 40
			tick := time.NewTicker(25 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				tx, err := db.Pool.Begin(ctx)
				if err != nil {
					continue
				}
				ok := true
				for range 3 {
					next++
					if _, err := tx.Exec(ctx, `INSERT INTO kv VALUES ($1, $2, repeat('x', $3))`, next, rng.Int64(), rng.IntN(200)); err != nil {
						ok = false
					}
				}
				if ok {
					_, err = tx.Exec(ctx, `UPDATE kv SET v = v + 1 WHERE k = $1`, next-int64(rng.IntN(20)))
					ok = err == nil
				}
				if ok && rng.IntN(4) == 0 {
					_, err = tx.Exec(ctx, `DELETE FROM kv WHERE k = $1`, next-int64(rng.IntN(30)))
					ok = err == nil
				}
				if ok && tx.Commit(ctx) == nil {
					mu.Lock()
					committed++
					mu.Unlock()
				} else {
					_ = tx.Rollback(context.Background())
				}
			}
		}()
	}
	var once sync.Once
	l := &load{stop: func() int {
		once.Do(func() {
			cancel()
			wg.Wait()
		})
		mu.Lock()
		defer mu.Unlock()
		return committed
	}}
	t.Cleanup(func() { l.stop() })
	return l
}

// lsnOf returns the pg_lsn text of sql in db (0/0 for NULL), or false if
// db cannot be read at the moment.
func lsnOf(db *pgtest.DB, sql string, args ...any) (uint64, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var text *string
	if err := db.Pool.QueryRow(ctx, sql, args...).Scan(&text); err != nil {
		return 0, false
	}
	if text == nil {
		return 0, true
	}
	pos, err := pglogical.ParseLSN(*text)
	return pos, err == nil
}

// watchSlot checks, every 100ms until the test ends, that the slot's
// confirmed_flush_lsn is not past the progress the target recorded in the
// transactions of its data. It returns how many checks it made.
func watchSlot(t *testing.T, r *replication) func() int {
	t.Helper()
	done := make(chan struct{})
	finished := make(chan int, 1)
	go func() {
		checks := 0
		defer func() { finished <- checks }()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			// The slot first: progress only grows, so reading it second
			// can hide a violation for a moment but never invent one.
			confirmed, ok1 := lsnOf(r.src, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, r.slot)
			applied, ok2 := lsnOf(r.dst, `SELECT lsn::text FROM _logical.progress WHERE key = $1`, r.slot)
			if !ok1 || !ok2 || applied == 0 {
				continue
			}
			checks++
			if confirmed > applied {
				t.Errorf("the slot confirmed %s, past what the target applied (%s)", pglogical.FormatLSN(confirmed), pglogical.FormatLSN(applied))
				return
			}
		}
	}()
	var once sync.Once
	n := 0
	stop := func() int {
		once.Do(func() {
			close(done)
			n = <-finished
		})
		return n
	}
	t.Cleanup(func() { stop() })
	return stop
}

// faultSetup creates the tables (staging ones too, for watchSlot) and the
// slot.
func faultSetup(t *testing.T, r *replication) {
	t.Helper()
	_, err := pgstore.NewMemo(t.Context(), r.dst.Pool, "")
	require.NoError(t, err)
	_, err = pgstore.NewProgress(t.Context(), r.dst.Pool, "")
	require.NoError(t, err)
	r.createSlot(t)
}

// appliedNow waits until the target has applied something written after
// this call, and returns how long that took.
func appliedNow(t *testing.T, r *replication, within time.Duration, what string) time.Duration {
	t.Helper()
	start := time.Now()
	var mark uint64
	pgtest.Eventually(t, within, "the source's position", func() bool {
		var ok bool
		mark, ok = lsnOf(r.src, `SELECT pg_current_wal_lsn()::text`)
		return ok
	})
	pgtest.Eventually(t, within, what, func() bool {
		applied, ok := lsnOf(r.dst, `SELECT lsn::text FROM _logical.progress WHERE key = $1`, r.slot)
		return ok && applied >= mark
	})
	return time.Since(start)
}

// finish stops the load, waits for the target to equal the source, checks
// the persisted point against the applied progress and stops pgreplicate.
func finish(t *testing.T, r *replication, l *load, watch func() int, terminate func() int) {
	t.Helper()
	txs := l.stop()
	start := time.Now()
	got := waitEqual(t, r, recoverWithin, kvSummary)
	t.Logf("%d source transactions; caught up %s after the load stopped: %s", txs, time.Since(start).Round(time.Millisecond), got)
	require.Greater(t, txs, 0)
	assert.Equal(t, "true", query(t, r.dst, pointVsApplied, r.slot), "the persisted point is ahead of the applied data")
	assert.Equal(t, 0, terminate(), "a graceful stop")
	t.Logf("%d slot checks", watch())
}

// TestFaultSourceConnectionCut: the TCP connection to the source is cut
// (twice) under load; pgreplicate reconnects.
func TestFaultSourceConnectionCut(t *testing.T) {
	t.Parallel()
	r := newReplication(t, faultSchema)
	faultSetup(t, r)
	px := newProxy(t, r.src.URL)
	stop := inProcess(t, append(withArg(r.args(), "--sourceConn", px.url(r.src.URL)), faultFlags...))
	watch := watchSlot(t, r)
	l := startLoad(t, r.src)
	for i := range 2 {
		appliedNow(t, r, time.Minute, fmt.Sprintf("progress before cut %d", i+1))
		px.cut()
		took := appliedNow(t, r, recoverWithin, fmt.Sprintf("progress after cut %d", i+1))
		t.Logf("cut %d: applying again after %s", i+1, took.Round(time.Millisecond))
	}
	finish(t, r, l, watch, stop)
}

// TestFaultSourceConnectionStalls: the path to the source drops
// everything without closing the connection, for longer than
// --sourceTimeout (2s); pgreplicate says so, and recovers once the path
// is back.
func TestFaultSourceConnectionStalls(t *testing.T) {
	t.Parallel()
	r := newReplication(t, faultSchema)
	faultSetup(t, r)
	px := newProxy(t, r.src.URL)
	log := &logBuffer{}
	dumpOnFailure(t, "pgreplicate", log)
	ctx, cancel := context.WithCancel(context.Background())
	status := make(chan int, 1)
	go func() {
		status <- run(ctx, append(withArg(r.args(), "--sourceConn", px.url(r.src.URL)), faultFlags...), log)
	}()
	stop := func() int {
		cancel()
		select {
		case code := <-status:
			return code
		case <-time.After(time.Minute):
			t.Error("pgreplicate did not stop")
			return -1
		}
	}
	t.Cleanup(func() { cancel() })
	watch := watchSlot(t, r)
	l := startLoad(t, r.src)
	appliedNow(t, r, time.Minute, "progress before the stall")
	px.stall(true)
	pgtest.Eventually(t, 30*time.Second, "the silent source noticed", func() bool {
		return strings.Contains(log.String(), "no message or keepalive from the source")
	})
	px.stall(false)
	took := appliedNow(t, r, recoverWithin, "progress after the stall")
	t.Logf("applying again %s after the stall ended", took.Round(time.Millisecond))
	finish(t, r, l, watch, stop)
}

// TestFaultTargetDown: the target refuses connections (and its open ones
// are cut) for 5s, through a proxy standing in for a stopped server.
func TestFaultTargetDown(t *testing.T) {
	t.Parallel()
	r := newReplication(t, faultSchema)
	faultSetup(t, r)
	px := newProxy(t, r.dst.URL)
	stop := inProcess(t, append(withArg(r.args(), "--targetConn", px.url(r.dst.URL)), faultFlags...))
	watch := watchSlot(t, r)
	l := startLoad(t, r.src)
	appliedNow(t, r, time.Minute, "progress before the target goes down")
	px.refuse(true)
	time.Sleep(5 * time.Second) // the outage itself, not a wait for a condition
	px.refuse(false)
	took := appliedNow(t, r, recoverWithin, "progress after the target is back")
	t.Logf("applying again %s after the target came back", took.Round(time.Millisecond))
	finish(t, r, l, watch, stop)
}

// TestFaultStopContinue: pgreplicate is frozen with SIGSTOP for longer
// than its lease (1s) and continued; it notices the lost lease, takes it
// again and carries on.
func TestFaultStopContinue(t *testing.T) {
	t.Parallel()
	r := newReplication(t, faultSchema)
	faultSetup(t, r)
	p := startProcess(t, "pgreplicate", append(r.args("--lease", "1s"), faultFlags...))
	watch := watchSlot(t, r)
	l := startLoad(t, r.src)
	appliedNow(t, r, time.Minute, "progress before SIGSTOP")
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGSTOP))
	time.Sleep(3 * time.Second) // frozen, past the lease and the source timeout
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGCONT))
	took := appliedNow(t, r, recoverWithin, "progress after SIGCONT")
	t.Logf("applying again %s after SIGCONT", took.Round(time.Millisecond))
	finish(t, r, l, watch, func() int { return p.terminate(t) })
}

// TestFaultTerminateDuringLargeTransaction: SIGTERM while the target is
// in the middle of a large source transaction stops pgreplicate
// gracefully; the target has all of it or none, and the next run
// completes it. The default --sourceTimeout (60s) applies: while the
// server decodes a large transaction again after a restart it sends
// nothing, and answers no ping, for seconds; it sends a keepalive only
// after half its wal_sender_timeout.
func TestFaultTerminateDuringLargeTransaction(t *testing.T) {
	t.Parallel()
	r := newReplication(t, faultSchema)
	faultSetup(t, r)
	p := startProcess(t, "pgreplicate", r.args())
	pgtest.Eventually(t, time.Minute, "the stream to start", func() bool {
		return query(t, r.src, `SELECT count(*)::text FROM pg_replication_slots WHERE slot_name = $1 AND active`, r.slot) == "1"
	})
	const rows = 150000
	r.src.Exec(t, fmt.Sprintf(`INSERT INTO kv SELECT g, g, repeat('y', 100) FROM generate_series(1, %d) g`, rows))
	// The target's transaction is open once it holds a row lock on kv.
	pgtest.Eventually(t, time.Minute, "the target applying the transaction", func() bool {
		return query(t, r.dst, `SELECT count(*)::text FROM pg_locks l JOIN pg_database d ON d.oid = l.database
			WHERE d.datname = current_database() AND l.relation = 'kv'::regclass AND l.mode = 'RowExclusiveLock'
			AND l.pid <> pg_backend_pid()`) != "0"
	})
	start := time.Now()
	code := p.terminate(t)
	t.Logf("stopped %s after SIGTERM with status %d", time.Since(start).Round(time.Millisecond), code)
	assert.Equal(t, 0, code, "a graceful stop")
	n := query(t, r.dst, `SELECT count(*)::text FROM kv`)
	assert.Contains(t, []string{"0", fmt.Sprint(rows)}, n, "a source transaction is applied whole or not at all")
	t.Logf("the target had %s rows of %d after the stop", n, rows)
	assert.Equal(t, "true", query(t, r.dst, pointVsApplied, r.slot), "the persisted point is ahead of the applied data")

	p = startProcess(t, "pgreplicate", r.args())
	waitEqual(t, r, recoverWithin, kvSummary)
	assert.Equal(t, 0, p.terminate(t))
}

// TestFaultSourceRestart restarts the source server, fast and then
// immediate, under load. It needs a cluster of its own
// (PGTEST_CLUSTER from .ci/with-postgres) and skips without one.
func TestFaultSourceRestart(t *testing.T) {
	t.Parallel()
	c := pgtest.NewCluster(t)
	r := &replication{src: c.NewDB(t, "src"), dst: pgtest.NewDB(t, "dst"), pub: "pub"}
	r.slot = "slot_" + strings.TrimPrefix(r.src.Name, "src_")
	r.src.Exec(t, faultSchema, `CREATE PUBLICATION pub FOR ALL TABLES`)
	r.dst.Exec(t, faultSchema)
	faultSetup(t, r)
	p := startProcess(t, "pgreplicate", append(r.args(), faultFlags...))
	watch := watchSlot(t, r)
	l := startLoad(t, r.src)
	for _, mode := range []string{"fast", "immediate"} {
		appliedNow(t, r, time.Minute, "progress before a "+mode+" restart")
		c.Restart(t, mode)
		took := appliedNow(t, r, recoverWithin, "progress after a "+mode+" restart")
		t.Logf("%s restart: applying again %s after the server was back", mode, took.Round(time.Millisecond))
	}
	assert.NotContains(t, p.log.String(), "unexpected message", "the end of the stream is named")
	assert.Contains(t, p.log.String(), "the source server ended the replication stream (CommandComplete)", "after the fast shutdown")
	finish(t, r, l, watch, func() int { return p.terminate(t) })
}
