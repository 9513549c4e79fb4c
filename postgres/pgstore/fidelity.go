package pgstore

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pkg/errors"
)

// valueExpr is the SQL that turns src, an expression of type text, into a
// value for column c. The text is cast to the column's base type without
// typmod (c.cast), so that the assignment to the column applies the
// length of varchar(n), char(n) and bit(n) and fails on a value that does
// not fit, where an explicit cast would truncate it. Assignment rounds
// numeric scale and time precision without an error, so for such columns
// (c.check) the value is compared with its cast to the declared type, and
// one that would change fails the statement with a cast error (22P02);
// diagnose then names the column and value.
func valueExpr(c column, src string) string {
	base := "CAST(" + src + " AS " + c.cast + ")"
	if !c.check {
		return base
	}
	exact := "CAST(" + src + " AS " + c.typ + ")"
	return "CASE WHEN " + exact + " = " + base + " THEN " + exact +
		" ELSE CAST('pgstore: inexact value ' || " + src + " AS " + c.cast + ") END"
}

// diagnosis is what a failed write needs to find the value a column
// could not take: the columns written and, per column, their values as
// text (nil for NULL).
type diagnosis struct {
	info *tableInfo
	cols []int
	vals func(col int) []*string
}

// isDataError reports whether err is a data exception (SQLSTATE class 22:
// too long, out of range, invalid text), the kind diagnose can explain.
func isDataError(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "22")
}

// suggestsCatalogChange reports whether err is one that a changed target
// table causes when the cached description is stale: any data exception
// (a value out of range, too long or not valid for the cached type, which
// includes the inexact-value check of valueExpr), a type mismatch, an
// unknown column or table, or a missing operator.
func suggestsCatalogChange(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	switch pgErr.Code {
	case "42804", "42703", "42P01", "42883", "428C9":
		return true
	}
	return strings.HasPrefix(pgErr.Code, "22")
}

// diagnose looks for the first column and value of d that the target
// cannot hold exactly, with one query per column on its own connection
// (the failed statement's transaction is aborted). It returns an error
// naming the table, column, type and value, or nil if it finds none.
func (t *Target) diagnose(d *diagnosis) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, i := range d.cols {
		c := d.info.cols[i]
		vals := d.vals(i)
		// The explicit cast to the declared type truncates or rounds
		// where the assignment would fail or round: a value that it
		// changes does not fit. A value the base type rejects fails the
		// query with PostgreSQL's message, which names it.
		sql := "SELECT u.v FROM unnest($1::text[]) AS u(v) WHERE u.v IS NOT NULL AND CAST(u.v AS " + c.cast + ") IS NULL"
		if c.typmod {
			sql = "SELECT u.v FROM unnest($1::text[]) AS u(v) WHERE CAST(CAST(u.v AS " + c.cast + ") AS " + c.typ +
				") IS DISTINCT FROM CAST(u.v AS " + c.cast + ")"
		}
		var bad *string
		err := t.pool.QueryRow(ctx, sql+" LIMIT 1", vals).Scan(&bad)
		switch {
		case err == nil && bad != nil:
			return errors.Errorf("column %q of type %s cannot hold the value %s exactly",
				c.name, c.typ, shorten(*bad))
		case err == nil:
		case isDataError(err):
			var pgErr *pgconn.PgError
			errors.As(err, &pgErr)
			return errors.Errorf("column %q of type %s cannot take a value: %s", c.name, c.typ, pgErr.Message)
		}
	}
	return nil
}

// shorten quotes s for a message, cut to a readable length.
func shorten(s string) string {
	const max = 80
	if len(s) > max {
		return fmt.Sprintf("%q... (%d bytes)", s[:max], len(s))
	}
	return fmt.Sprintf("%q", s)
}

// columnTexts returns the values of column col in rows as text, the way
// ->> would: a JSON string decoded, null as nil, anything else as its JSON
// text.
func columnTexts(rows []row, col int) []*string {
	out := make([]*string, len(rows))
	for n, r := range rows {
		v := r[col]
		switch {
		case len(v) == 0 || string(v) == "null":
		case v[0] == '"':
			var s string
			if json.Unmarshal(v, &s) == nil {
				out[n] = &s
			}
		default:
			s := string(v)
			out[n] = &s
		}
	}
	return out
}
