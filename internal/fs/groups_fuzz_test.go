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

// FuzzParseStatus reads a caller's whole /proc/<pid>/status: its groups and capabilities
// count only if its Uid: and Gid: lines both name the request's fsuid and fsgid (their fourth
// fields), each line once.
func FuzzParseStatus(f *testing.F) {
	f.Add([]byte("Name:\tsh\nUid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\nGroups:\t4 24\nCapEff:\t0000000000000000\n"), uint32(1000), uint32(100))
	f.Add([]byte("Uid:\t1000\t1000\t1000\t1000\nUid:\t5\t5\t5\t100\nCapEff:\t0\n"), uint32(1000), uint32(100))
	f.Add([]byte("Uid:\t0\t0\t0\t0\nUid:\t0\t0\t0\t0\nCapEff:\t000001ffffffffff\n"), uint32(0), uint32(0))
	f.Fuzz(func(t *testing.T, status []byte, uid, gid uint32) {
		c := parseStatus(status, uid, gid)
		if !c.ok {
			return
		}
		for _, id := range []struct {
			prefix string
			want   uint32
		}{{"Uid:", uid}, {"Gid:", gid}} {
			lines := 0
			for line := range bytes.SplitSeq(status, []byte("\n")) {
				rest, found := bytes.CutPrefix(line, []byte(id.prefix))
				if !found {
					continue
				}
				lines++
				fields := bytes.Fields(rest)
				if len(fields) != 4 {
					t.Fatalf("%q: accepted for %d:%d with the line %q", status, uid, gid, line)
				}
				if n, err := strconv.ParseUint(string(fields[3]), 10, 32); err != nil || uint32(n) != id.want {
					t.Fatalf("%q: accepted for %d:%d with the line %q", status, uid, gid, line)
				}
			}
			if lines != 1 {
				t.Fatalf("%q: accepted for %d:%d with %d %s lines", status, uid, gid, lines, id.prefix)
			}
		}
	})
}
