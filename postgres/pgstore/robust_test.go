package pgstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/logical-go/logical/postgres/internal/pgtest"
	"github.com/logical-go/logical/postgres/pgstore"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// blockRenewals locks the lease row name from another connection, so that
// renewals wait, until the returned function is called.
func blockRenewals(t *testing.T, db *pgtest.DB, name string) (unblock func()) {
	t.Helper()
	ctx := context.Background()
	tx, err := db.Pool.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `SELECT 1 FROM _logical.leases WHERE name = $1 FOR UPDATE`, name)
	require.NoError(t, err)
	done := false
	unblock = func() {
		if !done {
			done = true
			require.NoError(t, tx.Rollback(ctx))
		}
	}
	t.Cleanup(unblock)
	return unblock
}

// renewalWaitedFor reports whether a renewal of the lease table has been
// waiting for a lock for at least d.
func renewalWaitedFor(t *testing.T, pool *pgxpool.Pool, d time.Duration) bool {
	t.Helper()
	var n int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
		WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE 'UPDATE%leases%'
		AND now() - query_start >= make_interval(secs => $1)`, d.Seconds()).Scan(&n))
	return n > 0
}

// TestLeaseRenewalOutlastsASlowUpdate: a renewal that is stuck for longer
// than the renewal period (here: a lock on the row) does not give the
// lease up while its term lasts; once the renewal goes through, the lease
// is still held and renewed.
func TestLeaseRenewalOutlastsASlowUpdate(t *testing.T) {
	db := pgtest.NewDB(t, "lease")
	ctx := context.Background()
	const lifetime = 3 * time.Second // renewals every second
	leases, err := pgstore.NewLeases(ctx, db.Pool, "", lifetime, "a")
	require.NoError(t, err)
	l, err := leases.Acquire(ctx, "slow")
	require.NoError(t, err)
	defer l.Release()

	unblock := blockRenewals(t, db, "slow")
	// Wait until a renewal has been stuck for longer than the renewal
	// period, which used to be its timeout.
	deadline := time.Now().Add(30 * time.Second)
	for !renewalWaitedFor(t, db.Pool, lifetime/3+200*time.Millisecond) {
		require.NoError(t, l.Context().Err(), "the lease was given up after one slow renewal")
		require.True(t, time.Now().Before(deadline), "no renewal waited on the lock")
		time.Sleep(50 * time.Millisecond) // polling pg_stat_activity
	}
	require.NoError(t, l.Context().Err(), "the lease was given up after one slow renewal")
	var old time.Time
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT expires FROM _logical.leases WHERE name = 'slow'`).Scan(&old))
	unblock()
	// The renewal goes through and moves the expiry on.
	pgtest.Eventually(t, 30*time.Second, "a renewal after the lock", func() bool {
		var renewed bool
		require.NoError(t, db.Pool.QueryRow(ctx, `SELECT expires > $1 FROM _logical.leases WHERE name = 'slow'`, old).Scan(&renewed))
		return renewed
	})
	assert.NoError(t, l.Context().Err(), "the lease survived")
}

// TestLeaseRenewalGivesUpWhenTheTermEnds: renewals that cannot get
// through cancel the lease once its term is over.
func TestLeaseRenewalGivesUpWhenTheTermEnds(t *testing.T) {
	db := pgtest.NewDB(t, "lease")
	ctx := context.Background()
	leases, err := pgstore.NewLeases(ctx, db.Pool, "", time.Second, "a")
	require.NoError(t, err)
	l, err := leases.Acquire(ctx, "stuck")
	require.NoError(t, err)
	defer l.Release()
	defer blockRenewals(t, db, "stuck")() // before the Release, which deletes the row
	select {
	case <-l.Context().Done():
	case <-time.After(30 * time.Second):
		t.Fatal("a lease whose renewals cannot get through was kept")
	}
}

// TestMemoPutIsFencedByTheLease: a Put under the context of a lease that
// expired or was taken over writes nothing and says so; under a held
// lease, and without one, it writes.
func TestMemoPutIsFencedByTheLease(t *testing.T) {
	db := pgtest.NewDB(t, "fence")
	ctx := context.Background()
	memo, err := pgstore.NewMemo(ctx, db.Pool, "")
	require.NoError(t, err)
	// A long term: no renewal runs (and notices the change) during the test.
	leases, err := pgstore.NewLeases(ctx, db.Pool, "", time.Hour, "a")
	require.NoError(t, err)
	value := func() string {
		got, err := memo.Get(ctx, "loop")
		require.NoError(t, err)
		return string(got)
	}

	for _, tc := range []struct {
		name  string
		steal string // what happens to the lease row before the Put
	}{
		{"taken over", `UPDATE _logical.leases SET nonce = 'other', holder = 'b' WHERE name = $1`},
		{"expired", `UPDATE _logical.leases SET expires = now() - interval '1 second' WHERE name = $1`},
		{"released", `DELETE FROM _logical.leases WHERE name = $1`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := leases.Acquire(ctx, tc.name)
			require.NoError(t, err)
			defer l.Release()
			require.NoError(t, memo.Put(l.Context(), "loop", []byte("held:"+tc.name)))
			assert.Equal(t, "held:"+tc.name, value())

			_, err = db.Pool.Exec(ctx, tc.steal, tc.name)
			require.NoError(t, err)
			require.NoError(t, l.Context().Err(), "the renewal has not noticed yet")
			err = memo.Put(l.Context(), "loop", []byte("late"))
			require.ErrorIs(t, err, pgstore.ErrLeaseLost)
			assert.ErrorContains(t, err, `lease "`+tc.name+`"`)
			assert.Equal(t, "held:"+tc.name, value(), "a fenced Put wrote")
		})
	}

	t.Run("leases on another pool", func(t *testing.T) {
		other, err := pgxpool.New(ctx, db.URL)
		require.NoError(t, err)
		defer other.Close()
		remote, err := pgstore.NewLeases(ctx, other, "", time.Hour, "a")
		require.NoError(t, err)
		l, err := remote.Acquire(ctx, "remote")
		require.NoError(t, err)
		defer l.Release()
		require.NoError(t, memo.Put(l.Context(), "loop", []byte("remote")))
		db.Exec(t, `UPDATE _logical.leases SET nonce = 'other' WHERE name = 'remote'`)
		require.ErrorIs(t, memo.Put(l.Context(), "loop", []byte("late")), pgstore.ErrLeaseLost)
		assert.Equal(t, "remote", value())
	})

	require.NoError(t, memo.Put(ctx, "loop", []byte("no lease")))
	assert.Equal(t, "no lease", value())
}

// TestLeaseRenewalSurvivesAFailedUpdate: a renewal that fails (here: a
// trigger raises an error) is retried while the term lasts instead of
// giving the lease up.
func TestLeaseRenewalSurvivesAFailedUpdate(t *testing.T) {
	db := pgtest.NewDB(t, "lease")
	ctx := context.Background()
	leases, err := pgstore.NewLeases(ctx, db.Pool, "", 3*time.Second, "a")
	require.NoError(t, err)
	l, err := leases.Acquire(ctx, "flaky")
	require.NoError(t, err)
	defer l.Release()
	// The sequence counts failures outside the failing transactions.
	db.Exec(t, `CREATE SEQUENCE renew_failures`,
		`CREATE FUNCTION fail_renewal() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			PERFORM nextval('renew_failures');
			RAISE EXCEPTION 'renewal refused by the test';
		END $$`,
		`CREATE TRIGGER fail_renewal BEFORE UPDATE ON _logical.leases FOR EACH ROW EXECUTE FUNCTION fail_renewal()`)
	pgtest.Eventually(t, 30*time.Second, "two failed renewals", func() bool {
		require.NoError(t, l.Context().Err(), "the lease was given up after a failed renewal")
		return query(t, db, `SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM renew_failures`) >= 2
	})
	require.NoError(t, l.Context().Err(), "the lease was given up after a failed renewal")
	db.Exec(t, `DROP TRIGGER fail_renewal ON _logical.leases`)
	var old time.Time
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT expires FROM _logical.leases WHERE name = 'flaky'`).Scan(&old))
	pgtest.Eventually(t, 30*time.Second, "a renewal once the failures stop", func() bool {
		var renewed bool
		require.NoError(t, db.Pool.QueryRow(ctx, `SELECT expires > $1 FROM _logical.leases WHERE name = 'flaky'`, old).Scan(&renewed))
		return renewed
	})
	assert.NoError(t, l.Context().Err(), "the lease survived")
}

func query(t *testing.T, db *pgtest.DB, sql string) int64 {
	t.Helper()
	var n int64
	require.NoError(t, db.Pool.QueryRow(context.Background(), sql).Scan(&n))
	return n
}
