package main

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/logical-go/logical"
	"github.com/logical-go/logical/postgres/pglogical"
	"github.com/logical-go/logical/postgres/pgstore"
)

// parseSchemaMap parses --schemaMap: source=target pairs separated by
// commas.
func parseSchemaMap(s string) (map[string]string, error) {
	if s == "" {
		return nil, nil
	}
	out := make(map[string]string)
	for _, pair := range strings.Split(s, ",") {
		src, dst, ok := strings.Cut(pair, "=")
		src, dst = strings.TrimSpace(src), strings.TrimSpace(dst)
		if !ok || src == "" || dst == "" {
			return nil, fmt.Errorf("--schemaMap: %q is not source=target", pair)
		}
		if prev, dup := out[src]; dup && prev != dst {
			return nil, fmt.Errorf("--schemaMap: schema %q is mapped twice", src)
		}
		out[src] = dst
	}
	return out, nil
}

// planSchemas works out the target table of each table of the
// publications and returns the loop's target schema. Two source tables
// for one target table are an error naming them. The foreign-key order is
// per target schema: with --foreignKeys every table must land in one
// schema, which becomes the loop's; without it, a target schema with
// foreign keys among its tables is an error naming the flag. It also
// returns the target tables.
func planSchemas(ctx context.Context, conn *pgx.Conn, o *options, schemaMap map[string]string, target *pgstore.Target) (string, []logical.Table, error) {
	rows, err := conn.Query(ctx, `SELECT DISTINCT schemaname, tablename FROM pg_publication_tables
		WHERE pubname = ANY ($1) ORDER BY 1, 2`, strings.Split(o.publication, ","))
	if err != nil {
		return "", nil, fmt.Errorf("source database: reading the tables of the publications: %w", err)
	}
	sources := make(map[logical.Table]string)
	schemas := make(map[string]bool)
	for rows.Next() {
		var schema, name string
		if err := rows.Scan(&schema, &name); err != nil {
			rows.Close()
			return "", nil, fmt.Errorf("source database: %w", err)
		}
		dst := logical.Table{Schema: pglogical.TargetSchema(schema, schemaMap, o.targetSchema), Name: name}
		src := schema + "." + name
		if other, ok := sources[dst]; ok {
			rows.Close()
			return "", nil, fmt.Errorf("source tables %s and %s would both be written to %s; map their schemas apart with --schemaMap", other, src, dst)
		}
		sources[dst] = src
		schemas[dst.Schema] = true
	}
	if err := rows.Err(); err != nil {
		return "", nil, fmt.Errorf("source database: %w", err)
	}
	tables := make([]logical.Table, 0, len(sources))
	for dst := range sources {
		tables = append(tables, dst)
	}
	sort.Slice(tables, func(i, j int) bool {
		return tables[i].Schema < tables[j].Schema || tables[i].Schema == tables[j].Schema && tables[i].Name < tables[j].Name
	})
	var list []string
	for s := range schemas {
		list = append(list, s)
	}
	sort.Strings(list)
	if o.foreignKeys {
		switch {
		case len(list) > 1:
			return "", nil, fmt.Errorf("--foreignKeys orders the tables of one target schema, but the publications' tables go to %s",
				strings.Join(list, ", "))
		case len(list) == 1:
			return list[0], tables, nil
		}
		return o.targetSchema, tables, nil
	}
	for _, s := range list {
		levels, err := target.Order(ctx, s)
		if err != nil {
			return "", nil, err
		}
		if len(levels) > 1 {
			return "", nil, fmt.Errorf("target schema %q has foreign keys between its tables (%d dependency levels): run with --foreignKeys",
				s, len(levels))
		}
	}
	return o.targetSchema, tables, nil
}
