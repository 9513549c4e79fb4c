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

// TestPreload: Preload caches the description of the tables it can read
// and nothing for one it cannot, whose first write then reads the
// catalog itself (so the table created meanwhile is written, and a table
// still missing is an error naming it).
func TestPreload(t *testing.T) {
	db := pgtest.NewDB(t, "preload")
	ctx := context.Background()
	db.Exec(t, `CREATE TABLE here (k INT PRIMARY KEY, v TEXT)`, `CREATE SCHEMA other`,
		`CREATE TABLE other.there (k INT PRIMARY KEY)`, `CREATE TABLE other.here (x INT PRIMARY KEY)`)
	target := NewTarget(db.Pool)
	here := logical.Table{Schema: "public", Name: "here"}
	later := logical.Table{Schema: "public", Name: "later"}
	gone := logical.Table{Schema: "public", Name: "gone"}
	there := logical.Table{Schema: "other", Name: "there"}
	target.Preload(ctx, []logical.Table{here, later, gone, there})
	target.mu.RLock()
	assert.NotNil(t, target.tables[here], "read ahead")
	assert.NotNil(t, target.tables[there], "read ahead")
	assert.Len(t, target.tables, 2, "not other.here, which was not asked for")
	if info := target.tables[here]; assert.NotNil(t, info) {
		assert.Len(t, info.cols, 2, "the columns of public.here only")
	}
	assert.Nil(t, target.tables[later], "no description of a missing table")
	assert.Empty(t, target.loading)
	target.mu.RUnlock()

	db.Exec(t, `CREATE TABLE later (k INT PRIMARY KEY, v TEXT)`)
	put := []logical.Mutation{{Key: json.RawMessage(`["1"]`), Data: json.RawMessage(`{"k":"1","v":"one"}`)}}
	require.NoError(t, target.Apply(ctx, here, put))
	require.NoError(t, target.Apply(ctx, later, put))
	assert.ErrorContains(t, target.Apply(ctx, gone, put), "target table public.gone does not exist")

	var n int
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM here) + (SELECT count(*) FROM later)`).Scan(&n))
	assert.Equal(t, 2, n)

	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	fresh := NewTarget(db.Pool)
	fresh.Preload(cancelled, []logical.Table{here})
	assert.Empty(t, fresh.tables, "a cancelled preload reads nothing")
}
