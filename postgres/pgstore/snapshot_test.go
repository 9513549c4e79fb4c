package pgstore_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/logical-go/logical"
	"github.com/logical-go/logical/postgres/internal/pgtest"
	"github.com/logical-go/logical/postgres/pgstore"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSnapshotsAreFencedByTheLease: every bookkeeping write of Snapshots
// (Plan, SetSpec, Start and the chunk commit of Copy) under the context of
// a lease that expired or was taken over writes nothing and fails with
// ErrLeaseLost; under a held lease, and without one, it writes.
func TestSnapshotsAreFencedByTheLease(t *testing.T) {
	db := pgtest.NewDB(t, "snapfence")
	ctx := context.Background()
	db.Exec(t, `CREATE TABLE t (id INT PRIMARY KEY)`)
	target := logical.Table{Schema: "public", Name: "t"}
	snaps, err := pgstore.NewSnapshots(ctx, db.Pool, "")
	require.NoError(t, err)
	other, err := pgxpool.New(ctx, db.URL)
	require.NoError(t, err)
	defer other.Close()

	// state sums up what the bookkeeping and the target hold.
	state := func() string {
		chunks, err := snaps.Load(ctx, "loop")
		require.NoError(t, err)
		var b strings.Builder
		for _, c := range chunks {
			fmt.Fprintf(&b, "%s %d %s done=%v attempts=%d; ", c.Table, c.N, c.Spec, c.Done, c.Attempts)
		}
		var n int
		require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM t`).Scan(&n))
		return fmt.Sprintf("%srows=%d", b.String(), n)
	}
	writes := []struct {
		name  string
		write func(ctx context.Context) error
	}{
		{"Plan", func(ctx context.Context) error {
			return snaps.Plan(ctx, "loop", "public.t", []pgstore.SnapshotChunk{{N: 0, Spec: []byte(`{"late":true}`)}})
		}},
		{"SetSpec", func(ctx context.Context) error {
			return snaps.SetSpec(ctx, "loop", "public.t", -1, []byte(`{"late":true}`))
		}},
		{"Start", func(ctx context.Context) error { return snaps.Start(ctx, "loop", "public.t", 0) }},
		{"Copy", func(ctx context.Context) error {
			_, err := snaps.Copy(ctx, "loop", "public.t", 0, target, "true", []string{"id"}, strings.NewReader("1\n2\n"))
			return err
		}},
	}

	for _, pool := range []struct {
		name string
		pool *pgxpool.Pool
	}{{"same pool", db.Pool}, {"another pool", other}} {
		// A long term: no renewal runs (and notices the change) during the test.
		leases, err := pgstore.NewLeases(ctx, pool.pool, "", time.Hour, "a")
		require.NoError(t, err)
		for _, steal := range []struct {
			name string
			sql  string
		}{
			{"taken over", `UPDATE _logical.leases SET nonce = 'other', holder = 'b' WHERE name = $1`},
			{"expired", `UPDATE _logical.leases SET expires = now() - interval '1 second' WHERE name = $1`},
		} {
			t.Run(pool.name+"/"+steal.name, func(t *testing.T) {
				name := pool.name + steal.name
				l, err := leases.Acquire(ctx, name)
				require.NoError(t, err)
				defer l.Release()
				require.NoError(t, snaps.Plan(l.Context(), "loop", "public.t", []pgstore.SnapshotChunk{{N: 0, Spec: []byte(`{}`)}}))
				require.NoError(t, snaps.SetSpec(l.Context(), "loop", "public.t", -1, []byte(`{}`)))
				db.Exec(t, `DELETE FROM t`)
				before := state()

				_, err = db.Pool.Exec(ctx, steal.sql, name)
				require.NoError(t, err)
				require.NoError(t, l.Context().Err(), "the renewal has not noticed yet")
				for _, w := range writes {
					err := w.write(l.Context())
					require.ErrorIs(t, err, pgstore.ErrLeaseLost, w.name)
					assert.ErrorContains(t, err, `lease "`+name+`"`, w.name)
					assert.Equal(t, before, state(), "a fenced %s wrote", w.name)
				}
			})
		}
	}

	t.Run("no lease", func(t *testing.T) {
		before := state()
		for _, w := range writes {
			require.NoError(t, w.write(ctx), w.name)
		}
		assert.NotEqual(t, before, state())
		chunks, err := snaps.Load(ctx, "loop")
		require.NoError(t, err)
		require.Len(t, chunks, 2)
	})
}
