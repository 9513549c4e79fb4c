package pgstore

import (
	"context"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/logical-go/logical"
	"github.com/pkg/errors"
)

// Columns returns the columns of a target table, name to type (as
// format_type writes it), and false if the table does not exist.
func (s *Snapshots) Columns(ctx context.Context, table logical.Table) (map[string]string, bool, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT a.attname, format_type(a.atttypid, a.atttypmod)
		  FROM pg_catalog.pg_attribute a
		  JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
		  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
		   AND a.attnum > 0 AND NOT a.attisdropped`, table.Schema, table.Name)
	if err != nil {
		return nil, false, errors.Wrapf(err, "pgstore: reading the columns of %s", table)
	}
	cols := make(map[string]string)
	var name, typ string
	_, err = pgx.ForEachRow(rows, []any{&name, &typ}, func() error {
		cols[name] = typ
		return nil
	})
	if err != nil {
		return nil, false, errors.Wrapf(err, "pgstore: reading the columns of %s", table)
	}
	return cols, len(cols) > 0, nil
}

// schemaLockTimeout bounds how long a schema change waits for the locks
// of running target transactions.
const schemaLockTimeout = 10 * time.Second

// AddColumn adds a column of type typ (an SQL type name) to a target
// table unless it has one of that name.
func (s *Snapshots) AddColumn(ctx context.Context, table logical.Table, name, typ string) error {
	return s.ddl(ctx, table, `ALTER TABLE `+TableIdent(table)+` ADD COLUMN IF NOT EXISTS `+Ident(name)+` `+typ)
}

// CreateTable creates a target table with the given columns (name and SQL
// type, in order) and primary key unless it exists.
func (s *Snapshots) CreateTable(ctx context.Context, table logical.Table, names, types, key []string) error {
	defs := make([]string, len(names))
	for i := range names {
		defs[i] = Ident(names[i]) + " " + types[i]
	}
	if len(key) > 0 {
		quoted := make([]string, len(key))
		for i, k := range key {
			quoted[i] = Ident(k)
		}
		defs = append(defs, "PRIMARY KEY ("+strings.Join(quoted, ", ")+")")
	}
	if err := ensureSchema(ctx, s.pool, table.Schema); err != nil {
		return err
	}
	return s.ddl(ctx, table, `CREATE TABLE IF NOT EXISTS `+TableIdent(table)+` (`+strings.Join(defs, ", ")+`)`)
}

// AddPrimaryKey adds a primary key on the columns key to a target table
// unless it has one.
func (s *Snapshots) AddPrimaryKey(ctx context.Context, table logical.Table, key []string) error {
	var has bool
	if err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index i
		JOIN pg_catalog.pg_class c ON c.oid = i.indrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2 AND i.indisprimary)`, table.Schema, table.Name).Scan(&has); err != nil {
		return errors.Wrapf(err, "pgstore: reading the primary key of %s", table)
	}
	if has {
		return nil
	}
	quoted := make([]string, len(key))
	for i, k := range key {
		quoted[i] = Ident(k)
	}
	return s.ddl(ctx, table, `ALTER TABLE `+TableIdent(table)+` ADD PRIMARY KEY (`+strings.Join(quoted, ", ")+`)`)
}

// ddl runs one schema change of table with a lock timeout, so that a
// target transaction holding the table cannot block it for long.
func (s *Snapshots) ddl(ctx context.Context, table logical.Table, sql string) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '`+schemaLockTimeout.String()+`'`); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, sql)
		return err
	})
	return errors.Wrapf(err, "pgstore: changing the schema of %s", table)
}

// SnapshotIndex is an index of a target table that a snapshot drops
// before it copies the rows and creates again after: Name is the index,
// or the constraint that owns it, and SQL the statement that creates it.
type SnapshotIndex struct {
	Name       string
	Constraint bool
	SQL        string
}

// DeferrableIndexes reports whether a target table is empty and returns
// the indexes of it that DropIndexes may drop and RestoreIndexes create
// again from their definitions alone: those of a plain table, valid, in
// the default tablespace, without a comment, neither the replica identity
// nor the clustered index, standing alone or owned by a PRIMARY KEY,
// UNIQUE or EXCLUDE constraint without a comment; none at all when a
// foreign key references the table. It returns no index for a table
// with rows.
func (s *Snapshots) DeferrableIndexes(ctx context.Context, table logical.Table) ([]SnapshotIndex, bool, error) {
	var oid uint32
	var kind string
	err := s.pool.QueryRow(ctx, `SELECT c.oid, c.relkind::text FROM pg_catalog.pg_class c
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2`,
		table.Schema, table.Name).Scan(&oid, &kind)
	if err != nil {
		return nil, false, errors.Wrapf(err, "pgstore: reading the indexes of %s", table)
	}
	var rows, referenced bool
	if err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM `+TableIdent(table)+`),
		EXISTS (SELECT 1 FROM pg_catalog.pg_constraint WHERE confrelid = $1 AND contype = 'f')`, oid).
		Scan(&rows, &referenced); err != nil {
		return nil, false, errors.Wrapf(err, "pgstore: reading the indexes of %s", table)
	}
	if rows || referenced || kind != "r" {
		return nil, !rows, nil
	}
	list, err := s.pool.Query(ctx, `
		SELECT coalesce(k.conname, ic.relname), k.oid IS NOT NULL,
		       CASE WHEN k.oid IS NULL THEN pg_catalog.pg_get_indexdef(i.indexrelid)
		            ELSE pg_catalog.pg_get_constraintdef(k.oid) END
		  FROM pg_catalog.pg_index i
		  JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
		  LEFT JOIN pg_catalog.pg_constraint k ON k.conindid = i.indexrelid AND k.conrelid = i.indrelid
		 WHERE i.indrelid = $1 AND i.indisvalid AND i.indisready AND NOT i.indisreplident AND NOT i.indisclustered
		   AND ic.reltablespace = 0 AND pg_catalog.obj_description(i.indexrelid, 'pg_class') IS NULL
		   AND (k.oid IS NULL OR (k.contype IN ('p', 'u', 'x') AND pg_catalog.obj_description(k.oid, 'pg_constraint') IS NULL))
		 ORDER BY 1`, oid)
	if err != nil {
		return nil, false, errors.Wrapf(err, "pgstore: reading the indexes of %s", table)
	}
	var out []SnapshotIndex
	var ix SnapshotIndex
	if _, err := pgx.ForEachRow(list, []any{&ix.Name, &ix.Constraint, &ix.SQL}, func() error {
		if ix.Constraint {
			ix.SQL = `ALTER TABLE ` + TableIdent(table) + ` ADD CONSTRAINT ` + Ident(ix.Name) + ` ` + ix.SQL
		}
		out = append(out, ix)
		return nil
	}); err != nil {
		return nil, false, errors.Wrapf(err, "pgstore: reading the indexes of %s", table)
	}
	return out, true, nil
}

// DropIndexes drops indexes (from DeferrableIndexes) of a target table,
// in one transaction that fails, dropping nothing, if the table is not
// empty.
func (s *Snapshots) DropIndexes(ctx context.Context, table logical.Table, indexes []SnapshotIndex) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '`+schemaLockTimeout.String()+`'`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `LOCK TABLE `+TableIdent(table)+` IN ACCESS EXCLUSIVE MODE`); err != nil {
			return err
		}
		var rows bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM `+TableIdent(table)+`)`).Scan(&rows); err != nil {
			return err
		}
		if rows {
			return errors.New("the table is not empty")
		}
		for _, ix := range indexes {
			sql := `DROP INDEX IF EXISTS ` + Ident(table.Schema) + `.` + Ident(ix.Name)
			if ix.Constraint {
				sql = `ALTER TABLE ` + TableIdent(table) + ` DROP CONSTRAINT IF EXISTS ` + Ident(ix.Name)
			}
			if _, err := tx.Exec(ctx, sql); err != nil {
				return err
			}
		}
		return nil
	})
	return errors.Wrapf(err, "pgstore: dropping the indexes of %s for a snapshot", table)
}

// RestoreIndexes creates each of indexes (from DeferrableIndexes) that a
// target table lacks: an index by its name in the table's schema, a
// constraint by its name on the table.
func (s *Snapshots) RestoreIndexes(ctx context.Context, table logical.Table, indexes []SnapshotIndex) error {
	for _, ix := range indexes {
		var has bool
		if err := s.pool.QueryRow(ctx, `SELECT CASE WHEN $3 THEN EXISTS (SELECT 1 FROM pg_catalog.pg_constraint
			WHERE conrelid = (pg_catalog.quote_ident($1) || '.' || pg_catalog.quote_ident($2))::regclass AND conname = $4)
			ELSE EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = $1 AND c.relname = $4) END`, table.Schema, table.Name, ix.Constraint, ix.Name).Scan(&has); err != nil {
			return errors.Wrapf(err, "pgstore: reading the indexes of %s", table)
		}
		if has {
			continue
		}
		if err := s.ddl(ctx, table, ix.SQL); err != nil {
			return err
		}
	}
	return nil
}
