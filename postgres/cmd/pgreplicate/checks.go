package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/logical-go/logical"
	"github.com/logical-go/logical/postgres/pgstore"
)

// checkSource refuses to start with a configuration that cannot fix
// itself: a source that is unreachable or refuses the login, that cannot
// decode logically, lacks a publication, has no slot (without
// --createSlot) or a slot of another plugin or database, or that is the
// target database itself. Over the same connection it then plans the
// target tables (planSchemas) and returns the loop's target schema.
func checkSource(ctx context.Context, o *options, pool *pgxpool.Pool, schemaMap map[string]string, target *pgstore.Target) (string, []logical.Table, error) {
	cfg, err := pgx.ParseConfig(o.sourceConn)
	if err != nil {
		return "", nil, errors.New("--sourceConn cannot be parsed")
	}
	// Every query here runs once: unprepared, each is one round trip
	// instead of two.
	cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		if isLoginRefused(err) {
			return "", nil, fmt.Errorf("the source database refused the login (check the user and password of --sourceConn): %w", err)
		}
		return "", nil, fmt.Errorf("cannot reach the source database: %w", err)
	}
	defer conn.Close(context.Background())
	if err := checkSourceConn(ctx, conn, o, pool); err != nil {
		return "", nil, err
	}
	return planSchemas(ctx, conn, o, schemaMap, target)
}

// checkSourceConn is checkSource over conn.
func checkSourceConn(ctx context.Context, conn *pgx.Conn, o *options, target *pgxpool.Pool) error {
	if err := checkNotSame(ctx, conn, target); err != nil {
		return err
	}
	var level string
	if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&level); err != nil {
		return fmt.Errorf("source database: %w", err)
	}
	if level != "logical" {
		return fmt.Errorf("source database has wal_level=%s, logical replication needs wal_level=logical (set it and restart the source server)", level)
	}
	for _, pub := range strings.Split(o.publication, ",") {
		var n int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_publication WHERE pubname = $1", pub).Scan(&n); err != nil {
			return fmt.Errorf("source database: %w", err)
		}
		if n == 0 {
			return fmt.Errorf("source database has no publication %q (--publicationName)", pub)
		}
	}
	var plugin, slotType, database *string
	var here bool
	err := conn.QueryRow(ctx, `SELECT plugin, slot_type, database, database = current_database()
		FROM pg_replication_slots WHERE slot_name = $1`, o.slot).Scan(&plugin, &slotType, &database, &here)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		if !o.createSlot {
			return fmt.Errorf("source database has no replication slot %q (--slotName; use --createSlot to create it)", o.slot)
		}
		return nil
	case err != nil:
		return fmt.Errorf("source database: looking up slot %q: %w", o.slot, err)
	case slotType != nil && *slotType != "logical":
		return fmt.Errorf("replication slot %q is a %s slot; pgreplicate needs a logical slot with plugin pgoutput", o.slot, *slotType)
	case plugin == nil || *plugin != "pgoutput":
		return fmt.Errorf("replication slot %q uses plugin %q; pgreplicate needs pgoutput (drop the slot, or choose another --slotName and use --createSlot)",
			o.slot, deref(plugin))
	case !here:
		return fmt.Errorf("replication slot %q belongs to database %q, not to the database of --sourceConn", o.slot, deref(database))
	}
	return nil
}

// checkNotSame refuses a target that is the source database: pgreplicate
// would publish and replay its own bookkeeping. A database is identified
// by its cluster (system identifier, or where that function is not allowed
// the postmaster's start time) and its oid.
func checkNotSame(ctx context.Context, source *pgx.Conn, target *pgxpool.Pool) error {
	const ident = `SELECT coalesce((SELECT system_identifier::text FROM pg_control_system()), '') ||
		'/' || pg_postmaster_start_time()::text || '/' || (SELECT oid FROM pg_database WHERE datname = current_database())::text`
	const fallback = `SELECT '/' || pg_postmaster_start_time()::text || '/' || (SELECT oid FROM pg_database WHERE datname = current_database())::text`
	read := func(q func(string) pgx.Row) (string, error) {
		var id string
		err := q(ident).Scan(&id)
		if err != nil {
			err = q(fallback).Scan(&id) // pg_control_system may be restricted
		}
		return id, err
	}
	src, err := read(func(sql string) pgx.Row { return source.QueryRow(ctx, sql) })
	if err != nil {
		return fmt.Errorf("source database: %w", err)
	}
	dst, err := read(func(sql string) pgx.Row { return target.QueryRow(ctx, sql) })
	if err != nil {
		return fmt.Errorf("target database: %w", err)
	}
	// Compare only what both sides could read.
	if strings.HasPrefix(src, "/") || strings.HasPrefix(dst, "/") {
		src, dst = src[strings.Index(src, "/"):], dst[strings.Index(dst, "/"):]
	}
	if src == dst {
		return errors.New("--targetConn names the source database itself; the target must be another database")
	}
	return nil
}

// isLoginRefused reports whether err is an authentication failure.
func isLoginRefused(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "28P01" || pgErr.Code == "28000")
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
