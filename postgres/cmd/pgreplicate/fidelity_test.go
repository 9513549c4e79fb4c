package main

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/logical-go/logical/postgres/internal/pgtest"
	"github.com/logical-go/logical/postgres/pglogical"
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
// slot exists and is consistent, so that everything written afterwards is
// replicated. (A slot is listed while it is being created, before its
// start point is known; that waits for running transactions of the whole
// cluster, so a write meanwhile may come before the point.)
func started(t *testing.T, r *replication, flags ...string) func() int {
	t.Helper()
	stop := inProcess(t, r.args(flags...))
	pgtest.Eventually(t, time.Minute, "the slot", func() bool {
		return query(t, r.src, `SELECT count(*)::text FROM pg_replication_slots
			WHERE slot_name = $1 AND confirmed_flush_lsn IS NOT NULL`, r.slot) == "1"
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
			got := waitEqual(t, r, time.Minute, sums("moves", "moves_full"))
			assert.Contains(t, got, "moves 5 ")
			assert.Equal(t, "0", query(t, r.dst, `SELECT count(*)::text FROM moves WHERE big IS NULL`))
			require.Equal(t, 0, stop())
		})
	}
}

// TestKeyMoveWaitsForEarlierInsert moves a row's key, leaving its TOASTed
// value unchanged (not sent), in the source transaction after the one
// that inserted it, while the target is still applying that insert: a
// trigger holds the insert of the old key until the test lets it go.
// The move, a transaction's first change, must still wait for the insert
// (in fan mode the two keys are applied by different shards): it was
// applied at once, found no row to move, and left the moved row without
// its TOASTed value, with the old row kept.
func TestKeyMoveWaitsForEarlierInsert(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			r := newReplication(t, `CREATE TABLE moves (id int PRIMARY KEY, big text, small text)`)
			r.dst.Exec(t,
				`CREATE FUNCTION hold_insert() RETURNS trigger LANGUAGE plpgsql AS $$
				BEGIN
					IF NEW.id = 1 THEN
						PERFORM pg_advisory_lock_shared(4242);
						PERFORM pg_advisory_unlock_shared(4242);
					END IF;
					RETURN NEW;
				END $$`,
				`CREATE TRIGGER hold BEFORE INSERT ON moves FOR EACH ROW EXECUTE FUNCTION hold_insert()`,
				`ALTER TABLE moves ENABLE ALWAYS TRIGGER hold`)
			ctx := context.Background()
			lock, err := r.dst.Pool.Acquire(ctx)
			require.NoError(t, err)
			defer lock.Release()
			_, err = lock.Exec(ctx, `SELECT pg_advisory_lock(4242)`)
			require.NoError(t, err)
			locked := true
			unlock := func() {
				if locked {
					_, err := lock.Exec(ctx, `SELECT pg_advisory_unlock(4242)`)
					require.NoError(t, err)
					locked = false
				}
			}
			defer unlock()
			stop := started(t, r, mode.flags...)
			r.src.Exec(t, `INSERT INTO moves SELECT g, `+bigText+`, 's' FROM generate_series(1, 3) g`)
			pgtest.Eventually(t, time.Minute, "the insert of row 1 to wait for the test", func() bool {
				return query(t, r.dst, `SELECT count(*)::text FROM pg_locks
					WHERE locktype = 'advisory' AND objid = 4242 AND NOT granted
					AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`) != "0"
			})
			r.src.Exec(t, `UPDATE moves SET id = id + 100 WHERE id = 1`)
			end := query(t, r.src, `SELECT pg_current_wal_lsn()::text`)
			pgtest.Eventually(t, time.Minute, "the move to be sent", func() bool {
				return query(t, r.src, `SELECT count(*)::text FROM pg_stat_replication
					WHERE sent_lsn >= $1::pg_lsn`, end) != "0"
			})
			// Give the move the time to overtake the insert, if it can:
			// it must not show up while the insert waits.
			for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); {
				require.Equal(t, "0", query(t, r.dst, `SELECT count(*)::text FROM moves WHERE id = 101`),
					"the key move was applied before the insert of its old key")
				time.Sleep(50 * time.Millisecond)
			}
			unlock()
			got := waitEqual(t, r, time.Minute, sums("moves"))
			assert.Contains(t, got, "moves 3 ")
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
			waitEqual(t, r, time.Minute, sums("full_rows", "by_index"))
			r.src.Exec(t, `DELETE FROM full_rows WHERE b = 'x'`, `INSERT INTO full_rows VALUES (3, 'after', NULL, NULL)`)
			got := waitEqual(t, r, time.Minute, sums("full_rows", "by_index"))
			assert.Contains(t, got, "full_rows 3 ")
			assert.Contains(t, got, "by_index 2 ")
			require.Equal(t, 0, stop())
		})
	}
}

// runLogged runs the command in this process like inProcess, and also
// returns its log.
func runLogged(t *testing.T, args []string) (stop func() int, log *logBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	log = &logBuffer{}
	dumpOnFailure(t, "pgreplicate", log)
	status := make(chan int, 1)
	go func() { status <- run(ctx, args, log) }()
	var once sync.Once
	code := -1
	stop = func() int {
		once.Do(func() {
			cancel()
			select {
			case code = <-status:
			case <-time.After(time.Minute):
				t.Errorf("pgreplicate did not stop")
			}
		})
		return code
	}
	t.Cleanup(func() { stop() })
	return stop, log
}

// slotFlushed returns the slot's confirmed_flush_lsn as a number.
func slotFlushed(t *testing.T, r *replication) uint64 {
	t.Helper()
	text := query(t, r.src, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, r.slot)
	lsn, err := pglogical.ParseLSN(text)
	require.NoError(t, err, "confirmed_flush_lsn %q", text)
	return lsn
}

// currentLSN returns the source's current WAL position.
func currentLSN(t *testing.T, r *replication) uint64 {
	t.Helper()
	lsn, err := pglogical.ParseLSN(query(t, r.src, `SELECT pg_current_wal_lsn()::text`))
	require.NoError(t, err)
	return lsn
}

// TestNarrowTargetStops replicates into target columns narrower than the
// source's: values that fit arrive exactly; one that does not stops the
// stream with an error naming the table, column and value, the slot does
// not pass the change, and once the target column is widened the stream
// carries on (the Target reads the changed catalog).
func TestNarrowTargetStops(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			r := newReplication(t)
			r.src.Exec(t, `CREATE TABLE narrow (id int PRIMARY KEY, v text, n numeric, ts timestamp)`)
			r.dst.Exec(t, `CREATE TABLE narrow (id int PRIMARY KEY, v varchar(2), n numeric(10, 2), ts timestamp(0))`)
			r.createSlot(t)
			stop, log := runLogged(t, r.args(mode.flags...))
			r.src.Exec(t, `INSERT INTO narrow VALUES (1, 'ab', 1.25, '2024-01-02 03:04:05'), (2, NULL, NULL, NULL)`)
			waitEqual(t, r, time.Minute, sums("narrow"))

			for _, tc := range []struct{ col, set, want string }{
				{"v", "v = 'abcdef'", `"abcdef"`},
				{"n", "n = 1.234", `"1.234"`},
				{"ts", "ts = '2024-01-02 03:04:05.5'", `"2024-01-02 03:04:05.5"`},
			} {
				before := currentLSN(t, r)
				r.src.Exec(t, `UPDATE narrow SET `+tc.set+` WHERE id = 1`)
				// The log quotes the error, and so its quotes.
				msg := fmt.Sprintf(`column \"%s\" of type`, tc.col)
				pgtest.Eventually(t, time.Minute, "the error about "+tc.col, func() bool {
					return strings.Contains(log.String(), msg)
				})
				assert.Contains(t, log.String(), "public.narrow")
				assert.Contains(t, log.String(), strings.ReplaceAll(tc.want, `"`, `\"`))
				assert.LessOrEqual(t, slotFlushed(t, r), before, "the slot passed the change of %s", tc.col)
				// Put it right at the source; the stream goes on past
				// the bad change only once the target can take it.
				r.dst.Exec(t, `ALTER TABLE narrow ALTER COLUMN `+tc.col+` TYPE `+map[string]string{
					"v": "text", "n": "numeric", "ts": "timestamp"}[tc.col])
				waitEqual(t, r, time.Minute, sums("narrow"))
			}
			// The slot does move once the target has the changes.
			end := currentLSN(t, r)
			pgtest.Eventually(t, time.Minute, "the slot to pass the changes", func() bool { return slotFlushed(t, r) >= end })
			require.Equal(t, 0, stop())
		})
	}
}

// TestTargetTypeChange widens a column at the target and then at the
// source while pgreplicate runs with the old type cached.
func TestTargetTypeChange(t *testing.T) {
	r := newReplication(t, `CREATE TABLE grow (id int PRIMARY KEY, n int)`)
	stop := started(t, r)
	r.src.Exec(t, `INSERT INTO grow VALUES (1, 1)`)
	waitEqual(t, r, time.Minute, sums("grow"))
	r.dst.Exec(t, `ALTER TABLE grow ALTER COLUMN n TYPE bigint`)
	r.src.Exec(t, `ALTER TABLE grow ALTER COLUMN n TYPE bigint`, `INSERT INTO grow VALUES (2, 9000000000)`)
	assert.Contains(t, waitEqual(t, r, time.Minute, sums("grow")), "grow 2 ")
	require.Equal(t, 0, stop())
}

// TestIdentityAlways replicates into target tables whose identity
// columns are GENERATED ALWAYS, as pg_dump --schema-only makes them.
func TestIdentityAlways(t *testing.T) {
	r := newReplication(t)
	r.src.Exec(t, `CREATE TABLE ident (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text)`)
	r.dst.Exec(t, `CREATE TABLE ident (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text)`)
	r.createSlot(t)
	stop := started(t, r)
	r.src.Exec(t, `INSERT INTO ident (v) SELECT 'v' || g FROM generate_series(1, 5) g`,
		`UPDATE ident SET v = 'changed' WHERE id = 2`, `DELETE FROM ident WHERE id = 3`)
	assert.Contains(t, waitEqual(t, r, time.Minute, sums("ident")), "ident 4 ")
	require.Equal(t, 0, stop())
}

// TestSchemaCollision replicates two tables of the same name in two
// source schemas: by default each keeps its schema at the target; mapped
// into one schema they are an error at start naming both.
func TestSchemaCollision(t *testing.T) {
	r := newReplication(t, `CREATE SCHEMA s1`, `CREATE SCHEMA s2`,
		`CREATE TABLE s1.dup (id int PRIMARY KEY, v text)`, `CREATE TABLE s2.dup (id int PRIMARY KEY, v text)`)
	r.dst.Exec(t, `CREATE TABLE public.dup (id int PRIMARY KEY, v text)`) // where the old default would merge them
	for _, flags := range [][]string{{"--targetSchema", "public"}, {"--schemaMap", "s1=public,s2=public"}, {"--schemaMap", "s2=s1"}} {
		var out logBuffer
		assert.Equal(t, 1, run(context.Background(), r.args(flags...), &out), flags)
		assert.Contains(t, out.String(), "s1.dup and s2.dup", flags)
	}
	stop := started(t, r)
	r.src.Exec(t, `INSERT INTO s1.dup VALUES (1, 'one'), (2, 'two')`, `INSERT INTO s2.dup VALUES (1, 'uno')`,
		`DELETE FROM s1.dup WHERE id = 1`)
	got := waitEqual(t, r, time.Minute, sums("s1.dup", "s2.dup"))
	assert.Contains(t, got, "s1.dup 1 ")
	assert.Contains(t, got, "s2.dup 1 ")
	assert.Equal(t, "0", query(t, r.dst, `SELECT count(*)::text FROM public.dup`))
	require.Equal(t, 0, stop())
}

// TestTruncateForeignKeys truncates tables with foreign keys between
// them: without --foreignKeys pgreplicate refuses to start naming the
// flag; with it the truncates apply.
func TestTruncateForeignKeys(t *testing.T) {
	r := newReplication(t,
		`CREATE TABLE parent (id int PRIMARY KEY, v text)`,
		`CREATE TABLE child (id int PRIMARY KEY, pid int REFERENCES parent, v text)`,
		`CREATE TABLE grandchild (id int PRIMARY KEY, cid int REFERENCES child)`)
	var out logBuffer
	assert.Equal(t, 1, run(context.Background(), r.args(), &out))
	assert.Contains(t, out.String(), "--foreignKeys")
	assert.NotContains(t, out.String(), "Config.")

	stop := started(t, r, "--foreignKeys")
	fill := []string{
		`INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 3) g`,
		`INSERT INTO child SELECT g, g, 'c' || g FROM generate_series(1, 3) g`,
		`INSERT INTO grandchild SELECT g, g FROM generate_series(1, 3) g`,
	}
	all := sums("parent", "child", "grandchild")
	r.src.Exec(t, fill...)
	waitEqual(t, r, time.Minute, all)
	r.src.Exec(t, `TRUNCATE parent, child, grandchild`)
	r.src.Exec(t, fill...)
	r.src.Exec(t, `BEGIN; INSERT INTO parent VALUES (10, 'p'); INSERT INTO child VALUES (10, 10, 'c'); TRUNCATE parent CASCADE; `+
		`INSERT INTO parent VALUES (11, 'after'); COMMIT`)
	assert.Contains(t, waitEqual(t, r, time.Minute, all), "parent 1 ")
	r.src.Exec(t, fill[:2]...)
	assert.Contains(t, waitEqual(t, r, time.Minute, all), "parent 4 ")
	require.Equal(t, 0, stop())
}

// TestDumpedSchema follows the README's walkthrough on a schema that
// pg_dump --schema-only copies: identity columns, foreign keys, tables
// without a primary key.
func TestDumpedSchema(t *testing.T) {
	r := newReplication(t)
	r.src.Exec(t,
		`CREATE TABLE customers (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text)`,
		`CREATE TABLE orders (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
			customer int NOT NULL REFERENCES customers, total numeric(10, 2), note text)`,
		`CREATE TABLE events (at timestamptz, what text)`,
		`ALTER TABLE events REPLICA IDENTITY FULL`,
		`CREATE TABLE tags (name text NOT NULL, v text)`,
		`CREATE UNIQUE INDEX tags_name ON tags (name)`,
		`ALTER TABLE tags REPLICA IDENTITY USING INDEX tags_name`)
	dump := exec.Command("sh", "-c", `pg_dump --schema-only --no-owner --no-publications --no-subscriptions "$1" | psql -q -v ON_ERROR_STOP=1 "$2"`,
		"sh", r.src.URL, r.dst.URL)
	out, err := dump.CombinedOutput()
	require.NoError(t, err, "%s", out)

	var refused logBuffer
	assert.Equal(t, 1, run(context.Background(), r.args(), &refused))
	assert.Contains(t, refused.String(), "--foreignKeys")

	stop := started(t, r, "--foreignKeys")
	r.src.Exec(t,
		`INSERT INTO customers (name) SELECT 'c' || g FROM generate_series(1, 5) g`,
		`INSERT INTO orders (customer, total) SELECT 1 + g % 5, g * 1.5 FROM generate_series(1, 20) g`,
		`INSERT INTO events VALUES ('2024-01-01 00:00+00', 'a'), ('2024-01-01 00:00+00', 'a'), (NULL, 'b')`,
		`INSERT INTO tags VALUES ('x', '1'), ('y', '2')`,
		`UPDATE orders SET note = 'big', total = total * 2 WHERE total > 20`,
		`UPDATE customers SET name = 'renamed' WHERE id = 2`,
		`DELETE FROM orders WHERE customer = 3`, `DELETE FROM customers WHERE id = 3`,
		`UPDATE events SET what = 'one' WHERE ctid = (SELECT ctid FROM events WHERE what = 'a' LIMIT 1)`,
		`DELETE FROM events WHERE what = 'b'`,
		`UPDATE tags SET name = 'z', v = '3' WHERE name = 'y'`,
		`TRUNCATE orders`,
		`INSERT INTO orders (customer, total) VALUES (1, 9.99)`,
	)
	got := waitEqual(t, r, time.Minute, sums("customers", "orders", "events", "tags"))
	assert.Contains(t, got, "customers 4 ")
	assert.Contains(t, got, "orders 1 ")
	assert.Contains(t, got, "events 2 ")
	require.Equal(t, 0, stop())
}

func TestSchemaMapFlag(t *testing.T) {
	base := []string{"--sourceConn", "postgres://h/a", "--targetConn", "postgres://h/b", "--publicationName", "p", "--slotName", "s"}
	for _, bad := range []string{"s1", "=x", "s1=", "a=b,a=c"} {
		var out logBuffer
		assert.Equal(t, 2, run(context.Background(), append(base, "--schemaMap", bad), &out), bad)
		assert.Contains(t, out.String(), "--schemaMap", bad)
	}
	m, err := parseSchemaMap(" s1 = a ,s2=b,s1=a")
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"s1": "a", "s2": "b"}, m)
}
