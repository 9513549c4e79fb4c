package pgstore

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/logical-go/logical"
	"github.com/pkg/errors"
)

// Memo is a logical.Memo kept in the table memo of a staging schema:
// (key text primary key, value bytea, updated timestamptz). A Put is one
// upsert that is durable once it returns (with the server's default
// synchronous_commit).
type Memo struct {
	pool  *pgxpool.Pool
	table string
}

var _ logical.Memo = (*Memo)(nil)

// NewMemo creates schema and its memo table if they are missing and
// returns a Memo over them. An empty schema means DefaultStagingSchema.
func NewMemo(ctx context.Context, pool *pgxpool.Pool, schema string) (*Memo, error) {
	if schema == "" {
		schema = DefaultStagingSchema
	}
	table := TableIdent(logical.Table{Schema: schema, Name: "memo"})
	if err := ensureSchema(ctx, pool, schema, `CREATE TABLE IF NOT EXISTS `+table+` (
		key     TEXT PRIMARY KEY,
		value   BYTEA NOT NULL,
		updated TIMESTAMPTZ NOT NULL DEFAULT now()
	)`); err != nil {
		return nil, err
	}
	return &Memo{pool: pool, table: table}, nil
}

// Get implements logical.Memo.
func (m *Memo) Get(ctx context.Context, key string) ([]byte, error) {
	var value []byte
	err := m.pool.QueryRow(ctx, `SELECT value FROM `+m.table+` WHERE key = $1`, key).Scan(&value)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, errors.Wrapf(err, "pgstore: reading memo key %q", key)
	}
	return value, nil
}

// Put implements logical.Memo.
func (m *Memo) Put(ctx context.Context, key string, value []byte) error {
	if value == nil {
		value = []byte{}
	}
	_, err := m.pool.Exec(ctx, `INSERT INTO `+m.table+` (key, value) VALUES ($1, $2)
		ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated = now()`, key, value)
	return errors.Wrapf(err, "pgstore: writing memo key %q", key)
}
