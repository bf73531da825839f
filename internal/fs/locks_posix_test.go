package fs

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// lockStep is one lock call on one of a case's descriptions.
type lockStep struct {
	on   string // the description: a, b, … (opened read-write unless the case says otherwise)
	op   string // setlk, ofd, getlk, ofdgetlk, flock, seek, close
	typ  int16  // lock type, or flock's operation
	from int16  // l_whence
	at   int64  // l_start, or seek's offset
	n    int64  // l_len
	pid  int32  // l_pid as passed
}

type lockCase struct {
	name  string
	modes map[string]int // open flags of descriptions that are not O_RDWR
	steps []lockStep
}

// lockCases all run in one process: locks that must conflict are OFD locks of different
// descriptions, or an OFD lock against this process's own POSIX locks.
var lockCases = []lockCase{
	{"getlk finds no conflict on a free file", nil, []lockStep{
		{on: "a", op: "getlk", typ: unix.F_WRLCK},
		{on: "a", op: "ofdgetlk", typ: unix.F_RDLCK, at: 10, n: 5},
	}},
	{"write lock conflicts are reported and refused", nil, []lockStep{
		{on: "a", op: "ofd", typ: unix.F_WRLCK, at: 10, n: 20},
		{on: "b", op: "getlk", typ: unix.F_RDLCK, at: 0, n: 15},
		{on: "b", op: "ofdgetlk", typ: unix.F_WRLCK, at: 29, n: 0},
		{on: "b", op: "ofdgetlk", typ: unix.F_WRLCK, at: 30, n: 0},
		{on: "b", op: "setlk", typ: unix.F_RDLCK, at: 5, n: 10},
		{on: "b", op: "ofd", typ: unix.F_WRLCK, at: 29, n: 1},
		{on: "b", op: "ofd", typ: unix.F_WRLCK, at: 30, n: 1},
		{on: "b", op: "setlk", typ: unix.F_WRLCK, at: 0, n: 10},
	}},
	{"read locks share, and a reader blocks a writer", nil, []lockStep{
		{on: "a", op: "ofd", typ: unix.F_RDLCK},
		{on: "b", op: "ofd", typ: unix.F_RDLCK, at: 5, n: 5},
		{on: "c", op: "ofd", typ: unix.F_WRLCK, at: 100, n: 1},
		{on: "c", op: "ofdgetlk", typ: unix.F_WRLCK, at: 6, n: 1},
		{on: "b", op: "ofd", typ: unix.F_UNLCK},
		{on: "b", op: "ofd", typ: unix.F_WRLCK, at: 6, n: 1},
	}},
	{"upgrade and downgrade", nil, []lockStep{
		{on: "a", op: "ofd", typ: unix.F_RDLCK, n: 100},
		{on: "b", op: "ofd", typ: unix.F_RDLCK, at: 50, n: 10},
		{on: "a", op: "ofd", typ: unix.F_WRLCK, n: 100},
		{on: "b", op: "ofd", typ: unix.F_UNLCK, at: 50, n: 10},
		{on: "a", op: "ofd", typ: unix.F_WRLCK, n: 100},
		{on: "b", op: "ofdgetlk", typ: unix.F_RDLCK, at: 70, n: 1},
		{on: "b", op: "ofd", typ: unix.F_RDLCK, at: 70, n: 1},
		{on: "a", op: "ofd", typ: unix.F_RDLCK, n: 100},
		{on: "b", op: "ofd", typ: unix.F_RDLCK, at: 70, n: 1},
		{on: "b", op: "ofdgetlk", typ: unix.F_WRLCK, at: 0, n: 0},
	}},
	{"unlocking the middle splits a range", nil, []lockStep{
		{on: "a", op: "ofd", typ: unix.F_WRLCK, n: 100},
		{on: "a", op: "ofd", typ: unix.F_UNLCK, at: 40, n: 20},
		{on: "b", op: "ofd", typ: unix.F_WRLCK, at: 45, n: 10},
		{on: "b", op: "ofd", typ: unix.F_WRLCK, at: 39, n: 1},
		{on: "b", op: "ofd", typ: unix.F_WRLCK, at: 60, n: 1},
		{on: "c", op: "ofdgetlk", typ: unix.F_RDLCK, at: 0, n: 0},
		{on: "c", op: "ofdgetlk", typ: unix.F_RDLCK, at: 56, n: 0},
		{on: "c", op: "ofdgetlk", typ: unix.F_RDLCK, at: 60, n: 0},
	}},
	{"unlocking part of a range, and changing the type of part of it", nil, []lockStep{
		{on: "a", op: "ofd", typ: unix.F_WRLCK, at: 10, n: 30},
		{on: "a", op: "ofd", typ: unix.F_UNLCK, at: 0, n: 20},
		{on: "a", op: "ofd", typ: unix.F_RDLCK, at: 30, n: 100},
		{on: "b", op: "ofdgetlk", typ: unix.F_WRLCK, at: 0, n: 0},
		{on: "b", op: "ofdgetlk", typ: unix.F_RDLCK, at: 0, n: 0},
		{on: "b", op: "ofd", typ: unix.F_RDLCK, at: 25, n: 10},
		{on: "b", op: "ofd", typ: unix.F_RDLCK, at: 30, n: 10},
	}},
	{"a negative length, SEEK_CUR and SEEK_END ranges", nil, []lockStep{
		{on: "a", op: "ofd", typ: unix.F_WRLCK, at: 20, n: -5},
		{on: "b", op: "ofdgetlk", typ: unix.F_WRLCK, at: 0, n: 0},
		{on: "a", op: "seek", at: 50},
		{on: "a", op: "ofd", typ: unix.F_WRLCK, from: unix.SEEK_CUR, at: 10, n: 5},
		{on: "b", op: "ofdgetlk", typ: unix.F_WRLCK, at: 21, n: 0},
		{on: "a", op: "ofd", typ: unix.F_RDLCK, from: unix.SEEK_END, at: -10, n: 0},
		{on: "b", op: "ofdgetlk", typ: unix.F_WRLCK, at: 66, n: 0},
		{on: "b", op: "ofd", typ: unix.F_WRLCK, at: 0, n: 0},
	}},
	{"invalid ranges and arguments", nil, []lockStep{
		{on: "a", op: "ofd", typ: unix.F_WRLCK, at: -1, n: 1},
		{on: "a", op: "ofd", typ: unix.F_WRLCK, at: 0, n: -1},
		{on: "a", op: "ofd", typ: unix.F_WRLCK, from: unix.SEEK_END, at: -101, n: 1},
		{on: "a", op: "ofd", typ: 7, at: 0, n: 1},
		{on: "a", op: "ofd", typ: unix.F_WRLCK, at: 0, n: 1, pid: 1},
		{on: "a", op: "ofdgetlk", typ: unix.F_UNLCK, at: 0, n: 1},
	}},
	{"a lock needs the description open for its type", map[string]int{"r": os.O_RDONLY, "w": os.O_WRONLY}, []lockStep{
		{on: "r", op: "setlk", typ: unix.F_WRLCK},
		{on: "r", op: "ofd", typ: unix.F_WRLCK},
		{on: "r", op: "setlk", typ: unix.F_RDLCK},
		{on: "w", op: "setlk", typ: unix.F_RDLCK},
		{on: "w", op: "ofd", typ: unix.F_RDLCK},
		{on: "w", op: "ofd", typ: unix.F_WRLCK, at: 200},
		{on: "r", op: "getlk", typ: unix.F_WRLCK},
		{on: "w", op: "ofdgetlk", typ: unix.F_RDLCK},
	}},
	{"a process's POSIX locks merge across its descriptions and conflict with OFD locks", nil, []lockStep{
		{on: "a", op: "setlk", typ: unix.F_WRLCK, n: 10},
		{on: "b", op: "setlk", typ: unix.F_WRLCK, at: 5, n: 10},
		{on: "b", op: "getlk", typ: unix.F_WRLCK, n: 0},
		{on: "c", op: "ofdgetlk", typ: unix.F_RDLCK, n: 0},
		{on: "c", op: "ofd", typ: unix.F_RDLCK, at: 14, n: 1},
		{on: "c", op: "ofd", typ: unix.F_RDLCK, at: 15, n: 1},
		{on: "c", op: "getlk", typ: unix.F_WRLCK, n: 0},
		// Closing any of the process's descriptions of the file drops all of them.
		{on: "b", op: "close"},
		{on: "c", op: "ofd", typ: unix.F_WRLCK, n: 15},
		{on: "a", op: "setlk", typ: unix.F_RDLCK, at: 14, n: 1},
	}},
	{"flock conflicts, sharing and conversion", nil, []lockStep{
		{on: "a", op: "flock", typ: unix.LOCK_EX | unix.LOCK_NB},
		{on: "b", op: "flock", typ: unix.LOCK_EX | unix.LOCK_NB},
		{on: "b", op: "flock", typ: unix.LOCK_SH | unix.LOCK_NB},
		{on: "a", op: "flock", typ: unix.LOCK_SH | unix.LOCK_NB},
		{on: "b", op: "flock", typ: unix.LOCK_SH | unix.LOCK_NB},
		{on: "c", op: "flock", typ: unix.LOCK_EX | unix.LOCK_NB},
		{on: "a", op: "flock", typ: unix.LOCK_UN},
		{on: "b", op: "flock", typ: unix.LOCK_UN},
		{on: "c", op: "flock", typ: unix.LOCK_EX | unix.LOCK_NB},
		{on: "a", op: "flock", typ: 0},
	}},
	{"flock and POSIX locks ignore each other", nil, []lockStep{
		{on: "a", op: "flock", typ: unix.LOCK_EX | unix.LOCK_NB},
		{on: "b", op: "ofd", typ: unix.F_WRLCK},
		{on: "b", op: "setlk", typ: unix.F_WRLCK},
		{on: "c", op: "ofdgetlk", typ: unix.F_WRLCK},
		{on: "c", op: "flock", typ: unix.LOCK_SH | unix.LOCK_NB},
	}},
	{"locks on a read-only description: flock of any kind, POSIX read locks", map[string]int{"a": os.O_RDONLY, "b": os.O_RDONLY}, []lockStep{
		{on: "a", op: "flock", typ: unix.LOCK_EX | unix.LOCK_NB},
		{on: "b", op: "flock", typ: unix.LOCK_SH | unix.LOCK_NB},
		{on: "b", op: "ofd", typ: unix.F_RDLCK},
		{on: "a", op: "ofdgetlk", typ: unix.F_WRLCK},
	}},
}

// runLockCase performs a case's steps on a fresh 100-byte file in dir and returns what each
// answered. l_pid is left out: other nodes' holders show as 0 (docs/fs.md).
func runLockCase(t *testing.T, dir string, tc lockCase) []string {
	p := filepath.Join(dir, "f")
	must(t, os.WriteFile(p, make([]byte, 100), 0o644))
	files := map[string]*os.File{}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	var out []string
	for _, s := range tc.steps {
		f := files[s.on]
		if f == nil {
			mode, ok := tc.modes[s.on]
			if !ok {
				mode = os.O_RDWR
			}
			var err error
			f, err = os.OpenFile(p, mode, 0)
			must(t, err)
			files[s.on] = f
		}
		lk := unix.Flock_t{Type: s.typ, Whence: s.from, Start: s.at, Len: s.n, Pid: s.pid}
		var err error
		got := ""
		switch s.op {
		case "setlk":
			err = unix.FcntlFlock(f.Fd(), unix.F_SETLK, &lk)
		case "ofd":
			err = unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk)
		case "getlk", "ofdgetlk":
			cmd := unix.F_GETLK
			if s.op == "ofdgetlk" {
				cmd = unix.F_OFD_GETLK
			}
			if err = unix.FcntlFlock(f.Fd(), cmd, &lk); err == nil {
				got = fmt.Sprintf(" type=%d whence=%d start=%d len=%d", lk.Type, lk.Whence, lk.Start, lk.Len)
				if lk.Type == unix.F_UNLCK {
					got = " unlocked"
				}
			}
		case "flock":
			err = unix.Flock(int(f.Fd()), int(s.typ))
		case "seek":
			_, err = f.Seek(s.at, 0)
		case "close":
			err = f.Close()
			delete(files, s.on)
		default:
			t.Fatalf("unknown step %q", s.op)
		}
		out = append(out, fmt.Sprintf("%s %s %+v: %s%s", s.on, s.op, s, errName(err), got))
	}
	return out
}

// TestLockCallsAnswerAsLocally runs the same lock calls on a local directory and on another
// node's through the mount, and wants the same answers.
func TestLockCallsAnswerAsLocally(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	n1, n2 := c.node("n1"), c.node("n2")
	n1.mountTree(5 * time.Second)
	for i, tc := range lockCases {
		t.Run(tc.name, func(t *testing.T) {
			name := fmt.Sprintf("lockcase%02d", i)
			must(t, os.Mkdir(n2.disk(name), 0o755))
			want := runLockCase(t, t.TempDir(), tc)
			got := runLockCase(t, n1.path("n2", name), tc)
			if !slices.Equal(got, want) {
				t.Errorf("through the mount:\n%s\nlocally:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}
