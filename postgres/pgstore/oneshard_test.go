package pgstore_test

import (
	"context"
	"testing"

	"github.com/logical-go/logical"
	"github.com/logical-go/logical/postgres/internal/pgtest"
	"github.com/logical-go/logical/postgres/pgstore"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestOneShard checks which tables the Target keeps on one fan shard:
// those without a key and those with a unique or exclusion constraint
// besides the key; a table keyed by its replica-identity index alone, or
// by its primary key alone, is spread. A missing table is an error.
func TestOneShard(t *testing.T) {
	db := pgtest.NewDB(t, "oneshard")
	db.Exec(t,
		`CREATE EXTENSION IF NOT EXISTS btree_gist`,
		`CREATE TABLE keyed (id int PRIMARY KEY, v text)`,
		`CREATE TABLE indexed (id int PRIMARY KEY, v text)`,
		`CREATE INDEX indexed_v ON indexed (v)`,
		`CREATE TABLE keyless (a int, b text)`,
		`CREATE TABLE uniq (id int PRIMARY KEY, u text UNIQUE)`,
		`CREATE TABLE uniq_index (id int PRIMARY KEY, u text)`,
		`CREATE UNIQUE INDEX uniq_index_u ON uniq_index (u)`,
		`CREATE TABLE by_ident (a int NOT NULL, b text NOT NULL)`,
		`CREATE UNIQUE INDEX by_ident_ab ON by_ident (a, b)`,
		`ALTER TABLE by_ident REPLICA IDENTITY USING INDEX by_ident_ab`,
		`CREATE TABLE excl (id int PRIMARY KEY, r int4range, EXCLUDE USING gist (r WITH &&))`,
	)
	target := pgstore.NewTarget(db.Pool)
	ctx := context.Background()
	for name, want := range map[string]bool{
		"keyed": false, "indexed": false, "by_ident": false,
		"keyless": true, "uniq": true, "uniq_index": true, "excl": true,
	} {
		got, err := target.OneShard(ctx, logical.Table{Schema: "public", Name: name})
		require.NoError(t, err, name)
		assert.Equal(t, want, got, name)
	}
	_, err := target.OneShard(ctx, logical.Table{Schema: "public", Name: "missing"})
	assert.ErrorContains(t, err, "public.missing")
}
