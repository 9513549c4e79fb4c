package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/logical-go/logical/postgres/internal/pgtest"
	"github.com/logical-go/logical/postgres/pglogical"
	"github.com/stretchr/testify/require"
)

// replication is a source and a target database for one test.
type replication struct {
	src, dst *pgtest.DB
	pub      string
	slot     string
}

// newReplication creates the two databases, runs ddl in both, and
// publishes every table of the source.
func newReplication(t *testing.T, ddl ...string) *replication {
	t.Helper()
	r := &replication{
		src:  pgtest.NewDB(t, "src"),
		dst:  pgtest.NewDB(t, "dst"),
		pub:  "pub",
		slot: "",
	}
	r.slot = "slot_" + strings.TrimPrefix(r.src.Name, "src_")
	r.src.Exec(t, ddl...)
	r.dst.Exec(t, ddl...)
	r.src.Exec(t, `CREATE PUBLICATION pub FOR ALL TABLES`)
	return r
}

// createSlot creates the replication slot now, so that everything written
// afterwards is replicated.
func (r *replication) createSlot(t *testing.T) {
	t.Helper()
	created, err := pglogical.CreateSlot(context.Background(), r.src.URL, r.slot)
	require.NoError(t, err)
	require.True(t, created)
}

// args returns the flags for replicating r, followed by extra.
func (r *replication) args(extra ...string) []string {
	return append([]string{
		"--sourceConn", r.src.URL,
		"--targetConn", r.dst.URL,
		"--publicationName", r.pub,
		"--slotName", r.slot,
		"--createSlot",
		"--standbyTimeout", "500ms",
		"--retryDelay", "200ms",
		"--applyTimeout", "10s",
		"--logLevel", "debug",
	}, extra...)
}

// logBuffer collects a process's log; dumpOnFailure prints it if the test fails.
type logBuffer = pgtest.Buffer

// dumpOnFailure prints log at the end of a failed test.
func dumpOnFailure(t *testing.T, name string, log *logBuffer) {
	t.Cleanup(func() {
		if t.Failed() {
			out := log.String()
			if len(out) > 20000 {
				out = "...\n" + out[len(out)-20000:]
			}
			t.Logf("log of %s:\n%s", name, out)
		}
	})
}

// inProcess runs the command in this process (so the race detector sees
// it). The returned function stops it gracefully, as SIGINT would, and
// returns its exit status.
func inProcess(t *testing.T, args []string) (stop func() int) {
	t.Helper()
	stop, _ = runLogged(t, args)
	return stop
}

var (
	buildOnce sync.Once
	binary    string
	buildErr  error
	buildDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		_ = os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// build compiles the command once per test binary.
func build(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "pgreplicate-test")
		if buildErr != nil {
			return
		}
		binary = filepath.Join(buildDir, "pgreplicate")
		out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	require.NoError(t, buildErr)
	return binary
}

// process is the command running as a child process.
type process struct {
	cmd  *exec.Cmd
	log  *logBuffer
	done chan struct{}
	err  error
}

// startProcess starts the built command.
func startProcess(t *testing.T, name string, args []string) *process {
	t.Helper()
	p := &process{log: &logBuffer{}, done: make(chan struct{})}
	dumpOnFailure(t, name, p.log)
	p.cmd = exec.Command(build(t), args...)
	p.cmd.Stdout = p.log
	p.cmd.Stderr = p.log
	require.NoError(t, p.cmd.Start())
	go func() {
		defer close(p.done)
		p.err = p.cmd.Wait()
	}()
	t.Cleanup(func() { p.kill(t) })
	return p
}

// kill ends the process with SIGKILL and waits for it.
func (p *process) kill(t *testing.T) {
	t.Helper()
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Errorf("process %d did not die", p.cmd.Process.Pid)
	}
}

// terminate sends SIGTERM and returns the exit status.
func (p *process) terminate(t *testing.T) int {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(time.Minute):
		t.Fatalf("process %d ignored SIGTERM", p.cmd.Process.Pid)
	}
	return p.cmd.ProcessState.ExitCode()
}

// pgbench runs pgbench against db and fails the test if it fails.
func pgbench(t *testing.T, db *pgtest.DB, args ...string) {
	t.Helper()
	out, err := pgbenchCmd(db, args...).CombinedOutput()
	require.NoError(t, err, "pgbench %s:\n%s", strings.Join(args, " "), out)
}

func pgbenchCmd(db *pgtest.DB, args ...string) *exec.Cmd {
	return exec.Command("pgbench", append(args, db.URL)...)
}

// pgbenchSchema makes pgbench create its tables and primary keys, empty,
// in both databases (the publication is FOR ALL TABLES).
func pgbenchSchema(t *testing.T, r *replication) {
	t.Helper()
	pgbench(t, r.src, "-i", "-I", "dtp", "-q")
	pgbench(t, r.dst, "-i", "-I", "dtp", "-q")
}

// pgbenchSummary sums up all pgbench tables: counts, balance sums, deltas
// and checksums of the full rows.
const pgbenchSummary = `SELECT concat_ws(' | ',
	(SELECT count(*) || ' ' || coalesce(sum(abalance), 0) || ' ' || md5(coalesce(string_agg(a::text, ',' ORDER BY aid), '')) FROM pgbench_accounts a),
	(SELECT count(*) || ' ' || coalesce(sum(bbalance), 0) || ' ' || md5(coalesce(string_agg(b::text, ',' ORDER BY bid), '')) FROM pgbench_branches b),
	(SELECT count(*) || ' ' || coalesce(sum(tbalance), 0) || ' ' || md5(coalesce(string_agg(t::text, ',' ORDER BY tid), '')) FROM pgbench_tellers t),
	(SELECT count(*) || ' ' || coalesce(sum(delta), 0) || ' ' || md5(coalesce(string_agg(h::text, ',' ORDER BY tid, bid, aid, delta, mtime), '')) FROM pgbench_history h))`

// query returns the single text value of sql.
func query(t *testing.T, db *pgtest.DB, sql string, args ...any) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var s *string
	require.NoError(t, db.Pool.QueryRow(ctx, sql, args...).Scan(&s), "%s", sql)
	if s == nil {
		return ""
	}
	return *s
}

// waitEqual waits until sql returns the same in both databases.
func waitEqual(t *testing.T, r *replication, timeout time.Duration, sql string) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		want, got := query(t, r.src, sql), query(t, r.dst, sql)
		if want == got {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("the target did not catch up within %s:\nsource: %.300s\ntarget: %.300s", timeout, want, got)
		}
		<-tick.C
	}
}
