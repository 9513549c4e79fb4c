package pgstore

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/logical-go/logical"
	"github.com/pkg/errors"
)

// Most mutations are folded by key and written in a few set-based
// statements (applyRows). Two kinds need a statement of their own, in
// order with the others:
//
//   - a key move: an upsert whose Before has other key values than its
//     Data (pglogical sends one when an UPDATE changes the primary key of
//     a row whose unchanged TOAST values it did not send). The old row is
//     updated in place, so the values Data lacks stay; if it is not there
//     (a replay), the row is upserted instead.
//   - an update or delete in a table without a key (neither primary key
//     nor replica-identity index at the target): exactly one row that
//     equals Before in every column Before has is updated or deleted.
//     Rows of such a table may be duplicates, so a row is found by its
//     ctid.

// applyParts writes a segment, giving the mutations that need it a
// statement of their own. It sends nothing if a row has a column info
// lacks (unknownColumnError).
func (t *Target) applyParts(ctx context.Context, q execer, info *tableInfo, muts []logical.Mutation) error {
	alone := false
	for i := range muts {
		if needsOwnStatement(info, &muts[i]) {
			alone = true
			break
		}
	}
	if !alone {
		return t.applyRows(ctx, q, info, muts)
	}
	// Check every row before the first statement goes out.
	singles := make([]*single, len(muts))
	for i := range muts {
		m := &muts[i]
		if !m.IsDelete() {
			if _, err := decodeRow(info, m.Data); err != nil {
				return err
			}
		}
		if !needsOwnStatement(info, m) {
			continue
		}
		s, err := prepareSingle(info, m)
		if err != nil {
			return err
		}
		if !s.skip {
			singles[i] = s
		}
	}
	start := 0
	for i, s := range singles {
		if s == nil {
			continue
		}
		if start < i {
			if err := t.applyRows(ctx, q, info, muts[start:i]); err != nil {
				return err
			}
		}
		start = i + 1
		if err := t.applySingle(ctx, q, info, s); err != nil {
			return err
		}
	}
	if start < len(muts) {
		return t.applyRows(ctx, q, info, muts[start:])
	}
	return nil
}

// needsOwnStatement reports whether m may need a statement of its own:
// it has a Before and is no plain insert, or it is a delete in a table
// without a key.
func needsOwnStatement(info *tableInfo, m *logical.Mutation) bool {
	if len(info.pk) == 0 {
		return m.IsDelete() || len(m.Before) > 0 || isUnlocatedUpdate(m)
	}
	return len(m.Before) > 0 && !m.IsDelete()
}

// isUnlocatedUpdate reports whether m, an upsert without Before, is an
// update of a row identified by Key only: it is not marked as an insert
// and has a non-empty Key. In a table without a key such a row cannot be
// found; writing it as a new row would duplicate it.
func isUnlocatedUpdate(m *logical.Mutation) bool {
	if m.IsDelete() || len(m.Before) > 0 {
		return false
	}
	if insert, _ := m.Meta[MetaInsert].(bool); insert {
		return false
	}
	var key []json.RawMessage
	return json.Unmarshal(m.Key, &key) == nil && len(key) > 0
}

// single is a mutation with a statement of its own.
type single struct {
	data   row // nil for a delete
	before row // the old values to match
	skip   bool
}

// prepareSingle decodes m for applySingle.
func prepareSingle(info *tableInfo, m *logical.Mutation) (*single, error) {
	s := &single{}
	var err error
	if !m.IsDelete() {
		if s.data, err = decodeRow(info, m.Data); err != nil {
			return nil, err
		}
	}
	if len(m.Before) == 0 {
		if len(info.pk) == 0 {
			what := "a delete"
			if !m.IsDelete() {
				what = "an update"
			}
			return nil, errors.Errorf("pgstore: cannot apply %s to %s: it has neither a primary key nor a "+
				"replica-identity index, and the source sent no old row to find the row by (REPLICA IDENTITY FULL at the source sends one)",
				what, info.table)
		}
		s.skip = true
		return s, nil
	}
	if s.before, err = decodeRow(info, m.Before); err != nil {
		return nil, err
	}
	if len(info.pk) > 0 {
		// A key move only if Before has the whole key, and another.
		s.skip = true
		for _, i := range info.pk {
			if s.before[i] == nil || s.data[i] == nil {
				return s, nil
			}
			if !sameValue(s.before[i], s.data[i]) {
				s.skip = false
			}
		}
	}
	return s, nil
}

// sameValue reports whether two JSON values are the same value.
func sameValue(a, b json.RawMessage) bool {
	if string(a) == string(b) {
		return true
	}
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return fmt.Sprint(x) == fmt.Sprint(y)
}

// applySingle writes one key move, or one update or delete of a table
// without a key.
func (t *Target) applySingle(ctx context.Context, q execer, info *tableInfo, s *single) error {
	var args []any
	param := func(v json.RawMessage) string {
		args = append(args, textValue(v))
		return "$" + strconv.Itoa(len(args)) + "::text"
	}
	var cols []int
	var sets, names, values []string
	overriding := false
	for i, v := range s.data {
		if v == nil {
			continue
		}
		c := info.cols[i]
		cols = append(cols, i)
		p := param(v)
		names = append(names, Ident(c.name))
		values = append(values, valueExpr(c, p))
		overriding = overriding || c.always
		if !c.always {
			sets = append(sets, Ident(c.name)+" = "+valueExpr(c, p))
		}
	}
	rows := []row{s.data}
	diag := &diagnosis{info: info, cols: cols, vals: func(col int) []*string { return columnTexts(rows, col) }}
	if len(info.pk) > 0 {
		// A key move.
		var conds, pk, excluded []string
		for _, i := range info.pk {
			c := info.cols[i]
			conds = append(conds, Ident(c.name)+" = CAST("+param(s.before[i])+" AS "+c.cast+")")
			pk = append(pk, Ident(c.name))
		}
		for _, i := range cols {
			if c := info.cols[i]; !c.pk && !c.always {
				excluded = append(excluded, Ident(c.name)+" = excluded."+Ident(c.name))
			}
		}
		ov := ""
		if overriding {
			ov = "OVERRIDING SYSTEM VALUE "
		}
		onConflict := " ON CONFLICT (" + strings.Join(pk, ", ") + ") DO NOTHING"
		if len(excluded) > 0 {
			onConflict = " ON CONFLICT (" + strings.Join(pk, ", ") + ") DO UPDATE SET " + strings.Join(excluded, ", ")
		}
		sql := "WITH moved AS (UPDATE " + info.ident + " SET " + strings.Join(sets, ", ") +
			" WHERE " + strings.Join(conds, " AND ") + " RETURNING 1) " +
			"INSERT INTO " + info.ident + " (" + strings.Join(names, ", ") + ") " + ov +
			"SELECT " + strings.Join(values, ", ") + " WHERE NOT EXISTS (SELECT 1 FROM moved)" + onConflict
		return q.exec(ctx, stmt{what: "moving a row of " + info.table.String() + " to a new primary key", info: info, diag: diag},
			sql, args...)
	}
	// A table without a key: the first row equal to Before.
	var match []string
	for i, v := range s.before {
		if v == nil {
			continue
		}
		c := info.cols[i]
		if textValue(v) == nil {
			match = append(match, "t."+Ident(c.name)+" IS NULL")
			continue
		}
		// As text, so that types without an equality operator (json,
		// point, xml) compare too; both sides in the target's text form.
		match = append(match, "t."+Ident(c.name)+"::text = CAST(CAST("+param(v)+" AS "+c.cast+") AS "+c.typ+")::text")
	}
	if len(match) == 0 {
		match = append(match, "true")
	}
	find := "ctid = (SELECT t.ctid FROM " + info.ident + " AS t WHERE " + strings.Join(match, " AND ") + " LIMIT 1)"
	if s.data == nil {
		return q.exec(ctx, stmt{what: "deleting a row of " + info.table.String() + " (found by its old values)", info: info},
			"DELETE FROM "+info.ident+" WHERE "+find, args...)
	}
	if len(sets) == 0 {
		return nil
	}
	return q.exec(ctx, stmt{what: "updating a row of " + info.table.String() + " (found by its old values)", info: info, diag: diag},
		"UPDATE "+info.ident+" SET "+strings.Join(sets, ", ")+" WHERE "+find, args...)
}

// textValue is a JSON value as ->> would give it: nil for null.
func textValue(v json.RawMessage) *string {
	out := columnTexts([]row{{v}}, 0)
	return out[0]
}
