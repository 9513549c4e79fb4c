// Package pgtest gives integration tests their own PostgreSQL databases on
// the server named by PGTEST_URL (see .ci/with-postgres), and skips them
// when it is unset.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
)

// EnvURL is the variable that names the test server.
const EnvURL = "PGTEST_URL"

// ServerURL returns the test server's URL, or skips the test.
func ServerURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv(EnvURL)
	if u == "" {
		t.Skipf("%s is not set; run the tests under .ci/with-postgres", EnvURL)
	}
	return u
}

// DB is a database created for one test.
type DB struct {
	Name string
	URL  string
	Pool *pgxpool.Pool
}

// NewDB creates a database with a unique name starting with prefix and
// drops it (with its replication slots) when the test ends.
func NewDB(t testing.TB, prefix string) *DB {
	t.Helper()
	server := ServerURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var raw [4]byte
	_, _ = rand.Read(raw[:])
	name := strings.ToLower(prefix) + "_" + hex.EncodeToString(raw[:])

	admin, err := pgxpool.New(ctx, server)
	require.NoError(t, err)
	defer admin.Close()
	_, err = admin.Exec(ctx, `CREATE DATABASE "`+name+`"`)
	require.NoError(t, err)

	dbURL := WithDatabase(t, server, name)
	pool, err := pgxpool.New(ctx, dbURL)
	require.NoError(t, err)
	t.Cleanup(func() {
		pool.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		admin, err := pgxpool.New(ctx, server)
		if err != nil {
			t.Logf("dropping %s: %v", name, err)
			return
		}
		defer admin.Close()
		// Slots keep a database alive; end their walsenders first.
		_, _ = admin.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = $1 AND active_pid IS NOT NULL`, name)
		for range 50 {
			_, err = admin.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1`, name)
			if err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond) // a terminated walsender takes a moment to let go
		}
		if _, err := admin.Exec(ctx, `DROP DATABASE IF EXISTS "`+name+`" WITH (FORCE)`); err != nil {
			t.Logf("dropping %s: %v", name, err)
		}
	})
	return &DB{Name: name, URL: dbURL, Pool: pool}
}

// WithDatabase returns server with its database replaced by name.
func WithDatabase(t testing.TB, server, name string) string {
	t.Helper()
	u, err := url.Parse(server)
	require.NoError(t, err)
	u.Path = "/" + name
	return u.String()
}

// WithParam returns conn (a URL) with the query parameter key set.
func WithParam(t testing.TB, conn, key, value string) string {
	t.Helper()
	u, err := url.Parse(conn)
	require.NoError(t, err)
	q := u.Query()
	q.Set(key, value)
	u.RawQuery = q.Encode()
	return u.String()
}

// Exec runs statements, failing the test on an error.
func (db *DB) Exec(t testing.TB, stmts ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, s := range stmts {
		_, err := db.Pool.Exec(ctx, s)
		require.NoError(t, err, "%s", s)
	}
}

// Eventually polls cond every interval until it returns true or the
// deadline passes; it fails the test with msg then.
func Eventually(t testing.TB, timeout time.Duration, msg string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, msg)
		}
		<-tick.C
	}
}

// EnvInt returns the positive integer in the environment variable name,
// or def when it is unset; any other value fails the test, naming the
// variable. For measurements that take their sizes from the environment.
func EnvInt(t testing.TB, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	require.NoError(t, err, "%s must be a number", name)
	require.Positive(t, n, "%s must be at least 1", name)
	return n
}
