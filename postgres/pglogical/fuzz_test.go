package pglogical

import (
	"encoding/json"
	"strings"
	"testing"
)

// FuzzAppendJSONString checks appendJSONString against encoding/json: the
// result is valid JSON that decodes to the input, with invalid UTF-8
// replaced by U+FFFD as encoding/json replaces it.
func FuzzAppendJSONString(f *testing.F) {
	for _, s := range []string{"", "plain", `q"uo\te`, "tab\tnew\nline\r", "\x00\x01\x1f\x7f", "ünïcode ✓", "\xff\xfe", "a\xc3", "\u2028<>&"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, s []byte) {
		out := appendJSONString([]byte("prefix"), s)
		if !strings.HasPrefix(string(out), "prefix") {
			t.Fatalf("the buffer's contents were lost: %q", out)
		}
		out = out[len("prefix"):]
		var got string
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("%q became invalid JSON %s: %v", s, out, err)
		}
		want := strings.ToValidUTF8(string(s), "\uFFFD")
		// ToValidUTF8 replaces a run of invalid bytes with one U+FFFD;
		// encoding/json replaces each byte. Compare with encoding/json.
		enc, _ := json.Marshal(string(s))
		if err := json.Unmarshal(enc, &want); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("%q decodes to %q, encoding/json's encoding to %q", s, got, want)
		}
	})
}
