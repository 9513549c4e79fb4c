package pgstore

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"testing"

	"github.com/logical-go/logical"
	"github.com/logical-go/logical/postgres/internal/pgtest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// PGSTORE_COPY_MIN_ROWS=1 runs every test of the package with COPY for
// every run of inserts that may take it.
func init() {
	if v := os.Getenv("PGSTORE_COPY_MIN_ROWS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			panic("PGSTORE_COPY_MIN_ROWS must be a positive integer, not " + strconv.Quote(v))
		}
		copyMinRows = n
	}
}

// inserts returns n insert mutations of keys from..from+n-1 with value
// v(key).
func inserts(from, n int, v func(int) string) []logical.Mutation {
	muts := make([]logical.Mutation, n)
	for i := range muts {
		k := from + i
		data, _ := json.Marshal(map[string]any{"id": strconv.Itoa(k), "v": v(k)})
		muts[i] = logical.Mutation{Key: json.RawMessage(fmt.Sprintf(`["%d"]`, k)), Data: data,
			Meta: map[string]any{MetaInsert: true}}
	}
	return muts
}

func applyTx(ctx context.Context, t *testing.T, target *Target, table logical.Table, calls ...[]logical.Mutation) error {
	t.Helper()
	tx, err := target.Begin(ctx)
	require.NoError(t, err)
	for _, muts := range calls {
		if err := tx.Apply(ctx, table, muts); err != nil {
			_ = tx.Rollback(ctx)
			return err
		}
	}
	return tx.Commit(ctx)
}

// weird is a value with everything COPY text format escapes, and JSON.
func weird(k int) string {
	switch k % 5 {
	case 0:
		return fmt.Sprintf("tab\there\nnew\\line\r%d \"q\" \\N", k)
	case 1:
		return ""
	case 2:
		return `\.`
	case 3:
		return fmt.Sprintf("é ü 中 %d", k)
	}
	return fmt.Sprintf("plain %d", k)
}

// TestCopyRun checks that inserts in a transaction go by one COPY across
// Apply calls, in order with the other statements, with every value as
// the INSERT would write it.
func TestCopyRun(t *testing.T) {
	db := pgtest.NewDB(t, "copyrun")
	ctx := context.Background()
	db.Exec(t, `CREATE TABLE c (id int PRIMARY KEY, v text)`)
	target := NewTarget(db.Pool)
	table := logical.Table{Schema: "public", Name: "c"}
	before := target.copies.Load()
	n := copyMinRows
	update := []logical.Mutation{{Key: json.RawMessage(`["0"]`), Data: json.RawMessage(`{"id":"0","v":"updated"}`)}}
	require.NoError(t, applyTx(ctx, t, target, table, inserts(0, n, weird), inserts(n, n, weird), update,
		inserts(2*n, n, weird), []logical.Mutation{{Key: json.RawMessage(`["1"]`), Data: json.RawMessage(`{"id":"1","v":null}`),
			Meta: map[string]any{MetaInsert: true}}}))
	assert.Equal(t, int64(2), target.copies.Load()-before, "one COPY before the update, one after")
	rows, err := db.Pool.Query(ctx, `SELECT id, v FROM c ORDER BY id`)
	require.NoError(t, err)
	defer rows.Close()
	k := 0
	for rows.Next() {
		var id int
		var v *string
		require.NoError(t, rows.Scan(&id, &v))
		require.Equal(t, k, id)
		switch id {
		case 0:
			assert.Equal(t, "updated", *v)
		case 1:
			assert.Nil(t, v, "a later insert of a key in the transaction is an upsert")
		default:
			require.NotNil(t, v)
			assert.Equal(t, weird(id), *v)
		}
		k++
	}
	require.NoError(t, rows.Err())
	assert.Equal(t, 3*n, k)
}

// TestCopyReplayed checks that a COPY of inserts that meets rows already
// there (a replay after a restart without a Progress table) converges:
// the transaction is redone with upserts, or, when its log is full, fails
// and its retry upserts. Without the fallback the COPY's duplicate key
// fails every time.
func TestCopyReplayed(t *testing.T) {
	for _, full := range []bool{false, true} {
		t.Run(fmt.Sprintf("log full %v", full), func(t *testing.T) {
			db := pgtest.NewDB(t, "copyreplayed")
			ctx := context.Background()
			db.Exec(t, `CREATE TABLE c (id int PRIMARY KEY, v text)`, `INSERT INTO c SELECT g, 'old' FROM generate_series(5, 400) g`)
			if full {
				defer func(n int) { replayBytes = n }(replayBytes)
				replayBytes = 10
			}
			target := NewTarget(db.Pool)
			table := logical.Table{Schema: "public", Name: "c"}
			n := max(copyMinRows, 300)
			calls := [][]logical.Mutation{inserts(0, n, weird), inserts(n, n, weird)}
			err := applyTx(ctx, t, target, table, calls...)
			if full {
				require.Error(t, err)
				assert.ErrorContains(t, err, "by COPY")
				assert.ErrorContains(t, err, "public.c")
				err = applyTx(ctx, t, target, table, calls...)
			}
			require.NoError(t, err)
			target.mu.RLock()
			upsertOnly := target.upsertOnly[table]
			target.mu.RUnlock()
			assert.True(t, upsertOnly, "no COPY into the table after one met existing rows")
			var count, bad int
			require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE v = 'old') FROM c`).Scan(&count, &bad))
			assert.Equal(t, 2*n, count)
			assert.Zero(t, bad)
			var v string
			require.NoError(t, db.Pool.QueryRow(ctx, `SELECT v FROM c WHERE id = 10`).Scan(&v))
			assert.Equal(t, weird(10), v)
		})
	}
}

// TestCopyBadValue checks that a value the column cannot take fails the
// transaction with the column and value named, as the INSERT does; with
// a full log, by the server's line and column of the COPY.
func TestCopyBadValue(t *testing.T) {
	for _, full := range []bool{false, true} {
		t.Run(fmt.Sprintf("log full %v", full), func(t *testing.T) {
			db := pgtest.NewDB(t, "copybad")
			ctx := context.Background()
			db.Exec(t, `CREATE TABLE c (id int PRIMARY KEY, v varchar(12))`)
			if full {
				defer func(n int) { replayBytes = n }(replayBytes)
				replayBytes = 10
			}
			target := NewTarget(db.Pool)
			table := logical.Table{Schema: "public", Name: "c"}
			n := max(copyMinRows, 200)
			err := applyTx(ctx, t, target, table, inserts(0, n, func(k int) string {
				if k == 199 {
					return "far too long a value"
				}
				return "ok"
			}))
			require.Error(t, err)
			assert.ErrorContains(t, err, "far too long a value")
			if full {
				assert.ErrorContains(t, err, "line 200, column v")
			} else {
				assert.ErrorContains(t, err, `column "v"`)
			}
			var count int
			require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM c`).Scan(&count))
			assert.Zero(t, count)
		})
	}
}

// TestCopyRollback checks that a rollback with a COPY open writes nothing
// and leaves the connection usable.
func TestCopyRollback(t *testing.T) {
	db := pgtest.NewDB(t, "copyrollback")
	ctx := context.Background()
	db.Exec(t, `CREATE TABLE c (id int PRIMARY KEY, v text)`)
	target := NewTarget(db.Pool)
	table := logical.Table{Schema: "public", Name: "c"}
	for range 3 { // more than the pool's connections are reused
		tx, err := target.Begin(ctx)
		require.NoError(t, err)
		require.NoError(t, tx.Apply(ctx, table, inserts(0, copyMinRows, weird)))
		require.NoError(t, tx.Rollback(ctx))
	}
	require.NoError(t, applyTx(ctx, t, target, table, inserts(0, 1, weird)))
	var count int
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM c`).Scan(&count))
	assert.Equal(t, 1, count)
}

// TestCopyNotFor checks the tables and columns COPY would write
// otherwise than the INSERT: a rule (COPY ignores it), a numeric scale
// (COPY would round) and a type cast from text by a function of its own.
func TestCopyNotFor(t *testing.T) {
	db := pgtest.NewDB(t, "copynot")
	ctx := context.Background()
	db.Exec(t,
		`CREATE TABLE ruled (id int PRIMARY KEY, v text)`,
		`CREATE TABLE log (v text)`,
		`CREATE RULE keep AS ON INSERT TO ruled DO ALSO INSERT INTO log VALUES (NEW.v)`,
		`CREATE TABLE num (id int PRIMARY KEY, v numeric(6,2))`,
		`CREATE TABLE nam (id int PRIMARY KEY, v name)`,
		`CREATE TABLE plain (id int PRIMARY KEY, v text)`)
	target := NewTarget(db.Pool)
	n := copyMinRows
	for _, name := range []string{"ruled", "num", "nam"} {
		before := target.copies.Load()
		require.NoError(t, applyTx(ctx, t, target, logical.Table{Schema: "public", Name: name},
			inserts(0, n, func(k int) string { return strconv.Itoa(k) + ".5" })), name)
		assert.Equal(t, before, target.copies.Load(), "%s went by COPY", name)
	}
	var logged int
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM log`).Scan(&logged))
	assert.Equal(t, n, logged, "the rule ran for every row")
	before := target.copies.Load()
	require.NoError(t, applyTx(ctx, t, target, logical.Table{Schema: "public", Name: "plain"}, inserts(0, n, weird)))
	assert.Equal(t, before+1, target.copies.Load(), "a plain table goes by COPY")
}

// TestCopyArrays checks that a chunk of COPY text turns back into the
// text arrays the INSERT takes (a replay writes it so).
func TestCopyArrays(t *testing.T) {
	info := &tableInfo{table: logical.Table{Schema: "s", Name: "t"}, cols: []column{{name: "a"}, {name: "b"}}}
	var rows []row
	for k := range 20 {
		a, _ := json.Marshal(weird(k))
		b := json.RawMessage("null")
		if k%3 == 0 {
			b, _ = json.Marshal(fmt.Sprintf(`x"\%d`, k))
		}
		rows = append(rows, row{a, b})
	}
	chunk, err := copyChunk(info, []int{0, 1}, rows)
	require.NoError(t, err)
	got, err := copyArrays(chunk, 2)
	require.NoError(t, err)
	for col := range 2 {
		want, err := textArray(rows, col)
		require.NoError(t, err)
		assert.Equal(t, want, got[col], "column %d", col)
	}
	_, err = copyArrays([]byte("a\tb\nc\n"), 2)
	assert.ErrorContains(t, err, "1 fields, not 2")
}

// TestCopyOutsideTx checks COPY in Target.Apply (fan mode): inserts go by
// one COPY, and a COPY that meets existing rows (a replay) is redone as
// the insert, which upserts. Without the fallback the call fails.
func TestCopyOutsideTx(t *testing.T) {
	db := pgtest.NewDB(t, "copyfan")
	ctx := context.Background()
	db.Exec(t, `CREATE TABLE c (id int PRIMARY KEY, v text)`)
	target := NewTarget(db.Pool)
	table := logical.Table{Schema: "public", Name: "c"}
	n := max(copyMinRows, 300)
	before := target.copies.Load()
	require.NoError(t, target.Apply(ctx, table, inserts(0, n, weird)))
	assert.Equal(t, before+1, target.copies.Load())
	db.Exec(t, `UPDATE c SET v = 'old'`)
	require.NoError(t, target.Apply(ctx, table, inserts(0, 2*n, weird)), "a replayed COPY upserts")
	var count, bad int
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE v = 'old') FROM c`).Scan(&count, &bad))
	assert.Equal(t, 2*n, count)
	assert.Zero(t, bad)
}

// TestCopyChained checks a COPY in a transaction chained after a commit
// (CommitChain): it runs once that commit is in, and after a failed
// commit writes nothing.
func TestCopyChained(t *testing.T) {
	db := pgtest.NewDB(t, "copychain")
	ctx := context.Background()
	db.Exec(t, `CREATE TABLE c (id int PRIMARY KEY, v text)`,
		`CREATE TABLE d (k int PRIMARY KEY, p int REFERENCES c (id) DEFERRABLE INITIALLY DEFERRED)`)
	target := NewTarget(db.Pool)
	table := logical.Table{Schema: "public", Name: "c"}
	n := max(copyMinRows, 300)
	for _, fail := range []bool{false, true} {
		db.Exec(t, `DELETE FROM d`, `DELETE FROM c`)
		tx, err := target.Begin(ctx)
		require.NoError(t, err)
		if fail { // checked at COMMIT
			require.NoError(t, tx.Apply(ctx, logical.Table{Schema: "public", Name: "d"}, []logical.Mutation{{
				Key: json.RawMessage(`["1"]`), Data: json.RawMessage(`{"k":"1","p":"999999"}`), Meta: map[string]any{MetaInsert: true}}}))
		} else {
			require.NoError(t, tx.Apply(ctx, table, inserts(-1, 1, weird)))
		}
		next, result := tx.(logical.ChainTx).CommitChain(ctx)
		err = <-result
		assert.Equal(t, fail, err != nil, "%v", err)
		before := target.copies.Load()
		err = next.Apply(ctx, table, inserts(0, n, weird))
		if err == nil {
			err = next.Commit(ctx)
		} else {
			require.NoError(t, next.Rollback(ctx))
		}
		var count int
		require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM c WHERE id >= 0`).Scan(&count))
		if fail {
			assert.Error(t, err)
			assert.Zero(t, count)
			continue
		}
		require.NoError(t, err)
		assert.Equal(t, before+1, target.copies.Load(), "by COPY once the commit before is in")
		assert.Equal(t, n, count)
	}
}
