package main

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// typeColumns is one column of each common type, with values at the edges
// of what the type holds; typeRows fills them (a row of extremes, a row of
// other values, a row of NULLs).
const typeColumns = `id int PRIMARY KEY,
	num numeric, f8 float8, f4 float4, i8 bigint, i2 smallint,
	ts timestamp, tz timestamptz, d date, tm time, ttz timetz, iv interval,
	arr int[], arr2 text[], ch char(4), vc varchar(8), txt text,
	mood mood, pos positive, pair pair, ir int4range, tr tstzrange, nr nummultirange,
	raw bytea, js json, jb jsonb, x xml, m money, b bit(5), vb varbit,
	u uuid, ip inet, net cidr, mac macaddr, pt point, tsv tsvector, bo bool`

var typeRows = []string{
	`INSERT INTO types_all VALUES (1,
		'-99999999999999999999999999999999999999.00000000000000000000000000001', 'Infinity', '-0', 9223372036854775807, -32768,
		'4713-01-01 00:00:00 BC', 'infinity', '-infinity', '24:00:00', '23:59:59.999999+15:59', '-178000000 years 1 mon -2 days 03:04:05.678901',
		'{{1,NULL},{3,4}}', '{"a,b","c\"d",NULL,"NULL","","\\\\"}', 'ab  ', 'ünï✓', E'tab\tnew\nline \\ "quote" ''single''',
		'sad', 1, ROW('x "y"', NULL), '[1,5)', '["2024-01-01 00:00+00",infinity)', '{[1.5,2],[3,)}',
		(SELECT decode(string_agg(md5(g::text), ''), 'hex') FROM generate_series(1, 200000) g),
		'{"a": "\u0000", "b" : [1, 2.50]}', '{"b": [1, 2.50, null], "a": "\u00e9"}', '<a b="1">x &amp; y</a>', '-92233720368547758.08',
		'10101', '', '00000000-0000-0000-0000-000000000000', '::ffff:1.2.3.4/128', '10.0.0.0/8', '08:00:2b:01:02:03',
		'(1e-300,-1e300)', 'a:1A fat:2B cat', false)`,
	`INSERT INTO types_all VALUES (2,
		'NaN', '-Infinity', '3.4028235e+38', -9223372036854775808, 32767,
		'294276-12-31 23:59:59.999999', '4713-01-01 00:00:00+00 BC', 'infinity', '00:00:00', '00:00:00-15:59', '0',
		'{}', '{{"x"},{NULL}}', '', '', '',
		'happy', 2147483647, ROW(NULL, 0), 'empty', '(,)', '{}',
		'\x00ff', '[]', 'null', '<x/>', '0', '00000', '1', 'ffffffff-ffff-ffff-ffff-ffffffffffff', '1.2.3.4', '::/0', 'ff:ff:ff:ff:ff:ff',
		'(0,-0)', '', true)`,
	`INSERT INTO types_all (id) VALUES (3)`,
	`UPDATE types_all SET num = '1e-130', f8 = '5e-324' WHERE id = 2`,
	`UPDATE types_all SET id = 4 WHERE id = 1`, // moves the megabytes of bytea, unchanged
}

// TestTypeFidelity replicates a column of each common type into a target
// of the same types and compares the text form of every row.
func TestTypeFidelity(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			r := newReplication(t,
				`CREATE TYPE mood AS ENUM ('sad', 'happy')`,
				`CREATE DOMAIN positive AS int CHECK (VALUE > 0)`,
				`CREATE TYPE pair AS (a text, b int)`,
				`CREATE TABLE types_all (`+typeColumns+`)`)
			stop := started(t, r, mode.flags...)
			r.src.Exec(t, typeRows...)
			got := waitEqual(t, r, 2*time.Minute, sums("types_all"))
			assert.Contains(t, got, "types_all 3 ")
			for _, col := range []string{"num", "f8", "ts", "tz", "iv", "arr2", "js", "x", "m", "b", "tsv", "pair"} {
				sql := `SELECT string_agg(coalesce(` + col + `::text, '<null>'), ' | ' ORDER BY id) FROM types_all`
				assert.Equal(t, query(t, r.src, sql), query(t, r.dst, sql), col)
			}
			assert.Equal(t, "3200000", query(t, r.dst, `SELECT length(raw)::text FROM types_all WHERE id = 4`))
			require.Equal(t, 0, stop())
		})
	}
}

// TestSnapshotTypes copies a column of each common type: a table of
// built-in types only goes in COPY binary format, one with a user-defined
// type (enum, domain, composite) and one whose target column has another
// type go in text; every row must arrive as it is at the source.
func TestSnapshotTypes(t *testing.T) {
	// The columns of typeColumns of built-in types.
	var builtin, names []string
	for _, c := range strings.Split(strings.ReplaceAll(typeColumns, "\n", ""), ",") {
		c = strings.TrimSpace(c)
		if name, _, _ := strings.Cut(c, " "); name != "mood" && name != "pos" && name != "pair" {
			builtin, names = append(builtin, c), append(names, name)
		}
	}
	r := newReplication(t,
		`CREATE TYPE mood AS ENUM ('sad', 'happy')`,
		`CREATE DOMAIN positive AS int CHECK (VALUE > 0)`,
		`CREATE TYPE pair AS (a text, b int)`,
		`CREATE TABLE types_all (`+typeColumns+`)`,
		`CREATE TABLE types_builtin (`+strings.Join(builtin, ", ")+`)`)
	r.src.Exec(t, `CREATE TABLE types_wider (id int PRIMARY KEY, n int, t varchar(10))`)
	r.dst.Exec(t, `CREATE TABLE types_wider (id int PRIMARY KEY, n bigint, t text)`)
	r.src.Exec(t, typeRows...)
	r.src.Exec(t, `INSERT INTO types_builtin SELECT `+strings.Join(names, ", ")+` FROM types_all`,
		`INSERT INTO types_wider VALUES (1, 2147483647, 'x'), (2, NULL, ''), (3, -2147483648, NULL)`)
	stop, log := runLogged(t, r.args("--snapshot", "--snapshotPoll", "500ms"))
	tables := []string{"types_all", "types_builtin", "types_wider"}
	got := waitEqual(t, r, 2*time.Minute, sums(tables...))
	assert.Contains(t, got, "types_builtin 3 ")
	for _, table := range tables {
		format := "text"
		if table == "types_builtin" {
			format = "binary"
		}
		assert.Regexp(t, `chunk copied.* format=`+format+` .*table=public\.`+table+` `, log.String(), table)
	}
	require.Equal(t, 0, stop())
}
