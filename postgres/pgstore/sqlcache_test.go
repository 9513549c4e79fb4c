package pgstore

import (
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/logical-go/logical"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// cacheInfo is a table of ten columns (a bitmap of two bytes) whose key
// is c0 and c3, with c5 an identity column GENERATED ALWAYS and c7 a
// numeric with a scale (valueExpr's check).
func cacheInfo() *tableInfo {
	info := &tableInfo{table: logical.Table{Schema: "s", Name: "t"}, ident: `s."t"`, byName: map[string]int{}}
	for i := range 10 {
		c := column{name: "c" + string(rune('0'+i)), typ: "text", cast: "pg_catalog.text"}
		switch i {
		case 0, 3:
			c.pk = true
			info.pk = append(info.pk, i)
		case 5:
			c.always = true
		case 7:
			c.typ, c.cast, c.check = "numeric(5,2)", "pg_catalog.numeric", true
		}
		info.byName[c.name] = i
		info.cols = append(info.cols, c)
	}
	return info
}

// cacheSig is the applyRows signature of the columns cols.
func cacheSig(cols []int, fresh bool) string {
	sig := make([]byte, 3)
	for _, c := range cols {
		sig[c/8] |= 1 << (c % 8)
	}
	if fresh {
		sig[2] = 1
	}
	return string(sig)
}

// TestUpsertSQLText pins the statements of one set of columns, so that
// making them once per table writes what was made per statement before.
func TestUpsertSQLText(t *testing.T) {
	info := cacheInfo()
	p, err := info.upsertSQL(cacheSig([]int{0, 1, 3, 5, 7}, false))
	require.NoError(t, err)
	assert.Equal(t, []int{0, 1, 3, 5, 7}, p.cols)
	check := `CASE WHEN CAST(%s AS numeric(5,2)) = CAST(%s AS pg_catalog.numeric) THEN CAST(%s AS numeric(5,2)) ` +
		`ELSE CAST('pgstore: inexact value ' || %s AS pg_catalog.numeric) END`
	num := func(src string) string { return strings.ReplaceAll(check, "%s", src) }
	head := `INSERT INTO s."t" ("c0", "c1", "c3", "c5", "c7") OVERRIDING SYSTEM VALUE SELECT `
	onConflict := ` ON CONFLICT ("c0", "c3") DO UPDATE SET "c1" = excluded."c1", "c7" = excluded."c7"`
	arrays := head + `CAST(r.c0 AS pg_catalog.text), CAST(r.c1 AS pg_catalog.text), CAST(r.c2 AS pg_catalog.text), ` +
		`CAST(r.c3 AS pg_catalog.text), ` + num("r.c4") +
		` FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS r(c0, c1, c2, c3, c4)`
	asJSON := head + `CAST((r.v->>0) AS pg_catalog.text), CAST((r.v->>1) AS pg_catalog.text), CAST((r.v->>2) AS pg_catalog.text), ` +
		`CAST((r.v->>3) AS pg_catalog.text), ` + num("(r.v->>4)") + ` FROM jsonb_array_elements($1::jsonb) AS r(v)`
	assert.Equal(t, arrays, p.arrays.insert)
	assert.Equal(t, arrays+onConflict, p.arrays.upsert)
	assert.Equal(t, asJSON, p.json.insert)
	assert.Equal(t, asJSON+onConflict, p.json.upsert)

	p, err = info.upsertSQL(cacheSig([]int{0, 3}, true))
	require.NoError(t, err)
	assert.Equal(t, ` ON CONFLICT ("c0", "c3") DO NOTHING`, strings.TrimPrefix(p.arrays.upsert, p.arrays.insert), "no column to update")

	assert.Equal(t, `DELETE FROM s."t" AS t USING unnest($1::text[], $2::text[]) AS k(c0, c1) `+
		`WHERE t."c0" = CAST(k.c0 AS pg_catalog.text) AND t."c3" = CAST(k.c1 AS pg_catalog.text)`, info.deleteSQL(true))
	assert.Equal(t, `DELETE FROM s."t" AS t USING jsonb_array_elements($1::jsonb) AS k(v) `+
		`WHERE t."c0" = CAST(k.v->>0 AS pg_catalog.text) AND t."c3" = CAST(k.v->>1 AS pg_catalog.text)`, info.deleteSQL(false))

	_, err = info.upsertSQL(cacheSig([]int{0, 1}, false))
	assert.ErrorContains(t, err, `a row lacks primary-key column "c3"`)
	_, err = info.upsertSQL(cacheSig(nil, false))
	assert.ErrorContains(t, err, "a row has no columns")
}

// TestUpsertSQLCache asks the cache for random sets of columns, again and
// again and from several goroutines (go test -race), and checks each
// answer against statements made afresh for that set: a cache keyed by
// less than the whole set, or one that mixes up sets, fails it.
func TestUpsertSQLCache(t *testing.T) {
	info, fresh := cacheInfo(), cacheInfo()
	rng := rand.New(rand.NewPCG(1, 2))
	var sets [][]int
	for range 40 {
		set := []int{0, 3}
		for c := range 10 {
			if c != 0 && c != 3 && rng.IntN(2) == 0 {
				set = append(set, c)
			}
		}
		sets = append(sets, sortedInts(set))
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			for range 400 {
				set := sets[rng.IntN(len(sets))]
				got, err := info.upsertSQL(cacheSig(set, rng.IntN(2) == 0))
				if !assert.NoError(t, err) {
					return
				}
				want, err := makeUpsertSQL(fresh, cacheSig(set, false)[:2])
				if !assert.NoError(t, err) {
					return
				}
				if !assert.Equal(t, want, got, "columns %v", set) {
					return
				}
				assert.Equal(t, info.deleteSQL(g%2 == 0), fresh.deleteSQL(g%2 == 0))
			}
		}()
	}
	wg.Wait()
	info.sqlMu.Lock()
	defer info.sqlMu.Unlock()
	assert.LessOrEqual(t, len(info.upserts), len(sets), "one entry per set of columns, fresh or not")
}

func sortedInts(s []int) []int {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
	return s
}

// TestUpsertSQLCacheBound asks for more sets of columns than the cache
// keeps: it stops growing at maxUpsertSQL and the statements of the sets
// beyond are still right.
func TestUpsertSQLCacheBound(t *testing.T) {
	info, fresh := cacheInfo(), cacheInfo()
	// The key columns and every subset of the other eight: 256 sets.
	for bits := range 256 {
		set := []int{0, 3}
		for n, c := range []int{1, 2, 4, 5, 6, 7, 8, 9} {
			if bits&(1<<n) != 0 {
				set = append(set, c)
			}
		}
		set = sortedInts(set)
		for range 2 {
			got, err := info.upsertSQL(cacheSig(set, false))
			require.NoError(t, err)
			want, err := makeUpsertSQL(fresh, cacheSig(set, false)[:2])
			require.NoError(t, err)
			require.Equal(t, want, got, "columns %v", set)
		}
	}
	info.sqlMu.Lock()
	defer info.sqlMu.Unlock()
	assert.Len(t, info.upserts, maxUpsertSQL)
}
