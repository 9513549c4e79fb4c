package pgstore

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/logical-go/logical"
	"github.com/pkg/errors"
)

// MetaTruncate is the Mutation.Meta key of a truncate: a mutation whose
// Meta[MetaTruncate] is true deletes every row of its table, in order with
// the other mutations of the same Apply call. Its Key and Data are empty, so
// a target that does not know about it fails on the missing key rather than
// deleting one row.
const MetaTruncate = "pgstore.truncate"

// Target is a logical.Target that writes into existing PostgreSQL tables.
// It reads each table's columns, types and primary key from the catalog the
// first time it sees the table (and again when a row has a column it does
// not know), and lets the database convert values: each JSON value is taken
// as text (->>) and cast to the column's type, so the text form a source
// decoded (pgoutput's) and ordinary JSON numbers, booleans and objects all
// work.
//
// One Apply call costs at most one statement per distinct set of columns
// among its upserts (usually one) plus one for its deletes:
//
//	INSERT INTO t (cols) SELECT CAST(r.v->>'c' AS type), ... FROM jsonb_array_elements($1) AS r(v)
//	ON CONFLICT (pk) DO UPDATE SET c = excluded.c, ...
//	DELETE FROM t USING jsonb_array_elements($1) AS k(v) WHERE t.pk = CAST(k.v->>0 AS type)
//
// Only the last mutation of a key within one call counts; an upsert whose
// row lacks some columns (PostgreSQL's unchanged TOAST values) updates only
// the columns it has, so the target keeps the others. Mutation.Key holds the
// primary-key values in the table's column order. Tables without a primary
// key get plain INSERTs, and a delete there is an error naming the table.
//
// Target is also a logical.Orderer over the catalog's foreign keys. All
// methods are safe for concurrent use.
type Target struct {
	pool *pgxpool.Pool

	mu     sync.RWMutex
	tables map[logical.Table]*tableInfo
}

var (
	_ logical.Target   = (*Target)(nil)
	_ logical.TargetTx = (*targetTx)(nil)
	_ logical.Orderer  = (*Target)(nil)
)

// NewTarget returns a Target writing through pool.
func NewTarget(pool *pgxpool.Pool) *Target {
	return &Target{pool: pool, tables: make(map[logical.Table]*tableInfo)}
}

// column is one writable column of a target table.
type column struct {
	name string
	typ  string // format_type(), usable in a CAST
	pk   bool
}

// tableInfo is what the catalog says about one table.
type tableInfo struct {
	table  logical.Table
	ident  string // quoted, schema-qualified
	cols   []column
	byName map[string]int
	pk     []int // indexes into cols, in column order
}

// execer is what Apply needs of a pool or a transaction.
type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Apply implements logical.Target: each statement commits on its own.
func (t *Target) Apply(ctx context.Context, table logical.Table, muts []logical.Mutation) error {
	return t.apply(ctx, t.pool, table, muts)
}

// Begin implements logical.Target.
func (t *Target) Begin(ctx context.Context) (logical.TargetTx, error) {
	tx, err := t.pool.Begin(ctx)
	if err != nil {
		return nil, errors.Wrap(err, "pgstore: beginning a target transaction")
	}
	return &targetTx{target: t, tx: tx}, nil
}

// targetTx is a Target transaction.
type targetTx struct {
	target *Target
	tx     pgx.Tx
}

// Apply implements logical.TargetTx.
func (x *targetTx) Apply(ctx context.Context, table logical.Table, muts []logical.Mutation) error {
	return x.target.apply(ctx, x.tx, table, muts)
}

// Commit implements logical.TargetTx.
func (x *targetTx) Commit(ctx context.Context) error {
	return errors.Wrap(x.tx.Commit(ctx), "pgstore: committing the target transaction")
}

// Rollback implements logical.TargetTx.
func (x *targetTx) Rollback(ctx context.Context) error {
	err := x.tx.Rollback(ctx)
	if errors.Is(err, pgx.ErrTxClosed) {
		return nil
	}
	return errors.Wrap(err, "pgstore: rolling back the target transaction")
}

// apply writes muts through q, splitting them at truncates.
func (t *Target) apply(ctx context.Context, q execer, table logical.Table, muts []logical.Mutation) error {
	info, err := t.info(ctx, table, false)
	if err != nil {
		return err
	}
	start := 0
	for i := range muts {
		if truncate, _ := muts[i].Meta[MetaTruncate].(bool); !truncate {
			continue
		}
		if err := t.applySegment(ctx, q, info, muts[start:i]); err != nil {
			return err
		}
		if _, err := q.Exec(ctx, "DELETE FROM "+info.ident); err != nil {
			return errors.Wrapf(err, "pgstore: truncating %s", table)
		}
		start = i + 1
	}
	return t.applySegment(ctx, q, info, muts[start:])
}

// rowState is the net effect of a segment's mutations on one key.
type rowState struct {
	deleted bool
	key     json.RawMessage
	data    map[string]json.RawMessage
}

// applySegment writes mutations that contain no truncate.
func (t *Target) applySegment(ctx context.Context, q execer, info *tableInfo, muts []logical.Mutation) error {
	if len(muts) == 0 {
		return nil
	}
	var order []string // keys in order of first appearance
	states := make(map[string]*rowState)
	var inserts []map[string]json.RawMessage // tables without a primary key
	for i := range muts {
		m := &muts[i]
		if len(info.pk) == 0 {
			if m.IsDelete() {
				return errors.Errorf("pgstore: table %s has no primary key, cannot apply a delete", info.table)
			}
			row, err := decodeRow(info.table, m.Data)
			if err != nil {
				return err
			}
			inserts = append(inserts, row)
			continue
		}
		var row map[string]json.RawMessage
		var err error
		if !m.IsDelete() {
			if row, err = decodeRow(info.table, m.Data); err != nil {
				return err
			}
		}
		keyVals, err := keyValues(info, m, row)
		if err != nil {
			return err
		}
		key := string(keyVals)
		st := states[key]
		if st == nil {
			st = &rowState{}
			states[key] = st
			order = append(order, key)
		}
		if m.IsDelete() {
			*st = rowState{deleted: true, key: keyVals}
			continue
		}
		if st.data != nil && !st.deleted {
			// A later image may lack unchanged columns; keep the earlier
			// values for those.
			for col, v := range row {
				st.data[col] = v
			}
		} else {
			st.data = row
		}
		st.deleted, st.key = false, keyVals
	}

	var deletes []json.RawMessage
	groups := make(map[string][]map[string]json.RawMessage)
	var groupOrder []string
	for _, key := range order {
		st := states[key]
		if st.deleted {
			deletes = append(deletes, st.key)
			continue
		}
		sig, err := t.signature(ctx, &info, st.data)
		if err != nil {
			return err
		}
		if _, ok := groups[sig]; !ok {
			groupOrder = append(groupOrder, sig)
		}
		groups[sig] = append(groups[sig], st.data)
	}
	for _, row := range inserts {
		sig, err := t.signature(ctx, &info, row)
		if err != nil {
			return err
		}
		if _, ok := groups[sig]; !ok {
			groupOrder = append(groupOrder, sig)
		}
		groups[sig] = append(groups[sig], row)
	}

	if len(deletes) > 0 {
		if err := t.deleteKeys(ctx, q, info, deletes); err != nil {
			return err
		}
	}
	for _, sig := range groupOrder {
		if err := t.upsert(ctx, q, info, sig, groups[sig]); err != nil {
			return err
		}
	}
	return nil
}

// decodeRow parses a row image.
func decodeRow(table logical.Table, data json.RawMessage) (map[string]json.RawMessage, error) {
	var row map[string]json.RawMessage
	if err := json.Unmarshal(data, &row); err != nil {
		return nil, errors.Errorf("pgstore: table %s: row data is not a JSON object", table)
	}
	return row, nil
}

// keyValues returns the primary-key values of a mutation as a compact JSON
// array, in which equal keys are equal strings. An upsert's key comes from
// its row; a delete's from Mutation.Key, or from Mutation.Before when Key
// does not match the primary key (a source whose replica identity is the
// full row).
func keyValues(info *tableInfo, m *logical.Mutation, row map[string]json.RawMessage) (json.RawMessage, error) {
	vals := make([]json.RawMessage, len(info.pk))
	fromRow := func(row map[string]json.RawMessage) bool {
		for n, i := range info.pk {
			v, ok := row[info.cols[i].name]
			if !ok {
				return false
			}
			vals[n] = v
		}
		return true
	}
	switch {
	case row != nil:
		if !fromRow(row) {
			return nil, errors.Errorf("pgstore: table %s: a row lacks a primary-key column", info.table)
		}
	default:
		var parts []json.RawMessage
		if err := json.Unmarshal(m.Key, &parts); err == nil && len(parts) == len(info.pk) {
			copy(vals, parts)
			break
		}
		var before map[string]json.RawMessage
		if len(m.Before) == 0 || json.Unmarshal(m.Before, &before) != nil || !fromRow(before) {
			return nil, errors.Errorf("pgstore: table %s: a delete's key does not match the primary key's %d columns",
				info.table, len(info.pk))
		}
	}
	var buf bytes.Buffer
	buf.WriteByte('[')
	for n, v := range vals {
		if n > 0 {
			buf.WriteByte(',')
		}
		if err := json.Compact(&buf, v); err != nil {
			return nil, errors.Errorf("pgstore: table %s: a key value is not JSON", info.table)
		}
	}
	buf.WriteByte(']')
	return buf.Bytes(), nil
}

// signature returns the indexes of the columns present in row, in column
// order, as a string. An unknown column makes it read the catalog again
// (the table may have changed); if the column is still unknown, that is an
// error naming it. info may be replaced by a fresher one.
func (t *Target) signature(ctx context.Context, info **tableInfo, row map[string]json.RawMessage) (string, error) {
	for refreshed := false; ; refreshed = true {
		idx := make([]int, 0, len(row))
		var unknown string
		for col := range row {
			i, ok := (*info).byName[col]
			if !ok {
				unknown = col
				break
			}
			idx = append(idx, i)
		}
		if unknown == "" {
			slices.Sort(idx)
			var sb strings.Builder
			for _, i := range idx {
				sb.WriteString(strconv.Itoa(i))
				sb.WriteByte(',')
			}
			return sb.String(), nil
		}
		if refreshed {
			return "", errors.Errorf("pgstore: table %s has no column %q", (*info).table, unknown)
		}
		fresh, err := t.info(ctx, (*info).table, true)
		if err != nil {
			return "", err
		}
		*info = fresh
	}
}

// upsert writes rows that all have the columns of sig in one statement.
func (t *Target) upsert(ctx context.Context, q execer, info *tableInfo, sig string, rows []map[string]json.RawMessage) error {
	var cols []int
	for _, s := range strings.Split(strings.TrimSuffix(sig, ","), ",") {
		if s == "" {
			continue
		}
		i, _ := strconv.Atoi(s)
		cols = append(cols, i)
	}
	if len(cols) == 0 {
		return errors.Errorf("pgstore: table %s: a row has no columns", info.table)
	}
	var names, values, sets []string
	present := make(map[int]bool, len(cols))
	for _, i := range cols {
		c := info.cols[i]
		present[i] = true
		names = append(names, Ident(c.name))
		values = append(values, "CAST(r.v->>"+quoteLiteral(c.name)+" AS "+c.typ+")")
		if !c.pk {
			sets = append(sets, Ident(c.name)+" = excluded."+Ident(c.name))
		}
	}
	var sb strings.Builder
	sb.WriteString("INSERT INTO " + info.ident + " (" + strings.Join(names, ", ") + ") SELECT ")
	sb.WriteString(strings.Join(values, ", "))
	sb.WriteString(" FROM jsonb_array_elements($1::jsonb) AS r(v)")
	if len(info.pk) > 0 {
		var pk []string
		for _, i := range info.pk {
			if !present[i] {
				return errors.Errorf("pgstore: table %s: a row lacks primary-key column %q", info.table, info.cols[i].name)
			}
			pk = append(pk, Ident(info.cols[i].name))
		}
		sb.WriteString(" ON CONFLICT (" + strings.Join(pk, ", ") + ")")
		if len(sets) == 0 {
			sb.WriteString(" DO NOTHING")
		} else {
			sb.WriteString(" DO UPDATE SET " + strings.Join(sets, ", "))
		}
	}
	buf, err := json.Marshal(rows)
	if err != nil {
		return errors.Wrapf(err, "pgstore: table %s: encoding rows", info.table)
	}
	if _, err := q.Exec(ctx, sb.String(), string(buf)); err != nil {
		return errors.Wrapf(err, "pgstore: upserting %d rows into %s", len(rows), info.table)
	}
	return nil
}

// deleteKeys deletes the rows with the given primary keys in one
// statement.
func (t *Target) deleteKeys(ctx context.Context, q execer, info *tableInfo, keys []json.RawMessage) error {
	var conds []string
	for n, i := range info.pk {
		c := info.cols[i]
		conds = append(conds, "t."+Ident(c.name)+" = CAST(k.v->>"+strconv.Itoa(n)+" AS "+c.typ+")")
	}
	sql := "DELETE FROM " + info.ident + " AS t USING jsonb_array_elements($1::jsonb) AS k(v) WHERE " +
		strings.Join(conds, " AND ")
	buf, err := json.Marshal(keys)
	if err != nil {
		return errors.Wrapf(err, "pgstore: table %s: encoding keys", info.table)
	}
	if _, err := q.Exec(ctx, sql, string(buf)); err != nil {
		return errors.Wrapf(err, "pgstore: deleting %d rows from %s", len(keys), info.table)
	}
	return nil
}

// quoteLiteral quotes s as an SQL string literal.
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// info returns what the catalog says about table, from the cache unless
// refresh is set.
func (t *Target) info(ctx context.Context, table logical.Table, refresh bool) (*tableInfo, error) {
	if !refresh {
		t.mu.RLock()
		info := t.tables[table]
		t.mu.RUnlock()
		if info != nil {
			return info, nil
		}
	}
	rows, err := t.pool.Query(ctx, `
		SELECT a.attname, format_type(a.atttypid, a.atttypmod),
		       coalesce(a.attnum = ANY (i.indkey), false)
		  FROM pg_catalog.pg_attribute a
		  JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
		  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		  LEFT JOIN pg_catalog.pg_index i ON i.indrelid = c.oid AND i.indisprimary
		 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
		   AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
		 ORDER BY a.attnum`, table.Schema, table.Name)
	if err != nil {
		return nil, errors.Wrapf(err, "pgstore: reading the columns of %s", table)
	}
	info := &tableInfo{table: table, ident: TableIdent(table), byName: make(map[string]int)}
	for rows.Next() {
		var c column
		if err := rows.Scan(&c.name, &c.typ, &c.pk); err != nil {
			rows.Close()
			return nil, errors.Wrapf(err, "pgstore: reading the columns of %s", table)
		}
		info.byName[c.name] = len(info.cols)
		if c.pk {
			info.pk = append(info.pk, len(info.cols))
		}
		info.cols = append(info.cols, c)
	}
	if err := rows.Err(); err != nil {
		return nil, errors.Wrapf(err, "pgstore: reading the columns of %s", table)
	}
	if len(info.cols) == 0 {
		return nil, errors.Errorf("pgstore: target table %s does not exist", table)
	}
	t.mu.Lock()
	t.tables[table] = info
	t.mu.Unlock()
	return info, nil
}

// Forget drops what the target knows about every table, so that the next
// write reads the catalog again (after DDL, for example).
func (t *Target) Forget() {
	t.mu.Lock()
	defer t.mu.Unlock()
	clear(t.tables)
}

// Order implements logical.Orderer from the catalog's foreign keys between
// the tables of schema. References to tables in other schemas and to the
// table itself are ignored. A cycle is an error naming its tables.
func (t *Target) Order(ctx context.Context, schema string) ([][]logical.Table, error) {
	rows, err := t.pool.Query(ctx, `
		SELECT c.relname,
		       coalesce(array_agg(DISTINCT p.relname) FILTER (WHERE p.relname IS NOT NULL), '{}')
		  FROM pg_catalog.pg_class c
		  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		  LEFT JOIN pg_catalog.pg_constraint k
		         ON k.conrelid = c.oid AND k.contype = 'f' AND k.confrelid <> c.oid
		  LEFT JOIN pg_catalog.pg_class p
		         ON p.oid = k.confrelid AND p.relnamespace = c.relnamespace
		 WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition
		 GROUP BY c.relname
		 ORDER BY c.relname`, schema)
	if err != nil {
		return nil, errors.Wrapf(err, "pgstore: reading the foreign keys of schema %s", schema)
	}
	parents := make(map[string][]string)
	var names []string
	for rows.Next() {
		var name string
		var ps []string
		if err := rows.Scan(&name, &ps); err != nil {
			rows.Close()
			return nil, errors.Wrapf(err, "pgstore: reading the foreign keys of schema %s", schema)
		}
		names = append(names, name)
		parents[name] = ps
	}
	if err := rows.Err(); err != nil {
		return nil, errors.Wrapf(err, "pgstore: reading the foreign keys of schema %s", schema)
	}
	return levels(schema, names, parents)
}

// levels sorts names into dependency levels: a table goes one level above
// its highest parent.
func levels(schema string, names []string, parents map[string][]string) ([][]logical.Table, error) {
	level := make(map[string]int, len(names))
	var out [][]logical.Table
	for len(level) < len(names) {
		var this []string
		for _, name := range names {
			if _, done := level[name]; done {
				continue
			}
			ready := true
			for _, p := range parents[name] {
				if l, done := level[p]; !done || l >= len(out) {
					ready = false
					break
				}
			}
			if ready {
				this = append(this, name)
			}
		}
		if len(this) == 0 {
			var stuck []string
			for _, name := range names {
				if _, done := level[name]; !done {
					stuck = append(stuck, schema+"."+name)
				}
			}
			return nil, errors.Errorf("pgstore: foreign keys form a cycle among %s", strings.Join(stuck, ", "))
		}
		tables := make([]logical.Table, len(this))
		for i, name := range this {
			level[name] = len(out)
			tables[i] = logical.Table{Schema: schema, Name: name}
		}
		out = append(out, tables)
	}
	return out, nil
}
