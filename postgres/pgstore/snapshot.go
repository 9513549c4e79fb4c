package pgstore

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/logical-go/logical"
	"github.com/pkg/errors"
)

// Snapshots keeps the plan of a dialect's table copies in a staging table
// of the target and writes the copied rows, so that a copy interrupted by
// a crash resumes with the chunks it had not finished:
//
//	snapshot (loop text, source_table text, chunk int, spec jsonb,
//	          done bool, attempts int, copied bigint)
//
// Chunk -1 of a table holds the source columns last seen (a JSON value the
// dialect chooses); chunks 0.. are the key ranges to copy. A chunk is
// marked done in the same transaction that writes its rows. Like
// Memo.Put, every write is fenced by a lease from Leases in its context:
// under a lease no longer held it writes nothing and fails with
// ErrLeaseLost. All methods are safe for concurrent use.
type Snapshots struct {
	pool  *pgxpool.Pool
	table logical.Table
}

// SnapshotChunk is one row of the snapshot table.
type SnapshotChunk struct {
	Table    string // the source table, "schema.name"
	N        int
	Spec     json.RawMessage
	Done     bool
	Attempts int
	Rows     int64
}

// NewSnapshots creates schema and its snapshot table if they are missing.
// An empty schema means DefaultStagingSchema.
func NewSnapshots(ctx context.Context, pool *pgxpool.Pool, schema string) (*Snapshots, error) {
	if schema == "" {
		schema = DefaultStagingSchema
	}
	table := logical.Table{Schema: schema, Name: "snapshot"}
	if err := ensureSchema(ctx, pool, schema, `CREATE TABLE IF NOT EXISTS `+TableIdent(table)+` (
		loop TEXT NOT NULL,
		source_table TEXT NOT NULL,
		chunk INT NOT NULL,
		spec JSONB NOT NULL,
		done BOOL NOT NULL DEFAULT false,
		attempts INT NOT NULL DEFAULT 0,
		copied BIGINT NOT NULL DEFAULT 0,
		PRIMARY KEY (loop, source_table, chunk)
	)`); err != nil {
		return nil, err
	}
	return &Snapshots{pool: pool, table: table}, nil
}

// Table returns the snapshot table.
func (s *Snapshots) Table() logical.Table { return s.table }

// Load returns every row of loop, ordered by table and chunk.
func (s *Snapshots) Load(ctx context.Context, loop string) ([]SnapshotChunk, error) {
	rows, err := s.pool.Query(ctx, `SELECT source_table, chunk, spec, done, attempts, copied FROM `+TableIdent(s.table)+
		` WHERE loop = $1 ORDER BY source_table, chunk`, loop)
	if err != nil {
		return nil, errors.Wrapf(err, "pgstore: reading the snapshot plan of %q", loop)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (SnapshotChunk, error) {
		var c SnapshotChunk
		var spec []byte
		err := r.Scan(&c.Table, &c.N, &spec, &c.Done, &c.Attempts, &c.Rows)
		c.Spec = spec
		return c, err
	})
	return out, errors.Wrapf(err, "pgstore: reading the snapshot plan of %q", loop)
}

// Plan replaces the chunks (N >= 0) of table with chunks, none done.
func (s *Snapshots) Plan(ctx context.Context, loop, table string, chunks []SnapshotChunk) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM `+TableIdent(s.table)+` WHERE loop = $1 AND source_table = $2 AND chunk >= 0`,
			loop, table); err != nil {
			return err
		}
		for _, c := range chunks {
			if _, err := tx.Exec(ctx, `INSERT INTO `+TableIdent(s.table)+` (loop, source_table, chunk, spec) VALUES ($1, $2, $3, $4)`,
				loop, table, c.N, []byte(c.Spec)); err != nil {
				return err
			}
		}
		return s.fence(ctx, tx)
	})
	return errors.Wrapf(err, "pgstore: planning the snapshot of %s", table)
}

// SetSpec writes the spec of one row (the columns row, chunk -1, for
// example), creating it if needed.
func (s *Snapshots) SetSpec(ctx context.Context, loop, table string, n int, spec json.RawMessage) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO `+TableIdent(s.table)+` (loop, source_table, chunk, spec) VALUES ($1, $2, $3, $4)
			ON CONFLICT (loop, source_table, chunk) DO UPDATE SET spec = excluded.spec`, loop, table, n, []byte(spec)); err != nil {
			return err
		}
		return s.fence(ctx, tx)
	})
	return errors.Wrapf(err, "pgstore: recording the snapshot of %s", table)
}

// Start counts an attempt to copy a chunk; it commits at once, so that
// attempts that crash are counted too.
func (s *Snapshots) Start(ctx context.Context, loop, table string, n int) error {
	err := s.mark(ctx, nil, loop, table, n, `attempts = attempts + 1`)
	return errors.Wrapf(err, "pgstore: starting chunk %d of %s", n, table)
}

// Copy replaces the rows of target that match where (an SQL condition;
// empty: none) with the rows read from rows (COPY text format, the given columns) and
// marks the chunk done, in one transaction. It returns the number of rows
// copied.
func (s *Snapshots) Copy(ctx context.Context, loop, table string, n int, target logical.Table, where string,
	columns []string, rows io.Reader) (int64, error) {
	return s.copy(ctx, loop, table, n, target, where, columns, rows, "")
}

// CopyBinary is Copy with rows in COPY binary format, which the target
// reads only into columns of the types the rows were written from.
func (s *Snapshots) CopyBinary(ctx context.Context, loop, table string, n int, target logical.Table, where string,
	columns []string, rows io.Reader) (int64, error) {
	return s.copy(ctx, loop, table, n, target, where, columns, rows, " (FORMAT binary)")
}

// ServerVersion returns the target's server_version_num.
func (s *Snapshots) ServerVersion(ctx context.Context) (int, error) {
	var v int
	err := s.pool.QueryRow(ctx, `SELECT current_setting('server_version_num')::int`).Scan(&v)
	return v, errors.Wrap(err, "pgstore: reading the target's version")
}

func (s *Snapshots) copy(ctx context.Context, loop, table string, n int, target logical.Table, where string,
	columns []string, rows io.Reader, options string) (int64, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return 0, errors.Wrapf(err, "pgstore: copying chunk %d of %s", n, table)
	}
	defer conn.Release()
	var copied int64
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if where != "" {
			if _, err := tx.Exec(ctx, `DELETE FROM `+TableIdent(target)+` WHERE `+where); err != nil {
				return errors.Wrapf(err, "deleting the old rows of %s", target)
			}
		}
		quoted := make([]string, len(columns))
		for i, c := range columns {
			quoted[i] = Ident(c)
		}
		tag, err := tx.Conn().PgConn().CopyFrom(ctx, rows,
			`COPY `+TableIdent(target)+` (`+strings.Join(quoted, ", ")+`) FROM STDIN`+options)
		if err != nil {
			return errors.Wrapf(err, "copying into %s", target)
		}
		copied = tag.RowsAffected()
		return s.mark(ctx, tx, loop, table, n, `done = true, copied = $4`, copied)
	})
	if err != nil {
		return 0, errors.Wrapf(err, "pgstore: copying chunk %d of %s", n, table)
	}
	return copied, nil
}

// mark updates chunk n of table with set (whose parameters, from $4 on,
// are args), in tx or, if tx is nil, in a statement or transaction of its
// own, as the last statement before the commit and fenced by the lease of
// ctx (see fence). With the leases in this pool, the fence is in the
// UPDATE itself, which updates through a FOR SHARE read of the lease row
// while the term is held: no round trip of its own. Without a lease it is
// a plain UPDATE.
func (s *Snapshots) mark(ctx context.Context, tx pgx.Tx, loop, table string, n int, set string, args ...any) error {
	exec := s.pool.Exec
	if tx != nil {
		exec = tx.Exec
	}
	params := append([]any{loop, table, n}, args...)
	update := `UPDATE ` + TableIdent(s.table) + ` SET ` + set
	where := ` WHERE loop = $1 AND source_table = $2 AND chunk = $3`
	ls := heldLease(ctx)
	switch {
	case ls == nil:
		_, err := exec(ctx, update+where, params...)
		return err
	case ls.leases.pool == s.pool:
		held := ls.heldSQL(fmt.Sprintf("$%d", len(params)+1), fmt.Sprintf("$%d", len(params)+2))
		tag, err := exec(ctx, `WITH held AS (`+held+` FOR SHARE) `+update+` FROM held`+where, append(params, ls.name, ls.nonce)...)
		if err != nil || tag.RowsAffected() > 0 {
			return err
		}
		// Nothing updated: the term is over, or there is no such chunk
		// (nothing to mark, as without a lease).
		tag, err = exec(ctx, ls.heldSQL("$1", "$2"), ls.name, ls.nonce)
		if err != nil {
			return errors.Wrapf(err, "checking lease %q", ls.name)
		}
		if tag.RowsAffected() == 0 {
			return errors.Wrapf(ErrLeaseLost, "not writing the snapshot's bookkeeping: lease %q expired or was taken over", ls.name)
		}
		return nil
	case tx == nil:
		return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			return s.mark(ctx, tx, loop, table, n, set, args...)
		})
	default:
		if _, err := tx.Exec(ctx, update+where, params...); err != nil {
			return err
		}
		return s.fence(ctx, tx)
	}
}

// fence is the last statement of each bookkeeping transaction: when ctx
// derives from the Context of a lease from Leases (see Memo), it fails
// with ErrLeaseLost, so that the transaction rolls back, unless that lease
// is still held. It runs last, so that a holder paused in the middle of a
// long chunk copy is judged at the moment it commits (clock_timestamp,
// not the transaction's start), and with leases in the same pool the
// lease row stays locked (FOR SHARE) until the commit: a taker's UPDATE
// of the row waits for it, so no other holder can start between the check
// and the commit. With leases in another pool the check is a separate
// query just before the commit, as in Memo.Put.
func (s *Snapshots) fence(ctx context.Context, tx pgx.Tx) error {
	ls := heldLease(ctx)
	if ls == nil {
		return nil
	}
	held := ls.heldSQL("$1", "$2")
	var tag pgconn.CommandTag
	var err error
	if ls.leases.pool == s.pool {
		tag, err = tx.Exec(ctx, held+` FOR SHARE`, ls.name, ls.nonce)
	} else {
		tag, err = ls.leases.pool.Exec(ctx, held, ls.name, ls.nonce)
	}
	if err != nil {
		return errors.Wrapf(err, "checking lease %q", ls.name)
	}
	if tag.RowsAffected() == 0 {
		return errors.Wrapf(ErrLeaseLost, "not writing the snapshot's bookkeeping: lease %q expired or was taken over", ls.name)
	}
	return nil
}
