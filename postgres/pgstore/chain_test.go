package pgstore_test

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/logical-go/logical"
	"github.com/logical-go/logical/postgres/internal/pgtest"
	"github.com/logical-go/logical/postgres/pgstore"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCommitChain(t *testing.T) {
	db := pgtest.NewDB(t, "chain")
	ctx := context.Background()
	db.Exec(t,
		`CREATE TABLE parent (k INT PRIMARY KEY, v TEXT)`,
		// Checked at COMMIT: a child without its parent fails the commit
		// itself, after every statement succeeded.
		`CREATE TABLE child (k INT PRIMARY KEY, p INT REFERENCES parent (k) DEFERRABLE INITIALLY DEFERRED)`,
	)
	parent := logical.Table{Schema: "public", Name: "parent"}
	child := logical.Table{Schema: "public", Name: "child"}
	target := pgstore.NewTarget(db.Pool)
	insert := func(key, data string) logical.Mutation {
		return logical.Mutation{Key: json.RawMessage(key), Data: json.RawMessage(data), Meta: map[string]any{pgstore.MetaInsert: true}}
	}
	del := func(key string) logical.Mutation { return logical.Mutation{Key: json.RawMessage(key)} }
	begin := func() logical.ChainTx {
		tx, err := target.Begin(ctx)
		require.NoError(t, err)
		ct, ok := tx.(logical.ChainTx)
		require.True(t, ok, "pgstore's transactions chain")
		return ct
	}

	t.Run("the next transaction runs after the commit", func(t *testing.T) {
		tx := begin()
		require.NoError(t, tx.Apply(ctx, parent, []logical.Mutation{insert(`[1]`, `{"k":"1","v":"a"}`)}))
		next, result := tx.CommitChain(ctx)
		// A delete on another session would not see the row before the
		// commit and delete nothing.
		require.NoError(t, next.Apply(ctx, parent, []logical.Mutation{del(`[1]`), insert(`[2]`, `{"k":"2","v":"b"}`)}))
		require.NoError(t, next.Commit(ctx))
		require.NoError(t, <-result)
		assert.Equal(t, int64(1), query(t, db, `SELECT count(*) FROM parent WHERE k = 2`))
		assert.Equal(t, int64(1), query(t, db, `SELECT count(*) FROM parent`))
	})

	t.Run("nothing of the next transactions after a failed commit", func(t *testing.T) {
		tx := begin()
		require.NoError(t, tx.Apply(ctx, parent, []logical.Mutation{insert(`[10]`, `{"k":"10","v":"x"}`)}))
		require.NoError(t, tx.Apply(ctx, child, []logical.Mutation{insert(`[1]`, `{"k":"1","p":"99"}`)}))
		next, result := tx.CommitChain(ctx)
		require.NoError(t, next.Apply(ctx, parent, []logical.Mutation{insert(`[11]`, `{"k":"11","v":"y"}`)}))
		third, result2 := next.(logical.ChainTx).CommitChain(ctx)
		assert.ErrorContains(t, <-result, "child")
		assert.ErrorContains(t, <-result2, "the transaction before this one on its connection failed")
		err := third.Apply(ctx, parent, []logical.Mutation{insert(`[12]`, `{"k":"12","v":"z"}`)})
		if err == nil {
			err = third.Commit(ctx)
		} else {
			require.NoError(t, third.Rollback(ctx))
		}
		assert.Error(t, err)
		assert.Equal(t, int64(0), query(t, db, `SELECT count(*) FROM parent WHERE k >= 10`), "no row of any of the three")
		assert.Equal(t, int64(0), query(t, db, `SELECT count(*) FROM child`))

		// The connection went back to the pool in a usable state.
		tx = begin()
		require.NoError(t, tx.Apply(ctx, parent, []logical.Mutation{insert(`[20]`, `{"k":"20","v":"ok"}`)}))
		require.NoError(t, tx.Commit(ctx))
		assert.Equal(t, int64(1), query(t, db, `SELECT count(*) FROM parent WHERE k = 20`))
	})

	t.Run("a chained transaction rolled back leaves the commit before it", func(t *testing.T) {
		tx := begin()
		require.NoError(t, tx.Apply(ctx, parent, []logical.Mutation{insert(`[30]`, `{"k":"30","v":"kept"}`)}))
		next, result := tx.CommitChain(ctx)
		require.NoError(t, next.Apply(ctx, parent, []logical.Mutation{insert(`[31]`, `{"k":"31","v":"dropped"}`)}))
		require.NoError(t, next.Rollback(ctx))
		require.NoError(t, <-result)
		assert.Equal(t, int64(1), query(t, db, `SELECT count(*) FROM parent WHERE k IN (30, 31)`))
		assert.Equal(t, int64(1), query(t, db, `SELECT count(*) FROM parent WHERE k = 30`))
	})
}
