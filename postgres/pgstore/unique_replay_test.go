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

// TestUniqueSwapLogFull checks the fallback when a transaction is too
// large to replay: the swap fails the transaction, naming the constraint;
// the retry writes the table one mutation per statement and succeeds, and
// after its commit the table is written in folded statements again.
func TestUniqueSwapLogFull(t *testing.T) {
	db := pgtest.NewDB(t, "uniquefull")
	ctx := context.Background()
	db.Exec(t, `CREATE TABLE s (id int PRIMARY KEY, u text UNIQUE)`, `INSERT INTO s VALUES (1, 'a'), (2, 'b')`)
	defer func(n int) { replayBytes = n }(replayBytes)
	replayBytes = 10 // every transaction overflows its log
	target := NewTarget(db.Pool)
	table := logical.Table{Schema: "public", Name: "s"}
	mut := func(id, u string) logical.Mutation {
		return logical.Mutation{Key: json.RawMessage(`["` + id + `"]`), Data: json.RawMessage(`{"id":"` + id + `","u":"` + u + `"}`)}
	}
	muts := []logical.Mutation{mut("1", "tmp"), mut("2", "a"), mut("1", "b")}
	apply := func() error {
		tx, err := target.Begin(ctx)
		require.NoError(t, err)
		require.NoError(t, tx.Apply(ctx, table, muts))
		return tx.Commit(ctx)
	}
	err := apply()
	require.Error(t, err)
	assert.ErrorContains(t, err, `constraint "s_u_key"`)
	require.NoError(t, apply(), "the retry writes one mutation per statement")
	var got string
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT string_agg(id || '=' || u, ',' ORDER BY id) FROM s`).Scan(&got))
	assert.Equal(t, "1=b,2=a", got)
	target.mu.RLock()
	assert.False(t, target.rowByRow[table], "folded statements again after the commit")
	target.mu.RUnlock()
}
