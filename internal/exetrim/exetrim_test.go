package exetrim

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseMapping(t *testing.T) {
	tests := []struct {
		line string
		want mapping
		ok   bool
	}{
		{"00400000-0112d000 r-xp 00000000 fe:00 9977999    /run/ssi-bin/ssi",
			mapping{0x400000, 0x112d000, "r-xp", unix.Mkdev(0xfe, 0), 9977999}, true},
		{"7ffd1c5e1000-7ffd1c602000 rw-p 00000000 00:00 0  [stack]",
			mapping{0x7ffd1c5e1000, 0x7ffd1c602000, "rw-p", 0, 0}, true},
		{"02099000-0212a000 rw-p 01c99000 103:02 42 /path with spaces/ssi",
			mapping{0x2099000, 0x212a000, "rw-p", unix.Mkdev(0x103, 2), 42}, true},
		{"", mapping{}, false},
		{"garbage line here x y", mapping{}, false},
		{"2000-1000 r-xp 00000000 fe:00 1 /x", mapping{}, false}, // end before start
		{"1000-2000 r-xp 00000000 fe00 1 /x", mapping{}, false},  // device without colon
		{"1000-2000 r-xp 00000000 fe:00 -1 /x", mapping{}, false},
	}
	for _, tt := range tests {
		got, ok := parseMapping(tt.line)
		if ok != tt.ok || got != tt.want {
			t.Errorf("parseMapping(%q) = %+v, %v; want %+v, %v", tt.line, got, ok, tt.want, tt.ok)
		}
	}
}

// rssFileKiB is the process's resident file-backed memory.
func rssFileKiB(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "RssFile:"); ok {
			n, err := strconv.Atoi(strings.Fields(v)[0])
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no RssFile in /proc/self/status")
	return 0
}

// TestTrimDropsExecutablePagesAndKeepsRunning trims the test binary itself: its resident
// file pages must shrink, and the code and read-only data it uses afterwards must fault back
// in correctly (the test goes on running, formatting and comparing strings).
func TestTrimDropsExecutablePagesAndKeepsRunning(t *testing.T) {
	before := rssFileKiB(t)
	advised, err := Trim()
	if err != nil {
		t.Fatal(err)
	}
	if advised == 0 {
		t.Fatal("Trim advised no mapping of the test executable")
	}
	after := rssFileKiB(t)
	if after >= before {
		t.Errorf("resident file pages %d KiB before Trim, %d KiB after: want fewer", before, after)
	}
	if got := strconv.Quote("still running"); got != `"still running"` {
		t.Errorf("after Trim, strconv.Quote gave %s", got)
	}
	t.Logf("advised %d MiB; resident file pages %d → %d KiB", advised>>20, before, after)
}
