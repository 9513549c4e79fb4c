package jsontext

import (
	"strings"
	"testing"
)

// plainPrefix is PlainPrefix one byte at a time.
func plainPrefix(s []byte) int {
	for i, c := range s {
		if c < 0x20 || c >= 0x80 || c == '"' || c == '\\' {
			return i
		}
	}
	return len(s)
}

func TestPlainPrefix(t *testing.T) {
	long := strings.Repeat("abcdefgh", 5)
	for _, s := range []string{"", "a", "plain text", long, long + `"`, long + `\`, long + "\n", long + "\x00", long + "\x1f",
		long + " ", long + "~\x7f", long + "é", `"` + long, "1234567\"", "12345678\\", "\x80", "\xff", "ünï", "abc\tdef"} {
		if got, want := PlainPrefix([]byte(s)), plainPrefix([]byte(s)); got != want {
			t.Errorf("PlainPrefix(%q) = %d, want %d", s, got, want)
		}
	}
	// Every byte value at every position of a word and after it.
	for pos := range 17 {
		for c := range 256 {
			s := []byte(strings.Repeat("x", 20))
			s[pos] = byte(c)
			if got, want := PlainPrefix(s), plainPrefix(s); got != want {
				t.Fatalf("byte %#x at %d: PlainPrefix = %d, want %d", c, pos, got, want)
			}
		}
	}
}

func FuzzPlainPrefix(f *testing.F) {
	f.Add([]byte("abcdefgh\"ijk"))
	f.Add([]byte("\x7f\x80\x1f\x20"))
	f.Fuzz(func(t *testing.T, s []byte) {
		if got, want := PlainPrefix(s), plainPrefix(s); got != want {
			t.Fatalf("PlainPrefix(%q) = %d, want %d", s, got, want)
		}
	})
}

func BenchmarkPlainPrefix(b *testing.B) {
	s := []byte(strings.Repeat(" ", 84) + `"`)
	b.Run("words", func(b *testing.B) {
		for b.Loop() {
			PlainPrefix(s)
		}
	})
	b.Run("bytes", func(b *testing.B) {
		for b.Loop() {
			plainPrefix(s)
		}
	})
}
