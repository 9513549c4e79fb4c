package pgstore

import (
	"encoding/json"
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
			got := make(map[string]json.RawMessage)
			ok := decodeFlatRow([]byte(tc.in), func(k []byte, v json.RawMessage) { got[string(k)] = v })
			assert.Equal(t, tc.fast, ok)
			var want map[string]json.RawMessage
			wantErr := json.Unmarshal([]byte(tc.in), &want)
			if ok {
				require.NoError(t, wantErr, "the fast path accepted invalid JSON")
				assert.Equal(t, want, got)
			}
			// decodeRow agrees with encoding/json either way.
			info := &tableInfo{table: logical.Table{Schema: "s", Name: "t"}, byName: map[string]int{}}
			for name := range want {
				info.byName[name] = len(info.cols)
				info.cols = append(info.cols, column{name: name, typ: "text"})
			}
			r, err := decodeRow(info, json.RawMessage(tc.in))
			if wantErr != nil {
				assert.ErrorContains(t, err, "s.t")
				return
			}
			require.NoError(t, err)
			require.Len(t, r, len(info.cols))
			for i, c := range info.cols {
				assert.Equal(t, want[c.name], r[i], "column %s", c.name)
			}
		})
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
