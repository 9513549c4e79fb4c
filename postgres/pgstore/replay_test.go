package pgstore

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/logical-go/logical"
	"github.com/logical-go/logical/postgres/internal/pgtest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestReplayLogFull checks the fallback when a transaction is too large
// to start over: the conflict of a replayed insert fails the transaction,
// naming the table, and the retry upserts.
func TestReplayLogFull(t *testing.T) {
	db := pgtest.NewDB(t, "replay")
	ctx := context.Background()
	db.Exec(t, `CREATE TABLE r (id int PRIMARY KEY, v text)`, `INSERT INTO r VALUES (1, 'old')`)
	defer func(n int) { replayBytes = n }(replayBytes)
	replayBytes = 10 // every transaction overflows its log
	target := NewTarget(db.Pool)
	table := logical.Table{Schema: "public", Name: "r"}
	muts := []logical.Mutation{{Key: json.RawMessage(`["1"]`), Data: json.RawMessage(`{"id":"1","v":"new"}`),
		Meta: map[string]any{MetaInsert: true}}}
	apply := func() error {
		tx, err := target.Begin(ctx)
		require.NoError(t, err)
		require.NoError(t, tx.Apply(ctx, table, muts))
		return tx.Commit(ctx)
	}
	err := apply()
	require.Error(t, err)
	assert.ErrorContains(t, err, "inserting 1 rows into public.r")
	require.NoError(t, apply(), "the retry upserts")
	var v string
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT v FROM r WHERE id = 1`).Scan(&v))
	assert.Equal(t, "new", v)
}
