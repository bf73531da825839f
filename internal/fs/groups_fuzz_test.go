package fs

import (
	"bytes"
	"strconv"
	"testing"
)

// FuzzParseGroups reads the Groups: line of a FUSE caller's /proc/<pid>/status, the groups
// its file permissions are checked with: no panic, and every group given comes from one
// whole decimal field, never from a field cut short or wrapped round.
func FuzzParseGroups(f *testing.F) {
	f.Add([]byte("\t4 24 27 100 \n"))
	f.Add([]byte(""))
	f.Add([]byte("\t4294967295 4294967296 -1 +5 0x10 010"))
	f.Add([]byte("\t1\x002"))
	f.Add([]byte("\t\xa01 2\u00a03"))
	f.Fuzz(func(t *testing.T, line []byte) {
		got := parseGroups(line)
		var want []uint32
		for _, field := range bytes.Fields(line) {
			if n, err := strconv.ParseUint(string(field), 10, 32); err == nil {
				want = append(want, uint32(n))
			}
		}
		if len(got) != len(want) {
			t.Fatalf("%q: groups %v, want %v", line, got, want)
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("%q: groups %v, want %v", line, got, want)
			}
		}
	})
}
