package datalink

import (
	"strings"
	"testing"
)

// FuzzParseToken decodes the link token another node's agent puts in an Exec call's metadata:
// no panic, an accepted token re-formats to the text given (in lower case, as String writes
// it), and String's form always parses back.
func FuzzParseToken(f *testing.F) {
	f.Add("00112233445566778899aabbccddeeff")
	f.Add("00112233445566778899AABBCCDDEEFF")
	f.Add("00112233445566778899aabbccddeef")   // one digit short
	f.Add("00112233445566778899aabbccddeeff0") // one over
	f.Add("00112233445566778899aabbccddeefg")
	f.Add("0x112233445566778899aabbccddeeff")
	f.Add(" 0112233445566778899aabbccddeeff")
	f.Add("")
	f.Add(strings.Repeat("ff", 1000))
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseToken(s)
		if err != nil {
			if tok != (Token{}) {
				t.Fatalf("%q: error %v with token %v", s, err, tok)
			}
			return
		}
		if tok.String() != strings.ToLower(s) {
			t.Fatalf("%q parsed as %v", s, tok)
		}
		if back, err := ParseToken(tok.String()); err != nil || back != tok {
			t.Fatalf("%v does not parse back: %v, %v", tok, back, err)
		}
	})
}
