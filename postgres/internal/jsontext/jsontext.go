// Package jsontext holds the byte scanning that pglogical's encoding of
// row values as JSON strings and pgstore's decoding of them share.
package jsontext

import "encoding/binary"

// Word masks for PlainPrefix.
const (
	ones  = 0x0101010101010101
	highs = 0x8080808080808080
	quote = 0x2222222222222222 // '"' in every byte
	slash = 0x5c5c5c5c5c5c5c5c // '\\' in every byte
	space = 0x2020202020202020 // the first byte that is no control character
)

// PlainPrefix returns the length of the longest prefix of s whose bytes
// are plain in a JSON string: ASCII from space (0x20) on, except the
// quote and the backslash. Those stand for themselves, unescaped, in a
// JSON string and in its decoded text alike. It looks at eight bytes at
// a time.
func PlainPrefix(s []byte) int {
	i := 0
	for ; len(s)-i >= 8; i += 8 {
		w := binary.LittleEndian.Uint64(s[i:])
		// A byte of 0x80 or more; else one below 0x20, one that is a
		// quote, one that is a backslash (a byte b of x is zero exactly
		// when b-1 borrows into a high bit that b does not have).
		if w&highs != 0 || (w-space)&^w&highs != 0 {
			break
		}
		if q := w ^ quote; (q-ones)&^q&highs != 0 {
			break
		}
		if b := w ^ slash; (b-ones)&^b&highs != 0 {
			break
		}
	}
	for ; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x80 || c == '"' || c == '\\' {
			break
		}
	}
	return i
}
