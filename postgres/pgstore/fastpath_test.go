package pgstore

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pkg/errors"

	"github.com/logical-go/logical"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDecodeFlatRow checks the fast path of decodeRow against
// encoding/json: whatever it accepts, it decodes the same way, and it
// leaves everything it does not handle to encoding/json.
func TestDecodeFlatRow(t *testing.T) {
	tcs := []struct {
		name string
		in   string
		fast bool // the fast path takes it
	}{
		{"pgoutput row", `{"aid":"1","bid":"1","abalance":"0","filler":"  "}`, true},
		{"null value", `{"a":null,"b":"x"}`, true},
		{"empty object", `{}`, true},
		{"whitespace", " { \"a\" : \"1\" ,\n\t\"b\":null } ", true},
		{"escapes in a value", `{"a":"it's \"quoted\" \\ \n \u00e9 \/"}`, true},
		{"unicode value", `{"a":"ünïcode ✓"}`, true},
		{"duplicate key, last wins", `{"a":"1","a":"2"}`, true},
		{"escaped key", `{"\u0061":"1"}`, false},
		{"number value", `{"a":1}`, false},
		{"bool value", `{"a":true}`, false},
		{"nested object", `{"a":{"b":"c"}}`, false},
		{"array value", `{"a":["x"]}`, false},
		{"array", `["a"]`, false},
		{"not json", `nope`, false},
		{"empty", ``, false},
		{"unterminated string", `{"a":"x}`, false},
		{"control character", "{\"a\":\"x\x01\"}", false},
		{"bad escape", `{"a":"\x"}`, false},
		{"short unicode escape", `{"a":"\u00"}`, false},
		{"missing colon", `{"a" "x"}`, false},
		{"trailing comma", `{"a":"x",}`, false},
		{"trailing garbage", `{"a":"x"} x`, false},
		{"invalid utf-8", "{\"a\":\"\xff\"}", false},
		{"truncated null", `{"a":nul}`, false},
	}
	for _, tc := range tcs {
		t.Run(tc.name, func(t *testing.T) {
			var want map[string]json.RawMessage
			wantErr := json.Unmarshal([]byte(tc.in), &want)
			var names []string
			for name := range want {
				names = append(names, name)
			}
			// With the columns' member prefixes (readInfo's) and without.
			for _, members := range []bool{true, false} {
				info := flatInfo(names, members)
				r := make(row, len(info.cols))
				unknown, ok := decodeFlatRow(info, []byte(tc.in), r)
				assert.Equal(t, tc.fast, ok, "members %v", members)
				if ok {
					require.NoError(t, wantErr, "the fast path accepted invalid JSON")
					assert.Nil(t, unknown)
					for i, c := range info.cols {
						assert.Equal(t, want[c.name], r[i], "column %s", c.name)
					}
				}
				// decodeRow agrees with encoding/json either way.
				r, err := decodeRow(info, json.RawMessage(tc.in))
				if wantErr != nil {
					assert.ErrorContains(t, err, "s.t")
					continue
				}
				require.NoError(t, err)
				require.Len(t, r, len(info.cols))
				for i, c := range info.cols {
					assert.Equal(t, want[c.name], r[i], "column %s", c.name)
				}
			}
		})
	}
}

// flatInfo is a table of text columns names, with the columns' member
// prefixes if members is set (as readInfo makes them).
func flatInfo(names []string, members bool) *tableInfo {
	info := &tableInfo{table: logical.Table{Schema: "s", Name: "t"}, byName: map[string]int{}}
	for _, name := range names {
		c := column{name: name, typ: "text"}
		if members {
			c.member = memberPrefix(name)
		}
		info.byName[name] = len(info.cols)
		info.cols = append(info.cols, c)
	}
	return info
}

// TestMemberPrefix checks which column names decodeFlatRow may match by
// their bytes: exactly those that encoding/json writes unescaped.
func TestMemberPrefix(t *testing.T) {
	for _, name := range []string{"aid", "", "with space", "ünïcode", "日本", "q\"uote", "back\\slash", "tab\t", "\x7f", "\xff", "a\u2028b", "<&>"} {
		got := memberPrefix(name)
		plain := "\"" + name + "\"" // name as a JSON string without escapes
		var asIs string
		valid := json.Unmarshal([]byte(plain), &asIs) == nil && asIs == name
		if valid {
			assert.Equal(t, plain+":", got, "%q", name)
		} else {
			assert.Empty(t, got, "%q", name)
		}
	}
}

func TestDecodeRowUnknownColumn(t *testing.T) {
	info := &tableInfo{table: logical.Table{Schema: "s", Name: "t"},
		cols: []column{{name: "a", typ: "text"}}, byName: map[string]int{"a": 0}}
	for _, in := range []string{`{"a":"1","zz":"2"}`, `{"a":1,"zz":2}`} {
		_, err := decodeRow(info, json.RawMessage(in))
		var unknown unknownColumnError
		require.ErrorAs(t, err, &unknown, in)
		assert.Equal(t, "zz", unknown.name, in)
	}
	r, err := decodeRow(info, json.RawMessage(`{}`))
	require.NoError(t, err)
	assert.Equal(t, row{nil}, r, "an absent column is nil")
}

func TestIsCatalogRace(t *testing.T) {
	for code, want := range map[string]bool{
		"23505": true, // unique_violation in a catalog index
		"42P07": true, // duplicate_table
		"42P06": true, // duplicate_schema
		"42710": true, // duplicate_object: the table's row type
		"42501": false,
	} {
		assert.Equal(t, want, isCatalogRace(errors.Wrap(&pgconn.PgError{Code: code}, "wrapped")), code)
	}
	assert.False(t, isCatalogRace(errors.New("not a server error")))
}

// TestSplitFlatArray checks the fast path of reading a key against
// encoding/json: what it accepts it splits the same way.
func TestSplitFlatArray(t *testing.T) {
	tcs := []struct {
		in   string
		fast bool
	}{
		{`["1"]`, true},
		{`["1","a b",null]`, true},
		{` [ "x" , "y" ] `, true},
		{`[]`, true},
		{`["esc \" \\ \u00e9"]`, true},
		{`[1]`, false},
		{`["1",2]`, false},
		{`{"a":"1"}`, false},
		{`["1"`, false},
		{`["1",]`, false},
		{`["1"] x`, false},
		{`["\x"]`, false},
		{"[\"\xff\"]", false},
		{``, false},
	}
	for _, tc := range tcs {
		var small [4]json.RawMessage
		got, ok := splitFlatArray([]byte(tc.in), small[:0])
		assert.Equal(t, tc.fast, ok, "%s", tc.in)
		if !ok {
			continue
		}
		var want []json.RawMessage
		require.NoError(t, json.Unmarshal([]byte(tc.in), &want), "%s", tc.in)
		assert.Equal(t, len(want), len(got), "%s", tc.in)
		for i := range want {
			assert.Equal(t, string(want[i]), string(got[i]), "%s", tc.in)
		}
	}
}

// BenchmarkDecodeRow decodes pgbench_accounts row images (pglogical's
// encoding) with the member prefixes readInfo makes and without.
func BenchmarkDecodeRow(b *testing.B) {
	data := []byte(`{"aid":"123456","bid":"2","abalance":"-4711","filler":"` + strings.Repeat(" ", 84) + `"}`)
	for _, members := range []bool{true, false} {
		info := flatInfo([]string{"aid", "bid", "abalance", "filler"}, members)
		r := make(row, len(info.cols))
		b.Run(fmt.Sprintf("members=%v", members), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				clear(r)
				if _, err := decodeRowInto(info, data, r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
