package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/logical-go/logical/examples/internal/pgtest"
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
			pgbench(t, r.src, "-n", "-c", "4", "-j", "2", "-T", "8")
			got := waitEqual(t, r, 3*time.Minute, pgbenchSummary)
			t.Logf("%s: caught up %s after the load started: %s", mode.name, time.Since(start).Round(time.Millisecond), got)
			assert.True(t, strings.HasPrefix(got, "100000 "), "accounts: %s", got)

			require.Equal(t, 0, stop(), "graceful stop")
			assert.NotEmpty(t, query(t, r.dst, `SELECT convert_from(value, 'UTF8') FROM _logical.memo WHERE key = $1`, r.slot),
				"a consistent point was persisted")
		})
	}
}
