package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/logical-go/logical/postgres/internal/pgtest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The tests of this file check that the target gets exactly what the
// source has (md5 of all rows of each table), or that pgreplicate stops
// with an error naming the table, column and value and the slot has not
// gone past the change.

// modes are the ways pgreplicate applies: serial transactions, and in
// parallel without them.
var modes = []struct {
	name  string
	flags []string
}{
	{"serial", nil},
	{"immediate", []string{"--immediate", "--fanShards", "4"}},
}

// sums is a query of the count and md5 of all rows of each table, in a
// stable order.
func sums(tables ...string) string {
	var parts []string
	for _, t := range tables {
		parts = append(parts, fmt.Sprintf(
			`(SELECT '%[1]s ' || count(*) || ' ' || md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM %[1]s t)`, t))
	}
	return "SELECT concat_ws(' | ', " + strings.Join(parts, ", ") + ")"
}

// started runs pgreplicate for r in this process and waits until its
// slot exists, so that everything written afterwards is replicated.
func started(t *testing.T, r *replication, flags ...string) func() int {
	t.Helper()
	stop := inProcess(t, r.args(flags...))
	pgtest.Eventually(t, time.Minute, "the slot", func() bool {
		return query(t, r.src, `SELECT count(*)::text FROM pg_replication_slots WHERE slot_name = $1`, r.slot) == "1"
	})
	return stop
}

// bigText is ~96 kB of random text: stored out of line (TOASTed).
const bigText = `(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 3000))`

// TestKeyMoveKeepsToast changes primary keys of rows whose TOASTed
// column the update leaves alone (the server does not send it).
func TestKeyMoveKeepsToast(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			r := newReplication(t,
				`CREATE TABLE moves (id int PRIMARY KEY, big text, small text)`,
				`CREATE TABLE moves_full (id int PRIMARY KEY, big text, small text)`,
				`ALTER TABLE moves_full REPLICA IDENTITY FULL`)
			stop := started(t, r, mode.flags...)
			for _, tbl := range []string{"moves", "moves_full"} {
				r.src.Exec(t,
					`INSERT INTO `+tbl+` SELECT g, `+bigText+`, 's' FROM generate_series(1, 3) g`,
					`UPDATE `+tbl+` SET id = id + 100 WHERE id = 1`,
					`UPDATE `+tbl+` SET id = id + 100, small = 'moved' WHERE id = 2`,
					`BEGIN; INSERT INTO `+tbl+` VALUES (4, `+bigText+`, 'x'); UPDATE `+tbl+` SET id = 5 WHERE id = 4; `+
						`INSERT INTO `+tbl+` VALUES (4, 'again', 'y'); COMMIT`,
				)
			}
			got := waitEqual(t, r, 20*time.Second, sums("moves", "moves_full"))
			assert.Contains(t, got, "moves 5 ")
			assert.Equal(t, "0", query(t, r.dst, `SELECT count(*)::text FROM moves WHERE big IS NULL`))
			require.Equal(t, 0, stop())
		})
	}
}

// TestKeyless replicates tables without a primary key: one with REPLICA
// IDENTITY FULL (duplicate rows, rows found by all their old values) and
// one with REPLICA IDENTITY USING INDEX (the index's columns are the key).
func TestKeyless(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			r := newReplication(t,
				`CREATE TABLE full_rows (a int, b text, j json, p point)`,
				`ALTER TABLE full_rows REPLICA IDENTITY FULL`,
				`CREATE TABLE by_index (a int NOT NULL, b text NOT NULL, v text)`,
				`CREATE UNIQUE INDEX by_index_ab ON by_index (a, b)`,
				`ALTER TABLE by_index REPLICA IDENTITY USING INDEX by_index_ab`)
			stop := started(t, r, mode.flags...)
			r.src.Exec(t,
				`INSERT INTO full_rows VALUES (1, 'x', '{"k": 1}', '(1,2)'), (1, 'x', '{"k": 1}', '(1,2)'), (2, NULL, NULL, NULL)`,
				`UPDATE full_rows SET b = 'one of two' WHERE ctid = (SELECT ctid FROM full_rows WHERE a = 1 LIMIT 1)`,
				`UPDATE full_rows SET b = 'was null' WHERE a = 2`,
				`INSERT INTO by_index VALUES (1, 'a', 'v1'), (2, 'b', 'v2'), (3, 'c', 'v3')`,
				`UPDATE by_index SET v = 'changed' WHERE a = 1`,
				`UPDATE by_index SET a = 20 WHERE a = 2`,
				`DELETE FROM by_index WHERE a = 3`,
			)
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("source: %s", query(t, r.src, `SELECT string_agg(t::text, ' ') FROM full_rows t`))
					t.Logf("target: %s", query(t, r.dst, `SELECT string_agg(t::text, ' ') FROM full_rows t`))
				}
			})
			waitEqual(t, r, 20*time.Second, sums("full_rows", "by_index"))
			r.src.Exec(t, `DELETE FROM full_rows WHERE b = 'x'`, `INSERT INTO full_rows VALUES (3, 'after', NULL, NULL)`)
			got := waitEqual(t, r, 20*time.Second, sums("full_rows", "by_index"))
			assert.Contains(t, got, "full_rows 3 ")
			assert.Contains(t, got, "by_index 2 ")
			require.Equal(t, 0, stop())
		})
	}
}
