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

// TestTargetStatementsAfterSchemaChange writes rows of several sets of
// columns into one table in one call and again (the second time from the
// Target's statements made the first), then changes the table: a column
// added (a row with it makes the Target read the catalog again) and a
// column dropped and added back with another type (the statement made
// for the old type fails once, and the retry makes it afresh). Values
// with NULLs, JSON escapes and non-ASCII text, and rows without some
// columns (unchanged TOAST values) that the target must keep.
func TestTargetStatementsAfterSchemaChange(t *testing.T) {
	db := pgtest.NewDB(t, "sqlcache")
	ctx := context.Background()
	for _, mode := range applyModes {
		t.Run(mode.name, func(t *testing.T) {
			target := pgstore.NewTarget(db.Pool)
			name := "cache_" + mode.name
			db.Exec(t, `CREATE TABLE `+name+` (id int PRIMARY KEY, a text, b text)`)
			table := logical.Table{Schema: "public", Name: name}
			up := func(key, data string) logical.Mutation {
				return logical.Mutation{Key: json.RawMessage(key), Data: json.RawMessage(data)}
			}
			del := func(key string) logical.Mutation { return logical.Mutation{Key: json.RawMessage(key)} }
			rows := func() map[string]string {
				r, err := db.Pool.Query(ctx, `SELECT id::text, t::text FROM `+name+` t ORDER BY id`)
				require.NoError(t, err)
				defer r.Close()
				out := map[string]string{}
				for r.Next() {
					var id, row string
					require.NoError(t, r.Scan(&id, &row))
					out[id] = row
				}
				require.NoError(t, r.Err())
				return out
			}

			require.NoError(t, mode.apply(ctx, target, table, []logical.Mutation{
				up(`["1"]`, `{"id":"1","a":"plain","b":"x"}`),
				up(`["2"]`, `{"id":"2","a":"q\"uo\\te\n","b":null}`),
				up(`["3"]`, `{"id":"3","a":"ünï ✓ 日本","b":"\u00e9"}`),
				up(`["4"]`, `{"id":"4","a":"gone","b":"gone"}`),
			}))
			for round := range 2 {
				require.NoError(t, mode.apply(ctx, target, table, []logical.Mutation{
					up(`["1"]`, `{"id":"1","a":"only a"}`), // b unchanged
					up(`["2"]`, `{"id":"2","b":"only b"}`), // a unchanged
					up(`["3"]`, `{"id":"3","a":null,"b":"both"}`),
					del(`["4"]`),
					up(`["5"]`, `{"id":"5","a":"new"}`),
				}), "round %d", round)
				assert.Equal(t, map[string]string{
					"1": `(1,"only a",x)`,
					"2": `(2,"q""uo\\te` + "\n" + `","only b")`,
					"3": `(3,,both)`,
					"5": `(5,new,)`,
				}, rows(), "round %d", round)
			}

			// A column added at the source and the target mid-stream.
			db.Exec(t, `ALTER TABLE `+name+` ADD COLUMN c text`)
			require.NoError(t, mode.apply(ctx, target, table, []logical.Mutation{
				up(`["1"]`, `{"id":"1","a":"only a"}`),
				up(`["2"]`, `{"id":"2","a":"with c","b":"only b","c":"c2"}`),
				up(`["6"]`, `{"id":"6","c":"c6"}`),
			}))
			assert.Equal(t, map[string]string{
				"1": `(1,"only a",x,)`,
				"2": `(2,"with c","only b",c2)`,
				"3": `(3,,both,)`,
				"5": `(5,new,,)`,
				"6": `(6,,,c6)`,
			}, rows())

			// b dropped and added back as an integer: the statement made
			// for b as text fails, the retry makes it again.
			db.Exec(t, `ALTER TABLE `+name+` DROP COLUMN b`, `ALTER TABLE `+name+` ADD COLUMN b int`)
			again := []logical.Mutation{
				up(`["1"]`, `{"id":"1","a":"only a","b":"7"}`),
				up(`["3"]`, `{"id":"3","b":"8"}`),
			}
			err := mode.apply(ctx, target, table, again)
			require.Error(t, err, "the cached column b is text")
			require.NoError(t, mode.apply(ctx, target, table, again), "the retry")
			assert.Equal(t, map[string]string{
				"1": `(1,"only a",,7)`,
				"2": `(2,"with c",c2,)`,
				"3": `(3,,,8)`,
				"5": `(5,new,,)`,
				"6": `(6,,c6,)`,
			}, rows())
		})
	}
}
