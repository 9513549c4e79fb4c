// Package pgstore keeps the state of a logical loop in PostgreSQL (or
// CockroachDB, which speaks the same SQL): a Memo for consistent points, a
// lease table so that only one of several processes replicates, and a
// Target that writes mutations into real tables.
//
// Every type works on a *pgxpool.Pool that the caller owns. The bookkeeping
// tables live in a staging schema (conventionally "_logical") that is
// created when missing.
package pgstore

import (
	"context"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/logical-go/logical"
	"github.com/pkg/errors"
)

// DefaultStagingSchema is the schema that holds the bookkeeping tables
// when none is given.
const DefaultStagingSchema = "_logical"

// Ident quotes a PostgreSQL identifier: it is wrapped in double quotes and
// embedded double quotes are doubled, so any name is safe in SQL text.
func Ident(name string) string {
	return `"` + strings.ReplaceAll(name, `"`, `""`) + `"`
}

// TableIdent quotes a schema-qualified table name.
func TableIdent(t logical.Table) string {
	if t.Schema == "" {
		return Ident(t.Name)
	}
	return Ident(t.Schema) + "." + Ident(t.Name)
}

// ensureSchema creates schema and then runs each of ddl (CREATE ... IF NOT
// EXISTS statements), all in one round trip: one simple-protocol query,
// which the server runs as one transaction. Two processes racing to create
// the same object may see a unique violation from the catalog; the whole
// query is then retried, up to twice.
func ensureSchema(ctx context.Context, pool *pgxpool.Pool, schema string, ddl ...string) error {
	stmts := append([]string{"CREATE SCHEMA IF NOT EXISTS " + Ident(schema)}, ddl...)
	sql := strings.Join(stmts, ";\n")
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		// No arguments: pgx sends it with the simple protocol, which
		// allows several statements.
		if _, err = pool.Exec(ctx, sql); err == nil || !isCatalogRace(err) {
			break
		}
	}
	if err != nil {
		return errors.Wrapf(err, "pgstore: creating objects in schema %s", schema)
	}
	return nil
}

// isCatalogRace reports whether err is one of the errors that concurrent
// CREATE ... IF NOT EXISTS statements can cause: a unique violation in
// the catalog, or a duplicate table, schema or object (the row type of a
// table: 'type "memo" already exists').
func isCatalogRace(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	switch pgErr.Code {
	case "23505", "42P07", "42P06", "42710":
		return true
	}
	return false
}
