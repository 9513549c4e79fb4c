package pgstore

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"testing"

	"github.com/logical-go/logical"
	"github.com/logical-go/logical/postgres/internal/pgtest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// applyBoth runs calls through Target.Apply (each statement on its own,
// as fan mode does) or through one transaction.
func applyBoth(ctx context.Context, t *testing.T, inTx bool, target *Target, table logical.Table, calls ...[]logical.Mutation) error {
	t.Helper()
	if inTx {
		return applyTx(ctx, t, target, table, calls...)
	}
	for _, muts := range calls {
		if err := target.Apply(ctx, table, muts); err != nil {
			return err
		}
	}
	return nil
}

// update is an update of key k (no MetaInsert, no Before) with data.
func update(k int, data map[string]any) logical.Mutation {
	b, _ := json.Marshal(data)
	return logical.Mutation{Key: json.RawMessage(fmt.Sprintf(`["%d"]`, k)), Data: b}
}

// TestTargetUpdateMissingRows checks that updates are upserts: in one
// statement with rows that are there, an update whose row the target
// lacks (a replay across a later delete, a target that lost the row)
// inserts it, with the columns the update lacks at their defaults, while
// the rows that are there keep the columns the update lacks and their
// GENERATED ALWAYS identity. Rows of only key columns end present too.
// A form that only updates (an UPDATE joined to the rows, cheaper for the
// server) would leave keys 4, 5, 6 and 7 absent.
func TestTargetUpdateMissingRows(t *testing.T) {
	for _, inTx := range []bool{false, true} {
		t.Run(fmt.Sprintf("in a transaction %v", inTx), func(t *testing.T) {
			db := pgtest.NewDB(t, "updmissing")
			ctx := context.Background()
			db.Exec(t,
				`CREATE TABLE u (id int PRIMARY KEY, a text, b text DEFAULT 'dflt', n int GENERATED ALWAYS AS IDENTITY)`,
				`INSERT INTO u (id, a, b, n) OVERRIDING SYSTEM VALUE SELECT g, 'old', 'keep', 100 + g FROM generate_series(1, 3) g`,
				`CREATE TABLE k (id int PRIMARY KEY)`,
				`INSERT INTO k VALUES (1)`)
			target := NewTarget(db.Pool)
			table := logical.Table{Schema: "public", Name: "u"}
			row := func(k int) map[string]any {
				return map[string]any{"id": strconv.Itoa(k), "a": weird(k), "n": strconv.Itoa(200 + k)}
			}
			mixed := []logical.Mutation{update(2, row(2)), update(4, row(4)), update(3, row(3)), update(5, row(5))}
			alone := []logical.Mutation{update(6, row(6))} // a call of one mutation, no segment
			// Values other than strings go as one JSON array.
			numbers := []logical.Mutation{update(7, map[string]any{"id": 7, "a": "json", "n": 207}),
				update(1, map[string]any{"id": 1, "a": "old", "n": 1})}
			require.NoError(t, applyBoth(ctx, t, inTx, target, table, mixed, alone, numbers))
			require.NoError(t, applyBoth(ctx, t, inTx, target, logical.Table{Schema: "public", Name: "k"},
				[]logical.Mutation{update(1, map[string]any{"id": "1"}), update(2, map[string]any{"id": "2"})}))

			want := []string{
				"1 old keep 101",
				fmt.Sprintf("2 %q keep 102", weird(2)),
				fmt.Sprintf("3 %q keep 103", weird(3)),
				fmt.Sprintf("4 %q dflt 204", weird(4)),
				fmt.Sprintf("5 %q dflt 205", weird(5)),
				fmt.Sprintf("6 %q dflt 206", weird(6)),
				"7 \"json\" dflt 207",
			}
			rows, err := db.Pool.Query(ctx, `SELECT id, a, b, n FROM u ORDER BY id`)
			require.NoError(t, err)
			var got []string
			for rows.Next() {
				var id, n int
				var a, b string
				require.NoError(t, rows.Scan(&id, &a, &b, &n))
				if id == 1 {
					got = append(got, fmt.Sprintf("%d %s %s %d", id, a, b, n))
				} else {
					got = append(got, fmt.Sprintf("%d %q %s %d", id, a, b, n))
				}
			}
			require.NoError(t, rows.Err())
			assert.Equal(t, want, got)
			var keys []int
			require.NoError(t, db.Pool.QueryRow(ctx, `SELECT array_agg(id ORDER BY id) FROM k`).Scan(&keys))
			assert.Equal(t, []int{1, 2}, keys)
		})
	}
}

// TestTargetDeleteKeys checks deletes by keys of several columns whose
// values need escaping (text arrays) and by keys with JSON numbers (the
// JSON array): exactly the rows of the keys go, and a delete of a key
// that is not there is no error.
func TestTargetDeleteKeys(t *testing.T) {
	for _, inTx := range []bool{false, true} {
		t.Run(fmt.Sprintf("in a transaction %v", inTx), func(t *testing.T) {
			db := pgtest.NewDB(t, "delkeys")
			ctx := context.Background()
			db.Exec(t, `CREATE TABLE d (a text, b int, v text, PRIMARY KEY (a, b))`)
			target := NewTarget(db.Pool)
			table := logical.Table{Schema: "public", Name: "d"}
			var ins []logical.Mutation
			for k := range 10 {
				data, _ := json.Marshal(map[string]any{"a": weird(k), "b": strconv.Itoa(k), "v": "x"})
				key, _ := json.Marshal([]string{weird(k), strconv.Itoa(k)})
				ins = append(ins, logical.Mutation{Key: key, Data: data, Meta: map[string]any{MetaInsert: true}})
			}
			require.NoError(t, applyBoth(ctx, t, inTx, target, table, ins))
			var strs, nums []logical.Mutation
			for k := 0; k < 10; k += 2 {
				key, _ := json.Marshal([]string{weird(k), strconv.Itoa(k)})
				strs = append(strs, logical.Mutation{Key: key})
			}
			strs = append(strs, logical.Mutation{Key: json.RawMessage(`["absent","1"]`)})
			for _, k := range []int{1, 3} {
				key, _ := json.Marshal([]any{weird(k), k})
				nums = append(nums, logical.Mutation{Key: key})
			}
			require.NoError(t, applyBoth(ctx, t, inTx, target, table, strs, nums))
			var left []int
			require.NoError(t, db.Pool.QueryRow(ctx, `SELECT array_agg(b ORDER BY b) FROM d`).Scan(&left))
			assert.Equal(t, []int{5, 7, 9}, left)
		})
	}
}

// TestTargetUpdateSameRowTwice checks that two keys of one call that are
// different text but the same key value at the target ("1" and "01" of
// an int) fail the call, as INSERT ... ON CONFLICT DO UPDATE does; an
// UPDATE joined to the rows would write the row once and drop the other
// silently.
func TestTargetUpdateSameRowTwice(t *testing.T) {
	db := pgtest.NewDB(t, "updtwice")
	ctx := context.Background()
	db.Exec(t, `CREATE TABLE u (id int PRIMARY KEY, a text)`, `INSERT INTO u VALUES (1, 'old')`)
	target := NewTarget(db.Pool)
	table := logical.Table{Schema: "public", Name: "u"}
	muts := []logical.Mutation{
		{Key: json.RawMessage(`["01"]`), Data: json.RawMessage(`{"id":"01","a":"first"}`)},
		{Key: json.RawMessage(`["1"]`), Data: json.RawMessage(`{"id":"1","a":"second"}`)},
	}
	err := target.Apply(ctx, table, muts)
	require.Error(t, err)
	assert.ErrorContains(t, err, "cannot affect row a second time")
	assert.ErrorContains(t, err, "upserting 2 rows into public.u")
}
