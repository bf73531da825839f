package fs

import (
	"bytes"
	"encoding/binary"
	"maps"
	"math"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestValidPath(t *testing.T) {
	for _, tc := range []struct {
		path string
		want syscall.Errno
	}{
		{"", 0},
		{"a", 0},
		{"a/b/c", 0},
		{"with space/new\nline/\xff", 0},
		{"...", 0},
		{"/a", syscall.EINVAL},
		{"a/", syscall.EINVAL},
		{"a//b", syscall.EINVAL},
		{".", syscall.EINVAL},
		{"..", syscall.EINVAL},
		{"a/../b", syscall.EINVAL},
		{"a/./b", syscall.EINVAL},
		{"nul\x00", syscall.EINVAL},
		{strings.Repeat("n", 255), 0},
		{strings.Repeat("n", 256), syscall.ENAMETOOLONG},
		// Deeper than PATH_MAX, as a tree may be (the owner opens it in pieces).
		{strings.Repeat("abc/", 1024) + "abc", 0},
		{strings.Repeat("abc/", maxRefPath/4) + "abc", syscall.ENAMETOOLONG},
	} {
		if got := validPath([]byte(tc.path)); got != tc.want {
			t.Errorf("validPath(%.40q) = %v, want %v", tc.path, got, tc.want)
		}
	}
}

func TestLocate(t *testing.T) {
	exports := []export{{rel: "home/shared"}, {rel: "data"}}
	for _, tc := range []struct {
		path  string
		where placement
		sub   string
	}{
		{"", ancestor, ""},
		{"home", ancestor, ""},
		{"home/shared", inside, ""},
		{"home/shared/x/y", inside, "x/y"},
		{"home/sharedness", outside, ""},
		{"home/other", outside, ""},
		{"data", inside, ""},
		{"data/f", inside, "f"},
		{"etc", outside, ""},
	} {
		where, _, sub := locate(exports, tc.path)
		if where != tc.where || sub != tc.sub {
			t.Errorf("locate(%q) = %v %q, want %v %q", tc.path, where, sub, tc.where, tc.sub)
		}
	}
	if where, _, sub := locate([]export{{rel: ""}}, "any/thing"); where != inside || sub != "any/thing" {
		t.Errorf("whole tree: %v %q", where, sub)
	}
}

func TestRewriteLink(t *testing.T) {
	for _, tc := range []struct {
		target, link, want string
	}{
		{"/etc/passwd", "l", "/ssi/n2/etc/passwd"},
		{"/", "a/b/l", "/ssi/n2/"},
		{"target", "l", "target"},
		{"../x", "a/l", "../x"},
		{"../../x", "a/b/l", "../../x"},
		{"../x", "l", "/ssi/n2/x"},
		{"../../../etc/passwd", "a/l", "/ssi/n2/etc/passwd"},
		{"a/../../b", "d/l", "a/../../b"},
		{"a/../../../b", "d/l", "/ssi/n2/b"},
		{"./x", "l", "./x"},
		{"/ssi/n3/x", "l", "/ssi/n3/x"},
		{"/ssi/n2/x", "l", "/ssi/n2/x"},
		{"/ssi", "l", "/ssi"},
		{"/ssix/y", "l", "/ssi/n2/ssix/y"},
	} {
		if got := string(rewriteLink([]byte(tc.target), []byte(tc.link), "/ssi/", "n2")); got != tc.want {
			t.Errorf("rewriteLink(%q at %q) = %q, want %q", tc.target, tc.link, got, tc.want)
		}
	}
}

func TestStoredLink(t *testing.T) {
	for _, tc := range []struct{ target, want string }{
		{"/ssi/n2/etc/passwd", "/etc/passwd"},
		{"/ssi/n2", "/"},
		{"/ssi/n2/", "/"},
		{"/ssi/n23/x", "/ssi/n23/x"},
		{"/ssi/n3/x", "/ssi/n3/x"},
		{"/etc/passwd", "/etc/passwd"},
		{"rel/ssi/n2", "rel/ssi/n2"},
	} {
		if got := storedLink(tc.target, "/ssi/", "n2"); got != tc.want {
			t.Errorf("storedLink(%q) = %q, want %q", tc.target, got, tc.want)
		}
		// Stored and read back through the tree, a target in the tree comes back as written.
		if back := string(rewriteLink([]byte(storedLink(tc.target, "/ssi", "n2")), []byte("l"), "/ssi", "n2")); inTree(tc.target, "/ssi") &&
			back != tc.target && back != tc.target+"/" {
			t.Errorf("%q stored and read back: %q", tc.target, back)
		}
	}
}

func TestLockRanges(t *testing.T) {
	for _, tc := range []struct {
		start, end uint64
		len        int64
	}{
		{0, math.MaxInt64, 0},
		{10, 19, 10},
		{5, 5, 1},
	} {
		lk, errno := toFlock(unix.F_WRLCK, tc.start, tc.end)
		if errno != 0 || lk.Start != int64(tc.start) || lk.Len != tc.len {
			t.Errorf("toFlock(%d, %d) = %+v %v", tc.start, tc.end, lk, errno)
		}
		if typ, start, end := fromFlock(lk); typ != unix.F_WRLCK || start != tc.start || end != tc.end {
			t.Errorf("fromFlock(%+v) = %d %d %d", lk, typ, start, end)
		}
	}
	if _, errno := toFlock(unix.F_RDLCK, 10, 5); errno != syscall.EINVAL {
		t.Errorf("inverted range: %v", errno)
	}
}

func TestParseGroups(t *testing.T) {
	if got := parseGroups([]byte("\t4 24 27 1000 \n")); !slices.Equal(got, []uint32{4, 24, 27, 1000}) {
		t.Errorf("parseGroups = %v", got)
	}
	if got := parseGroups([]byte(" ")); got != nil {
		t.Errorf("no groups: %v", got)
	}
}

func TestParseStatus(t *testing.T) {
	status := []byte("Name:\tsh\nUmask:\t0022\nUid:\t1000\t1000\t1000\t1001\nGid:\t100\t100\t100\t101\nFDSize:\t64\nGroups:\t4 24 3000 \nNStgid:\t5\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000004\nCapEff:\t0000000000000004\n")
	if c := parseStatus(status, 1001, 101); !c.ok || !slices.Equal(c.groups, []uint32{4, 24, 3000}) || c.caps != 1<<2 {
		t.Errorf("parseStatus for the fsuid and fsgid = %+v", c)
	}
	// Another process at that pid, or ids changed since the request: its groups are not the caller's.
	for _, ids := range [][2]uint32{{1000, 101}, {1001, 100}, {0, 0}} {
		if c := parseStatus(status, ids[0], ids[1]); c.ok || c.groups != nil || c.caps != 0 {
			t.Errorf("parseStatus for %v = %+v; want nothing", ids, c)
		}
	}
	if c := parseStatus([]byte("Groups:\t4\nCapEff:\t0\n"), 0, 0); c.ok {
		t.Error("parseStatus without Uid and Gid lines accepted them")
	}
	if c := parseStatus(bytes.Replace(status, []byte("CapEff:\t0000000000000004"), []byte("CapEff:\tzz"), 1), 1001, 101); c.ok {
		t.Error("parseStatus accepted a garbled CapEff")
	}
}

func TestCacheTable(t *testing.T) {
	c := newCacheTable(0)
	hold := func(idx uint32, start uint64, ids, dirs []fileID) bool {
		stable, _ := c.hold(idx, start, ids, dirs)
		return stable
	}
	a, b, dir := fileID{dev: 1, ino: 2}, fileID{dev: 1, ino: 3}, fileID{dev: 1, ino: 4}
	start := c.now()
	if !hold(1, start, []fileID{a}, nil) || !hold(2, start, []fileID{a, b}, nil) {
		t.Fatal("nothing changed, yet not stable")
	}
	if got := c.take(a, false, 1); !slices.Equal(got, []uint32{2}) {
		t.Fatalf("take(a) except 1 = %v, want [2]", got)
	}
	if got := c.take(a, false, 1); got != nil {
		t.Fatalf("second take(a) = %v: the cacher was not removed", got)
	}
	// A reader that started before the change must not cache what it read.
	if hold(3, start, []fileID{a}, nil) {
		t.Fatal("stable although a changed after the reader started")
	}
	if !hold(3, c.now(), []fileID{b}, nil) {
		t.Fatal("b did not change")
	}

	// Names in a directory: a change of one name leaves the session caching the others, so
	// it stays a cacher; a holder of the directory's attributes only is told once.
	if !hold(4, c.now(), nil, []fileID{dir}) || !hold(5, c.now(), []fileID{dir}, nil) {
		t.Fatal("dir did not change")
	}
	if got := c.take(dir, true, 0); !slices.Equal(got, []uint32{5, 4}) {
		t.Fatalf("first change of a name in dir told %v, want [5 4]", got)
	}
	if got := c.take(dir, true, 0); !slices.Equal(got, []uint32{4}) {
		t.Fatalf("second change of a name in dir told %v, want [4]", got)
	}
	if got := c.take(dir, false, 0); got != nil {
		t.Fatalf("a change of dir's attributes told %v, want none", got)
	}
}

func TestCacheTableForgetsDroppedCaches(t *testing.T) {
	c := newCacheTable(3)
	a, b, dir := fileID{dev: 1, ino: 2}, fileID{dev: 1, ino: 3}, fileID{dev: 1, ino: 4}
	if _, over := c.hold(1, c.now(), []fileID{a, b}, []fileID{dir}); over {
		t.Fatal("3 entries are over a limit of 3")
	}
	if _, over := c.hold(1, c.now(), []fileID{a}, nil); over {
		t.Fatal("holding a again counted it twice")
	}
	if _, over := c.hold(2, c.now(), []fileID{a}, nil); !over {
		t.Fatal("4 entries are not over a limit of 3")
	}
	if idx, n := c.heaviest(); idx != 1 || n != 3 {
		t.Fatalf("heaviest = session %d with %d, want 1 with 3", idx, n)
	}

	// Session 1 reattaches; it holds b again after that (an answer to a request it made once
	// back), so b stays and the rest of its entries go.
	mark := c.mark()
	c.hold(1, c.now(), []fileID{b}, nil)
	c.forget(1, mark)
	if got := c.take(b, false, 0); !slices.Equal(got, []uint32{1}) {
		t.Fatalf("b's cachers after the forget = %v, want [1]", got)
	}
	if got := c.take(a, false, 0); !slices.Equal(got, []uint32{2}) {
		t.Fatalf("a's cachers after the forget = %v, want [2]", got)
	}
	if got := c.take(dir, true, 0); got != nil {
		t.Fatalf("dir's name cachers after the forget = %v, want none", got)
	}
	if n := c.size(); n != 0 {
		t.Fatalf("%d entries left, want 0", n)
	}
	if idx, n := c.heaviest(); n != 0 {
		t.Fatalf("heaviest = session %d with %d, want none", idx, n)
	}

	// A session that expired loses every entry.
	c.hold(3, c.now(), []fileID{a}, []fileID{dir})
	c.forget(3, math.MaxUint64)
	if n := c.size(); n != 0 {
		t.Fatalf("%d entries left after the session expired, want 0", n)
	}
}

func dirent(ino uint64, off int64, typ uint8, name string) []byte {
	reclen := (19 + len(name) + 1 + 7) &^ 7
	b := make([]byte, reclen)
	binary.LittleEndian.PutUint64(b[0:], ino)
	binary.LittleEndian.PutUint64(b[8:], uint64(off))
	binary.LittleEndian.PutUint16(b[16:], uint16(reclen))
	b[18] = typ
	copy(b[19:], name)
	return b
}

func TestParseDirents(t *testing.T) {
	buf := append(dirent(5, 1, unix.DT_DIR, "."), dirent(7, 2, unix.DT_REG, "file")...)
	buf = append(buf, dirent(9, 3, unix.DT_LNK, "a-much-longer-name")...)
	var names []string
	parseDirents(buf, func(ino uint64, off int64, typ uint8, name []byte) bool {
		names = append(names, string(name))
		return true
	})
	if !slices.Equal(names, []string{".", "file", "a-much-longer-name"}) {
		t.Fatalf("names %q", names)
	}
	// Truncated and corrupt buffers stop the walk without reading past the end.
	parseDirents(buf[:30], func(uint64, int64, uint8, []byte) bool { return true })
	bad := dirent(1, 1, 0, "x")
	binary.LittleEndian.PutUint16(bad[16:], 1000)
	parseDirents(bad, func(uint64, int64, uint8, []byte) bool { t.Fatal("corrupt record accepted"); return true })
}

func TestFilterXattrNames(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", ""},
		{"user.a\x00security.selinux\x00trusted.b\x00", "user.a\x00trusted.b\x00"},
		{"security.capability\x00", ""},
		{"user.security.x\x00", "user.security.x\x00"},
	} {
		if got := string(filterXattrNames([]byte(c.in))); got != c.want {
			t.Errorf("filterXattrNames(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestDiskMoves(t *testing.T) {
	a, b, c := fileID{dev: 1, ino: 10}, fileID{dev: 1, ino: 11}, fileID{dev: 1, ino: 12}
	rename := func(dir fileID, name string, to fileID, toName string) diskEvent {
		return diskEvent{dir: dir, name: name, mask: unix.FAN_RENAME, to: to, toName: toName}
	}
	key := func(dir fileID, name string) diskEvent { return diskEvent{dir: dir, name: name} }
	for _, tc := range []struct {
		name   string
		events []diskEvent
		want   map[diskEvent]diskEvent
	}{
		{"a move", []diskEvent{rename(a, "x", b, "y")}, map[diskEvent]diskEvent{key(a, "x"): rename(a, "x", b, "y")}},
		{"into an unwatched directory", []diskEvent{rename(a, "x", fileID{}, "")}, map[diskEvent]diskEvent{}},
		{"not a rename", []diskEvent{{dir: a, name: "x", mask: unix.FAN_MOVED_FROM}}, map[diskEvent]diskEvent{}},
		{"an exchange", []diskEvent{rename(a, "x", b, "y"), rename(b, "y", a, "x")}, map[diskEvent]diskEvent{}},
		{"two moves", []diskEvent{rename(a, "x", b, "y"), rename(b, "y", c, "z")}, map[diskEvent]diskEvent{
			key(a, "x"): rename(a, "x", b, "y"), key(b, "y"): rename(b, "y", c, "z")}},
		{"the last move of a name", []diskEvent{rename(a, "x", b, "y"), rename(a, "x", c, "z")}, map[diskEvent]diskEvent{
			key(a, "x"): rename(a, "x", c, "z")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := diskMoves(tc.events); !maps.Equal(got, tc.want) {
				t.Fatalf("diskMoves = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestInflightAwait(t *testing.T) {
	var f inflight
	f.await(time.Hour) // nothing under way: returns at once

	end := f.begin()
	returned := make(chan struct{})
	go func() {
		f.await(time.Hour)
		close(returned)
	}()
	select {
	case <-returned:
		t.Fatal("await returned while an operation begun before it was under way")
	case <-time.After(50 * time.Millisecond):
	}
	end()
	end() // twice: no effect
	<-returned
	if n := f.count.Load(); n != 0 {
		t.Fatalf("%d operations counted after all ended", n)
	}

	f.begin() // never ended
	f.await(time.Millisecond)
}

func TestPendingKill(t *testing.T) {
	for _, c := range []struct {
		status string
		want   bool
	}{
		{"Name:\tcat\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\n", false},
		{"Name:\tcat\nSigPnd:\t0000000000000100\nShdPnd:\t0000000000000000\n", true},
		{"Name:\tcat\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000100\n", true},
		{"Name:\tcat\nSigPnd:\t0000000000000002\nShdPnd:\t0000000000004000\n", false}, // SIGINT, SIGTERM caught
	} {
		if got := pendingKill([]byte(c.status)); got != c.want {
			t.Errorf("pendingKill(%q) = %v, want %v", c.status, got, c.want)
		}
	}
}
