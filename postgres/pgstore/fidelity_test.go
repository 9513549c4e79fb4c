package pgstore_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/logical-go/logical"
	"github.com/logical-go/logical/postgres/internal/pgtest"
	"github.com/logical-go/logical/postgres/pgstore"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// applyModes are the two ways a Target writes: statement by statement
// (fan mode) and in a transaction (serial mode).
var applyModes = []struct {
	name  string
	apply func(ctx context.Context, target *pgstore.Target, table logical.Table, muts []logical.Mutation) error
}{
	{"apply", func(ctx context.Context, target *pgstore.Target, table logical.Table, muts []logical.Mutation) error {
		return target.Apply(ctx, table, muts)
	}},
	{"transaction", func(ctx context.Context, target *pgstore.Target, table logical.Table, muts []logical.Mutation) error {
		tx, err := target.Begin(ctx)
		if err != nil {
			return err
		}
		if err := tx.Apply(ctx, table, muts); err != nil {
			_ = tx.Rollback(ctx)
			return err
		}
		return tx.Commit(ctx)
	}},
}

// row returns an upsert of key id with the JSON string value v (or null)
// in column col.
func row(id int, col string, v *string) logical.Mutation {
	data := map[string]any{"id": fmt.Sprint(id), col: v}
	raw, _ := json.Marshal(data)
	key, _ := json.Marshal([]string{fmt.Sprint(id)})
	return logical.Mutation{Key: key, Data: raw}
}

// TestTargetLossless writes values into columns that can hold them
// exactly and into columns that cannot: the first arrive unchanged, the
// second are an error naming the table, the column and the value, never a
// truncated or rounded value.
func TestTargetLossless(t *testing.T) {
	db := pgtest.NewDB(t, "lossless")
	ctx := context.Background()
	db.Exec(t,
		`CREATE DOMAIN short AS varchar(2)`,
		`CREATE DOMAIN money2 AS numeric(6, 2)`,
		`CREATE TABLE narrow (id int PRIMARY KEY, v varchar(2), c char(3), b bit(3), vb varbit(2),
			n numeric(10, 2), ts timestamp(0), tz timestamptz(1), tm time(0), iv interval year to month,
			ivp interval(0), a numeric(5, 1)[], va varchar(2)[], d short, dn money2, i int)`,
	)
	table := logical.Table{Schema: "public", Name: "narrow"}
	s := func(v string) *string { return &v }
	tcs := []struct {
		col         string
		fits, lossy string
		want        string // the text form of fits at the target, if not fits
	}{
		{col: "v", fits: "ab", lossy: "abcdef"},
		{col: "c", fits: "ab ", lossy: "abcd", want: "ab"}, // char to text drops trailing spaces
		{col: "b", fits: "101", lossy: "10101"},
		{col: "vb", fits: "1", lossy: "101"},
		{col: "n", fits: "1.20", lossy: "1.234"},
		{col: "ts", fits: "2024-01-02 03:04:05", lossy: "2024-01-02 03:04:05.5"},
		{col: "tz", fits: "2024-01-02 03:04:05.1+00", lossy: "2024-01-02 03:04:05.12+00"},
		{col: "tm", fits: "03:04:05", lossy: "03:04:05.000001"},
		{col: "iv", fits: "1 year 2 mons", lossy: "1 year 2 mons 3 days"},
		{col: "ivp", fits: "00:00:01", lossy: "00:00:01.5"},
		{col: "a", fits: "{1.5,NULL}", lossy: "{1.25}"},
		{col: "va", fits: "{ab,NULL}", lossy: "{abc}"},
		{col: "d", fits: "ab", lossy: "abc"},
		{col: "dn", fits: "1.25", lossy: "1.255"},
		{col: "i", fits: "2147483647", lossy: "9000000000"},
	}
	target := pgstore.NewTarget(db.Pool)
	id := 0
	for _, mode := range applyModes {
		for _, tc := range tcs {
			id += 2
			id := id
			t.Run(mode.name+"/"+tc.col, func(t *testing.T) {
				t.Parallel()
				require.NoError(t, mode.apply(ctx, target, table, []logical.Mutation{row(id, tc.col, s(tc.fits))}))
				want := tc.fits
				if tc.want != "" {
					want = tc.want
				}
				var got string
				require.NoError(t, db.Pool.QueryRow(ctx, fmt.Sprintf(`SELECT %s::text FROM narrow WHERE id = $1`, tc.col), id).Scan(&got))
				assert.Equal(t, want, got)

				err := mode.apply(ctx, target, table, []logical.Mutation{row(id+1, tc.col, s(tc.lossy))})
				require.Error(t, err, "%s into %s", tc.lossy, tc.col)
				assert.ErrorContains(t, err, "public.narrow")
				assert.ErrorContains(t, err, fmt.Sprintf("column %q", tc.col))
				if tc.col != "i" && tc.col != "b" && tc.col != "vb" {
					assert.ErrorContains(t, err, fmt.Sprintf("%q", tc.lossy))
				}
				var n int
				require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM narrow WHERE id = $1`, id+1).Scan(&n))
				assert.Zero(t, n, "nothing was written")
			})
		}
	}
}

// TestTargetIdentityAlways writes the source's values into identity
// columns GENERATED ALWAYS, as pg_dump --schema-only creates them.
func TestTargetIdentityAlways(t *testing.T) {
	db := pgtest.NewDB(t, "identity")
	ctx := context.Background()
	db.Exec(t, `CREATE TABLE ident (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
		seq bigint GENERATED ALWAYS AS IDENTITY, v text, g text GENERATED ALWAYS AS (upper(v)) STORED)`)
	table := logical.Table{Schema: "public", Name: "ident"}
	target := pgstore.NewTarget(db.Pool)
	for n, mode := range applyModes {
		id := fmt.Sprint(10 + n)
		ins := logical.Mutation{Key: json.RawMessage(`["` + id + `"]`), Meta: map[string]any{pgstore.MetaInsert: true},
			Data: json.RawMessage(`{"id":"` + id + `","seq":"7","v":"a"}`)}
		upd := logical.Mutation{Key: json.RawMessage(`["` + id + `"]`), Data: json.RawMessage(`{"id":"` + id + `","seq":"7","v":"b"}`)}
		require.NoError(t, mode.apply(ctx, target, table, []logical.Mutation{ins}), mode.name)
		require.NoError(t, mode.apply(ctx, target, table, []logical.Mutation{upd}), mode.name)
		var got string
		require.NoError(t, db.Pool.QueryRow(ctx, `SELECT ident::text FROM ident WHERE id = $1`, 10+n).Scan(&got))
		assert.Equal(t, "("+id+",7,b,B)", got, mode.name)
	}
}

// TestTargetCatalogChange changes a target column's type while the
// Target has it cached: the write that fails on the old type makes the
// Target read the catalog again, so the next attempt (the loop's retry)
// succeeds.
func TestTargetCatalogChange(t *testing.T) {
	db := pgtest.NewDB(t, "catalog")
	ctx := context.Background()
	target := pgstore.NewTarget(db.Pool)
	big := "9000000000"
	for _, mode := range applyModes {
		t.Run(mode.name, func(t *testing.T) {
			name := "grow_" + mode.name
			db.Exec(t, `CREATE TABLE `+name+` (id int PRIMARY KEY, n int)`)
			table := logical.Table{Schema: "public", Name: name}
			small := "1"
			require.NoError(t, mode.apply(ctx, target, table, []logical.Mutation{row(1, "n", &small)}))
			db.Exec(t, `ALTER TABLE `+name+` ALTER COLUMN n TYPE bigint`)
			err := mode.apply(ctx, target, table, []logical.Mutation{row(2, "n", &big)})
			require.Error(t, err, "the cached type is integer")
			assert.ErrorContains(t, err, `column "n"`)
			require.NoError(t, mode.apply(ctx, target, table, []logical.Mutation{row(2, "n", &big)}), "the retry")
			var got string
			require.NoError(t, db.Pool.QueryRow(ctx, `SELECT n::text FROM `+name+` WHERE id = 2`).Scan(&got))
			assert.Equal(t, big, got)
		})
	}
}

// TestTargetKeyless updates and deletes single rows of a table without a
// key, found by their old values, duplicates included.
func TestTargetKeyless(t *testing.T) {
	db := pgtest.NewDB(t, "keyless")
	ctx := context.Background()
	target := pgstore.NewTarget(db.Pool)
	for _, mode := range applyModes {
		t.Run(mode.name, func(t *testing.T) {
			name := "keyless_" + mode.name
			db.Exec(t, `CREATE TABLE `+name+` (a int, b text, j json, p point)`)
			table := logical.Table{Schema: "public", Name: name}
			ins := map[string]any{pgstore.MetaInsert: true}
			m := func(before, data string, meta map[string]any) logical.Mutation {
				mut := logical.Mutation{Key: json.RawMessage(`["x"]`), Meta: meta}
				if before != "" {
					mut.Before = json.RawMessage(before)
				}
				if data != "" {
					mut.Data = json.RawMessage(data)
				}
				return mut
			}
			one := `{"a":"1","b":"x","j":"{\"k\": 1}","p":"(1,2)"}`
			require.NoError(t, mode.apply(ctx, target, table, []logical.Mutation{
				m("", one, ins), m("", one, ins), m("", `{"a":"2","b":null,"j":null,"p":null}`, ins),
				m(one, `{"a":"1","b":"one of two","j":"{\"k\": 1}","p":"(1,2)"}`, nil),
				m(`{"a":"2","b":null,"j":null,"p":null}`, `{"a":"2","b":"was null","j":null,"p":null}`, nil),
			}))
			var got string
			require.NoError(t, db.Pool.QueryRow(ctx, `SELECT string_agg(t::text, ' ' ORDER BY t::text) FROM `+name+` t`).Scan(&got))
			assert.Equal(t, `(1,"one of two","{""k"": 1}","(1,2)") (1,x,"{""k"": 1}","(1,2)") (2,"was null",,)`, got)

			require.NoError(t, mode.apply(ctx, target, table, []logical.Mutation{m(one, "", nil)}))
			require.NoError(t, db.Pool.QueryRow(ctx, `SELECT string_agg(t::text, ' ' ORDER BY t::text) FROM `+name+` t`).Scan(&got))
			assert.Equal(t, `(1,"one of two","{""k"": 1}","(1,2)") (2,"was null",,)`, got)

			err := mode.apply(ctx, target, table, []logical.Mutation{m("", `{"a":"5"}`, nil)})
			assert.ErrorContains(t, err, "cannot apply an update to public."+name)
		})
	}
}

// TestTargetWidenedAfterError widens a column after a value was refused
// (each kind of refusal): the next attempt sees the new type.
func TestTargetWidenedAfterError(t *testing.T) {
	db := pgtest.NewDB(t, "widened")
	ctx := context.Background()
	target := pgstore.NewTarget(db.Pool)
	for _, tc := range []struct{ name, narrow, wide, value string }{
		{"too long", "varchar(2)", "text", "abc"},
		{"rounded numeric", "numeric(4,1)", "numeric", "1.25"},
		{"rounded timestamp", "timestamp(0)", "timestamp", "2024-01-02 03:04:05.5"},
		{"out of range", "int", "bigint", "9000000000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := strings.ReplaceAll(tc.name, " ", "_")
			db.Exec(t, `CREATE TABLE `+name+` (id int PRIMARY KEY, c `+tc.narrow+`)`)
			table := logical.Table{Schema: "public", Name: name}
			require.Error(t, target.Apply(ctx, table, []logical.Mutation{row(1, "c", &tc.value)}))
			db.Exec(t, `ALTER TABLE `+name+` ALTER COLUMN c TYPE `+tc.wide)
			require.NoError(t, target.Apply(ctx, table, []logical.Mutation{row(1, "c", &tc.value)}))
		})
	}
}
