package ssipb

import "strings"

// ByteWords converts argv- or environ-like words to the bytes fields that carry them (see
// RunStart): a Go string holds any bytes, UTF-8 or not, and so does the copy.
func ByteWords(words []string) [][]byte {
	out := make([][]byte, len(words))
	for i, w := range words {
		out[i] = []byte(w)
	}
	return out
}

// StringWords is the inverse of ByteWords.
func StringWords(words [][]byte) []string {
	out := make([]string, len(words))
	for i, w := range words {
		out[i] = string(w)
	}
	return out
}

// ValidText makes s fit a string field, which proto3 refuses unless it is UTF-8: a message
// that quotes a command or a file name may carry any bytes, and would otherwise fail the whole
// message (and its exit status) instead of showing those bytes as U+FFFD.
func ValidText(s string) string {
	return strings.ToValidUTF8(s, "\uFFFD")
}
