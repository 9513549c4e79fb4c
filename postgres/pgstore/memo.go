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
//
// Puts are fenced by leases: when the context passed to Put derives from
// the Context of a lease from Leases (as the loop's contexts do while it
// holds one), the write happens only if that lease is still held, with
// its nonce and an unexpired term by the database's clock. On the same
// pool this is checked in the upsert itself, under a share lock on the
// lease row, so a holder paused past its term can never overwrite the
// point of its successor; with Leases on another pool the check is a
// separate statement just before the write. A refused Put returns an
// error wrapping ErrLeaseLost.
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

// ErrLeaseLost is wrapped by the error Memo.Put returns when it refused to
// write because the lease in its context is no longer held. The loop's
// SetConsistentPoint fails with it, which ends the iteration; the next one
// waits to acquire the lease again.
var ErrLeaseLost = errors.New("pgstore: the lease is no longer held")

// Put implements logical.Memo; see Memo for how leases fence it.
func (m *Memo) Put(ctx context.Context, key string, value []byte) error {
	if value == nil {
		value = []byte{}
	}
	const upsert = ` ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated = now()`
	ls := heldLease(ctx)
	if ls == nil {
		_, err := m.pool.Exec(ctx, `INSERT INTO `+m.table+` (key, value) VALUES ($1, $2)`+upsert, key, value)
		return errors.Wrapf(err, "pgstore: writing memo key %q", key)
	}
	var written int64
	if ls.leases.pool == m.pool {
		tag, err := m.pool.Exec(ctx, `WITH held AS (`+ls.heldSQL("$3", "$4")+` FOR SHARE)
			INSERT INTO `+m.table+` (key, value) SELECT $1, $2 FROM held`+upsert, key, value, ls.name, ls.nonce)
		if err != nil {
			return errors.Wrapf(err, "pgstore: writing memo key %q", key)
		}
		written = tag.RowsAffected()
	} else {
		var n int
		err := ls.leases.pool.QueryRow(ctx, `SELECT count(*) FROM (`+ls.heldSQL("$1", "$2")+`) h`, ls.name, ls.nonce).Scan(&n)
		if err != nil {
			return errors.Wrapf(err, "pgstore: checking lease %q before writing memo key %q", ls.name, key)
		}
		if n == 1 {
			if _, err := m.pool.Exec(ctx, `INSERT INTO `+m.table+` (key, value) VALUES ($1, $2)`+upsert, key, value); err != nil {
				return errors.Wrapf(err, "pgstore: writing memo key %q", key)
			}
			written = 1
		}
	}
	if written == 0 {
		return errors.Wrapf(ErrLeaseLost, "pgstore: not writing memo key %q: lease %q expired or was taken over", key, ls.name)
	}
	return nil
}
