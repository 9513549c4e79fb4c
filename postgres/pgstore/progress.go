package pgstore

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/logical-go/logical"
	"github.com/pkg/errors"
)

// Progress is the table progress of a staging schema, (key text primary
// key, lsn pg_lsn): a dialect writes a row into it through the same target
// transaction as the data of each source transaction, so the target itself
// knows what it has applied. After a crash the dialect can then skip what
// the target already has even if the consistent point had not been
// persisted yet, which makes serial mode exactly-once also for tables
// without a primary key.
type Progress struct {
	pool  *pgxpool.Pool
	table logical.Table
}

// NewProgress creates schema and its progress table if they are missing.
// An empty schema means DefaultStagingSchema.
func NewProgress(ctx context.Context, pool *pgxpool.Pool, schema string) (*Progress, error) {
	if schema == "" {
		schema = DefaultStagingSchema
	}
	table := logical.Table{Schema: schema, Name: "progress"}
	if err := ensureSchema(ctx, pool, schema, `CREATE TABLE IF NOT EXISTS `+TableIdent(table)+` (
		key TEXT PRIMARY KEY,
		lsn PG_LSN NOT NULL
	)`); err != nil {
		return nil, err
	}
	return &Progress{pool: pool, table: table}, nil
}

// Table returns the progress table; rows are {"key": ..., "lsn": "X/X"}
// with Key [key].
func (p *Progress) Table() logical.Table { return p.table }

// Applied returns the LSN recorded for key in PostgreSQL's text form, and
// false if there is none.
func (p *Progress) Applied(ctx context.Context, key string) (string, bool, error) {
	var lsn string
	err := p.pool.QueryRow(ctx, `SELECT lsn::text FROM `+TableIdent(p.table)+` WHERE key = $1`, key).Scan(&lsn)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", false, nil
	}
	if err != nil {
		return "", false, errors.Wrapf(err, "pgstore: reading the progress of %q", key)
	}
	return lsn, true, nil
}
