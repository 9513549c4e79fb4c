package pgstore

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDecodeRowColumnOrder checks decodeRow, which looks for each member
// at the column after the last one first, against encoding/json for
// members in the table's order, in other orders, with gaps, duplicates
// and unknown names.
func TestDecodeRowColumnOrder(t *testing.T) {
	tcs := []struct {
		name, in, unknown string
	}{
		{"in order", `{"a":"1","b":"2","c":null,"d":"4"}`, ""},
		{"reversed", `{"d":"4","c":"3","b":"2","a":"1"}`, ""},
		{"gaps", `{"a":"1","c":"3"}`, ""},
		{"gap then back", `{"b":"2","d":"4","a":"1"}`, ""},
		{"duplicate, last wins", `{"a":"1","b":"2","a":"9"}`, ""},
		{"duplicate of the next", `{"a":"1","a":"2","b":"3"}`, ""},
		{"unknown in the middle", `{"a":"1","x":"?","b":"2"}`, "x"},
		{"prefix of a name", `{"a":"1","bb":"2"}`, "bb"},
		{"escapes", `{"a":"q\"uo\\te","b":"\u00e9"}`, ""},
		{"non-ASCII", `{"a":"ünïcode ✓","b":"日本"}`, ""},
		{"not strings", `{"b":2,"a":true,"d":null}`, ""},
	}
	for _, tc := range tcs {
		for _, members := range []bool{true, false} {
			info := flatInfo([]string{"a", "b", "c", "d"}, members)
			t.Run(fmt.Sprintf("%s/members=%v", tc.name, members), func(t *testing.T) {
				r, err := decodeRow(info, json.RawMessage(tc.in))
				if tc.unknown != "" {
					var unknown unknownColumnError
					require.ErrorAs(t, err, &unknown)
					assert.Equal(t, tc.unknown, unknown.name)
					return
				}
				require.NoError(t, err)
				var want map[string]json.RawMessage
				require.NoError(t, json.Unmarshal([]byte(tc.in), &want))
				for i, c := range info.cols {
					assert.Equal(t, string(want[c.name]), string(r[i]), "column %s", c.name)
					assert.Equal(t, want[c.name] == nil, r[i] == nil, "column %s: absent", c.name)
				}
			})
		}
	}
}

// TestTextArray checks the text[] literal of a column against what
// PostgreSQL's array input reads: each element quoted with quotes and
// backslashes escaped, NULL for null and for an absent value.
func TestTextArray(t *testing.T) {
	huge := strings.Repeat("h", 1<<20)
	values := []string{"", "plain", `q"uo\te`, "new\nline\ttab", "ünïcode ✓", "NULL", "{a,b}", " spaced ", huge}
	var rows []row
	for _, v := range values {
		enc, err := json.Marshal(v)
		require.NoError(t, err)
		rows = append(rows, row{enc})
	}
	rows = append(rows, row{json.RawMessage("null")}, row{nil})
	got, err := textArray(rows, 0)
	require.NoError(t, err)
	elems := parseTextArray(t, got)
	require.Len(t, elems, len(rows))
	for i, v := range values {
		require.NotNil(t, elems[i], "element %d", i)
		assert.Equal(t, v, *elems[i], "element %d", i)
	}
	assert.Nil(t, elems[len(values)], "null")
	assert.Nil(t, elems[len(values)+1], "absent")

	_, err = textArray([]row{{json.RawMessage(`"bad \escape"`)}}, 0)
	assert.Error(t, err)
}

// parseTextArray reads a one-dimensional text[] literal as PostgreSQL's
// array input does for the elements textArray writes: quoted with
// backslash escapes, or NULL.
func parseTextArray(t *testing.T, lit string) []*string {
	t.Helper()
	require.True(t, strings.HasPrefix(lit, "{") && strings.HasSuffix(lit, "}"), "%.40q", lit)
	lit = lit[1 : len(lit)-1]
	var out []*string
	for i := 0; i < len(lit); {
		if strings.HasPrefix(lit[i:], "NULL") {
			out = append(out, nil)
			i += 4
		} else {
			require.Equal(t, byte('"'), lit[i], "at %d", i)
			var b strings.Builder
			for i++; lit[i] != '"'; i++ {
				if lit[i] == '\\' {
					i++
				}
				b.WriteByte(lit[i])
			}
			i++
			s := b.String()
			out = append(out, &s)
		}
		if i < len(lit) {
			require.Equal(t, byte(','), lit[i], "at %d", i)
			i++
		}
	}
	return out
}
