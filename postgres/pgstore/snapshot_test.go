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
				// Under the held lease the chunk writes go through.
				require.NoError(t, snaps.Start(l.Context(), "loop", "public.t", 0))
				_, err = snaps.Copy(l.Context(), "loop", "public.t", 0, target, "true", []string{"id"}, strings.NewReader("1\n2\n"))
				require.NoError(t, err)
				assert.Contains(t, state(), `public.t 0 {} done=true attempts=1; rows=2`)
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

// TestSnapshotsDeferIndexes: the indexes of an empty target table that
// DeferrableIndexes offers are exactly those DropIndexes and
// RestoreIndexes can drop and create again as they were (a primary key, a
// deferrable UNIQUE constraint, an exclusion constraint, plain, partial
// and expression indexes); those that would lose something (a comment,
// the replica identity) stay; a table with rows, or one a foreign key
// references, offers none; DropIndexes refuses a table with rows, and
// RestoreIndexes creates only what is missing.
func TestSnapshotsDeferIndexes(t *testing.T) {
	db := pgtest.NewDB(t, "snapindexes")
	ctx := context.Background()
	db.Exec(t, `CREATE EXTENSION IF NOT EXISTS btree_gist`)
	db.Exec(t, `CREATE TABLE t (id INT PRIMARY KEY, u INT NOT NULL, v TEXT, w INT NOT NULL, r INT,
			CONSTRAINT t_u UNIQUE (u) DEFERRABLE INITIALLY DEFERRED,
			CONSTRAINT t_x EXCLUDE USING gist (r WITH =))`,
		`CREATE INDEX t_v ON t (v) WHERE v IS NOT NULL`,
		`CREATE INDEX t_lower ON t (lower(v)) WITH (fillfactor = 70)`,
		`CREATE INDEX t_commented ON t (v, u)`, `COMMENT ON INDEX t_commented IS 'keep me'`,
		`CREATE UNIQUE INDEX t_w ON t (w)`, `ALTER TABLE t REPLICA IDENTITY USING INDEX t_w`,
		`CREATE TABLE referenced (id INT PRIMARY KEY)`, `CREATE TABLE child (id INT REFERENCES referenced)`,
		`CREATE TABLE full_ (id INT PRIMARY KEY)`, `INSERT INTO full_ VALUES (1)`)
	snaps, err := pgstore.NewSnapshots(ctx, db.Pool, "")
	require.NoError(t, err)
	table := func(name string) logical.Table { return logical.Table{Schema: "public", Name: name} }
	// schema sums up the indexes and constraints of t.
	schema := func() string {
		return strings.Join([]string{
			queryText(t, db, `SELECT string_agg(indexdef, '; ' ORDER BY indexname) FROM pg_indexes WHERE tablename = 't'`),
			queryText(t, db, `SELECT string_agg(conname || ' ' || pg_get_constraintdef(oid), '; ' ORDER BY conname)
				FROM pg_constraint WHERE conrelid = 't'::regclass`),
			queryText(t, db, `SELECT string_agg(c.relname || ' ' || coalesce(obj_description(c.oid, 'pg_class'), '-') || ' ' || i.indisreplident,
				'; ' ORDER BY c.relname) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = 't'::regclass`),
		}, "\n")
	}
	before := schema()

	indexes, empty, err := snaps.DeferrableIndexes(ctx, table("t"))
	require.NoError(t, err)
	require.True(t, empty)
	var names []string
	for _, ix := range indexes {
		names = append(names, fmt.Sprintf("%s %v", ix.Name, ix.Constraint))
	}
	assert.Equal(t, []string{"t_lower false", "t_pkey true", "t_u true", "t_v false", "t_x true"}, names)

	require.NoError(t, snaps.DropIndexes(ctx, table("t"), indexes))
	assert.Equal(t, "t_commented, t_w", queryText(t, db, `SELECT string_agg(indexname, ', ' ORDER BY indexname) FROM pg_indexes WHERE tablename = 't'`))
	require.NoError(t, snaps.RestoreIndexes(ctx, table("t"), indexes[:2]))
	require.NoError(t, snaps.RestoreIndexes(ctx, table("t"), indexes), "a second restore creates the rest")
	require.NoError(t, snaps.RestoreIndexes(ctx, table("t"), indexes), "and a third nothing")
	assert.Equal(t, before, schema())

	for _, name := range []string{"full_", "referenced"} {
		indexes, empty, err := snaps.DeferrableIndexes(ctx, table(name))
		require.NoError(t, err)
		assert.Empty(t, indexes, name)
		assert.Equal(t, name == "referenced", empty, name)
	}
	err = snaps.DropIndexes(ctx, table("full_"), []pgstore.SnapshotIndex{{Name: "full__pkey", Constraint: true}})
	require.ErrorContains(t, err, "not empty")
	assert.Equal(t, "1", queryText(t, db, `SELECT count(*)::text FROM pg_indexes WHERE tablename = 'full_'`))
	_, _, err = snaps.DeferrableIndexes(ctx, table("missing"))
	assert.ErrorContains(t, err, "public.missing")
}

func queryText(t *testing.T, db *pgtest.DB, sql string) string {
	t.Helper()
	var s string
	require.NoError(t, db.Pool.QueryRow(context.Background(), sql).Scan(&s))
	return s
}
