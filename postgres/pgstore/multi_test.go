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

// TestApplyMulti writes the parts of several tables in one call: a
// replayed insert (the row exists) is redone as an upsert with the other
// parts kept, and a part that fails leaves none of the parts written.
func TestApplyMulti(t *testing.T) {
	db := pgtest.NewDB(t, "multi")
	ctx := context.Background()
	db.Exec(t, `CREATE TABLE a (id int PRIMARY KEY, v text)`, `CREATE TABLE b (id int PRIMARY KEY, n int NOT NULL)`,
		`INSERT INTO a VALUES (1, 'old')`)
	target := NewTarget(db.Pool)
	ta, tb := logical.Table{Schema: "public", Name: "a"}, logical.Table{Schema: "public", Name: "b"}
	mut := func(key, data string, insert bool) logical.Mutation {
		m := logical.Mutation{Key: json.RawMessage(key), Data: json.RawMessage(data)}
		if insert {
			m.Meta = map[string]any{MetaInsert: true}
		}
		return m
	}
	rows := func() string {
		var s string
		require.NoError(t, db.Pool.QueryRow(ctx, `SELECT concat_ws(' ',
			(SELECT string_agg(id || '=' || v, ',' ORDER BY id) FROM a),
			(SELECT string_agg(id || '=' || n, ',' ORDER BY id) FROM b))`).Scan(&s))
		return s
	}

	require.NoError(t, target.ApplyMulti(ctx, []logical.TableMutations{
		{Table: ta, Mutations: []logical.Mutation{
			mut(`["1"]`, `{"id":"1","v":"new"}`, true), // exists: a replay
			mut(`["2"]`, `{"id":"2","v":"two"}`, true),
		}},
		{Table: tb, Mutations: []logical.Mutation{
			mut(`["1"]`, `{"id":"1","n":"10"}`, true),
			mut(`["1"]`, `{"id":"1","n":"11"}`, false), // the last of a key counts
		}},
	}))
	assert.Equal(t, "1=new,2=two 1=11", rows())

	err := target.ApplyMulti(ctx, []logical.TableMutations{
		{Table: ta, Mutations: []logical.Mutation{mut(`["3"]`, `{"id":"3","v":"three"}`, true), mut(`["1"]`, ``, false)}},
		{Table: tb, Mutations: []logical.Mutation{mut(`["2"]`, `{"id":"2","n":null}`, true)}}, // NOT NULL
	})
	require.Error(t, err)
	assert.ErrorContains(t, err, "public.b")
	assert.Equal(t, "1=new,2=two 1=11", rows(), "a failed call writes none of its parts")
}
