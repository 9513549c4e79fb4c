package main

import (
	"cmp"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/logical-go/logical/postgres/internal/pgtest"
	"github.com/stretchr/testify/require"
)

// envSnapshotBench enables TestSnapshotVsNative; LOGICAL_SNAPSHOT_SCALE
// is the pgbench scale (default 10: 1M accounts) and LOGICAL_SNAPSHOT_RUNS
// the number of runs (default 1).
const envSnapshotBench = "LOGICAL_SNAPSHOT_BENCH"

// TestSnapshotVsNative copies the same pgbench database with a native
// subscription (copy_data = true), with pgcopydb clone and with
// pgreplicate --snapshot, one at a time, and logs the times, their ratios
// and the peak RSS of the two commands.
func TestSnapshotVsNative(t *testing.T) {
	if os.Getenv(envSnapshotBench) != "1" {
		t.Skipf("set %s=1 (under .ci/with-postgres) for the snapshot comparison", envSnapshotBench)
	}
	scale, runs := 10, 1
	if s := os.Getenv("LOGICAL_SNAPSHOT_SCALE"); s != "" {
		scale, _ = strconv.Atoi(s)
	}
	if s := os.Getenv("LOGICAL_SNAPSHOT_RUNS"); s != "" {
		runs, _ = strconv.Atoi(s)
	}
	_, err := exec.LookPath("pgcopydb")
	require.NoError(t, err, "pgcopydb must be on PATH (Debian: apt-get install pgcopydb)")
	src := pgtest.NewDB(t, "src")
	pgbench(t, src, "-i", "-s", strconv.Itoa(scale), "-q")
	src.Exec(t, `CREATE PUBLICATION pub FOR ALL TABLES`, `VACUUM ANALYZE`)
	rows := query(t, src, `SELECT count(*)::text FROM pgbench_accounts`)
	size := query(t, src, `SELECT pg_size_pretty(pg_database_size(current_database()))`)
	t.Logf("source: pgbench scale %d, %s accounts, database %s", scale, rows, size)
	want := query(t, src, pgbenchSummary)
	bin := build(t)

	type measure struct {
		took time.Duration
		rss  int64 // KiB, 0 if not measured
	}
	results := map[string][]measure{}
	for run := range runs {
		// Native: tablesync workers copy each table (COPY), then stream.
		{
			dst := pgtest.NewDB(t, "dst")
			pgbench(t, dst, "-i", "-I", "dtp", "-q")
			slot := "native_" + strings.TrimPrefix(dst.Name, "dst_")
			src.Exec(t, `SELECT pg_create_logical_replication_slot('`+slot+`', 'pgoutput')`)
			u, err := url.Parse(pgtest.ServerURL(t))
			require.NoError(t, err)
			conn := fmt.Sprintf("host=%s port=%s user=%s dbname=%s", u.Hostname(), u.Port(), u.User.Username(), src.Name)
			start := time.Now()
			dst.Exec(t, `CREATE SUBSCRIPTION sub CONNECTION '`+conn+`' PUBLICATION pub
				WITH (copy_data = true, create_slot = false, slot_name = '`+slot+`')`)
			pgtest.Eventually(t, 10*time.Minute, "native table sync", func() bool {
				return query(t, dst, `SELECT (count(*) = 4 AND bool_and(srsubstate IN ('r', 's')))::text FROM pg_subscription_rel`) == "true"
			})
			took := time.Since(start)
			require.Equal(t, want, query(t, dst, pgbenchSummary))
			dst.Exec(t, `ALTER SUBSCRIPTION sub DISABLE`, `ALTER SUBSCRIPTION sub SET (slot_name = NONE)`, `DROP SUBSCRIPTION sub`)
			results["native copy_data"] = append(results["native copy_data"], measure{took: took})
			t.Logf("run %d: native copy_data=true %s", run+1, took.Round(10*time.Millisecond))
		}
		// pgcopydb clone: schema, parallel COPY, then indexes.
		{
			dst := pgtest.NewDB(t, "dst")
			dir := t.TempDir()
			start := time.Now()
			cmd := exec.Command("pgcopydb", "clone", "--source", src.URL, "--target", dst.URL, "--dir", dir,
				"--table-jobs", "4", "--index-jobs", "4", "--no-owner", "--no-acl", "--skip-extensions")
			out, err := cmd.CombinedOutput()
			took := time.Since(start)
			require.NoError(t, err, "pgcopydb:\n%s", out)
			require.Equal(t, want, query(t, dst, pgbenchSummary))
			results["pgcopydb clone"] = append(results["pgcopydb clone"], measure{took: took, rss: maxRSS(cmd)})
			t.Logf("run %d: pgcopydb clone %s", run+1, took.Round(10*time.Millisecond))
		}
		// pgreplicate --snapshot into tables with their primary keys, and
		// with --createTables into an empty database.
		for _, create := range []bool{false, true} {
			dst := pgtest.NewDB(t, "dst")
			r := &replication{src: src, dst: dst, pub: "pub", slot: "pgr_" + strings.TrimPrefix(dst.Name, "dst_")}
			args := []string{"--snapshot", "--snapshotWorkers", "4", "--logLevel", "info"}
			name := "pgreplicate --snapshot"
			if create {
				args = append(args, "--createTables")
				name += " --createTables"
			} else {
				pgbench(t, dst, "-i", "-I", "dtp", "-q")
			}
			start := time.Now()
			p := startProcess(t, "pgreplicate", r.args(args...))
			_ = bin
			pgtest.Eventually(t, 10*time.Minute, "the snapshot", func() bool {
				var done, all int
				err := dst.Pool.QueryRow(t.Context(), `SELECT count(*) FILTER (WHERE done), count(*) FROM _logical.snapshot
					WHERE chunk >= 0`).Scan(&done, &all)
				return err == nil && all > 0 && done == all &&
					query(t, dst, `SELECT count(*)::text FROM _logical.snapshot WHERE chunk < 0 AND (spec->>'synced')::bool`) == "4"
			})
			took := time.Since(start)
			require.Equal(t, want, query(t, dst, pgbenchSummary))
			require.Equal(t, 0, p.terminate(t))
			for _, line := range strings.Split(p.log.String(), "\n") {
				if strings.Contains(line, "snapshot") || strings.Contains(line, "started") {
					t.Log(line)
				}
			}
			results[name] = append(results[name], measure{took: took, rss: maxRSS(p.cmd)})
			t.Logf("run %d: %s %s", run+1, name, took.Round(10*time.Millisecond))
		}
	}
	median := func(ms []measure) measure {
		sorted := append([]measure(nil), ms...)
		sort.Slice(sorted, func(i, j int) bool { return sorted[i].took < sorted[j].took })
		return sorted[len(sorted)/2]
	}
	// ratio is the median over the runs of name's time over base's in the
	// same run: on a shared machine the load drifts less within a run
	// than across runs.
	ratio := func(name, base string) float64 {
		var rs []float64
		for i := range results[name] {
			rs = append(rs, results[name][i].took.Seconds()/results[base][i].took.Seconds())
		}
		sort.Float64s(rs)
		return rs[len(rs)/2]
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n| system | time (median of %d) | best | vs native | vs pgcopydb | peak RSS |\n|---|---|---|---|---|---|\n", runs)
	for _, name := range []string{"native copy_data", "pgcopydb clone", "pgreplicate --snapshot", "pgreplicate --snapshot --createTables"} {
		m := median(results[name])
		best := slices.MinFunc(results[name], func(a, b measure) int { return cmp.Compare(a.took, b.took) })
		rss := "n/a (server processes)"
		if m.rss > 0 {
			rss = fmt.Sprintf("%.0f MiB", float64(m.rss)/1024)
		}
		fmt.Fprintf(&b, "| %s | %.2f s | %.2f s | %.2f | %.2f | %s |\n", name, m.took.Seconds(), best.took.Seconds(),
			ratio(name, "native copy_data"), ratio(name, "pgcopydb clone"), rss)
	}
	b.WriteString("(ratios: median over the runs of the ratio within a run)\n")
	t.Log(b.String())
}

// maxRSS returns the peak resident set of an exited command (and of the
// children it waited for), in KiB.
func maxRSS(cmd *exec.Cmd) int64 {
	if cmd.ProcessState == nil {
		return 0
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		return ru.Maxrss
	}
	return 0
}
