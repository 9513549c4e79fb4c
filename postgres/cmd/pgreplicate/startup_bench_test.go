package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/logical-go/logical/postgres/internal/pgtest"
	"github.com/stretchr/testify/require"
)

// TestStartupTime measures how long pgreplicate takes from its start to
// the first row of a backlog appearing in the target, and to catching up
// on the whole backlog, for the binary of this tree and, when
// LOGICAL_STARTUP_BASELINE names one (or several, separated by commas),
// for other binaries (built from other commits) in the same run, taking
// turns. It is a measurement, not a check, and runs only when asked:
//
//	LOGICAL_STARTUP_BENCH=1 LOGICAL_STARTUP_BASELINE=/tmp/pgreplicate-main \
//	    .ci/with-postgres bash -c 'cd postgres && go test -v -count=1 -run TestStartupTime ./cmd/pgreplicate'
//
// LOGICAL_STARTUP_RUNS sets the runs per binary (default 15) and
// LOGICAL_STARTUP_TXNS the backlog's transactions (default 200).
// LOGICAL_STARTUP_TRACE=1 turns on the server's connection and statement
// log and prints, for the last run of each binary, what pgreplicate's
// sessions did when, relative to its start.
func TestStartupTime(t *testing.T) {
	if os.Getenv("LOGICAL_STARTUP_BENCH") == "" {
		t.Skip("set LOGICAL_STARTUP_BENCH=1 (and run under .ci/with-postgres) to measure the startup")
	}
	runs := pgtest.EnvInt(t, "LOGICAL_STARTUP_RUNS", 15)
	txns := pgtest.EnvInt(t, "LOGICAL_STARTUP_TXNS", 200)
	trace := os.Getenv("LOGICAL_STARTUP_TRACE") != ""
	bins := []struct{ name, path string }{{"this", build(t)}}
	if list := os.Getenv("LOGICAL_STARTUP_BASELINE"); list != "" {
		for i, base := range strings.Split(list, ",") {
			name := "baseline"
			if i > 0 {
				name = fmt.Sprintf("baseline%d", i+1)
			}
			bins = append(bins, struct{ name, path string }{name, base})
		}
	}

	ddl := []string{`CREATE TABLE kv (k INT PRIMARY KEY, v TEXT)`, `CREATE TABLE kv2 (k INT PRIMARY KEY, v TEXT)`}
	r := newReplication(t, ddl...)
	var serverLog string
	if trace {
		serverLog = strings.TrimSuffix(query(t, r.src, `SHOW data_directory`), "/data") + "/server.log"
		r.src.Exec(t, `ALTER SYSTEM SET log_connections = on`, `ALTER SYSTEM SET log_min_duration_statement = 0`,
			`ALTER SYSTEM SET log_line_prefix = '%m [%p] %a: '`, `SELECT pg_reload_conf()`)
		t.Cleanup(func() {
			r.src.Exec(t, `ALTER SYSTEM RESET log_connections`, `ALTER SYSTEM RESET log_min_duration_statement`,
				`ALTER SYSTEM RESET log_line_prefix`, `SELECT pg_reload_conf()`)
		})
	}
	ctx := context.Background()
	poll, err := pgx.Connect(ctx, r.dst.URL)
	require.NoError(t, err)
	defer poll.Close(ctx)

	first := make(map[string][]time.Duration)
	caught := make(map[string][]time.Duration)
	for run := 0; run < runs; run++ {
		for i := range bins {
			b := bins[(i+run)%len(bins)]
			slot := fmt.Sprintf("%s_%s_%d", r.slot, b.name, run)
			app := fmt.Sprintf("startup_%s_%d", b.name, run)
			// The truncate comes before the slot, so it is not replicated.
			r.src.Exec(t, `TRUNCATE kv, kv2`, `SELECT pg_create_logical_replication_slot('`+slot+`', 'pgoutput')`,
				fmt.Sprintf(`DO $$ BEGIN FOR i IN 1..%d LOOP
					INSERT INTO kv VALUES (i, 'v' || i); INSERT INTO kv2 VALUES (i, 'w' || i); COMMIT;
				END LOOP; END $$`, txns))
			r.dst.Exec(t, `TRUNCATE kv, kv2`)
			args := []string{
				"--sourceConn", pgtest.WithParam(t, r.src.URL, "application_name", app),
				"--targetConn", pgtest.WithParam(t, r.dst.URL, "application_name", app),
				"--publicationName", r.pub, "--slotName", slot, "--logLevel", "warn",
			}
			var log logBuffer
			cmd := exec.Command(b.path, args...)
			cmd.Stdout, cmd.Stderr = &log, &log
			began := time.Now()
			require.NoError(t, cmd.Start())
			var f, c time.Duration
			for c == 0 {
				var n int
				require.NoError(t, poll.QueryRow(ctx, `SELECT (SELECT count(*) FROM kv) + (SELECT count(*) FROM kv2)`).Scan(&n))
				switch at := time.Since(began); {
				case n == 2*txns:
					c = at
					if f == 0 {
						f = at
					}
				case n > 0 && f == 0:
					f = at
				case at > time.Minute:
					_ = cmd.Process.Kill()
					_ = cmd.Wait()
					t.Fatalf("%s did not catch up within a minute (%d of %d rows):\n%s", b.name, n, 2*txns, log.String())
				}
				time.Sleep(2 * time.Millisecond) // the sampling interval of the measurement
			}
			_ = cmd.Process.Signal(syscall.SIGTERM)
			require.NoError(t, cmd.Wait(), "%s:\n%s", b.name, log.String())
			first[b.name] = append(first[b.name], f)
			caught[b.name] = append(caught[b.name], c)
			t.Logf("run %d %s: first row %s, caught up %s", run, b.name, f.Round(100*time.Microsecond), c.Round(100*time.Microsecond))
			if trace && run >= runs-len(bins) {
				printTrace(t, serverLog, app, began)
			}
			pgtest.Eventually(t, time.Minute, "the slot to be dropped", func() bool {
				_, err := r.src.Pool.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, slot)
				return err == nil
			})
		}
	}
	med := func(d []time.Duration) time.Duration {
		s := slices.Clone(d)
		slices.Sort(s)
		return s[len(s)/2]
	}
	var out strings.Builder
	fmt.Fprintf(&out, "medians of %d runs, backlog of %d transactions x 2 rows:\n", runs, txns)
	for _, b := range bins {
		fmt.Fprintf(&out, "  %-9s first row %7.1f ms, caught up %7.1f ms  %s\n", b.name,
			ms(med(first[b.name])), ms(med(caught[b.name])), b.path)
	}
	for _, b := range bins[1:] {
		fmt.Fprintf(&out, "  this/%s: first row %.2fx, caught up %.2fx\n", b.name,
			ms(med(first["this"]))/ms(med(first[b.name])), ms(med(caught["this"]))/ms(med(caught[b.name])))
	}
	t.Log("\n" + out.String())
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// printTrace logs the server log lines of the sessions named app, with
// their time relative to began.
func printTrace(t *testing.T, path, app string, began time.Time) {
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	var out strings.Builder
	for _, line := range strings.Split(string(raw), "\n") {
		if !strings.Contains(line, app) {
			continue
		}
		// "2026-12-03 08:40:01.123 UTC [pid] app: ..."
		if len(line) < 27 {
			continue
		}
		at, err := time.Parse("2006-01-02 15:04:05.000 MST", line[:27])
		if err != nil {
			continue
		}
		fmt.Fprintf(&out, "%8.1f ms %s\n", ms(at.Sub(began)), strings.TrimSpace(line[27:]))
	}
	t.Logf("server log of %s:\n%s", app, out.String())
}
