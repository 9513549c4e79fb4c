package pgstore

import (
	"bytes"
	"encoding/json"
	"testing"
	"unicode/utf8"
)

// FuzzDecodeFlatRow checks the fast path of decodeRow against
// encoding/json: whatever it accepts is valid JSON, an object of strings
// and nulls, decoded to the same members (the last of a duplicate key).
func FuzzDecodeFlatRow(f *testing.F) {
	for _, s := range []string{
		`{"aid":"1","bid":"1","abalance":"0","filler":"  "}`, `{"a":null}`, `{}`, " { \"a\" : \"1\" ,\n\t\"b\":null } ",
		`{"a":"\"q\" \\ \n \u00e9 \/"}`, `{"a":"1","a":"2"}`, `{"\u0061":"1"}`, `{"a":1}`, `{"a":"x}`, "{\"a\":\"\xff\"}",
		`{"a":"\ud800"}`, `{"a":"x",}`, `{"a":nul}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got := make(map[string]json.RawMessage)
		if !decodeFlatRow(data, func(k []byte, v json.RawMessage) { got[string(k)] = v }) {
			return // encoding/json decides
		}
		var want map[string]json.RawMessage
		if err := json.Unmarshal(data, &want); err != nil {
			t.Fatalf("accepted invalid JSON %q: %v", data, err)
		}
		if len(want) != len(got) {
			t.Fatalf("%q: members %v, encoding/json %v", data, got, want)
		}
		for k, v := range want {
			if !bytes.Equal(got[k], v) {
				t.Fatalf("%q: member %q is %s, encoding/json %s", data, k, got[k], v)
			}
			if v[0] != '"' && string(v) != "null" {
				t.Fatalf("%q: accepted member %q of value %s", data, k, v)
			}
		}
	})
}

// FuzzScanString checks scanString against encoding/json: a string it
// accepts is a valid JSON string that has escapes exactly when it says
// so; one it rejects is not valid JSON on its own, or has invalid UTF-8
// (which encoding/json accepts and replaces, and decodeRow leaves to it).
func FuzzScanString(f *testing.F) {
	for _, s := range []string{`"abc"`, `"a\"b"`, `"\u00e9"`, `"\u00"`, `"x`, "\"\x01\"", "\"\xff\"", `"\q"`, `"é" tail`, `"\ud83d\ude00"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 || data[0] != '"' {
			return
		}
		end, escaped, ok := scanString(data, 0)
		if !ok {
			if json.Valid(data) && utf8.Valid(data) {
				t.Fatalf("rejected the valid JSON string %q", data)
			}
			return
		}
		var s string
		if err := json.Unmarshal(data[:end], &s); err != nil {
			t.Fatalf("accepted %q, which encoding/json rejects: %v", data[:end], err)
		}
		if escaped != bytes.ContainsRune(data[:end], '\\') {
			t.Fatalf("%q: escaped = %v", data[:end], escaped)
		}
	})
}
