package pgstore_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/logical-go/logical"
	"github.com/logical-go/logical/postgres/internal/pgtest"
	"github.com/logical-go/logical/postgres/pgstore"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMemo(t *testing.T) {
	db := pgtest.NewDB(t, "memo")
	ctx := context.Background()
	memo, err := pgstore.NewMemo(ctx, db.Pool, "")
	require.NoError(t, err)
	_, err = pgstore.NewMemo(ctx, db.Pool, "") // idempotent
	require.NoError(t, err)

	got, err := memo.Get(ctx, "loop")
	require.NoError(t, err)
	assert.Nil(t, got)

	require.NoError(t, memo.Put(ctx, "loop", []byte(`{"lsn":"0/1"}`)))
	require.NoError(t, memo.Put(ctx, "loop", []byte(`{"lsn":"0/2"}`)))
	got, err = memo.Get(ctx, "loop")
	require.NoError(t, err)
	assert.Equal(t, `{"lsn":"0/2"}`, string(got))

	weird, err := pgstore.NewMemo(ctx, db.Pool, `we"ird schema`)
	require.NoError(t, err)
	require.NoError(t, weird.Put(ctx, "k", []byte("v")))
	got, err = weird.Get(ctx, "k")
	require.NoError(t, err)
	assert.Equal(t, "v", string(got))
}

// TestStagingTablesConcurrently: processes that start together and create
// the same staging schema and tables (each constructor in one round trip)
// all succeed.
func TestStagingTablesConcurrently(t *testing.T) {
	db := pgtest.NewDB(t, "staging")
	ctx := context.Background()
	const n = 8
	errs := make(chan error, 3*n)
	for range n {
		go func() {
			_, err := pgstore.NewMemo(ctx, db.Pool, "race")
			errs <- err
		}()
		go func() {
			_, err := pgstore.NewProgress(ctx, db.Pool, "race")
			errs <- err
		}()
		go func() {
			_, err := pgstore.NewLeases(ctx, db.Pool, "race", time.Second, "")
			errs <- err
		}()
	}
	for range 3 * n {
		require.NoError(t, <-errs)
	}
	var tables int
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE schemaname = 'race'`).Scan(&tables))
	assert.Equal(t, 3, tables)
}

func TestLeases(t *testing.T) {
	db := pgtest.NewDB(t, "lease")
	ctx := context.Background()
	a, err := pgstore.NewLeases(ctx, db.Pool, "", 2*time.Second, "a")
	require.NoError(t, err)
	b, err := pgstore.NewLeases(ctx, db.Pool, "", 2*time.Second, "b")
	require.NoError(t, err)

	t.Run("busy while held, free after release", func(t *testing.T) {
		la, err := a.Acquire(ctx, "x")
		require.NoError(t, err)
		_, err = b.Acquire(ctx, "x")
		busy, ok := logical.IsLeaseBusy(err)
		require.True(t, ok, "want busy, got %v", err)
		assert.WithinDuration(t, time.Now().Add(2*time.Second), busy.Expiration, 2*time.Second)

		other, err := b.Acquire(ctx, "y") // another name is independent
		require.NoError(t, err)
		other.Release()

		la.Release()
		la.Release() // idempotent
		require.Error(t, la.Context().Err())
		lb, err := b.Acquire(ctx, "x")
		require.NoError(t, err)
		lb.Release()
	})

	t.Run("renewed beyond its lifetime", func(t *testing.T) {
		la, err := a.Acquire(ctx, "renew")
		require.NoError(t, err)
		defer la.Release()
		deadline := time.Now().Add(4 * time.Second) // two lifetimes
		for time.Now().Before(deadline) {
			_, err := b.Acquire(ctx, "renew")
			_, busy := logical.IsLeaseBusy(err)
			require.True(t, busy, "the lease expired while held: %v", err)
			select {
			case <-la.Context().Done():
				t.Fatal("lease lost while renewing")
			case <-time.After(200 * time.Millisecond):
			}
		}
	})

	t.Run("lost when taken over", func(t *testing.T) {
		la, err := a.Acquire(ctx, "steal")
		require.NoError(t, err)
		defer la.Release()
		// Someone else's row replaces ours: the next renewal fails.
		db.Exec(t, `UPDATE _logical.leases SET nonce = 'other' WHERE name = 'steal'`)
		select {
		case <-la.Context().Done():
		case <-time.After(10 * time.Second):
			t.Fatal("lease not lost")
		}
	})

	t.Run("a late release by the old holder leaves the new holder alone", func(t *testing.T) {
		la, err := a.Acquire(ctx, "handover")
		require.NoError(t, err)
		// Let a's term run out (as if its renewals had stalled) until b
		// takes the lease over; a's renewal may win a round first.
		var lb logical.Lease
		deadline := time.Now().Add(10 * time.Second)
		for lb == nil {
			require.True(t, time.Now().Before(deadline), "b never took the expired lease over")
			db.Exec(t, `UPDATE _logical.leases SET expires = now() - interval '1 second' WHERE name = 'handover'`)
			if lb, err = b.Acquire(ctx, "handover"); err != nil {
				_, busy := logical.IsLeaseBusy(err)
				require.True(t, busy, "unexpected error: %v", err)
				lb = nil
			}
		}
		defer lb.Release()
		la.Release()
		_, err = a.Acquire(ctx, "handover")
		_, busy := logical.IsLeaseBusy(err)
		require.True(t, busy, "a's late Release freed b's lease: %v", err)
		assert.NoError(t, lb.Context().Err(), "b lost the lease to a's late Release")
	})

	t.Run("expired lease can be taken", func(t *testing.T) {
		db.Exec(t, `INSERT INTO _logical.leases VALUES ('old', now() - interval '1 second', 'n', 'gone')`)
		l, err := b.Acquire(ctx, "old")
		require.NoError(t, err)
		l.Release()
	})
}

func TestTargetApply(t *testing.T) {
	db := pgtest.NewDB(t, "target")
	ctx := context.Background()
	db.Exec(t,
		`CREATE SCHEMA "My ""Schema"""`,
		`CREATE TABLE "My ""Schema"""."Ta-ble" (b INT, "A" TEXT, v JSONB, n NUMERIC, ts TIMESTAMPTZ, big TEXT, PRIMARY KEY (b, "A"))`,
		`CREATE TABLE "My ""Schema""".nokey (x INT, y TEXT)`,
	)
	schema := `My "Schema"`
	tbl := logical.Table{Schema: schema, Name: "Ta-ble"}
	nokey := logical.Table{Schema: schema, Name: "nokey"}
	target := pgstore.NewTarget(db.Pool)

	up := func(key, data string) logical.Mutation {
		return logical.Mutation{Key: json.RawMessage(key), Data: json.RawMessage(data)}
	}
	del := func(key string) logical.Mutation { return logical.Mutation{Key: json.RawMessage(key)} }
	rows := func(sql string) []string {
		r, err := db.Pool.Query(ctx, sql)
		require.NoError(t, err)
		defer r.Close()
		var out []string
		for r.Next() {
			var s string
			require.NoError(t, r.Scan(&s))
			out = append(out, s)
		}
		require.NoError(t, r.Err())
		return out
	}
	all := `SELECT t::text FROM "My ""Schema"""."Ta-ble" t ORDER BY b, "A"`

	require.NoError(t, target.Apply(ctx, tbl, []logical.Mutation{
		up(`["1","a"]`, `{"b":"1","A":"a","v":"{\"k\": [1, 2]}","n":"1.50","ts":"2024-01-02 03:04:05+00","big":"x"}`),
		up(`["2","b"]`, `{"b":"2","A":"b","v":null,"n":null,"ts":null,"big":"y"}`),
		up(`[3,"c"]`, `{"b":3,"A":"c","v":{"nested":true},"n":2.25,"ts":"2024-01-02T03:04:05Z","big":"z"}`),
	}))
	assert.Equal(t, []string{
		`(1,a,"{""k"": [1, 2]}",1.50,"2024-01-02 03:04:05+00",x)`,
		`(2,b,,,,y)`,
		`(3,c,"{""nested"": true}",2.25,"2024-01-02 03:04:05+00",z)`,
	}, rows(all))

	tx, err := target.Begin(ctx)
	require.NoError(t, err)
	require.NoError(t, tx.Apply(ctx, tbl, []logical.Mutation{
		up(`["1","a"]`, `{"b":"1","A":"a","n":"9"}`), // big and others kept
		del(`["2","b"]`),
		up(`["2","b"]`, `{"b":"2","A":"b","big":"back"}`), // the last one counts
		del(`["3","c"]`),
		up(`["4","d"]`, `{"b":"4","A":"d","big":"first"}`),
		up(`["4","d"]`, `{"b":"4","A":"d","n":"4"}`), // merged with the one before
	}))
	require.NoError(t, tx.Rollback(ctx))
	assert.Len(t, rows(all), 3, "rolled back")

	tx, err = target.Begin(ctx)
	require.NoError(t, err)
	require.NoError(t, tx.Apply(ctx, tbl, []logical.Mutation{
		up(`["1","a"]`, `{"b":"1","A":"a","n":"9"}`),
		del(`["2","b"]`),
		up(`["2","b"]`, `{"b":"2","A":"b","big":"back"}`),
		del(`["3","c"]`),
		up(`["4","d"]`, `{"b":"4","A":"d","big":"first"}`),
		up(`["4","d"]`, `{"b":"4","A":"d","n":"4"}`),
	}))
	require.NoError(t, tx.Commit(ctx))
	assert.Equal(t, []string{
		`(1,a,"{""k"": [1, 2]}",9,"2024-01-02 03:04:05+00",x)`,
		`(2,b,,,,back)`,
		`(4,d,,4,,first)`,
	}, rows(all))

	t.Run("string values keep quotes, backslashes, NULL and empty strings", func(t *testing.T) {
		require.NoError(t, target.Apply(ctx, tbl, []logical.Mutation{
			up(`["10","q\"uo\\te"]`, `{"b":"10","A":"q\"uo\\te","big":"NULL","n":null}`),
			up(`["11",""]`, `{"b":"11","A":"","big":"{x,\"y\"}","n":"1e2"}`),
			up(`["12","\u00e9"]`, `{"b":"12","A":"\u00e9","big":"tab\tnew\nline","n":"-0.5"}`),
		}))
		got := rows(`SELECT format('%s|%s|%s|%s', b, "A", coalesce(big, '<null>'), coalesce(n::text, '<null>'))
			FROM "My ""Schema"""."Ta-ble" WHERE b >= 10 ORDER BY b`)
		assert.Equal(t, []string{
			`10|q"uo\te|NULL|<null>`,
			`11||{x,"y"}|100`,
			"12|\u00e9|tab\tnew\nline|-0.5",
		}, got)
		err := target.Apply(ctx, tbl, []logical.Mutation{up(`["13","x"]`, `{"b":"13","A":"x","n":"not a number"}`)})
		require.ErrorContains(t, err, "Ta-ble", "a value the column's type rejects")
	})

	t.Run("rows the source inserted are inserted, and upserted after a conflict", func(t *testing.T) {
		ins := func(key, data string) logical.Mutation {
			m := up(key, data)
			m.Meta = map[string]any{pgstore.MetaInsert: true}
			return m
		}
		require.NoError(t, target.Apply(ctx, tbl, []logical.Mutation{
			ins(`["20","n"]`, `{"b":"20","A":"n","big":"new"}`),
			up(`["20","n"]`, `{"b":"20","A":"n","n":"5"}`), // merged into the insert
			del(`["1","a"]`),
			ins(`["1","a"]`, `{"b":"1","A":"a","big":"again"}`), // the row existed before the call: upserted
		}))
		assert.Equal(t, []string{`(1,a,"{""k"": [1, 2]}",9,"2024-01-02 03:04:05+00",again)`, `(20,n,,5,,new)`},
			rows(`SELECT t::text FROM "My ""Schema"""."Ta-ble" t WHERE b IN (1, 20) ORDER BY b`))

		// A replayed insert (the row exists) is redone at once as an
		// upsert: in a transaction by starting it over, outside one by
		// running the statement again.
		tx, err := target.Begin(ctx)
		require.NoError(t, err)
		require.NoError(t, tx.Apply(ctx, tbl, []logical.Mutation{up(`["21","m"]`, `{"b":"21","A":"m","big":"before"}`)}))
		require.NoError(t, tx.Apply(ctx, tbl, []logical.Mutation{ins(`["20","n"]`, `{"b":"20","A":"n","big":"dup"}`)}))
		require.NoError(t, tx.Apply(ctx, tbl, []logical.Mutation{up(`["22","m"]`, `{"b":"22","A":"m","big":"after"}`)}))
		require.NoError(t, tx.Commit(ctx), "the conflict is retried at once")
		assert.Equal(t, []string{`(20,n,,5,,dup)`, `(21,m,,,,before)`, `(22,m,,,,after)`},
			rows(`SELECT t::text FROM "My ""Schema"""."Ta-ble" t WHERE b BETWEEN 20 AND 22 ORDER BY b`))

		fresh := pgstore.NewTarget(db.Pool) // has not seen a conflict yet
		require.NoError(t, fresh.Apply(ctx, tbl, []logical.Mutation{ins(`["20","n"]`, `{"b":"20","A":"n","big":"dup2"}`)}))
		assert.Equal(t, []string{`(20,n,,5,,dup2)`},
			rows(`SELECT t::text FROM "My ""Schema"""."Ta-ble" t WHERE b = 20`))
	})

	t.Run("truncate in order", func(t *testing.T) {
		require.NoError(t, target.Apply(ctx, tbl, []logical.Mutation{
			up(`["5","e"]`, `{"b":"5","A":"e"}`),
			{Meta: map[string]any{pgstore.MetaTruncate: true}},
			up(`["6","f"]`, `{"b":"6","A":"f"}`),
		}))
		assert.Equal(t, []string{`(6,f,,,,)`}, rows(all))
	})

	t.Run("table without a primary key", func(t *testing.T) {
		require.NoError(t, target.Apply(ctx, nokey, []logical.Mutation{
			up(`[]`, `{"x":"1","y":"a"}`),
			up(`[]`, `{"x":"1","y":"a"}`),
		}))
		assert.Equal(t, []string{"(1,a)", "(1,a)"}, rows(`SELECT t::text FROM "My ""Schema""".nokey t`))
		err := target.Apply(ctx, nokey, []logical.Mutation{del(`["1"]`)})
		require.ErrorContains(t, err, "nokey")
		require.ErrorContains(t, err, "cannot apply a delete")
	})

	t.Run("errors name the table or column", func(t *testing.T) {
		err := target.Apply(ctx, logical.Table{Schema: schema, Name: "missing"}, []logical.Mutation{up(`[1]`, `{}`)})
		require.ErrorContains(t, err, "missing")
		err = target.Apply(ctx, tbl, []logical.Mutation{up(`["7","g"]`, `{"b":"7","A":"g","nope":"1"}`)})
		require.ErrorContains(t, err, `"nope"`)
		err = target.Apply(ctx, tbl, []logical.Mutation{del(`["7"]`)})
		require.ErrorContains(t, err, "Ta-ble")
	})
}

func TestTargetOrder(t *testing.T) {
	db := pgtest.NewDB(t, "order")
	db.Exec(t,
		`CREATE SCHEMA s`,
		`CREATE TABLE s.parent (id INT PRIMARY KEY, up INT REFERENCES s.parent(id))`, // self reference ignored
		`CREATE TABLE s.other (id INT PRIMARY KEY)`,
		`CREATE TABLE s.child (id INT PRIMARY KEY, p INT REFERENCES s.parent(id), o INT REFERENCES s.other(id))`,
		`CREATE TABLE s.grandchild (id INT PRIMARY KEY, c INT REFERENCES s.child(id), p INT REFERENCES s.parent(id))`,
		`CREATE TABLE public.elsewhere (id INT PRIMARY KEY)`,
		`CREATE TABLE s.outward (id INT PRIMARY KEY, e INT REFERENCES public.elsewhere(id))`, // other schema ignored
	)
	levels, err := pgstore.NewTarget(db.Pool).Order(context.Background(), "s")
	require.NoError(t, err)
	tbl := func(n string) logical.Table { return logical.Table{Schema: "s", Name: n} }
	assert.Equal(t, [][]logical.Table{
		{tbl("other"), tbl("outward"), tbl("parent")},
		{tbl("child")},
		{tbl("grandchild")},
	}, levels)

	db.Exec(t,
		`CREATE TABLE s.a (id INT PRIMARY KEY, b INT)`,
		`CREATE TABLE s.b (id INT PRIMARY KEY, a INT REFERENCES s.a(id))`,
		`ALTER TABLE s.a ADD FOREIGN KEY (b) REFERENCES s.b(id)`,
	)
	_, err = pgstore.NewTarget(db.Pool).Order(context.Background(), "s")
	require.ErrorContains(t, err, "s.a")
}
