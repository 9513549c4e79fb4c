package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stretchr/testify/require"
)

// EnvCluster is the variable that names the script which starts clusters
// of a test's own (see .ci/with-postgres).
const EnvCluster = "PGTEST_CLUSTER"

// Cluster is a PostgreSQL cluster started for one test, for tests that
// restart the server or need other settings than the shared one.
type Cluster struct {
	name   string
	script string
	// URL is the postgres database of the cluster, as user postgres.
	URL string
}

// NewCluster starts a cluster configured like the shared one, with the
// server options opts (e.g. "-c", "wal_level=replica"), and removes it
// when the test ends. It skips the test when EnvCluster is unset.
func NewCluster(t testing.TB, opts ...string) *Cluster {
	t.Helper()
	script := os.Getenv(EnvCluster)
	if script == "" {
		t.Skipf("%s is not set; run the tests under .ci/with-postgres", EnvCluster)
	}
	var raw [4]byte
	_, _ = rand.Read(raw[:])
	c := &Cluster{name: "c" + hex.EncodeToString(raw[:]), script: script}
	out, err := exec.Command(script, append([]string{"start", c.name}, opts...)...).Output()
	require.NoError(t, err, "starting a cluster: %s", errOutput(err))
	t.Cleanup(func() {
		if out, err := exec.Command(script, "stop", c.name).CombinedOutput(); err != nil {
			t.Logf("stopping cluster %s: %v: %s", c.name, err, out)
		}
	})
	c.URL = "postgres://postgres@127.0.0.1:" + strings.TrimSpace(string(out)) + "/postgres?sslmode=disable"
	return c
}

// Restart restarts the server with pg_ctl's shutdown mode ("fast" or
// "immediate") and returns once it accepts connections again.
func (c *Cluster) Restart(t testing.TB, mode string) {
	t.Helper()
	out, err := exec.Command(c.script, "restart", c.name, mode).CombinedOutput()
	require.NoError(t, err, "restarting cluster %s: %s", c.name, out)
}

// NewDB creates a database in the cluster; it goes with the cluster.
func (c *Cluster) NewDB(t testing.TB, prefix string) *DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var raw [4]byte
	_, _ = rand.Read(raw[:])
	name := strings.ToLower(prefix) + "_" + hex.EncodeToString(raw[:])
	admin, err := pgx.Connect(ctx, c.URL)
	require.NoError(t, err)
	defer admin.Close(ctx)
	_, err = admin.Exec(ctx, `CREATE DATABASE "`+name+`"`)
	require.NoError(t, err)
	db := &DB{Name: name, URL: WithDatabase(t, c.URL, name)}
	db.Pool, err = pgxpool.New(ctx, db.URL)
	require.NoError(t, err)
	t.Cleanup(db.Pool.Close)
	return db
}

// errOutput returns the standard error of a failed command, if any.
func errOutput(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}
