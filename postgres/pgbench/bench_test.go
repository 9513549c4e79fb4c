// Package pgbench_test compares pgreplicate with PostgreSQL's built-in
// logical replication (a native subscription) on the same pgbench
// workloads, in one PostgreSQL cluster.
//
// It is long (a few minutes) and runs only when asked:
//
//	LOGICAL_PGBENCH=1 .ci/with-postgres bash -c 'cd postgres && go test -v -run TestPgbenchVsNative ./pgbench'
//
// or simply bench/pg. Knobs (environment):
//
//	LOGICAL_PGBENCH_RUNS      runs of every measurement (default 3); the table shows medians
//	LOGICAL_PGBENCH_DURATION  length of the timed pgbench run (default 15s)
//	LOGICAL_PGBENCH_SYSTEMS   comma-separated subset of native,serial,immediate
//	LOGICAL_PGBENCH_WORKLOADS comma-separated subset of backlog,backlog60k,tpcb16,simple16,load,bulk2m,run
//	                          (default: all but run)
//	LOGICAL_PGBENCH_OUT       also write the table to this file
//	LOGICAL_PGBENCH_PERF      directory: `perf record -a -g` during each pgreplicate measurement
//	LOGICAL_PGBENCH_CPUPROFILE directory: pgreplicate's --cpuprofile of each measurement
//	LOGICAL_PGBENCH_BASELINE  a pgreplicate binary: adds the systems baseline (it, serial) and
//	                          baseline-immediate (it, --immediate) to compare with in the same run
//
// Every measurement uses a fresh source and target database; the systems
// run one after the other, never at the same time, so they do not compete
// for the CPUs. A measurement starts the replicator, waits until the
// replication slot is active, starts pgbench on the source, and then polls
// the target every 100ms until its summary (row counts, balance sums, the
// history's count and sum of deltas) equals the source's. The total is the
// time from the start of pgbench until then; the catch-up lag is the part
// after pgbench exited. A full row-by-row checksum comparison afterwards
// (not timed) makes sure the replica is really equal.
package pgbench_test

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/logical-go/logical/postgres/internal/pgtest"
	"github.com/stretchr/testify/require"
)

// Environment knobs.
const (
	envEnable    = "LOGICAL_PGBENCH"
	envRuns      = "LOGICAL_PGBENCH_RUNS"
	envRunLength = "LOGICAL_PGBENCH_DURATION"
	envSystems   = "LOGICAL_PGBENCH_SYSTEMS"
	envWorkloads = "LOGICAL_PGBENCH_WORKLOADS"
	envOut       = "LOGICAL_PGBENCH_OUT"
	envPerf      = "LOGICAL_PGBENCH_PERF"
	envProfiles  = "LOGICAL_PGBENCH_CPUPROFILE"
	envBaseline  = "LOGICAL_PGBENCH_BASELINE"
)

// pollInterval is how often the target is compared with the source, and
// the CPU meter sampled. A workload with a probe polls the probe every
// probeInterval instead: a catch-up of under a second measured at 100 ms
// steps was up to 100 ms (15%) late.
const (
	pollInterval  = 100 * time.Millisecond
	probeInterval = 10 * time.Millisecond
)

// catchUpDeadline bounds the wait for the target after pgbench exited.
const catchUpDeadline = 5 * time.Minute

// pgbenchTables are the published tables.
var pgbenchTables = []string{"pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"}

// summarySQL is what "the target equals the source" compares, cheap enough
// to run every 100ms.
const summarySQL = `SELECT concat_ws(' ',
	(SELECT count(*) || '/' || coalesce(sum(abalance), 0) FROM pgbench_accounts),
	(SELECT count(*) || '/' || coalesce(sum(bbalance), 0) FROM pgbench_branches),
	(SELECT count(*) || '/' || coalesce(sum(tbalance), 0) FROM pgbench_tellers),
	(SELECT count(*) || '/' || coalesce(sum(delta), 0) FROM pgbench_history))`

// checksumSQL compares every row, once, after the timed part.
// Each table's checksum is the md5 of its rows' md5s in key order (the
// md5s keep the aggregated string at 32 bytes a row, so 2M rows fit).
const checksumSQL = `SELECT concat_ws(' ',
	(SELECT count(*) || ':' || md5(coalesce(string_agg(md5(a::text), '' ORDER BY aid), '')) FROM pgbench_accounts a),
	(SELECT count(*) || ':' || md5(coalesce(string_agg(md5(b::text), '' ORDER BY bid), '')) FROM pgbench_branches b),
	(SELECT count(*) || ':' || md5(coalesce(string_agg(md5(t::text), '' ORDER BY tid), '')) FROM pgbench_tellers t),
	(SELECT count(*) || ':' || md5(coalesce(string_agg(md5(h::text), '' ORDER BY tid, bid, aid, delta, mtime), '')) FROM pgbench_history h))`

// workload is what pgbench does on the source.
type workload struct {
	name  string
	title string
	// prepare creates the tables (and their initial data) in a database;
	// it runs on the source and on the target alike.
	prepare []string
	// args are pgbench's arguments for the timed part.
	args []string
	// script, if set, is a custom pgbench script; args get -f with its
	// file.
	script string
	// backlog makes the writes happen before the replicator starts: the
	// measurement is then the catch-up of the whole backlog, from the
	// start of the replicator.
	backlog bool
	// rowsPerTxn is the number of row changes of each of pgbench's
	// transactions, fixedRows those of a load (one transaction); a run's
	// replicated rows are rowsPerTxn * transactions + fixedRows.
	rowsPerTxn, fixedRows int
	// probe, if set, is a cheap query that returns "true" once the target
	// may be complete; only then is the summary compared (the summary of
	// a 2M-row table costs a scan that would compete with the apply).
	probe string
	// marker, if set, is a statement run at the source after the
	// backlog was written (its last transaction), for probe to find.
	marker string
}

// system is a replicator under test.
type system struct {
	name  string
	title string
	// start begins replicating src into dst through the slot and the
	// publication "pub"; the returned function stops it.
	start func(t *testing.T, b *bench, src, dst *pgtest.DB, slot, label string) (stop func())
}

// result is one measurement.
type result struct {
	total, lag time.Duration
	txns       int
	// rows is the number of row changes the source committed.
	rows int
	// cpu is the CPU time the replicating side used from the start of the
	// measurement until the target equalled the source: the apply
	// worker(s) of the subscription for native; pgreplicate plus the
	// backends it connected to for pgreplicate. walsender is the CPU time
	// of the slot's walsender in the same time.
	cpu, walsender time.Duration
	// floor is the least time the measured processes' CPU allowed on this
	// machine (cpuMeter.floor): how fast the same work could have been
	// with no process ever waiting for another, the network or a CPU.
	floor time.Duration
}

// bench is the state of one TestPgbenchVsNative.
type bench struct {
	server   string
	binary   string
	replPid  int // the running pgreplicate, 0 if none
	perf     string
	profiles string // directory for pgreplicate's CPU profiles
}

// backlogWorkload is the backlog workload called name: backlogClients
// clients run perClient transactions of backlogScript each while no
// replicator runs.
func backlogWorkload(name string, perClient int) workload {
	return workload{
		name:    name,
		title:   fmt.Sprintf("backlog of %d txns x 4 stmts (-c 8), catch-up", backlogClients*perClient),
		prepare: []string{"-i", "-I", "dtgp", "-s", "1", "-q"},
		args: []string{"-n", "-c", strconv.Itoa(backlogClients), "-j", "2", "-t", strconv.Itoa(perClient),
			"--max-tries", "10"},
		script:     backlogScript,
		backlog:    true,
		rowsPerTxn: 4,
		marker:     backlogMarker,
		probe:      backlogProbe,
		fixedRows:  1, // the marker
	}
}

// backlogMarker is the backlog's last source transaction, and
// backlogProbe finds it at the target (one index lookup): until it
// arrived, the summary is not compared. That summary scans
// pgbench_accounts; at every 100 ms poll of a catch-up it cost about a
// fifth of one of bench/pg's two CPUs, taken from the replicator under
// test. The marker is a row of pgbench_accounts (aid 0, which the script
// never touches), the one table the script writes: in serial mode and for
// native replication it arrives last; --immediate spreads the table's
// keys over shards that apply in parallel, so the other shards may still
// be a few milliseconds behind when it arrived (see catchUp).
const (
	backlogMarker = `INSERT INTO pgbench_accounts (aid, bid, abalance, filler) VALUES (0, 1, 424242, 'marker')`
	backlogProbe  = `SELECT EXISTS (SELECT 1 FROM pgbench_accounts WHERE aid = 0)::text`
)

// The backlog workload: backlogClients clients run backlogPerClient
// transactions each of backlogScript, sysbench-like (two updates, a
// delete and an insert of small rows), unthrottled.
const (
	backlogClients   = 8
	backlogPerClient = 1500
	backlogScript    = `\set a random(1, 100000)
\set b random(1, 100000)
\set c random(1, 100000)
\set d random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :d WHERE aid = :a;
UPDATE pgbench_accounts SET filler = md5(CAST(:d AS text)) WHERE aid = :b;
DELETE FROM pgbench_accounts WHERE aid = :c;
INSERT INTO pgbench_accounts (aid, bid, abalance, filler) VALUES (:c, 1, :d, 'x')
	ON CONFLICT (aid) DO UPDATE SET abalance = excluded.abalance;
END;
`
)

func TestPgbenchVsNative(t *testing.T) {
	if os.Getenv(envEnable) != "1" {
		t.Skipf("set %s=1 (and run under .ci/with-postgres) for the pgbench comparison; bench/pg does both", envEnable)
	}
	b := &bench{server: pgtest.ServerURL(t), perf: os.Getenv(envPerf), profiles: os.Getenv(envProfiles)}
	runs := pgtest.EnvInt(t, envRuns, 3)
	duration := envDuration(t, envRunLength, 15*time.Second)
	for _, tool := range []string{"pgbench", "psql"} {
		_, err := exec.LookPath(tool)
		require.NoError(t, err, "%s must be on PATH", tool)
	}
	b.binary = buildPgreplicate(t)
	for _, dir := range []string{b.perf, b.profiles} {
		if dir != "" {
			require.NoError(t, os.MkdirAll(dir, 0o755))
		}
	}

	secs := strconv.Itoa(int(duration.Round(time.Second) / time.Second))
	all := []workload{
		backlogWorkload("backlog", backlogPerClient),
		// The same, five times longer: the replicators' start (slot,
		// catalog, first message) and the 100 ms polls weigh a fifth as
		// much as in a catch-up of about a second.
		backlogWorkload("backlog60k", backlogPerClient*5),
		{
			name:       "tpcb16",
			title:      fmt.Sprintf("%s pgbench -c 16 tpcb-like", duration),
			prepare:    []string{"-i", "-I", "dtgp", "-s", "1", "-q"},
			args:       []string{"-n", "-c", "16", "-j", "2", "-T", secs},
			rowsPerTxn: 4, // 3 updates and an insert into the history
		},
		{
			name:       "simple16",
			title:      fmt.Sprintf("%s pgbench -c 16 -b simple-update", duration),
			prepare:    []string{"-i", "-I", "dtgp", "-s", "1", "-q"},
			args:       []string{"-n", "-c", "16", "-j", "2", "-b", "simple-update", "-T", secs},
			rowsPerTxn: 2, // an update and an insert into the history
		},
		pgbenchLoad("load", "100k load (pgbench -i -I g, 1 txn)", 1),
		pgbenchLoad("bulk2m", "2M-row load (pgbench -i -I g -s 20, 1 txn)", 20),
		{
			name:       "run",
			title:      fmt.Sprintf("%s pgbench -c 4", duration),
			prepare:    []string{"-i", "-I", "dtgp", "-s", "1", "-q"},
			args:       []string{"-n", "-c", "4", "-T", secs},
			rowsPerTxn: 4,
		},
	}
	workloads := selectWorkloads(t, all, []string{"backlog", "backlog60k", "tpcb16", "simple16", "load", "bulk2m"})
	for i, w := range workloads {
		if w.script != "" {
			path := filepath.Join(t.TempDir(), w.name+".sql")
			require.NoError(t, os.WriteFile(path, []byte(w.script), 0o644))
			workloads[i].args = append(slices.Clip(w.args), "-f", path)
		}
	}
	candidates := []system{
		{name: "native", title: "native subscription", start: startNative},
		{name: "serial", title: "pgreplicate (serial)", start: startPgreplicate(nil)},
		{name: "immediate", title: "pgreplicate --immediate", start: startPgreplicate([]string{"--immediate"})},
	}
	if bin := os.Getenv(envBaseline); bin != "" {
		candidates = append(candidates,
			system{name: "baseline", title: "pgreplicate (serial) built elsewhere", start: startBinary(bin, nil)},
			system{name: "baseline-immediate", title: "pgreplicate --immediate built elsewhere", start: startBinary(bin, []string{"--immediate"})})
	}
	systems := selectSystems(t, candidates)

	results := make(map[string][]result) // workload/system
	for run := 1; run <= runs; run++ {
		for _, w := range workloads {
			// Rotate the order of the systems from run to run, so that
			// none is always first after a workload change.
			for i := range systems {
				s := systems[(i+run-1)%len(systems)]
				name := fmt.Sprintf("run%d/%s/%s", run, w.name, s.name)
				ok := t.Run(name, func(t *testing.T) {
					r := b.measure(t, w, s, name)
					results[w.name+"/"+s.name] = append(results[w.name+"/"+s.name], r)
					t.Logf("%s: total %s, lag %s, %d transactions, %d rows, cpu %s (walsender %s)",
						name, fmtDur(r.total), fmtDur(r.lag), r.txns, r.rows, fmtDur(r.cpu), fmtDur(r.walsender))
				})
				if !ok {
					t.FailNow()
				}
			}
		}
	}

	table := renderTable(workloads, systems, results, runs)
	fmt.Print(table)
	if out := os.Getenv(envOut); out != "" {
		require.NoError(t, os.WriteFile(out, []byte(table), 0o644))
	}
}

// measure runs workload w against system s once, on fresh databases.
func (b *bench) measure(t *testing.T, w workload, s system, label string) result {
	src := pgtest.NewDB(t, "bsrc")
	dst := pgtest.NewDB(t, "bdst")
	slot := "bench_" + strings.TrimPrefix(src.Name, "bsrc_")
	pgbench(t, src, w.prepare...)
	pgbench(t, dst, w.prepare...)
	src.Exec(t, `CREATE PUBLICATION pub FOR TABLE `+strings.Join(pgbenchTables, ", "),
		`SELECT pg_create_logical_replication_slot('`+slot+`', 'pgoutput')`)
	require.Equal(t, query(t, src, summarySQL), query(t, dst, summarySQL), "the databases start equal")

	var out string
	var start, wrote time.Time
	var perf *exec.Cmd
	cpu := &cpuMeter{b: b, src: src, dst: dst, slot: slot}
	startPerfIf := func() {
		if b.perf != "" && s.name != "native" {
			perf = startPerf(t, filepath.Join(b.perf, strings.ReplaceAll(label, "/", "-")+".data"))
		}
	}
	if w.backlog {
		// The backlog is written with no replicator running; the clock
		// starts with the replicator.
		out = pgbench(t, src, w.args...)
		if w.marker != "" {
			src.Exec(t, w.marker)
		}
		src.Exec(t, `CHECKPOINT`)
		startPerfIf()
		cpu.start(t)
		start = time.Now()
		wrote = start
		stop := s.start(t, b, src, dst, slot, label)
		defer stop()
	} else {
		stop := s.start(t, b, src, dst, slot, label)
		defer stop()
		pgtest.Eventually(t, time.Minute, "the replication slot to become active", func() bool {
			return query(t, src, `SELECT active::text FROM pg_replication_slots WHERE slot_name = $1`, slot) == "true"
		})
		// Start every measurement from a clean slate of dirty buffers.
		src.Exec(t, `CHECKPOINT`)
		startPerfIf()
		cpu.start(t)
		start = time.Now()
		out = pgbench(t, src, w.args...)
		wrote = time.Now()
	}
	done := b.catchUp(t, w, src, dst, cpu, wrote)
	cpu.sample(t)
	if perf != nil {
		_ = perf.Process.Signal(syscall.SIGINT)
		_ = perf.Wait()
	}
	require.Equal(t, query(t, src, checksumSQL), query(t, dst, checksumSQL), "every row is equal")

	r := result{total: done.Sub(start), lag: done.Sub(wrote), txns: 1}
	if m := processedRE.FindStringSubmatch(out); m != nil {
		r.txns, _ = strconv.Atoi(m[1])
	}
	r.rows = w.fixedRows + w.rowsPerTxn*r.txns
	r.cpu, r.walsender = cpu.used()
	r.floor = cpu.floor()
	t.Logf("%s: cpu of the replicating side by process: %s; floor %s", label, cpu.breakdown(), fmtDur(r.floor))
	return r
}

// catchUp waits until the target equals the source and returns when it
// found it so (the start of the comparison that did). With a probe, the
// probe is polled every probeInterval and the summary compared once it
// holds; a summary that still differs is compared again after twice as
// long as its comparison took (at least probeInterval), so that its scans
// take at most a third of one CPU from the replicator. Without one, the
// summary is compared every pollInterval. The CPU meter is sampled every
// pollInterval.
func (b *bench) catchUp(t *testing.T, w workload, src, dst *pgtest.DB, cpu *cpuMeter, wrote time.Time) time.Time {
	want := query(t, src, summarySQL)
	var got string
	every := pollInterval
	if w.probe != "" {
		every = probeInterval
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	var sampled, nextSummary time.Time
	for {
		if now := time.Now(); now.Sub(sampled) >= pollInterval {
			cpu.sample(t)
			sampled = now
		}
		if w.probe == "" || (!time.Now().Before(nextSummary) && query(t, dst, w.probe) == "true") {
			began := time.Now()
			got = query(t, dst, summarySQL)
			if got == want {
				return began // the summary's snapshot
			}
			nextSummary = time.Now().Add(max(2*time.Since(began), probeInterval))
		}
		if time.Since(wrote) > catchUpDeadline {
			t.Fatalf("the target did not catch up within %s of the end of the writes:\nsource: %s\ntarget: %s",
				catchUpDeadline, want, got)
		}
		<-tick.C
	}
}

// replApplicationName tags pgreplicate's connections, so that the CPU
// meter finds the backends that work for it.
const replApplicationName = "pgreplicate_bench"

// cpuMeter measures the CPU time (user + system, /proc/PID/stat) of the
// replicating side of one measurement. Source and target are two
// databases of one cluster, so the cluster's processes are told apart by
// what they do (pg_stat_activity), not by their parent:
//
//   - native: the subscription's logical replication workers (the apply
//     worker; tablesync workers too, though copy_data = false starts none),
//     backend_type "logical replication worker" in the target database;
//   - pgreplicate: its own process (every thread) plus every client
//     backend whose application_name is replApplicationName (its target
//     connections, and any plain connection to the source);
//   - walsender: the slot's active_pid, reported apart (it does the same
//     decoding for both).
//
// Not counted for either: the pgbench backends, the harness's polls, and
// the shared background processes (checkpointer, WAL writer, autovacuum),
// which serve source and target alike. Processes are sampled at every
// poll (100 ms); a process that exits between two samples loses at most
// the CPU of that interval, and one first seen after the start counts
// from zero (it was started after the start).
type cpuMeter struct {
	b        *bench
	src, dst *pgtest.DB
	slot     string
	base     map[int]time.Duration
	last     map[int]time.Duration
	role     map[int]byte // 'r' replicator, 'w' walsender
	// The schedstat of each process at its first and last sample, and
	// when those were taken, for breakdown.
	first, latest map[int]sched
}

// sched is a process's schedstat sums at a time.
type sched struct {
	at          time.Time
	ran, waited time.Duration
	threads     int
}

func (m *cpuMeter) start(t *testing.T) {
	m.base, m.last, m.role = nil, make(map[int]time.Duration), make(map[int]byte)
	m.first, m.latest = make(map[int]sched), make(map[int]sched)
	m.sample(t)
	m.base = make(map[int]time.Duration, len(m.last))
	for pid, used := range m.last {
		m.base[pid] = used
	}
}

// meterSQL lists the pids of the replicating side ('r') and the slot's
// walsender ('w').
const meterSQL = `SELECT coalesce(string_agg(pid || ':' || CASE WHEN pid = w.active_pid THEN 'w' ELSE 'r' END, ' '), '')
	FROM pg_stat_activity,
		(SELECT (SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1) AS active_pid) w
	WHERE pid = w.active_pid
		OR (backend_type LIKE 'logical replication%worker' AND datname = $2)
		OR (backend_type = 'client backend' AND application_name = $3)`

func (m *cpuMeter) sample(t *testing.T) {
	for _, f := range strings.Fields(query(t, m.src, meterSQL, m.slot, m.dst.Name, replApplicationName)) {
		pid, err := strconv.Atoi(f[:len(f)-2])
		require.NoError(t, err, "pid in %q", f)
		m.see(pid, f[len(f)-1])
	}
	if m.b.replPid != 0 {
		m.see(m.b.replPid, 'r')
	}
}

func (m *cpuMeter) see(pid int, role byte) {
	st := procStat(pid)
	if st.cpu == 0 && st.ppid == 0 {
		return // gone
	}
	if st.cpu >= m.last[pid] {
		m.last[pid] = st.cpu
	}
	m.role[pid] = role
	now := sched{at: time.Now(), ran: st.ran, waited: st.waited, threads: st.threads}
	if _, ok := m.first[pid]; !ok {
		m.first[pid] = now
	}
	m.latest[pid] = now
}

// breakdown lists each measured process with its role and CPU time, for
// the log (to check that the right processes were found).
func (m *cpuMeter) breakdown() string {
	pids := make([]int, 0, len(m.last))
	for pid := range m.last {
		pids = append(pids, pid)
	}
	slices.Sort(pids)
	var parts []string
	for _, pid := range pids {
		what := "backend"
		switch {
		case m.role[pid] == 'w':
			what = "walsender"
		case pid == m.b.replPid:
			what = "pgreplicate"
		}
		parts = append(parts, fmt.Sprintf("%s %d %s%s", what, pid, fmtDur(m.last[pid]-m.base[pid]), m.sched(pid)))
	}
	return strings.Join(parts, ", ")
}

// sched says how a process spent the time between its first and last
// samples: on a CPU, waiting for one (runnable: CPU-bound but crowded
// out), and otherwise, for a single-threaded process, asleep (waiting
// for another process, the network or the disk). A process asleep for
// a small part of the time is on the critical path; one that waited for
// a CPU for a large part says the machine had no CPU to spare.
func (m *cpuMeter) sched(pid int) string {
	a, b := m.first[pid], m.latest[pid]
	wall := b.at.Sub(a.at)
	if wall <= 0 || b.threads == 0 {
		return ""
	}
	ran, waited := b.ran-a.ran, b.waited-a.waited
	pct := func(d time.Duration) float64 { return 100 * d.Seconds() / wall.Seconds() }
	if b.threads > 1 {
		return fmt.Sprintf(" (of %s: %d threads ran %.0f%%, waited for a CPU %.0f%%)", fmtDur(wall), b.threads, pct(ran), pct(waited))
	}
	return fmt.Sprintf(" (of %s: ran %.0f%%, waited for a CPU %.0f%%, asleep %.0f%%)", fmtDur(wall), pct(ran), pct(waited),
		pct(max(wall-ran-waited, 0)))
}

// used returns the CPU time of the replicating side and of the walsender
// since start.
func (m *cpuMeter) used() (repl, walsender time.Duration) {
	for pid, used := range m.last {
		d := used - m.base[pid]
		if m.role[pid] == 'w' {
			walsender += d
		} else {
			repl += d
		}
	}
	return repl, walsender
}

// floor is the least time in which the measured processes could have done
// what they did on this machine's CPUs: a single-threaded process (the
// walsender, a backend, the apply worker) needs its own CPU time, and all
// of them together need their total spread over every CPU. pgreplicate
// counts only in the total, as its threads run in parallel. The harness,
// pgbench and the cluster's shared processes are not measured, so the
// floor is low, if anything.
func (m *cpuMeter) floor() time.Duration {
	var total, single time.Duration
	for pid, used := range m.last {
		d := used - m.base[pid]
		total += d
		if m.latest[pid].threads == 1 {
			single = max(single, d)
		}
	}
	return max(single, total/time.Duration(runtime.NumCPU()))
}

// processedRE finds pgbench's count of transactions.
var processedRE = regexp.MustCompile(`number of transactions actually processed: (\d+)`)

// startNative subscribes dst to the publication through the existing slot.
func startNative(t *testing.T, b *bench, src, dst *pgtest.DB, slot, _ string) func() {
	u, err := url.Parse(b.server)
	require.NoError(t, err)
	conn := fmt.Sprintf("host=%s port=%s user=%s dbname=%s", u.Hostname(), u.Port(), u.User.Username(), src.Name)
	if pw, ok := u.User.Password(); ok {
		conn += " password=" + pw
	}
	dst.Exec(t, `CREATE SUBSCRIPTION sub CONNECTION '`+strings.ReplaceAll(conn, "'", "''")+`' PUBLICATION pub
		WITH (copy_data = false, create_slot = false, slot_name = '`+slot+`')`)
	var once sync.Once
	stop := func() {
		once.Do(func() {
			// A database with a subscription cannot be dropped; detach
			// it from the slot (which pgtest drops) and drop it.
			dst.Exec(t, `ALTER SUBSCRIPTION sub DISABLE`,
				`ALTER SUBSCRIPTION sub SET (slot_name = NONE)`,
				`DROP SUBSCRIPTION sub`)
		})
	}
	t.Cleanup(stop)
	return stop
}

// startPgreplicate runs the pgreplicate binary with extra flags.
func startPgreplicate(extra []string) func(t *testing.T, b *bench, src, dst *pgtest.DB, slot, label string) func() {
	return startBinary("", extra)
}

// startBinary runs the pgreplicate binary bin (the one built, if empty)
// with extra flags.
func startBinary(bin string, extra []string) func(t *testing.T, b *bench, src, dst *pgtest.DB, slot, label string) func() {
	return func(t *testing.T, b *bench, src, dst *pgtest.DB, slot, label string) func() {
		if bin == "" {
			bin = b.binary
		}
		args := append([]string{
			"--sourceConn", pgtest.WithParam(t, src.URL, "application_name", replApplicationName),
			"--targetConn", pgtest.WithParam(t, dst.URL, "application_name", replApplicationName),
			"--publicationName", "pub",
			"--slotName", slot,
			"--logLevel", "warn",
		}, extra...)
		if b.profiles != "" {
			args = append(args, "--cpuprofile", filepath.Join(b.profiles, strings.ReplaceAll(label, "/", "-")+".pprof"))
		}
		var log pgtest.Buffer
		cmd := exec.Command(bin, args...)
		cmd.Stdout, cmd.Stderr = &log, &log
		require.NoError(t, cmd.Start())
		b.replPid = cmd.Process.Pid
		exited := make(chan struct{})
		go func() {
			_ = cmd.Wait()
			close(exited)
		}()
		var once sync.Once
		stop := func() {
			once.Do(func() {
				b.replPid = 0
				_ = cmd.Process.Signal(syscall.SIGTERM)
				select {
				case <-exited:
				case <-time.After(time.Minute):
					_ = cmd.Process.Kill()
					<-exited
					t.Errorf("pgreplicate ignored SIGTERM")
				}
				if t.Failed() || cmd.ProcessState.ExitCode() != 0 {
					t.Logf("pgreplicate exited with %d:\n%s", cmd.ProcessState.ExitCode(), log.String())
				}
			})
		}
		t.Cleanup(stop)
		return stop
	}
}

// startPerf records the call graphs of every process on the machine, so
// that the report can split the time between pgreplicate and the
// PostgreSQL backends (perf report --sort comm,dso).
func startPerf(t *testing.T, out string) *exec.Cmd {
	cmd := exec.Command("perf", "record", "-q", "-a", "-g", "-F", "499", "-o", out)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Signal(syscall.SIGINT)
			_ = cmd.Wait()
		}
	})
	return cmd
}

// buildPgreplicate compiles the command into a temporary directory.
func buildPgreplicate(t *testing.T) string {
	bin := filepath.Join(t.TempDir(), "pgreplicate")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/logical-go/logical/postgres/cmd/pgreplicate").CombinedOutput()
	require.NoError(t, err, "go build:\n%s", out)
	return bin
}

// pgbench runs pgbench on db and returns its output.
func pgbench(t *testing.T, db *pgtest.DB, args ...string) string {
	out, err := exec.Command("pgbench", append(args, db.URL)...).CombinedOutput()
	require.NoError(t, err, "pgbench %s:\n%s", strings.Join(args, " "), out)
	return string(out)
}

// query returns the single text value of sql.
func query(t *testing.T, db *pgtest.DB, sql string, args ...any) string {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var s *string
	require.NoError(t, db.Pool.QueryRow(ctx, sql, args...).Scan(&s), "%s", sql)
	if s == nil {
		return ""
	}
	return *s
}

// renderTable prints the medians as a Markdown table: a row per workload
// and pgreplicate mode, next to native replication of the same workload;
// then every run.
func renderTable(workloads []workload, systems []system, results map[string][]result, runs int) string {
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "Medians of %d run(s). time = start of the writes (backlog: of the replicator) until the target equals the source; "+
		"lag = the part after the writes ended (after the source commit for the loads); ratio = pgreplicate/native; "+
		"rows = row changes the source committed; cpu/row = CPU (user+system, /proc) of the apply worker (native) or of pgreplicate "+
		"plus its target backends, per row, in µs; walsender = the slot's walsender, µs per row; floor = the least time the CPU "+
		"the measured processes used allowed on this machine (the largest single-threaded process's CPU, or all of it spread over "+
		"every CPU), and floor ratio = pgreplicate's floor / native's time, the best ratio that CPU allows. "+
		"Every table's md5 matched after every run.\n\n", runs)
	fmt.Fprintln(&buf, "| workload | mode | native time | pgreplicate time | ratio | native lag | pgreplicate lag | lag ratio | "+
		"rows native / pgreplicate | rows/s native | rows/s pgreplicate | cpu/row native | cpu/row pgreplicate | cpu ratio | walsender cpu/row native / pgreplicate | floor native / pgreplicate | floor ratio |")
	fmt.Fprintln(&buf, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	for _, wl := range workloads {
		native := results[wl.name+"/native"]
		row := func(mode string, ours []result) {
			fmt.Fprintf(&buf, "| %s | %s | %s | %s | %s | %s | %s | %s | %s / %s | %s | %s | %s | %s | %s | %s / %s | %s / %s | %s |\n",
				wl.title, mode,
				medDur(native, totalOf), medDur(ours, totalOf), ratioOf(ours, native, totalOf),
				medDur(native, lagOf), medDur(ours, lagOf), ratioOf(ours, native, lagOf),
				medFloat(native, rowsOf, "%.0f"), medFloat(ours, rowsOf, "%.0f"),
				medFloat(native, rateOf, "%.0f"), medFloat(ours, rateOf, "%.0f"),
				medFloat(native, cpuPerRow, "%.1f"), medFloat(ours, cpuPerRow, "%.1f"), ratioFloat(ours, native, cpuPerRow),
				medFloat(native, walPerRow, "%.1f"), medFloat(ours, walPerRow, "%.1f"),
				medDur(native, floorOf), medDur(ours, floorOf), ratioAgainst(ours, floorOf, native, totalOf))
		}
		only := true
		for _, s := range systems {
			if s.name != "native" {
				only = false
				row(s.name, results[wl.name+"/"+s.name])
			}
		}
		if only {
			row("-", nil)
		}
	}
	// The machine's speed drifts between rounds (it is shared), so each
	// round's own ratio says more than one of medians taken apart.
	fmt.Fprintf(&buf, "\nTime ratio in each round (pgreplicate / native of the same round):\n\n")
	for _, wl := range workloads {
		native := results[wl.name+"/native"]
		for _, s := range systems {
			ours := results[wl.name+"/"+s.name]
			if s.name == "native" || len(native) == 0 {
				continue
			}
			fmt.Fprintf(&buf, "    %-8s %-10s", wl.name, s.name)
			for i := range min(len(ours), len(native)) {
				fmt.Fprintf(&buf, "  %.2f", ours[i].total.Seconds()/native[i].total.Seconds())
			}
			fmt.Fprintln(&buf)
		}
	}
	fmt.Fprintf(&buf, "\nEvery run (time/lag/txns/rows/cpu/walsender cpu/floor):\n\n")
	for _, wl := range workloads {
		for _, s := range systems {
			fmt.Fprintf(&buf, "    %-8s %-10s", wl.name, s.name)
			for _, r := range results[wl.name+"/"+s.name] {
				fmt.Fprintf(&buf, "  %s/%s/%d/%d/%s/%s/%s", fmtDur(r.total), fmtDur(r.lag), r.txns, r.rows, fmtDur(r.cpu), fmtDur(r.walsender), fmtDur(r.floor))
			}
			fmt.Fprintln(&buf)
		}
	}
	return buf.String()
}

func totalOf(r result) time.Duration { return r.total }
func floorOf(r result) time.Duration { return r.floor }
func lagOf(r result) time.Duration   { return r.lag }
func rowsOf(r result) float64        { return float64(r.rows) }

// rateOf is rows replicated per second of the measured time.
func rateOf(r result) float64 {
	if r.total <= 0 {
		return 0
	}
	return float64(r.rows) / r.total.Seconds()
}

// cpuPerRow and walPerRow are microseconds of CPU per row.
func cpuPerRow(r result) float64 { return perRow(r.cpu, r.rows) }
func walPerRow(r result) float64 { return perRow(r.walsender, r.rows) }

func perRow(d time.Duration, rows int) float64 {
	if rows <= 0 {
		return 0
	}
	return float64(d.Microseconds()) / float64(rows)
}

// ratioOf is the ratio of the medians of f, ours over native.
func ratioOf(ours, native []result, f func(result) time.Duration) string {
	return ratioAgainst(ours, f, native, f)
}

// ratioAgainst is the median of f of ours over the median of g of native.
func ratioAgainst(ours []result, f func(result) time.Duration, native []result, g func(result) time.Duration) string {
	if len(ours) == 0 || len(native) == 0 || median(native, g) <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", float64(median(ours, f))/float64(median(native, g)))
}

func ratioFloat(ours, native []result, f func(result) float64) string {
	if len(ours) == 0 || len(native) == 0 || medianFloat(native, f) <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", medianFloat(ours, f)/medianFloat(native, f))
}

// median returns the median of f over rs (the mean of the middle two for
// an even count).
func median(rs []result, f func(result) time.Duration) time.Duration {
	return time.Duration(medianFloat(rs, func(r result) float64 { return float64(f(r)) }))
}

func medianFloat(rs []result, f func(result) float64) float64 {
	if len(rs) == 0 {
		return 0
	}
	vs := make([]float64, len(rs))
	for i, r := range rs {
		vs[i] = f(r)
	}
	slices.Sort(vs)
	if len(vs)%2 == 1 {
		return vs[len(vs)/2]
	}
	return (vs[len(vs)/2-1] + vs[len(vs)/2]) / 2
}

func medDur(rs []result, f func(result) time.Duration) string {
	if len(rs) == 0 {
		return "-"
	}
	return fmtDur(median(rs, f))
}

func medFloat(rs []result, f func(result) float64, format string) string {
	if len(rs) == 0 {
		return "-"
	}
	return fmt.Sprintf(format, medianFloat(rs, f))
}

func fmtDur(d time.Duration) string { return fmt.Sprintf("%.2fs", d.Seconds()) }

// pgbenchLoad is a workload that loads pgbench's tables at scale in one
// source transaction: pgbench -i -I g truncates them and loads them
// (branches and tellers by INSERT, the accounts by COPY); the tables exist
// empty, with their primary keys, in source and target.
func pgbenchLoad(name, title string, scale int) workload {
	accounts := 100000 * scale
	return workload{
		name:      name,
		title:     title,
		prepare:   []string{"-i", "-I", "dtp", "-q"},
		args:      []string{"-i", "-I", "g", "-s", strconv.Itoa(scale), "-q"},
		fixedRows: accounts + 10*scale + scale,
		probe:     fmt.Sprintf(`SELECT EXISTS (SELECT 1 FROM pgbench_accounts WHERE aid = %d)::text`, accounts),
	}
}

// selectWorkloads keeps the workloads named in LOGICAL_PGBENCH_WORKLOADS,
// or those named by def.
func selectWorkloads(t *testing.T, all []workload, def []string) []workload {
	names := listEnv(envWorkloads)
	if names == nil {
		names = def
	}
	var out []workload
	for _, n := range names {
		i := slices.IndexFunc(all, func(w workload) bool { return w.name == n })
		require.GreaterOrEqual(t, i, 0, "%s: unknown workload %q (backlog, backlog60k, tpcb16, simple16, load, bulk2m, run)", envWorkloads, n)
		out = append(out, all[i])
	}
	return out
}

// selectSystems keeps the systems named in LOGICAL_PGBENCH_SYSTEMS.
func selectSystems(t *testing.T, all []system) []system {
	names := listEnv(envSystems)
	if names == nil {
		return all
	}
	var out []system
	for _, n := range names {
		i := slices.IndexFunc(all, func(s system) bool { return s.name == n })
		require.GreaterOrEqual(t, i, 0, "%s: unknown system %q (native, serial, immediate; baseline and baseline-immediate with %s)", envSystems, n, envBaseline)
		out = append(out, all[i])
	}
	return out
}

func listEnv(name string) []string {
	v := strings.TrimSpace(os.Getenv(name))
	if v == "" {
		return nil
	}
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

func envDuration(t *testing.T, name string, def time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	require.NoError(t, err, "%s must be a duration like 15s", name)
	require.GreaterOrEqual(t, d, time.Second, "%s must be at least 1s", name)
	return d
}

// stat is what cpuMeter needs from /proc/PID/stat and the schedstat of
// the process's threads.
type stat struct {
	ppid int
	cpu  time.Duration
	// ran and waited sum /proc/PID/task/*/schedstat: the time the
	// threads ran, and the time they were runnable but waited for a CPU.
	ran, waited time.Duration
	threads     int
}

// clockTicks is USER_HZ, 100 on Linux.
const clockTicks = 100

// procStat reads /proc/PID/stat; zero if the process is gone.
func procStat(pid int) stat {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return stat{}
	}
	// The command is in parentheses and may contain spaces.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return stat{}
	}
	f := strings.Fields(string(data[i+1:]))
	// f[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
	if len(f) < 13 {
		return stat{}
	}
	ppid, _ := strconv.Atoi(f[1])
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	st := stat{ppid: ppid, cpu: time.Duration(utime+stime) * time.Second / clockTicks}
	tasks, _ := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "task"))
	for _, task := range tasks {
		data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "task", task.Name(), "schedstat"))
		if err != nil {
			continue
		}
		// Nanoseconds on a CPU, nanoseconds waiting on a run queue, time slices.
		f := strings.Fields(string(data))
		if len(f) < 2 {
			continue
		}
		ran, _ := strconv.ParseInt(f[0], 10, 64)
		waited, _ := strconv.ParseInt(f[1], 10, 64)
		st.ran += time.Duration(ran)
		st.waited += time.Duration(waited)
		st.threads++
	}
	return st
}
