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
		// The columns are the keys encoding/json finds, if any, and
		// some of those keys with a character more (near misses of the
		// member prefixes).
		var want map[string]json.RawMessage
		wantErr := json.Unmarshal(data, &want)
		var names []string
		for k := range want {
			if _, dup := want[k+"x"]; !dup {
				names = append(names, k+"x")
			}
			names = append(names, k)
		}
		for _, members := range []bool{true, false} {
			info := flatInfo(names, members)
			r := make(row, len(info.cols))
			unknown, ok := decodeFlatRow(info, data, r)
			if !ok {
				continue // encoding/json decides
			}
			if wantErr != nil {
				t.Fatalf("accepted invalid JSON %q: %v", data, wantErr)
			}
			if unknown != nil {
				t.Fatalf("%q: unknown member %q", data, unknown)
			}
			for i, c := range info.cols {
				v, found := want[c.name]
				if !bytes.Equal(r[i], v) || found != (r[i] != nil) {
					t.Fatalf("%q: member %q is %s, encoding/json %s", data, c.name, r[i], v)
				}
				if found && v[0] != '"' && string(v) != "null" {
					t.Fatalf("%q: accepted member %q of value %s", data, c.name, v)
				}
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
