package fs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Real programs' use of the tree across nodes, against what they do on one machine.

// mapShared maps the file at p shared and writable, as SQLite maps its wal-index, and unmaps
// it again without touching its pages (a process that faults on a FUSE file it serves itself
// can deadlock).
func mapShared(t *testing.T, p string) error {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	must(t, err)
	defer f.Close()
	must(t, f.Truncate(32768))
	m, err := unix.Mmap(int(f.Fd()), 0, 32768, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return err
	}
	return unix.Munmap(m)
}

// SQLite's wal-index (the "-shm" file of a database in WAL mode) is shared memory between
// the processes using the database: each node's kernel would keep its own copy of its pages,
// and writers on two nodes overwrote each other's commits ("database disk image is
// malformed", SIGBUS, and inserts that had succeeded gone). Mapping it through the tree fails
// instead, so SQLite reports an I/O error; other files map as before.
func TestSQLiteSharedMemoryIsNotMapped(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	n1 := c.node("n1")
	n1.mountTree(5 * time.Second)
	if err := mapShared(t, n1.path("n2", "db-shm")); !errors.Is(err, syscall.ENODEV) {
		t.Errorf("shared writable mapping of a wal-index through the tree: %v, want ENODEV", err)
	}
	// Opened again, not created: the open decides too.
	if err := mapShared(t, n1.path("n2", "db-shm")); !errors.Is(err, syscall.ENODEV) {
		t.Errorf("shared writable mapping of an existing wal-index: %v, want ENODEV", err)
	}
	if err := mapShared(t, n1.path("n2", "db")); err != nil {
		t.Errorf("shared writable mapping of another file: %v", err)
	}
	if err := mapShared(t, n1.path("n1", "db-shm")); !errors.Is(err, syscall.ENODEV) {
		t.Errorf("shared writable mapping of a wal-index through the node's own part of the tree: %v, want ENODEV", err)
	}
}

// sqlite runs the sqlite3 shell on db with sql, waiting up to 5 s for locks.
func sqlite(db, sql string) (string, error) {
	out, err := exec.Command("sqlite3", "-cmd", ".timeout 5000", db, sql).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// Two nodes inserting into one SQLite database in WAL mode: every insert either fails or is
// in the database afterwards.
func TestSQLiteWALFromTwoNodesLosesNoCommit(t *testing.T) {
	if _, err := exec.LookPath("sqlite3"); err != nil {
		t.Skip("needs sqlite3")
	}
	c := newTestCluster(t, "n1", "n2", "n3")
	n1, n2, n3 := c.node("n1"), c.node("n2"), c.node("n3")
	n1.mountTree(5 * time.Second)
	n3.mountTree(5 * time.Second)
	if out, err := sqlite(n2.disk("w.db"), "pragma journal_mode=wal; create table t(id integer primary key, v text);"); err != nil {
		t.Fatalf("making the database: %v: %s", err, out)
	}
	var mu sync.Mutex
	succeeded := 0
	var failures []string
	var wg sync.WaitGroup
	for _, db := range []string{n1.path("n2", "w.db"), n3.path("n2", "w.db"), n2.disk("w.db")} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 40 {
				out, err := sqlite(db, "insert into t(v) values(hex(randomblob(100)));")
				mu.Lock()
				if err == nil {
					succeeded++
				} else {
					failures = append(failures, out)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	// The owner's own processes, using the database by its path, go on in WAL mode.
	if succeeded < 40 {
		t.Errorf("%d inserts succeeded, want at least the owner's 40", succeeded)
	}
	out, err := sqlite(n2.disk("w.db"), "pragma integrity_check; select count(*) from t;")
	if err != nil {
		t.Fatalf("reading the database on its owner: %v: %s", err, out)
	}
	if want := fmt.Sprintf("ok\n%d", succeeded); out != want {
		t.Errorf("the database on its owner says %q, want %q (inserts that succeeded)", out, want)
	}
	for _, f := range failures {
		if !strings.Contains(f, "disk I/O error") {
			t.Errorf("an insert through the tree failed with %q, want a disk I/O error", f)
		}
	}
	// Not in WAL mode, the same database works from every node.
	if out, err := sqlite(n2.disk("w.db"), "pragma journal_mode=delete;"); err != nil || out != "delete" {
		t.Fatalf("leaving WAL mode: %v: %s", err, out)
	}
	for _, db := range []string{n1.path("n2", "w.db"), n3.path("n2", "w.db")} {
		if out, err := sqlite(db, "insert into t(v) values('x');"); err != nil {
			t.Errorf("insert in rollback mode through %s: %v: %s", db, err, out)
		}
	}
	if b, err := os.ReadFile(filepath.Join(n2.root, "w.db")); err != nil || !bytes.HasPrefix(b, []byte("SQLite format 3")) {
		t.Errorf("the database file on the owner: %v", err)
	}
}

func birthTime(t *testing.T, p string) (unix.StatxTimestamp, bool) {
	t.Helper()
	var st unix.Statx_t
	must(t, unix.Statx(unix.AT_FDCWD, p, 0, unix.STATX_BASIC_STATS|unix.STATX_BTIME, &st))
	return st.Btime, st.Mask&unix.STATX_BTIME != 0
}

// stat's %W, ls --time=birth and find -newerBt read the birth time, which statx gives only
// when asked: the tree showed none where the owner's disk keeps it.
func TestBirthTimeShownThroughTheTree(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	n1, n2 := c.node("n1"), c.node("n2")
	n1.mountTree(5 * time.Second)
	must(t, os.WriteFile(n2.disk("f"), []byte("x"), 0o644))
	must(t, os.Mkdir(n2.disk("d"), 0o755))
	for _, name := range []string{"f", "d"} {
		want, ok := birthTime(t, n2.disk(name))
		if !ok {
			t.Skip("the owner's file system keeps no birth time")
		}
		// Once while the attributes are not cached yet, once while they are.
		for range 2 {
			got, ok := birthTime(t, n1.path("n2", name))
			if !ok || got != want {
				t.Errorf("birth time of %s through the tree: %v (given: %v), want %v as on the owner's disk", name, got, ok, want)
			}
		}
	}
	var st unix.Statx_t
	must(t, unix.Statx(unix.AT_FDCWD, n1.mnt, 0, unix.STATX_BTIME, &st))
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		t.Errorf("statx of the top of the mount: mode %o, want a directory", st.Mode)
	}
}

// A program running on one node from the tree cannot be written from another, as locally
// (ETXTBSY): the other node's `cp new prog` overwrote it, and the program crashed when it
// paged in the new code. Once it has exited, the file can be written at once.
func TestRunningProgramIsNotWrittenFromAnotherNode(t *testing.T) {
	c := newTestCluster(t, "n1", "n2", "n3")
	n1, n2, n3 := c.node("n1"), c.node("n2"), c.node("n3")
	n1.mountTree(5 * time.Second)
	n3.mountTree(5 * time.Second)
	sleep, err := exec.LookPath("sleep")
	must(t, err)
	b, err := os.ReadFile(sleep)
	must(t, err)
	must(t, os.WriteFile(n2.disk("prog"), b, 0o755))
	// Through sh: the test process's own fork holds the runtime's ForkLock until the child's
	// exec returns, which the mount in this process may need to answer the exec's requests.
	prog := exec.Command("sh", "-c", `exec "$0" 60`, n1.path("n2", "prog"))
	must(t, prog.Start())
	// The program runs once its file is open on the owner for executing.
	eventually(t, 10*time.Second, "the program started", func() error {
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", prog.Process.Pid))
		if err != nil || exe != n1.path("n2", "prog") {
			return fmt.Errorf("runs %q (%v)", exe, err)
		}
		return nil
	})
	exited := false
	defer func() {
		if !exited {
			prog.Process.Kill()
			prog.Wait()
		}
	}()
	other := n3.path("n2", "prog")
	if _, err := os.OpenFile(other, os.O_WRONLY, 0); !errors.Is(err, syscall.ETXTBSY) {
		t.Errorf("opening a program running on n1 for writing from n3: %v, want ETXTBSY", err)
	}
	if err := os.WriteFile(other, []byte("new"), 0o755); !errors.Is(err, syscall.ETXTBSY) {
		t.Errorf("overwriting (O_TRUNC) a program running on n1 from n3: %v, want ETXTBSY", err)
	}
	if err := os.Truncate(other, 0); !errors.Is(err, syscall.ETXTBSY) {
		t.Errorf("truncating a program running on n1 from n3: %v, want ETXTBSY", err)
	}
	if f, err := os.Open(other); err != nil {
		t.Errorf("reading a running program from n3: %v", err)
	} else {
		f.Close()
	}
	if got, err := os.ReadFile(n2.disk("prog")); err != nil || !bytes.Equal(got, b) {
		t.Errorf("the running program on its owner's disk changed (%v)", err)
	}
	prog.Process.Kill()
	prog.Wait()
	exited = true
	// As locally, once the program is gone its file may be written: no ETXTBSY left behind by
	// the close still on its way to the owner.
	if err := os.WriteFile(other, []byte("new"), 0o755); err != nil {
		t.Errorf("overwriting the program from n3 after it exited: %v", err)
	}
}
