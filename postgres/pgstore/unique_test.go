package pgstore_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/logical-go/logical"
	"github.com/logical-go/logical/postgres/internal/pgtest"
	"github.com/logical-go/logical/postgres/pgstore"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// uRow is an upsert of key id with value u, marked as an insert if fresh.
func uRow(id int, u string, fresh bool) logical.Mutation {
	m := logical.Mutation{
		Key:  json.RawMessage(fmt.Sprintf(`["%d"]`, id)),
		Data: json.RawMessage(fmt.Sprintf(`{"id":"%d","u":"%s"}`, id, u)),
	}
	if fresh {
		m.Meta = map[string]any{pgstore.MetaInsert: true}
	}
	return m
}

// TestTargetUniqueSwap applies, in one call, mutations that only work in
// their order: a swap of the values of a secondary unique column in three
// steps, and a fresh row taking a value another row gives up later in the
// call (the fresh rows are written by a statement of their own). Collapsed
// per key into one statement they violate the unique constraint; the
// Target writes them again one statement per mutation. A violation that
// the order cannot explain (the target has a unique constraint the source
// lacks) still fails, naming the constraint and the values (outside a
// transaction after trying for a while, as another fan worker might be
// about to free the value).
func TestTargetUniqueSwap(t *testing.T) {
	for _, mode := range applyModes {
		t.Run(mode.name, func(t *testing.T) {
			db := pgtest.NewDB(t, "unique")
			ctx := context.Background()
			db.Exec(t,
				`CREATE TABLE s (id int PRIMARY KEY, u text UNIQUE)`,
				`INSERT INTO s VALUES (1, 'a'), (2, 'b'), (3, 'x')`,
			)
			target := pgstore.NewTarget(db.Pool)
			table := logical.Table{Schema: "public", Name: "s"}
			muts := []logical.Mutation{
				uRow(1, "tmp", false), uRow(2, "a", false), uRow(1, "b", false), // the swap
				uRow(4, "p", true), uRow(3, "z", false), uRow(5, "x", true), // 5 takes 3's old value
			}
			require.NoError(t, mode.apply(ctx, target, table, muts))
			assert.Equal(t, []string{"1=b", "2=a", "3=z", "4=p", "5=x"}, uniqueRows(t, db))

			// The same value for two rows is a real error.
			bad := []logical.Mutation{uRow(6, "q", true), uRow(7, "q", true)}
			err := mode.apply(ctx, target, table, bad)
			require.Error(t, err)
			assert.ErrorContains(t, err, "s_u_key")
			assert.ErrorContains(t, err, "(u)=(q)")
			if mode.name == "transaction" {
				assert.Equal(t, []string{"1=b", "2=a", "3=z", "4=p", "5=x"}, uniqueRows(t, db), "nothing of the failed transaction stays")
			}
		})
	}
}

// uniqueRows returns the rows of table s as id=u.
func uniqueRows(t *testing.T, db *pgtest.DB) []string {
	rows, err := db.Pool.Query(context.Background(), `SELECT id || '=' || u FROM s ORDER BY id`)
	require.NoError(t, err)
	var out []string
	for rows.Next() {
		var s string
		require.NoError(t, rows.Scan(&s))
		out = append(out, s)
	}
	require.NoError(t, rows.Err())
	return out
}
