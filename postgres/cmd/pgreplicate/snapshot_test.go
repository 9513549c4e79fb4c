package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/logical-go/logical/postgres/internal/pgtest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// bigDDL is the table the snapshot tests copy: a secondary UNIQUE column
// that the writer swaps between rows.
const bigDDL = `CREATE TABLE big (id BIGINT PRIMARY KEY, u BIGINT NOT NULL UNIQUE, v TEXT, n INT)`

// bigSummary sums up the table big: count and md5 of all rows.
const bigSummary = `SELECT count(*) || ' ' || md5(coalesce(string_agg(big::text, ',' ORDER BY id), '')) FROM big`

// snapshotRows is the size of big: n unless PGTEST_SNAPSHOT_ROWS says
// otherwise. The tests the "must show" names (TestSnapshot,
// TestSnapshotKills) use 1M rows; at that size they take about 36s and
// 40s with -race on 2 cores.
func snapshotRows(t *testing.T, n int) int {
	t.Helper()
	if s := os.Getenv("PGTEST_SNAPSHOT_ROWS"); s != "" {
		var err error
		n, err = strconv.Atoi(s)
		require.NoError(t, err, "PGTEST_SNAPSHOT_ROWS")
	}
	return n
}

// fillBig creates big in both databases and n rows in the source.
func fillBig(t *testing.T, n int) *replication {
	t.Helper()
	r := newReplication(t, bigDDL)
	r.src.Exec(t, fmt.Sprintf(`INSERT INTO big SELECT i, i, md5(i::text), 0 FROM generate_series(1, %d) i`, n))
	r.src.Exec(t, `ANALYZE big`)
	return r
}

// writer changes big until stopped: inserts, updates, deletes, a delete
// and re-insert of the same key in one transaction, and swaps of the
// UNIQUE value u between two rows, in one transaction or in three.
type writer struct {
	stop chan struct{}
	done chan struct{}
	ops  map[string]int // read it after finish
	txs  atomic.Int64
	err  error
}

func startWriter(t *testing.T, r *replication, n int) *writer {
	t.Helper()
	w := &writer{stop: make(chan struct{}), done: make(chan struct{}), ops: make(map[string]int)}
	go func() {
		defer close(w.done)
		w.err = w.run(r, n)
	}()
	t.Cleanup(func() { w.finish(t) })
	return w
}

// finish stops the writer and fails the test if it failed.
func (w *writer) finish(t *testing.T) {
	t.Helper()
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
	require.NoError(t, w.err, "writer")
}

func (w *writer) run(r *replication, n int) error {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	next := int64(n)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	key := func() int64 { return 1 + rng.Int64N(next) }
	var swap struct{ a, b, ua, ub int64 }
	for {
		select {
		case <-w.stop:
			return nil
		case <-tick.C:
		}
		var op string
		err := pgx.BeginFunc(ctx, r.src.Pool, func(tx pgx.Tx) error {
			switch rng.IntN(6) {
			case 0:
				op = "insert"
				next++
				_, err := tx.Exec(ctx, `INSERT INTO big VALUES ($1, $1, 'new', 0)`, next)
				return err
			case 1, 2:
				op = "update"
				_, err := tx.Exec(ctx, `UPDATE big SET v = md5(random()::text), n = n + 1 WHERE id = $1`, key())
				return err
			case 3:
				op = "delete"
				_, err := tx.Exec(ctx, `DELETE FROM big WHERE id = $1`, key())
				return err
			case 4:
				op = "reinsert"
				k := key()
				var u int64
				var m int
				err := tx.QueryRow(ctx, `DELETE FROM big WHERE id = $1 RETURNING u, n`, k).Scan(&u, &m)
				if err == pgx.ErrNoRows {
					return nil
				}
				if err != nil {
					return err
				}
				_, err = tx.Exec(ctx, `INSERT INTO big VALUES ($1, $2, 'again', $3)`, k, u, m+1)
				return err
			default:
				// A swap of u between two rows, through a negative value:
				// every other one in one transaction, the others in three
				// (the last two below).
				op = "swap"
				oneTx := rng.IntN(2) == 0
				a, b := key(), key()
				if a == b {
					return nil
				}
				if err := tx.QueryRow(ctx, `SELECT u FROM big WHERE id = $1`, a).Scan(&swap.ua); err != nil {
					if err == pgx.ErrNoRows {
						return nil
					}
					return err
				}
				if err := tx.QueryRow(ctx, `SELECT u FROM big WHERE id = $1`, b).Scan(&swap.ub); err != nil {
					if err == pgx.ErrNoRows {
						return nil
					}
					return err
				}
				if _, err := tx.Exec(ctx, `UPDATE big SET u = $2 WHERE id = $1`, a, -swap.ua); err != nil || !oneTx {
					swap.a, swap.b = a, b
					return err
				}
				op = "swap in one transaction"
				for _, s := range []struct{ id, u int64 }{{b, swap.ua}, {a, swap.ub}} {
					if _, err := tx.Exec(ctx, `UPDATE big SET u = $2 WHERE id = $1`, s.id, s.u); err != nil {
						return err
					}
				}
				return nil
			}
		})
		if err == nil && swap.a != 0 {
			for _, s := range []struct{ id, u int64 }{{swap.b, swap.ua}, {swap.a, swap.ub}} {
				if _, err = r.src.Pool.Exec(ctx, `UPDATE big SET u = $2 WHERE id = $1`, s.id, s.u); err != nil {
					break
				}
			}
			swap.a = 0
		}
		if err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		w.ops[op]++
		w.txs.Add(1)
	}
}

// chunksDone returns how many chunks of the snapshot are done, and how
// many there are.
func chunksDone(t *testing.T, r *replication) (int, int) {
	t.Helper()
	var done, all int
	err := r.dst.Pool.QueryRow(t.Context(), `SELECT count(*) FILTER (WHERE done), count(*) FROM _logical.snapshot WHERE chunk >= 0`).
		Scan(&done, &all)
	if err != nil {
		return 0, 0 // not created yet
	}
	return done, all
}

// copiedTwice returns the rows of chunks that were copied more than
// once, counted once per extra attempt, and the number of those chunks.
func copiedTwice(t *testing.T, r *replication) (int64, int) {
	t.Helper()
	var rows int64
	var chunks int
	require.NoError(t, r.dst.Pool.QueryRow(t.Context(), `SELECT coalesce(sum((attempts - 1) * copied), 0), count(*) FILTER (WHERE attempts > 1)
		FROM _logical.snapshot WHERE chunk >= 0`).Scan(&rows, &chunks))
	return rows, chunks
}

// copyFinished reports whether the copy of every table in the plan
// finished: its table record says synced.
func copyFinished(t *testing.T, r *replication) bool {
	t.Helper()
	return query(t, r.dst, `SELECT (count(*) > 0 AND bool_and(coalesce((spec->>'synced')::bool, false)))::text
		FROM _logical.snapshot WHERE chunk = -1`) == "true"
}

// doneChunks returns the chunks the snapshot table marks done, as
// "table/chunk".
func doneChunks(t *testing.T, r *replication) []string {
	t.Helper()
	rows, err := r.dst.Pool.Query(t.Context(), `SELECT source_table || '/' || chunk FROM _logical.snapshot WHERE chunk >= 0 AND done ORDER BY 1`)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return out
}

// attempts returns how many times each chunk was started, by
// "table/chunk".
func attempts(t *testing.T, r *replication) map[string]int {
	t.Helper()
	rows, err := r.dst.Pool.Query(t.Context(), `SELECT source_table || '/' || chunk, attempts FROM _logical.snapshot WHERE chunk >= 0`)
	require.NoError(t, err)
	out := make(map[string]int)
	var name string
	var n int
	_, err = pgx.ForEachRow(rows, []any{&name, &n}, func() error {
		out[name] = n
		return nil
	})
	require.NoError(t, err)
	return out
}

// backfillPoint returns the consistent point of the nested loop that
// copies the snapshot (logical.Events.Backfill, named after the slot),
// the chunks it persisted as done; nil if it has none.
func backfillPoint(t *testing.T, r *replication) []string {
	t.Helper()
	var raw []byte
	err := r.dst.Pool.QueryRow(t.Context(), `SELECT value FROM _logical.memo WHERE key = $1`, r.slot+".snapshot").Scan(&raw)
	if err == pgx.ErrNoRows {
		return nil
	}
	require.NoError(t, err)
	var names []string
	require.NoError(t, json.Unmarshal(raw, &names), "the nested point is the JSON array of chunks done: %s", raw)
	return names
}

// bigIndexes sums up the indexes and constraints of the target's big.
func bigIndexes(t *testing.T, r *replication) string {
	t.Helper()
	return query(t, r.dst, `SELECT string_agg(indexdef, '; ' ORDER BY indexname) FROM pg_indexes WHERE tablename = 'big'`) + "\n" +
		query(t, r.dst, `SELECT string_agg(conname || ' ' || pg_get_constraintdef(oid), '; ' ORDER BY conname)
			FROM pg_constraint WHERE conrelid = 'big'::regclass`)
}

// snapshotArgs returns the flags of a snapshot of rows rows in about 20
// chunks.
func snapshotArgs(r *replication, rows int, extra ...string) []string {
	chunk := strconv.Itoa(max(rows/20, 50))
	return r.args(append([]string{"--snapshot", "--snapshotChunkRows", chunk, "--snapshotWorkers", "4",
		"--snapshotPoll", "500ms", "--logLevel", "info"}, extra...)...)
}

// TestSnapshot copies a table that a writer keeps changing (inserts,
// updates, deletes, delete and re-insert of a key, swaps of a UNIQUE
// value) and then streams: the target must end equal to the source.
func TestSnapshot(t *testing.T) {
	for _, mode := range []struct {
		name  string
		flags []string
	}{
		{"serial", nil},
		// The writer swaps UNIQUE values between rows; fan workers
		// keep only each key's order, so with several of them two rows of
		// a swap can each wait for the other (a documented limit of
		// --immediate): one worker keeps the source's order.
		{"immediate", []string{"--immediate", "--fanShards", "1"}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			n := snapshotRows(t, 1000000)
			r := fillBig(t, n)
			indexes := bigIndexes(t, r)
			w := startWriter(t, r, n)
			start := time.Now()
			stop, log := runLogged(t, snapshotArgs(r, n, mode.flags...))
			pgtest.Eventually(t, 5*time.Minute, "the snapshot", func() bool {
				done, all := chunksDone(t, r)
				return all > 0 && done == all
			})
			t.Logf("%d rows copied in %s", n, time.Since(start).Round(time.Millisecond))
			// Stream for a while after the copy.
			base := w.txs.Load()
			pgtest.Eventually(t, time.Minute, "more changes", func() bool { return w.txs.Load() > base+300 })
			w.finish(t)
			got := waitEqual(t, r, 2*time.Minute, bigSummary)
			t.Logf("writer: %v; target: %s", w.ops, got)
			assert.Equal(t, 0, stop())
			twice, _ := copiedTwice(t, r)
			assert.Zero(t, twice, "no chunk copied twice without a crash")
			// The target was empty: its key and UNIQUE index were dropped
			// for the copy and are back as they were.
			assert.Contains(t, log.String(), "indexes put off until the rows are in")
			assert.Equal(t, indexes, bigIndexes(t, r))
			// The copy ran as the library's nested backfill: its point,
			// persisted under its own name, is the set of chunks done.
			done := doneChunks(t, r)
			require.NotEmpty(t, done)
			assert.Equal(t, done, backfillPoint(t, r), "the nested loop's point holds every chunk done")
		})
	}
}

// TestSnapshotKills kills pgreplicate (SIGKILL) ten times during the
// snapshot, each time after some more chunks are done; the target must
// still end equal to the source. It reports how many rows were copied
// more than once.
func TestSnapshotKills(t *testing.T) {
	n := snapshotRows(t, 1000000)
	dropped := snapshotKills(t, n, 10, false)
	if n >= 1000000 {
		// The first kill comes after the first of 20 chunks, long before
		// the last: the indexes are dropped then, and a restart must
		// create them again (checked at the end of snapshotKills).
		assert.NotZero(t, dropped, "no kill came while the target's indexes were dropped for the copy")
	}
}

// TestSnapshotKillsCreate is TestSnapshotKills with a target table that
// pgreplicate creates (--createTables), whose primary key it adds after
// the rows: a kill must not leave it without one.
func TestSnapshotKillsCreate(t *testing.T) { snapshotKills(t, 100000, 3, true) }

// TestSnapshotKillsImmediate is TestSnapshotKills without a progress
// table (--immediate): there the persisted point alone says what the
// target has, so a copy must never start while transactions before its
// position are still in an uncommitted group.
func TestSnapshotKillsImmediate(t *testing.T) {
	snapshotKills(t, 100000, 3, false, "--immediate", "--fanShards", "1") // one worker: see TestSnapshot
}

// TestSnapshotStop stops pgreplicate gracefully (SIGTERM) in the middle of
// the snapshot: the copy is the library's nested backfill, so the stop
// interrupts it (an error, not a finished copy), the nested point holds
// only chunks that are done, and the next start copies only the chunks
// that were not done; the target ends equal to the source.
func TestSnapshotStop(t *testing.T) {
	n := snapshotRows(t, 400000)
	r := fillBig(t, n)
	indexes := bigIndexes(t, r)
	w := startWriter(t, r, n)
	args := snapshotArgs(r, n, "--snapshotWorkers", "2", "--logLevel", "debug")
	p := startProcess(t, "pgreplicate", args)
	pgtest.Eventually(t, 3*time.Minute, "a chunk before the stop", func() bool {
		done, _ := chunksDone(t, r)
		return done > 0
	})
	assert.Equal(t, 0, p.terminate(t), "a stop during the snapshot is a clean exit")
	before := doneChunks(t, r)
	_, all := chunksDone(t, r)
	require.Less(t, len(before), all, "the stop came before the last chunk (or the test cannot show a resume)")
	assert.Contains(t, p.log.String(), "a stop interrupted the snapshot", "the interrupted copy is an error, never a finished one")
	assert.NotContains(t, p.log.String(), "snapshot copied")
	assert.Subset(t, before, backfillPoint(t, r), "the nested point holds only chunks that are done")
	tried := attempts(t, r)

	p = startProcess(t, "pgreplicate", args)
	pgtest.Eventually(t, 5*time.Minute, "the snapshot", func() bool {
		done, all := chunksDone(t, r)
		return all > 0 && done == all
	})
	after := attempts(t, r)
	for _, c := range before {
		assert.Equal(t, tried[c], after[c], "chunk %s, done before the stop, is not copied again", c)
	}
	assert.Equal(t, doneChunks(t, r), backfillPoint(t, r), "the resumed backfill's point holds every chunk")
	base := w.txs.Load()
	pgtest.Eventually(t, time.Minute, "more changes", func() bool { return w.txs.Load() > base+300 })
	w.finish(t)
	got := waitEqual(t, r, 3*time.Minute, bigSummary)
	t.Logf("writer: %v; target: %s; %d of %d chunks done at the stop", w.ops, got, len(before), all)
	assert.Equal(t, indexes, bigIndexes(t, r), "the target table has its indexes back")
	assert.Equal(t, 0, p.terminate(t))
}

// TestSnapshotChaos copies a table while faults are injected into the
// dialect, its events and batches, the nested backfill's included
// (logical.Config.ChaosProb, which the nested loop shares): each fault
// ends the copy with an error, and the rounds that follow copy what is
// left until the target equals the source. No writer runs: under chaos a
// busy stream rarely gets a whole group through (a fault in any call
// fails it), which is the stream's matter, not the copy's.
func TestSnapshotChaos(t *testing.T) {
	n := snapshotRows(t, 100000)
	r := fillBig(t, n)
	indexes := bigIndexes(t, r)
	// 200 chunks, each followed by a SetConsistentPoint of the nested
	// loop that fails with probability 0.05: a run without a fault in
	// the nested loop has a chance of 0.95^200, under 1e-4.
	stop, log := runLogged(t, snapshotArgs(r, n, "--chaosProb", "0.05", "--retryDelay", "50ms",
		"--snapshotChunkRows", strconv.Itoa(max(n/200, 1))))
	pgtest.Eventually(t, 5*time.Minute, "the snapshot", func() bool {
		done, all := chunksDone(t, r)
		return all > 0 && done == all
	})
	got := waitEqual(t, r, 3*time.Minute, bigSummary)
	// Every chunk marked done is not yet a finished copy: a fault can
	// fail the round after the last commit, before the nested point
	// holds it, and a stop could then come before the restart finishes
	// the copy (the start after it would). Wait for the copy to end.
	pgtest.Eventually(t, time.Minute, "the copy finished", func() bool { return copyFinished(t, r) })
	twice, chunks := copiedTwice(t, r)
	t.Logf("target: %s; %d rows in %d chunks copied more than once", got, twice, chunks)
	assert.Equal(t, 0, stop())
	nested := strings.Count(log.String(), r.slot+`.snapshot\": Process: injected`)
	t.Logf("faults inside the nested backfill: %d", nested)
	assert.NotZero(t, nested, "faults were injected into the nested backfill")
	assert.Equal(t, doneChunks(t, r), backfillPoint(t, r), "the nested loop's point holds every chunk done")
	assert.Equal(t, indexes, bigIndexes(t, r), "the target table has its indexes back")
}

// TestSnapshotLostPoint starts pgreplicate on what a copy leaves when
// the nested loop's point write after the last chunks fails (a fault, as
// TestSnapshotChaos injects, or a stop): every chunk is marked done in
// the Store, but the point lacks the last one and the table is not
// recorded synced, as the round ended in an error. No round copies a
// table whose chunks are all done, so the start itself must bring the
// point up to the marks, without copying anything again.
func TestSnapshotLostPoint(t *testing.T) {
	n := snapshotRows(t, 20000)
	r := fillBig(t, n)
	stop, _ := runLogged(t, snapshotArgs(r, n))
	pgtest.Eventually(t, 3*time.Minute, "the snapshot", func() bool {
		done, all := chunksDone(t, r)
		return all > 0 && done == all
	})
	waitEqual(t, r, 2*time.Minute, bigSummary)
	require.Equal(t, 0, stop())
	done := doneChunks(t, r)
	require.Greater(t, len(done), 1)
	require.Equal(t, done, backfillPoint(t, r))

	// The point write of the last chunk fails, and the round with it.
	short, err := json.Marshal(done[:len(done)-1])
	require.NoError(t, err)
	_, err = r.dst.Pool.Exec(t.Context(), `UPDATE _logical.memo SET value = $1 WHERE key = $2`, short, r.slot+".snapshot")
	require.NoError(t, err)
	r.dst.Exec(t, `UPDATE _logical.snapshot SET spec = jsonb_set(spec, '{synced}', 'false') WHERE chunk = -1`)
	require.Equal(t, done[:len(done)-1], backfillPoint(t, r))
	tried := attempts(t, r)

	stop, log := runLogged(t, snapshotArgs(r, n))
	pgtest.Eventually(t, time.Minute, "the nested point up to the marks", func() bool {
		return len(backfillPoint(t, r)) == len(done)
	})
	pgtest.Eventually(t, time.Minute, "the table recorded synced", func() bool { return copyFinished(t, r) })
	assert.Equal(t, 0, stop())
	assert.Equal(t, done, backfillPoint(t, r), "the nested point holds every chunk done")
	assert.Equal(t, tried, attempts(t, r), "no chunk is copied again")
	assert.Contains(t, log.String(), "snapshot of table finished")
	assert.NotContains(t, log.String(), "snapshot taken", "no round is opened for a table whose chunks are all done")
}

// snapshotKills returns how many kills came while the target's indexes
// were dropped for the copy.
func snapshotKills(t *testing.T, rows, kills int, create bool, flags ...string) (dropped int) {
	n := snapshotRows(t, rows)
	r := fillBig(t, n)
	extra := append([]string(nil), flags...)
	indexes := bigIndexes(t, r)
	if create {
		r.dst.Exec(t, `DROP TABLE big`)
		extra = append(extra, "--createTables")
	}
	w := startWriter(t, r, n)
	for i := range kills {
		before, all := chunksDone(t, r)
		if all > 0 && before == all {
			t.Logf("the snapshot finished after %d kills", i)
			break // no chunk is left for a kill to interrupt
		}
		p := startProcess(t, "pgreplicate", snapshotArgs(r, n, extra...))
		pgtest.Eventually(t, 3*time.Minute, "a chunk before a kill", func() bool {
			done, _ := chunksDone(t, r)
			return done > before
		})
		p.kill(t)
		done, all := chunksDone(t, r)
		noKey := query(t, r.dst, `SELECT count(*)::text FROM pg_index WHERE indrelid = 'big'::regclass AND indisprimary`) == "0"
		if noKey && !create {
			dropped++
		}
		t.Logf("kill %d: %d of %d chunks done; target without its primary key: %v", i+1, done, all, noKey)
	}
	p := startProcess(t, "pgreplicate", snapshotArgs(r, n, extra...))
	pgtest.Eventually(t, 5*time.Minute, "the snapshot", func() bool {
		done, all := chunksDone(t, r)
		return all > 0 && done == all
	})
	base := w.txs.Load()
	pgtest.Eventually(t, time.Minute, "more changes", func() bool { return w.txs.Load() > base+300 })
	w.finish(t)
	got := waitEqual(t, r, 3*time.Minute, bigSummary)
	twice, chunks := copiedTwice(t, r)
	t.Logf("writer: %v; target: %s; %d rows in %d chunks copied more than once (of %d rows)", w.ops, got, twice, chunks, n)
	assert.Equal(t, "1", query(t, r.dst, `SELECT count(*)::text FROM pg_index WHERE indrelid = 'big'::regclass AND indisprimary`),
		"the target table has its primary key")
	if !create {
		// Killed while its indexes were dropped for the copy (the first
		// kill comes after a chunk is done), a restart creates them again.
		assert.Equal(t, indexes, bigIndexes(t, r), "the target table has its indexes back")
	}
	assert.Equal(t, 0, p.terminate(t))
	return dropped
}

// TestSnapshotSchema joins a table with rows to the publication, adds
// columns (with and without a default) and drops one while pgreplicate
// streams: the new table is copied and streamed, the columns reach the
// target, the dropped column stops replication with an error that says
// what to do, and once the target matches everything converges, all
// without a restart.
func TestSnapshotSchema(t *testing.T) {
	r := newReplication(t, `CREATE TABLE kv (k INT PRIMARY KEY, v TEXT)`)
	r.src.Exec(t, `CREATE TABLE t2 (id INT PRIMARY KEY, v TEXT NOT NULL, u INT UNIQUE)`,
		`CREATE PUBLICATION pub2 FOR TABLE kv`,
		`INSERT INTO kv SELECT i, md5(i::text) FROM generate_series(1, 1000) i`)
	r.pub = "pub2"
	log := &logBuffer{}
	dumpOnFailure(t, "pgreplicate", log)
	ctx, cancel := context.WithCancel(context.Background())
	status := make(chan int, 1)
	go func() { status <- run(ctx, snapshotArgs(r, 1000, "--createTables"), log) }()
	t.Cleanup(func() {
		cancel()
		<-status
	})

	// Changes to both tables all along.
	stopWriting := make(chan struct{})
	written := make(chan error, 1)
	var txs atomic.Int64
	go func() {
		rng := rand.New(rand.NewPCG(3, 4))
		tick := time.NewTicker(3 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stopWriting:
				written <- nil
				return
			case <-tick.C:
			}
			var err error
			k := 1 + rng.IntN(3000)
			switch i % 4 {
			case 0:
				_, err = r.src.Pool.Exec(ctx, `INSERT INTO kv (k, v) VALUES ($1, 'w') ON CONFLICT (k) DO UPDATE SET v = excluded.v || kv.v`, k)
			case 1:
				_, err = r.src.Pool.Exec(ctx, `DELETE FROM kv WHERE k = $1`, k)
			case 2:
				_, err = r.src.Pool.Exec(ctx, `INSERT INTO t2 VALUES ($1, 'w', NULL) ON CONFLICT (id) DO UPDATE SET v = t2.v || 'x'`, 20000+k)
			default:
				_, err = r.src.Pool.Exec(ctx, `DELETE FROM t2 WHERE id = $1`, 1+rng.IntN(20000))
			}
			if err != nil {
				written <- err
				return
			}
			txs.Add(1)
		}
	}()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			close(stopWriting)
			require.NoError(t, <-written, "writer")
		}
	}
	t.Cleanup(stop)
	more := func(n int64) {
		base := txs.Load()
		pgtest.Eventually(t, time.Minute, "more changes", func() bool { return txs.Load() > base+n })
	}

	const kvSummary = `SELECT count(*) || ' ' || md5(coalesce(string_agg(kv::text, ',' ORDER BY k), '')) FROM kv`
	const t2Summary = `SELECT count(*) || ' ' || md5(coalesce(string_agg(t2::text, ',' ORDER BY id), '')) FROM t2`
	pgtest.Eventually(t, time.Minute, "the snapshot of kv", func() bool {
		done, all := chunksDone(t, r)
		return all > 0 && done == all
	})

	// A table with rows joins the publication; the target creates it.
	r.src.Exec(t, `INSERT INTO t2 SELECT i, md5(i::text), i FROM generate_series(1, 20000) i`,
		`ALTER PUBLICATION pub2 ADD TABLE t2`)
	more(200)

	// Columns added at the source: without and with a default.
	r.src.Exec(t, `ALTER TABLE kv ADD COLUMN c1 INT`)
	more(100)
	r.src.Exec(t, `UPDATE kv SET c1 = k WHERE k % 7 = 0`)
	r.src.Exec(t, `ALTER TABLE kv ADD COLUMN c2 TEXT NOT NULL DEFAULT 'dflt'`)
	more(200)
	stop()
	got := waitEqual(t, r, 2*time.Minute, kvSummary)
	t.Logf("kv: %s", got)
	got = waitEqual(t, r, 2*time.Minute, t2Summary)
	t.Logf("t2: %s", got)

	// A dropped column stops replication with an error that says what to
	// do, until the target matches.
	r.src.Exec(t, `ALTER TABLE kv DROP COLUMN c1`, `UPDATE kv SET v = 'after drop' WHERE k < 10`)
	pgtest.Eventually(t, time.Minute, "the error about the dropped column", func() bool {
		return strings.Contains(log.String(), `the source no longer sends column \"c1\" of public.kv`)
	})
	r.dst.Exec(t, `ALTER TABLE kv DROP COLUMN c1`)
	got = waitEqual(t, r, 2*time.Minute, kvSummary)
	t.Logf("kv after the drop: %s", got)
	cancel()
	assert.Equal(t, 0, <-status)
	status <- 0
}

func TestSnapshotFlags(t *testing.T) {
	base := []string{"--sourceConn", "postgres://h/a", "--targetConn", "postgres://h/b", "--publicationName", "p", "--slotName", "s"}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no workers", []string{"--snapshot", "--snapshotWorkers", "0"}, "--snapshotWorkers must be at least 1, got 0"},
		{"no chunk rows", []string{"--snapshot", "--snapshotChunkRows", "-1"}, "--snapshotChunkRows must be at least 1, got -1"},
		{"no poll", []string{"--snapshot", "--snapshotPoll", "0s"}, "--snapshotPoll must be positive, got 0s"},
		{"create tables without snapshot", []string{"--createTables"}, "--createTables needs --snapshot"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out logBuffer
			assert.Equal(t, 2, run(context.Background(), append(append([]string(nil), base...), tc.args...), &out))
			assert.Contains(t, out.String(), tc.want)
		})
	}
}

// TestSnapshotCompositeKey copies a table whose key is not one integer,
// split at keys read from the table, while rows change.
func TestSnapshotCompositeKey(t *testing.T) {
	r := newReplication(t, `CREATE TABLE c (a TEXT, b INT, v TEXT, PRIMARY KEY (a, b))`)
	r.src.Exec(t, `INSERT INTO c SELECT md5((i % 50)::text), i, 'x' FROM generate_series(1, 4000) i`)
	stop := inProcess(t, snapshotArgs(r, 4000))
	r.src.Exec(t, `UPDATE c SET v = 'y' WHERE b % 3 = 0`, `DELETE FROM c WHERE b % 5 = 0`)
	pgtest.Eventually(t, time.Minute, "the snapshot", func() bool {
		done, all := chunksDone(t, r)
		return all > 1 && done == all
	})
	r.src.Exec(t, `INSERT INTO c SELECT md5(i::text), -i, 'z' FROM generate_series(1, 100) i`)
	waitEqual(t, r, time.Minute, `SELECT count(*) || ' ' || md5(coalesce(string_agg(c::text, ',' ORDER BY a, b), '')) FROM c`)
	assert.Equal(t, 0, stop())
}
