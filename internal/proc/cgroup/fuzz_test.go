package cgroup

import (
	"fmt"
	"strings"
	"testing"
)

// escapeMountinfo is the kernel's escaping of a path in mountinfo (show_path: space, tab,
// newline and backslash as three octal digits).
func escapeMountinfo(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case ' ', '\t', '\n', '\\':
			fmt.Fprintf(&b, `\%03o`, c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// FuzzMountinfo finds the cgroup2 mount among lines whose mount point anyone who can mount
// chose: the path must come back as mounted, escapes undone, whatever it holds.
func FuzzMountinfo(f *testing.F) {
	f.Add("/sys/fs/cgroup", "/mnt", "master:1")
	f.Add("/sys/fs/cgroup\f\u00a0x", "/\v", "") // white space the kernel does not escape
	f.Add("/sys/fs/cgroup unified", `/a\b`, "")
	f.Add("/x\n36 35 0:1 / /evil rw - cgroup2 cgroup2 rw", "/ - cgroup2", "shared:2 master:3")
	f.Add(`/\040`, `\134`, "-")
	f.Add("/\x00\xff", "/", "")
	f.Fuzz(func(t *testing.T, mountPoint, otherPoint, optional string) {
		// Mount points are absolute; optional fields are the kernel's tags, never with a
		// separator.
		if strings.ContainsAny(optional, " \t\n-") || !strings.HasPrefix(mountPoint, "/") || !strings.HasPrefix(otherPoint, "/") {
			return
		}
		opt := ""
		if optional != "" {
			opt = " " + optional
		}
		in := fmt.Sprintf("25 1 0:20 / %s rw,relatime%s - ext4 /dev/sda1 rw\n30 25 0:26 / %s rw,nosuid%s - cgroup2 cgroup2 rw,nsdelegate\n",
			escapeMountinfo(otherPoint), opt, escapeMountinfo(mountPoint), opt)
		got, err := parseMountinfo(strings.NewReader(in))
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		if got != mountPoint {
			t.Fatalf("%q: mount %q, want %q", in, got, mountPoint)
		}
	})
}

// FuzzParseMountinfo reads any text: no panic, and an answer only from a cgroup2 line.
func FuzzParseMountinfo(f *testing.F) {
	f.Add("36 35 98:0 / /mnt rw,noatime master:1 - cgroup2 cgroup2 rw\n")
	f.Add("- cgroup2\n1 2 3 4 5 - cgroup2\n")
	f.Add("1 2 3 /sub /mnt - cgroup2 x\n")
	f.Add("1 2 3 / /m\\04 - cgroup2 x\n1 2 3 / /m\\0 - cgroup2\n")
	f.Add("")
	f.Fuzz(func(t *testing.T, in string) {
		got, err := parseMountinfo(strings.NewReader(in))
		if err == nil && !strings.Contains(in, "cgroup2") {
			t.Fatalf("%q: mount %q without a cgroup2 line", in, got)
		}
	})
}

// FuzzParseProcCgroup reads any /proc/<pid>/cgroup text (a path in it can hold a newline,
// made by mkdir in a delegated subtree): no panic, and the path comes from the first
// unified line alone.
func FuzzParseProcCgroup(f *testing.F) {
	f.Add("0::/ssi/run-1\n")
	f.Add("12:memory:/x\n0::/\n")
	f.Add("0::/user.slice/x\n0::/ssi/other\n")
	f.Add("1:name=systemd:/0::/x\n")
	f.Add("0::")
	f.Add("")
	f.Fuzz(func(t *testing.T, data string) {
		got, err := parseProcCgroup(data)
		if err != nil {
			return
		}
		if strings.Contains(got, "\n") {
			t.Fatalf("%q: path %q spans lines", data, got)
		}
		var first string
		for line := range strings.Lines(data) {
			if v, ok := strings.CutPrefix(strings.TrimRight(line, "\n"), "0::"); ok {
				first = v
				break
			}
		}
		if got != strings.TrimPrefix(first, "/") {
			t.Fatalf("%q: path %q, want it from the first 0:: line %q", data, got, first)
		}
	})
}

// FuzzParsePopulated reads any cgroup.events text: no panic, and "populated 0" alone means
// empty.
func FuzzParsePopulated(f *testing.F) {
	f.Add("populated 1\nfrozen 0\n")
	f.Add("populated 0\nfrozen 0\n")
	f.Add("frozen 0\n")
	f.Add("populated\npopulated 0")
	f.Add("  populated 0  \n")
	f.Fuzz(func(t *testing.T, events string) {
		populated, err := parsePopulated([]byte(events), "/sys/fs/cgroup/x")
		if err != nil {
			if populated || !strings.Contains(err.Error(), "/sys/fs/cgroup/x") {
				t.Fatalf("%q: %v, %v", events, populated, err)
			}
			return
		}
		if !strings.Contains(events, "populated ") {
			t.Fatalf("%q: answered without a populated key", events)
		}
	})
}
