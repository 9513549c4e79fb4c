package pgstore

import (
	"encoding/json"
	"testing"

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
			got, ok := decodeFlatRow([]byte(tc.in))
			assert.Equal(t, tc.fast, ok)
			var want map[string]json.RawMessage
			wantErr := json.Unmarshal([]byte(tc.in), &want)
			if ok {
				require.NoError(t, wantErr, "the fast path accepted invalid JSON")
				assert.Equal(t, want, got)
			}
			// decodeRow agrees with encoding/json either way.
			row, err := decodeRow(logical.Table{Schema: "s", Name: "t"}, json.RawMessage(tc.in))
			if wantErr != nil {
				assert.ErrorContains(t, err, "s.t")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, want, row)
		})
	}
}
