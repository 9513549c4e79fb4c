package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/logical-go/logical/postgres/internal/pgtest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestFlags(t *testing.T) {
	tcs := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"unknown flag", []string{"--bogus"}, 2, "-bogus"},
		{"missing target", []string{"--sourceConn", "postgres://x/y"}, 2, "--targetConn is required"},
		{"bad duration", []string{"--retryDelay", "soon"}, 2, "retryDelay"},
		{"bad level", []string{"--sourceConn", "postgres://h/a", "--targetConn", "postgres://h/b",
			"--publicationName", "p", "--slotName", "s", "--logLevel", "loud"}, 2, "--logLevel"},
		{"short lease", []string{"--sourceConn", "postgres://h/a", "--targetConn", "postgres://h/b",
			"--publicationName", "p", "--slotName", "s", "--lease", "10ms"}, 2, "--lease"},
		{"immediate with foreign keys", []string{"--sourceConn", "postgres://h/a", "--targetConn", "postgres://h/b",
			"--publicationName", "p", "--slotName", "s", "--immediate", "--foreignKeys"}, 2, "cannot be combined"},
		{"cpu profile cannot be created", []string{"--sourceConn", "postgres://h/a", "--targetConn", "postgres://h/b",
			"--publicationName", "p", "--slotName", "s", "--cpuprofile", "/nonexistent-dir/cpu.pprof"}, 1, "--cpuprofile"},
		{"unreachable target", []string{"--sourceConn", "postgres://u:hunter2@127.0.0.1:1/a", "--targetConn",
			"postgres://u:hunter2@127.0.0.1:1/b?connect_timeout=5", "--publicationName", "p", "--slotName", "s"}, 1, "cannot reach the target"},
	}
	for _, tc := range tcs {
		t.Run(tc.name, func(t *testing.T) {
			var out logBuffer
			code := run(context.Background(), tc.args, &out)
			assert.Equal(t, tc.code, code)
			text := out.String()
			assert.Contains(t, text, tc.want)
			assert.Equal(t, 1, strings.Count(strings.TrimSpace(text), "\n")+1, "one line: %q", text)
			assert.NotContains(t, text, "hunter2")
		})
	}
}

func TestUnreachableSource(t *testing.T) {
	dst := pgtest.NewDB(t, "dst")
	var out logBuffer
	code := run(context.Background(), []string{"--sourceConn", "postgres://u:hunter2@127.0.0.1:1/a?connect_timeout=5",
		"--targetConn", dst.URL, "--publicationName", "p", "--slotName", "s"}, &out)
	assert.Equal(t, 1, code)
	assert.Contains(t, out.String(), "cannot reach the source")
	assert.NotContains(t, out.String(), "hunter2")
	assert.Equal(t, 1, strings.Count(strings.TrimSpace(out.String()), "\n")+1, "one line: %q", out.String())
}

// TestPgbench replicates pgbench's initial load and a timed run, in
// serial and in immediate mode, and compares every table.
func TestPgbench(t *testing.T) {
	for _, mode := range []struct {
		name  string
		flags []string
	}{
		{"serial", nil},
		{"immediate", []string{"--immediate", "--fanShards", "8"}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			r := newReplication(t)
			pgbenchSchema(t, r)
			r.createSlot(t)
			stop := inProcess(t, r.args(mode.flags...))

			start := time.Now()
			pgbench(t, r.src, "-i", "-I", "g", "-s", "1", "-q")
			// A rate limit keeps the amount of work, and so the test's
			// duration, the same on fast and slow machines.
			pgbench(t, r.src, "-n", "-c", "4", "-j", "2", "-T", "6", "-R", "150")
			got := waitEqual(t, r, 3*time.Minute, pgbenchSummary)
			t.Logf("%s: caught up %s after the load started: %s", mode.name, time.Since(start).Round(time.Millisecond), got)
			assert.True(t, strings.HasPrefix(got, "100000 "), "accounts: %s", got)

			require.Equal(t, 0, stop(), "graceful stop")
			assert.NotEmpty(t, query(t, r.dst, `SELECT convert_from(value, 'UTF8') FROM _logical.memo WHERE key = $1`, r.slot),
				"a consistent point was persisted")
		})
	}
}

// TestTypes replicates inserts, updates (also of the primary key), deletes,
// NULLs and values of many types, including TOASTed text that an update
// leaves unchanged (and the server therefore does not send).
func TestTypes(t *testing.T) {
	r := newReplication(t,
		`CREATE TABLE types (
			id   INT PRIMARY KEY,
			n    NUMERIC(30, 10),
			j    JSONB,
			ts   TIMESTAMPTZ,
			b    BOOL,
			arr  INT[],
			u    UUID,
			raw  BYTEA,
			txt  TEXT,
			big  TEXT
		)`,
		`CREATE TABLE composite (a TEXT, b INT, v TEXT, PRIMARY KEY (b, a))`,
		`CREATE TABLE log (at TIMESTAMPTZ, msg TEXT)`,
	)
	stop := inProcess(t, r.args())
	pgtest.Eventually(t, time.Minute, "the slot", func() bool {
		return query(t, r.src, `SELECT count(*)::text FROM pg_replication_slots WHERE slot_name = $1`, r.slot) == "1"
	})
	// The slot may be created a moment before replication starts; only
	// what comes after the slot counts, which is everything below.
	big := `(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 3000))` // ~96 kB, TOASTed
	r.src.Exec(t,
		`INSERT INTO types VALUES
			(1, 12345678901234567890.0123456789, '{"a": [1, "two", null], "b": {"c": true}}', '2024-02-29 23:59:59.123456+05:30',
			 true, '{1,2,NULL}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\x00ff10', 'it''s "quoted" \ and ünïcode', `+big+`),
			(2, -0.5, 'null', '1970-01-01 00:00:00+00', false, '{}', NULL, '\x', '', NULL),
			(3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
			(4, 1, '[]', 'infinity', true, NULL, NULL, NULL, 'row four', 'small')`,
		`INSERT INTO composite VALUES ('x', 1, 'one'), ('y', 1, 'two'), ('x', 2, 'three')`,
		`INSERT INTO log VALUES ('2024-01-01', 'first'), ('2024-01-01', 'first')`,
		// The TOASTed value is not sent for this update.
		`UPDATE types SET n = n + 1, txt = 'updated' WHERE id = 1`,
		// The primary key changes.
		`UPDATE types SET id = 10 WHERE id = 4`,
		`UPDATE composite SET a = 'z' WHERE a = 'y' AND b = 1`,
		`UPDATE types SET j = NULL, ts = NULL WHERE id = 2`,
		`UPDATE types SET n = 3 WHERE id = 3`,
		`DELETE FROM types WHERE id = 3`,
		`DELETE FROM composite WHERE a = 'x' AND b = 2`,
		// Several changes of one row in one transaction.
		`BEGIN; INSERT INTO types (id, txt) VALUES (20, 'a'); UPDATE types SET txt = 'b' WHERE id = 20;
		 UPDATE types SET id = 21 WHERE id = 20; DELETE FROM types WHERE id = 1; INSERT INTO types (id, txt) VALUES (1, 'again'); COMMIT`,
		`BEGIN; UPDATE types SET txt = 'rolled back' WHERE id = 2; ROLLBACK`,
		`UPDATE types SET arr = '{7}' WHERE id = 10`, // big is small and unchanged here
	)
	all := `SELECT concat_ws(E'\n',
		(SELECT string_agg(t::text, E'\n' ORDER BY id) FROM types t),
		(SELECT string_agg(c::text, E'\n' ORDER BY b, a) FROM composite c),
		(SELECT string_agg(l::text, E'\n' ORDER BY at, msg) FROM log l))`
	got := waitEqual(t, r, 2*time.Minute, all)
	assert.Contains(t, got, "(21,,,,,,,,b,)")
	assert.Contains(t, got, "(1,,,,,,,,again,)")
	assert.Contains(t, got, `(x,1,one)`)
	assert.Contains(t, got, `(z,1,two)`)
	assert.NotContains(t, got, "three")

	// A TOASTed value that stays unchanged through an update keeps the
	// target's copy.
	r.src.Exec(t, `UPDATE types SET big = `+big+` WHERE id = 21`,
		`UPDATE types SET txt = 'toast kept' WHERE id = 21`)
	waitEqual(t, r, time.Minute, all)
	assert.Greater(t, len(query(t, r.dst, `SELECT big FROM types WHERE id = 21`)), 8192)
	assert.Equal(t, "toast kept", query(t, r.dst, `SELECT txt FROM types WHERE id = 21`))
	require.Equal(t, 0, stop())
}

// TestIdleAck shows that the slot's confirmed position moves on when
// nothing is written to the publication: after the last transaction, and
// past WAL that the publication does not cover.
func TestIdleAck(t *testing.T) {
	r := newReplication(t, `CREATE TABLE kv (k INT PRIMARY KEY, v TEXT)`)
	r.src.Exec(t, `CREATE TABLE unpublished (x INT)`, `DROP PUBLICATION pub`, `CREATE PUBLICATION pub FOR TABLE kv`)
	r.createSlot(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	metricsAddr := ln.Addr().String()
	require.NoError(t, ln.Close())
	stop := inProcess(t, r.args("--metricsAddr", metricsAddr))

	r.src.Exec(t, `INSERT INTO kv VALUES (1, 'one')`)
	after := query(t, r.src, `SELECT pg_current_wal_lsn()::text`)
	waitEqual(t, r, time.Minute, `SELECT string_agg(kv::text, ',') FROM kv`)
	confirmedPast := func(lsn string) func() bool {
		return func() bool {
			return query(t, r.src, `SELECT (confirmed_flush_lsn >= $2::pg_lsn)::text FROM pg_replication_slots WHERE slot_name = $1`,
				r.slot, lsn) == "true"
		}
	}
	pgtest.Eventually(t, time.Minute, "the slot to confirm the last transaction", confirmedPast(after))

	r.src.Exec(t, `INSERT INTO unpublished SELECT generate_series(1, 1000)`)
	after = query(t, r.src, `SELECT pg_current_wal_lsn()::text`)
	pgtest.Eventually(t, time.Minute, "the slot to confirm unpublished WAL", confirmedPast(after))
	assert.Equal(t, "1", query(t, r.dst, `SELECT count(*)::text FROM kv`))

	// The loop's metrics are served.
	want := `logical_point_offset{loop="` + r.slot + `"}`
	pgtest.Eventually(t, time.Minute, "the metrics", func() bool {
		resp, err := http.Get("http://" + metricsAddr + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return err == nil && strings.Contains(string(body), want)
	})
	require.Equal(t, 0, stop())

	// The persisted point is at or after what the slot confirmed: the
	// dialect acknowledges only persisted points.
	point := query(t, r.dst, `SELECT convert_from(value, 'UTF8')::jsonb->>'lsn' FROM _logical.memo WHERE key = $1`, r.slot)
	assert.Equal(t, "true", query(t, r.src,
		`SELECT (confirmed_flush_lsn <= $2::pg_lsn)::text FROM pg_replication_slots WHERE slot_name = $1`, r.slot, point))
}
