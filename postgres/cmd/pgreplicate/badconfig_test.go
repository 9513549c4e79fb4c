package main

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/logical-go/logical/postgres/internal/pgtest"
	"github.com/stretchr/testify/assert"
)

// runOnce runs the command to its end and returns its status and output,
// which must be one line.
func runOnce(t *testing.T, args []string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out logBuffer
	code := run(ctx, args, &out)
	text := strings.TrimSpace(out.String())
	assert.Equal(t, 1, strings.Count(text, "\n")+1, "one line: %q", text)
	return code, text
}

// withArg replaces the value of flag in args.
func withArg(args []string, flag, value string) []string {
	out := append([]string(nil), args...)
	for i := range out {
		if out[i] == flag && i+1 < len(out) {
			out[i+1] = value
			return out
		}
	}
	return append(out, flag, value)
}

// without drops flag (a boolean) from args.
func without(args []string, flag string) []string {
	var out []string
	for _, a := range args {
		if a != flag {
			out = append(out, a)
		}
	}
	return out
}

// passwordRole makes sure the role that with-postgres makes log in with a
// password exists, and skips the test where no password is required.
var passwordRoleOnce sync.Once

func passwordRole(t *testing.T, db *pgtest.DB) {
	t.Helper()
	passwordRoleOnce.Do(func() {
		_, _ = db.Pool.Exec(context.Background(), `CREATE ROLE pgtest_password LOGIN SUPERUSER PASSWORD 'right'`)
	})
	url := strings.Replace(db.URL, "postgres@", "pgtest_password:wrong@", 1)
	conn, err := pgx.Connect(context.Background(), url)
	if err == nil {
		conn.Close(context.Background())
		t.Skip("the server accepts pgtest_password without its password (pg_hba.conf from an older .ci/with-postgres)")
	}
}

// TestBadConfigurationExits: configuration that cannot fix itself makes
// pgreplicate exit with status 1 and one line naming the problem.
func TestBadConfigurationExits(t *testing.T) {
	t.Parallel()
	r := newReplication(t, `CREATE TABLE kv (k INT PRIMARY KEY, v TEXT)`)
	base := r.args()
	tcs := []struct {
		name  string
		setup func(t *testing.T) []string
		want  string
	}{
		{"wrong source password", func(t *testing.T) []string {
			passwordRole(t, r.src)
			return withArg(base, "--sourceConn", strings.Replace(r.src.URL, "postgres@", "pgtest_password:hunter2@", 1))
		}, "the source database refused the login"},
		{"wrong target password", func(t *testing.T) []string {
			passwordRole(t, r.src)
			return withArg(base, "--targetConn", strings.Replace(r.dst.URL, "postgres@", "pgtest_password:hunter2@", 1))
		}, "the target database refused the login"},
		{"missing publication", func(t *testing.T) []string {
			return withArg(base, "--publicationName", "pub,nopub")
		}, `source database has no publication "nopub"`},
		{"missing slot", func(t *testing.T) []string {
			return without(withArg(base, "--slotName", "noslot"), "--createSlot")
		}, `no replication slot "noslot"`},
		{"slot of another plugin", func(t *testing.T) []string {
			r.src.Exec(t, `SELECT pg_create_logical_replication_slot('`+r.slot+`_td', 'test_decoding')`)
			return withArg(base, "--slotName", r.slot+"_td")
		}, `uses plugin "test_decoding"`},
		{"slot of another plugin, without --createSlot", func(t *testing.T) []string {
			return without(withArg(base, "--slotName", r.slot+"_td"), "--createSlot")
		}, `uses plugin "test_decoding"`},
		{"slot of another database", func(t *testing.T) []string {
			r.dst.Exec(t, `SELECT pg_create_logical_replication_slot('`+r.slot+`_other', 'pgoutput')`)
			return withArg(base, "--slotName", r.slot+"_other")
		}, "belongs to database"},
		{"target is the source", func(t *testing.T) []string {
			return withArg(base, "--targetConn", pgtest.WithParam(t, r.src.URL, "application_name", "other"))
		}, "--targetConn names the source database itself"},
		{"target unreachable, and a publication missing", func(t *testing.T) []string {
			// The source is checked while the target is reached; the
			// target's problem is still the one named.
			return withArg(withArg(base, "--targetConn", "postgres://u:hunter2@127.0.0.1:1/a?connect_timeout=5"),
				"--publicationName", "nopub")
		}, "cannot reach the target database"},
		{"source without wal_level=logical", func(t *testing.T) []string {
			c := pgtest.NewCluster(t, "-c", "wal_level=replica")
			src := c.NewDB(t, "src")
			src.Exec(t, `CREATE TABLE kv (k INT PRIMARY KEY, v TEXT)`, `CREATE PUBLICATION pub FOR ALL TABLES`)
			return withArg(base, "--sourceConn", src.URL)
		}, "wal_level=replica, logical replication needs wal_level=logical"},
	}
	for _, tc := range tcs {
		t.Run(tc.name, func(t *testing.T) {
			code, text := runOnce(t, tc.setup(t))
			assert.Equal(t, 1, code, "%s", text)
			assert.Contains(t, text, tc.want)
			assert.NotContains(t, text, "hunter2")
		})
	}
	// None of this left a memo or slot behind that a correct run would trip over.
	assert.Equal(t, "0", query(t, r.src, `SELECT count(*)::text FROM pg_replication_slots WHERE slot_name = $1`, r.slot))
	// Nothing is written before every check passed: the staging tables
	// were not created in the source ("target is the source").
	assert.Equal(t, "0", query(t, r.src, `SELECT count(*)::text FROM pg_namespace WHERE nspname = '_logical'`))
}

// TestBadTargetRetries: a target that lacks a table or column, or has a
// column of a type the value does not fit, is an error naming it that the
// loop retries (the user can fix the target while pgreplicate runs). The
// slot does not move past the failing change: once the target is fixed
// (and pgreplicate restarted, which a changed column type still needs,
// issue 13.4), the change arrives.
func TestBadTargetRetries(t *testing.T) {
	t.Parallel()
	tcs := []struct {
		name      string
		src, dst  string
		insert    string
		want      []string
		fix       string
		compareOn string
	}{
		{"missing table",
			`CREATE TABLE gone (k INT PRIMARY KEY, v TEXT)`, ``,
			`INSERT INTO gone VALUES (1, 'one')`,
			[]string{`target table public.gone does not exist`},
			`CREATE TABLE gone (k INT PRIMARY KEY, v TEXT)`,
			`SELECT string_agg(gone::text, ',') FROM gone`},
		{"missing column",
			`CREATE TABLE narrow (k INT PRIMARY KEY, v TEXT, extra TEXT)`, `CREATE TABLE narrow (k INT PRIMARY KEY, v TEXT)`,
			`INSERT INTO narrow VALUES (1, 'one', 'x')`,
			[]string{`table public.narrow has no column`, `extra`},
			`ALTER TABLE narrow ADD COLUMN extra TEXT`,
			`SELECT string_agg(narrow::text, ',') FROM narrow`},
		{"incompatible type",
			`CREATE TABLE typed (k INT PRIMARY KEY, v TEXT)`, `CREATE TABLE typed (k INT PRIMARY KEY, v INT)`,
			`INSERT INTO typed VALUES (1, 'not a number')`,
			[]string{`public.typed`, `invalid input syntax for type integer`, `not a number`},
			`ALTER TABLE typed ALTER COLUMN v TYPE TEXT`,
			`SELECT string_agg(typed::text, ',') FROM typed`},
	}
	for _, tc := range tcs {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := newReplication(t)
			r.src.Exec(t, tc.src, `CREATE TABLE ok (k INT PRIMARY KEY)`)
			if tc.dst != "" {
				r.dst.Exec(t, tc.dst)
			}
			r.dst.Exec(t, `CREATE TABLE ok (k INT PRIMARY KEY)`)
			r.createSlot(t)
			p := startProcess(t, "pgreplicate", r.args())
			r.src.Exec(t, tc.insert)
			pgtest.Eventually(t, time.Minute, "the error in the log, retried", func() bool {
				log := p.log.String()
				for _, w := range tc.want {
					if !strings.Contains(log, w) {
						return false
					}
				}
				return strings.Count(log, tc.want[0]) >= 2
			})
			select {
			case <-p.done:
				t.Fatalf("pgreplicate exited: %v", p.err)
			default:
			}
			p.terminate(t)
			r.dst.Exec(t, tc.fix)
			r.src.Exec(t, `INSERT INTO ok VALUES (1)`)
			p = startProcess(t, "pgreplicate", r.args())
			waitEqual(t, r, time.Minute, tc.compareOn)
			waitEqual(t, r, time.Minute, `SELECT string_agg(ok::text, ',') FROM ok`)
			assert.Equal(t, 0, p.terminate(t))
		})
	}
}

func TestSourceTimeoutFlag(t *testing.T) {
	base := []string{"--sourceConn", "postgres://h/a", "--targetConn", "postgres://h/b", "--publicationName", "p", "--slotName", "s"}
	for _, tc := range []struct{ value, want string }{
		{"10ms", "--sourceTimeout must be 0 (off) or at least 100ms, got 10ms"},
		{"-1s", "durations must not be negative"},
	} {
		code, text := runOnce(t, append(base, "--sourceTimeout", tc.value))
		assert.Equal(t, 2, code)
		assert.Contains(t, text, tc.want)
	}
}
