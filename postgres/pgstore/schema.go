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
