package pgstore_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/logical-go/logical/postgres/internal/pgtest"
	"github.com/stretchr/testify/require"
)

// TestStatementShapes measures the CPU the server backend spends per row
// for several SQL shapes of the set-based writes of the Target (updates
// of random keys of a pgbench_accounts-like table, and deletes), read
// from /proc/<pid>/schedstat of the backend (the server must run on this
// machine). Opt in with LOGICAL_PGSTORE_SHAPES=1; LOGICAL_SHAPES_ROWS,
// _BATCH and _RUNS change the rows per run (20000), rows per statement
// (500) and repetitions (3). Each shape is reported as µs per row and as
// a ratio to the first (the baseline) of its kind, from the same run.
func TestStatementShapes(t *testing.T) {
	if os.Getenv("LOGICAL_PGSTORE_SHAPES") == "" {
		t.Skip("set LOGICAL_PGSTORE_SHAPES=1 to measure the statement shapes")
	}
	const tableRows = 100000
	nRows := pgtest.EnvInt(t, "LOGICAL_SHAPES_ROWS", 20000)
	batch := pgtest.EnvInt(t, "LOGICAL_SHAPES_BATCH", 500)
	runs := pgtest.EnvInt(t, "LOGICAL_SHAPES_RUNS", 5)

	db := pgtest.NewDB(t, "shapes")
	ctx := context.Background()
	db.Exec(t,
		`CREATE TABLE acc (aid int PRIMARY KEY, bid int, abalance int, filler char(84))`,
		fmt.Sprintf(`INSERT INTO acc SELECT g, g / 1000, 0, '' FROM generate_series(1, %d) g`, tableRows),
		`VACUUM ANALYZE acc`)
	conn, err := pgx.Connect(ctx, db.URL)
	require.NoError(t, err)
	defer conn.Close(ctx)
	var pid int
	require.NoError(t, conn.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid))
	cpu := func() time.Duration {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/schedstat", pid))
		require.NoError(t, err, "the server must run on this machine")
		ns, err := strconv.ParseInt(strings.Fields(string(b))[0], 10, 64)
		require.NoError(t, err)
		return time.Duration(ns)
	}

	const casts = `CAST(r.c0 AS pg_catalog.int4), CAST(r.c1 AS pg_catalog.int4), CAST(r.c2 AS pg_catalog.int4), CAST(r.c3 AS pg_catalog.bpchar)`
	const unnest = `unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS r(c0, c1, c2, c3)`
	const sets = `bid = CAST(r.c1 AS pg_catalog.int4), abalance = CAST(r.c2 AS pg_catalog.int4), filler = CAST(r.c3 AS pg_catalog.bpchar)`
	const onConflict = ` ON CONFLICT (aid) DO UPDATE SET bid = excluded.bid, abalance = excluded.abalance, filler = excluded.filler`
	upsertSQL := `INSERT INTO acc (aid, bid, abalance, filler) SELECT ` + casts + ` FROM ` + unnest + onConflict
	updateSQL := `UPDATE acc AS t SET ` + sets + ` FROM ` + unnest + ` WHERE t.aid = CAST(r.c0 AS pg_catalog.int4)`
	filteredSQL := `WITH u AS (UPDATE acc AS t SET ` + sets + ` FROM ` + unnest +
		` WHERE t.aid = CAST(r.c0 AS pg_catalog.int4) RETURNING t.aid) ` +
		`INSERT INTO acc (aid, bid, abalance, filler) SELECT ` + casts + ` FROM ` + unnest +
		` WHERE (SELECT count(*) FROM u) < cardinality($1::text[]) AND NOT EXISTS (SELECT 1 FROM u WHERE u.aid = CAST(r.c0 AS pg_catalog.int4))` + onConflict
	numbered := `unnest($1::text[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS r(c0, c1, c2, c3, o)`
	ordinalSQL := `WITH u AS (UPDATE acc AS t SET ` + sets + ` FROM ` + numbered +
		` WHERE t.aid = CAST(r.c0 AS pg_catalog.int4) RETURNING r.o) ` +
		`INSERT INTO acc (aid, bid, abalance, filler) SELECT ` + casts + ` FROM ` + numbered +
		` WHERE (SELECT count(*) FROM u) < cardinality($1::text[]) AND NOT EXISTS (SELECT 1 FROM u WHERE u.o = r.o)` + onConflict
	typedSQL := `UPDATE acc AS t SET bid = r.c1, abalance = r.c2, filler = CAST(r.c3 AS pg_catalog.bpchar) ` +
		`FROM unnest($1::int4[], $2::int4[], $3::int4[], $4::text[]) AS r(c0, c1, c2, c3) WHERE t.aid = r.c0`

	// One batch of rows: the values of each column as text.
	type rowsBatch struct {
		keys    []int
		cols    [4][]string
		literal [4]string // as text[] literals
		json    string    // the keys as a JSON array of arrays
	}
	literal := func(vals []string) string {
		var sb strings.Builder
		sb.WriteByte('{')
		for i, v := range vals {
			if i > 0 {
				sb.WriteByte(',')
			}
			sb.WriteString(`"` + v + `"`)
		}
		sb.WriteByte('}')
		return sb.String()
	}
	makeBatches := func(rng *rand.Rand) []rowsBatch {
		var out []rowsBatch
		for done := 0; done < nRows; done += batch {
			var b rowsBatch
			seen := make(map[int]bool)
			for len(b.keys) < min(batch, nRows-done) {
				k := 1 + rng.IntN(tableRows)
				if seen[k] {
					continue
				}
				seen[k] = true
				b.keys = append(b.keys, k)
				b.cols[0] = append(b.cols[0], strconv.Itoa(k))
				b.cols[1] = append(b.cols[1], strconv.Itoa(k/1000))
				b.cols[2] = append(b.cols[2], strconv.Itoa(rng.IntN(10000)-5000))
				b.cols[3] = append(b.cols[3], strings.Repeat(" ", 84))
			}
			var js []string
			for i := range b.cols {
				b.literal[i] = literal(b.cols[i])
			}
			for _, k := range b.keys {
				js = append(js, `["`+strconv.Itoa(k)+`"]`)
			}
			b.json = "[" + strings.Join(js, ",") + "]"
			out = append(out, b)
		}
		return out
	}

	type shape struct {
		name string
		args func(b *rowsBatch) (string, []any)
	}
	text := func(sql string) func(b *rowsBatch) (string, []any) {
		return func(b *rowsBatch) (string, []any) {
			return sql, []any{b.literal[0], b.literal[1], b.literal[2], b.literal[3]}
		}
	}
	binary := func(sql string) func(b *rowsBatch) (string, []any) {
		return func(b *rowsBatch) (string, []any) {
			return sql, []any{b.cols[0], b.cols[1], b.cols[2], b.cols[3]}
		}
	}
	ints := func(vals []string) []int32 {
		out := make([]int32, len(vals))
		for i, v := range vals {
			n, _ := strconv.Atoi(v)
			out[i] = int32(n)
		}
		return out
	}
	updates := []shape{
		{"upsert text[] literals (baseline)", text(upsertSQL)},
		{"upsert binary text[]", binary(upsertSQL)},
		{"update", text(updateSQL)},
		{"update binary text[]", binary(updateSQL)},
		{"cte, insert only if the update missed rows, binary", binary(filteredSQL)},
		{"cte by ordinality, insert only if missed, binary", binary(ordinalSQL)},
		{"update binary int4[] (lower bound)", func(b *rowsBatch) (string, []any) {
			return typedSQL, []any{ints(b.cols[0]), ints(b.cols[1]), ints(b.cols[2]), b.cols[3]}
		}},
	}
	deletes := []shape{
		{"delete using jsonb_array_elements (baseline)", func(b *rowsBatch) (string, []any) {
			return `DELETE FROM acc AS t USING jsonb_array_elements($1::jsonb) AS k(v) WHERE t.aid = CAST(k.v->>0 AS pg_catalog.int4)`, []any{b.json}
		}},
		{"delete using unnest text[]", func(b *rowsBatch) (string, []any) {
			return `DELETE FROM acc AS t USING unnest($1::text[]) AS k(c0) WHERE t.aid = CAST(k.c0 AS pg_catalog.int4)`, []any{b.literal[0]}
		}},
		{"delete using unnest binary text[]", func(b *rowsBatch) (string, []any) {
			return `DELETE FROM acc AS t USING unnest($1::text[]) AS k(c0) WHERE t.aid = CAST(k.c0 AS pg_catalog.int4)`, []any{b.cols[0]}
		}},
		{"delete = ANY", func(b *rowsBatch) (string, []any) {
			return `DELETE FROM acc WHERE aid = ANY (CAST($1::text[] AS pg_catalog.int4[]))`, []any{b.literal[0]}
		}},
	}

	exec := func(sql string, args ...any) {
		_, err := conn.Exec(ctx, sql, args...)
		require.NoError(t, err, "%s", sql)
	}
	// run applies batches with s in one transaction and returns the
	// backend's CPU for it.
	run := func(s shape, batches []rowsBatch) time.Duration {
		exec(`VACUUM acc`)
		before := cpu()
		exec(`BEGIN`)
		for i := range batches {
			sql, args := s.args(&batches[i])
			exec(sql, args...)
		}
		exec(`COMMIT`)
		return cpu() - before
	}
	explain := func(s shape, b *rowsBatch) {
		sql, args := s.args(b)
		rows, err := conn.Query(ctx, `EXPLAIN `+sql, args...)
		require.NoError(t, err)
		var plan []string
		for rows.Next() {
			var line string
			require.NoError(t, rows.Scan(&line))
			plan = append(plan, line)
		}
		require.NoError(t, rows.Err())
		t.Logf("%s:\n%s", s.name, strings.Join(plan, "\n"))
	}
	// report gives the median run of each shape, and its ratio to the
	// first shape's.
	report := func(kind string, shapes []shape, times [][]time.Duration) {
		median := func(d []time.Duration) time.Duration {
			d = slices.Clone(d)
			slices.Sort(d)
			return d[len(d)/2]
		}
		base := median(times[0])
		for i, s := range shapes {
			m := median(times[i])
			t.Logf("%s: %-55s median %6.2f µs/row  ratio %.2f", kind, s.name,
				float64(m.Microseconds())/float64(nRows), float64(m)/float64(base))
		}
	}

	rng := rand.New(rand.NewPCG(1, 2))
	// A first run warms the caches; it is not counted.
	for _, s := range updates {
		run(s, makeBatches(rng))
	}
	updTimes := make([][]time.Duration, len(updates))
	for r := 0; r < runs; r++ {
		batches := makeBatches(rng)
		if r == 0 {
			for _, s := range updates {
				explain(s, &batches[0])
			}
		}
		// A different order each run, so that no shape always meets the
		// table right after the same other one.
		for j := range updates {
			i := (j + r) % len(updates)
			d := run(updates[i], batches)
			updTimes[i] = append(updTimes[i], d)
			t.Logf("run %d %-55s %6.2f µs/row", r, updates[i].name, float64(d.Microseconds())/float64(nRows))
		}
	}
	report("update", updates, updTimes)

	delTimes := make([][]time.Duration, len(deletes))
	for r := 0; r < runs; r++ {
		batches := makeBatches(rng)
		if r == 0 {
			for _, s := range deletes {
				explain(s, &batches[0])
			}
		}
		for j := range deletes {
			i := (j + r) % len(deletes)
			d := run(deletes[i], batches)
			delTimes[i] = append(delTimes[i], d)
			t.Logf("run %d %-55s %6.2f µs/row", r, deletes[i].name, float64(d.Microseconds())/float64(nRows))
			for _, b := range batches { // put the rows back, not measured
				exec(upsertSQL, b.literal[0], b.literal[1], b.literal[2], b.literal[3])
			}
		}
	}
	report("delete", deletes, delTimes)
}
