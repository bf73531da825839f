package fs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Coherence across three nodes: n2 owns the files; n1 and n3 mount the tree, and n2's own
// mount reaches them without gRPC. A change through one mount must be seen by the others' next
// call, with no waiting: each reader first caches the old state.

func listNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	must(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestChangesThroughOneMountAreSeenByTheOthersAtOnce(t *testing.T) {
	c := newTestCluster(t, "n1", "n2", "n3")
	n1, n2, n3 := c.node("n1"), c.node("n2"), c.node("n3")
	for _, n := range []*testNode{n1, n2, n3} {
		n.mountTree(5 * time.Second)
	}
	writer := func(p ...string) string { return n1.path("n2", p...) }
	readers := map[string]func(p ...string) string{
		"other node": func(p ...string) string { return n3.path("n2", p...) },
		"owner":      func(p ...string) string { return n2.path("n2", p...) },
	}

	for round := range 3 {
		for who, reader := range readers {
			dir := fmt.Sprintf("round%d-%s", round, who[:5])
			must(t, os.Mkdir(writer(dir), 0o755))
			f := filepath.Join(dir, "f")

			// Content.
			must(t, os.WriteFile(writer(f), []byte("old content"), 0o644))
			if got := readFile(t, reader(f)); got != "old content" {
				t.Fatalf("%s read %q", who, got)
			}
			must(t, os.WriteFile(writer(f), []byte("new"), 0o644))
			if got := readFile(t, reader(f)); got != "new" {
				t.Fatalf("%s read %q after the write, want %q", who, got, "new")
			}
			// A write in the middle of a page the reader holds.
			fw, err := os.OpenFile(writer(f), os.O_WRONLY, 0)
			must(t, err)
			_, err = fw.WriteAt([]byte("X"), 1)
			must(t, err)
			fw.Close()
			if got := readFile(t, reader(f)); got != "nXw" {
				t.Fatalf("%s read %q after an overwrite", who, got)
			}

			// Attributes.
			st, err := os.Stat(reader(f))
			must(t, err)
			must(t, os.Chmod(writer(f), 0o600))
			app, err := os.OpenFile(writer(f), os.O_WRONLY|os.O_APPEND, 0)
			must(t, err)
			_, err = app.WriteString(" and more")
			must(t, err)
			app.Close()
			st2, err := os.Stat(reader(f))
			must(t, err)
			if st2.Mode().Perm() != 0o600 || st2.Size() != st.Size()+9 {
				t.Fatalf("%s sees mode %v size %d, want 0600 and %d", who, st2.Mode(), st2.Size(), st.Size()+9)
			}

			// Entries: created, listed, removed, renamed, including names the reader was told
			// did not exist.
			_, err = os.Stat(reader(dir, "later"))
			wantErrno(t, err, syscall.ENOENT)
			names := listNames(t, reader(dir))
			must(t, os.WriteFile(writer(dir, "later"), []byte("l"), 0o644))
			if _, err := os.Stat(reader(dir, "later")); err != nil {
				t.Fatalf("%s: new file: %v", who, err)
			}
			if got := listNames(t, reader(dir)); len(got) != len(names)+1 || !slices.Contains(got, "later") {
				t.Fatalf("%s lists %q after a create", who, got)
			}
			// A change of one name leaves the reader caching the other names of the directory,
			// found and not found: later changes of those must reach it too.
			must(t, os.WriteFile(writer(dir, "other"), []byte("o"), 0o644))
			_, err = os.Stat(reader(dir, "other"))
			must(t, err)
			_, err = os.Stat(reader(dir, "ghost"))
			wantErrno(t, err, syscall.ENOENT)
			must(t, os.WriteFile(writer(dir, "third"), nil, 0o644))
			must(t, os.Remove(writer(dir, "other")))
			must(t, os.WriteFile(writer(dir, "ghost"), nil, 0o644))
			if _, err := os.Stat(reader(dir, "other")); !os.IsNotExist(err) {
				t.Fatalf("%s still sees a file removed after another name changed: %v", who, err)
			}
			if _, err := os.Stat(reader(dir, "ghost")); err != nil {
				t.Fatalf("%s does not see a file created after another name changed: %v", who, err)
			}
			must(t, os.Remove(writer(dir, "third")))
			must(t, os.Remove(writer(dir, "ghost")))
			must(t, os.Rename(writer(dir, "later"), writer(dir, "renamed")))
			if _, err := os.Stat(reader(dir, "later")); !os.IsNotExist(err) {
				t.Fatalf("%s still sees the old name: %v", who, err)
			}
			if got := readFile(t, reader(dir, "renamed")); got != "l" {
				t.Fatalf("%s read %q under the new name", who, got)
			}
			must(t, os.Remove(writer(dir, "renamed")))
			if _, err := os.Stat(reader(dir, "renamed")); !os.IsNotExist(err) {
				t.Fatalf("%s still sees a removed file: %v", who, err)
			}
			if got := listNames(t, reader(dir)); slices.Contains(got, "renamed") {
				t.Fatalf("%s lists %q after the remove", who, got)
			}
		}
	}
}

func TestSharedMappingSeesAnotherNodesWrite(t *testing.T) {
	c := newTestCluster(t, "n1", "n2", "n3")
	n1, n3 := c.node("n1"), c.node("n3")
	n1.mountTree(5 * time.Second)
	n3.mountTree(5 * time.Second)
	content := bytes.Repeat([]byte("a"), 8192)
	must(t, os.WriteFile(n1.path("n2", "mapped"), content, 0o644))
	// The mapping is made by another process on n3 (see helper_test.go).
	m := startMapper(t, n3.path("n2", "mapped"))
	if m.byteAt(t, 5000) != 'a' {
		t.Fatalf("mapping does not show the file (%s)", m.Sum)
	}
	w, err := os.OpenFile(n1.path("n2", "mapped"), os.O_WRONLY, 0)
	must(t, err)
	_, err = w.WriteAt([]byte("b"), 5000)
	must(t, err)
	w.Close()
	if got := m.byteAt(t, 5000); got != 'b' {
		t.Fatalf("the mapping on n3 shows %q after n1's write returned, want 'b'", got)
	}
}

func TestDirectChangesOnTheOwnersDiskAreSeen(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	n1, n2 := c.node("n1"), c.node("n2")
	n1.mountTree(5 * time.Second)
	must(t, os.Mkdir(n2.disk("d"), 0o755))
	must(t, os.WriteFile(n2.disk("d", "f"), []byte("v1"), 0o644))
	p := n1.path("n2", "d", "f")
	if got := readFile(t, p); got != "v1" {
		t.Fatalf("read %q", got)
	}
	names := listNames(t, n1.path("n2", "d"))
	_, err := os.Stat(n1.path("n2", "d", "new"))
	wantErrno(t, err, syscall.ENOENT)

	// Changes made on the owner's disk arrive by the disk watcher, shortly after.
	must(t, os.WriteFile(n2.disk("d", "f"), []byte("version 2"), 0o644))
	eventually(t, 2*time.Second, "content written on the owner's disk", func() error {
		if got, err := os.ReadFile(p); err != nil || string(got) != "version 2" {
			return fmt.Errorf("read %q, %v", got, err)
		}
		return nil
	})
	must(t, os.WriteFile(n2.disk("d", "new"), nil, 0o644))
	eventually(t, 2*time.Second, "file created on the owner's disk", func() error {
		if _, err := os.Stat(n1.path("n2", "d", "new")); err != nil {
			return err
		}
		if got := listNames(t, n1.path("n2", "d")); len(got) != len(names)+1 {
			return fmt.Errorf("listing %q", got)
		}
		return nil
	})
	must(t, os.Chmod(n2.disk("d", "f"), 0o600))
	eventually(t, 2*time.Second, "mode changed on the owner's disk", func() error {
		st, err := os.Stat(p)
		if err != nil || st.Mode().Perm() != 0o600 {
			return fmt.Errorf("stat %v %v", st, err)
		}
		return nil
	})
	must(t, os.Rename(n2.disk("d", "f"), n2.disk("d", "g")))
	eventually(t, 2*time.Second, "file renamed on the owner's disk", func() error {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			return fmt.Errorf("old name: %v", err)
		}
		if got := readFile(t, n1.path("n2", "d", "g")); got != "version 2" {
			return fmt.Errorf("new name reads %q", got)
		}
		return nil
	})
}

func TestPOSIXLocksHoldAcrossNodes(t *testing.T) {
	c := newTestCluster(t, "n1", "n2", "n3")
	n1, n3 := c.node("n1"), c.node("n3")
	n1.mountTree(5 * time.Second)
	n3.mountTree(5 * time.Second)
	must(t, os.WriteFile(n1.path("n2", "lockme"), nil, 0o644))

	// This process takes a write lock through n1's mount.
	f, err := os.OpenFile(n1.path("n2", "lockme"), os.O_RDWR, 0)
	must(t, err)
	lk := unix.Flock_t{Type: unix.F_WRLCK}
	must(t, unix.FcntlFlock(f.Fd(), unix.F_SETLK, &lk))

	// Another process through n3's mount is refused, and sees who holds it.
	if got := startLockHolder(t, false, n3.path("n2", "lockme")).result(); got != "EAGAIN" {
		t.Fatalf("second lock through another node: %s, want EAGAIN", got)
	}
	// A waiter gets it once this process closes the file (which drops its POSIX locks).
	waiter := startLockHolder(t, true, n3.path("n2", "lockme"))
	got := make(chan string, 1)
	go func() { got <- waiter.result() }()
	select {
	case r := <-got:
		t.Fatalf("waiter got %q while the lock is held", r)
	case <-time.After(200 * time.Millisecond):
	}
	f.Close()
	select {
	case r := <-got:
		if r != "ok" {
			t.Fatalf("waiter: %s", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waiter did not get the lock after the holder closed the file")
	}
	// And the owner's local processes are bound by it too.
	local, err := os.OpenFile(c.node("n2").disk("lockme"), os.O_RDWR, 0)
	must(t, err)
	defer local.Close()
	var probe = unix.Flock_t{Type: unix.F_WRLCK}
	must(t, unix.FcntlFlock(local.Fd(), unix.F_OFD_GETLK, &probe))
	if probe.Type != unix.F_WRLCK {
		t.Fatalf("a process on the owner sees lock type %d, want a write lock", probe.Type)
	}
}

// Two nodes write one file at once: both finish promptly (neither waits on the other's
// kernel), and afterwards every node reads what each wrote in its own blocks.
func TestConcurrentWritersFromTwoNodes(t *testing.T) {
	c := newTestCluster(t, "n1", "n2", "n3")
	n1, n3 := c.node("n1"), c.node("n3")
	n1.mountTree(5 * time.Second)
	n3.mountTree(5 * time.Second)
	const blocks, size = 200, 4096
	must(t, os.WriteFile(n1.path("n2", "shared"), make([]byte, blocks*size), 0o644))
	// Both read it first, so both hold its pages.
	readFile(t, n1.path("n2", "shared"))
	readFile(t, n3.path("n2", "shared"))

	start := time.Now()
	errs := make(chan error, 2)
	for i, n := range []*testNode{n1, n3} {
		go func() {
			f, err := os.OpenFile(n.path("n2", "shared"), os.O_RDWR, 0)
			if err != nil {
				errs <- err
				return
			}
			defer f.Close()
			block := bytes.Repeat([]byte{byte('A' + i)}, size)
			for b := i; b < blocks; b += 2 {
				if _, err := f.WriteAt(block, int64(b*size)); err != nil {
					errs <- err
					return
				}
				// Read a block the other node writes, to keep both caches busy.
				f.ReadAt(make([]byte, size), int64((b^1)*size))
			}
			errs <- nil
		}()
	}
	for range 2 {
		must(t, <-errs)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("concurrent writers took %v: they waited on each other", took)
	}
	for _, p := range []string{n1.path("n2", "shared"), n3.path("n2", "shared"), c.node("n2").disk("shared")} {
		got := readFile(t, p)
		for b := range blocks {
			if want := byte('A' + b%2); got[b*size] != want || got[b*size+size-1] != want {
				t.Fatalf("%s: block %d holds %q, want %q", p, b, got[b*size], want)
			}
		}
	}
}

// The owner's table of what each client may cache stays within its limit: a client that
// looked at more files than that drops its cache of the owner and starts again, and changes
// are still seen at once afterwards.
func TestCacheTableStaysBoundedAndCoherent(t *testing.T) {
	const limit, files = 200, 600
	c := newTestCluster(t, "n1", "n2", "n3")
	n1, n2, n3 := c.node("n1"), c.node("n2"), c.node("n3")
	n2.restart(ServerConfig{cacheLimit: limit})
	n1.mountTree(5 * time.Second)
	n3.mountTree(5 * time.Second)
	must(t, os.Mkdir(n2.disk("many"), 0o755))
	for i := range files {
		must(t, os.WriteFile(n2.disk("many", fmt.Sprintf("f%d", i)), []byte("old"), 0o644))
	}
	flushesBefore := n1.mount.Stats().Flushes
	for i := range files {
		_, err := os.Stat(n1.path("n2", "many", fmt.Sprintf("f%d", i)))
		must(t, err)
	}
	eventually(t, 10*time.Second, "the table back under its limit", func() error {
		if n := n2.server.cache.size(); n > limit {
			return fmt.Errorf("%d entries, limit %d", n, limit)
		}
		return nil
	})
	if n1.mount.Stats().Flushes == flushesBefore {
		t.Fatal("n1 was not made to drop its cache")
	}
	eventually(t, 5*time.Second, "n1 watching again", func() error {
		if !n2.watching("n1") {
			return errors.New("not watching")
		}
		return nil
	})

	// What n1 caches from now on is invalidated as before.
	for i := range 3 {
		name := fmt.Sprintf("f%d", i)
		if got := readFile(t, n1.path("n2", "many", name)); got != "old" {
			t.Fatalf("n1 read %q from %s", got, name)
		}
		must(t, os.WriteFile(n3.path("n2", "many", name), []byte("newer"), 0o644))
		if got := readFile(t, n1.path("n2", "many", name)); got != "newer" {
			t.Fatalf("n1 read %q from %s after n3's write, want %q", got, name, "newer")
		}
	}
	if st := n2.server.Stats(); st.CacheEntries > limit {
		t.Fatalf("Stats().CacheEntries = %d, over the limit %d", st.CacheEntries, limit)
	}
}

// A process working inside a directory (its cwd, or a descriptor it opens relative to) that
// another node renames, itself or an ancestor, goes on working there, as locally: the client
// names nodes to the owner by path, so it moves the directory's node where the rename put it.
func TestWorkingDirectoryFollowsAnotherNodesRename(t *testing.T) {
	c := newTestCluster(t, "n1", "n2", "n3")
	n1, n2, n3 := c.node("n1"), c.node("n2"), c.node("n3")
	for _, n := range []*testNode{n1, n2, n3} {
		n.mountTree(5 * time.Second)
	}
	must(t, os.MkdirAll(n2.disk("top", "a", "s"), 0o755))
	must(t, os.WriteFile(n2.disk("top", "a", "s", "f"), []byte("F"), 0o644))
	for _, who := range []*testNode{n3, n2} {
		t.Run("seen from "+who.name, func(t *testing.T) {
			cwd, err := unix.Open(who.path("n2", "top", "a", "s"), unix.O_PATH|unix.O_DIRECTORY, 0)
			must(t, err)
			defer unix.Close(cwd)
			// The new parent directory is known to the client, as when it was listed.
			listNames(t, who.path("n2", "top"))
			must(t, os.Rename(n1.path("n2", "top", "a"), n1.path("n2", "top", "b")))

			fd, err := unix.Openat(cwd, "f", unix.O_RDONLY, 0)
			if err != nil {
				t.Fatalf("reading beside the working directory after the rename: %v", err)
			}
			buf := make([]byte, 8)
			k, _ := unix.Read(fd, buf)
			unix.Close(fd)
			if string(buf[:k]) != "F" {
				t.Fatalf("read %q", buf[:k])
			}
			fd, err = unix.Openat(cwd, "g", unix.O_WRONLY|unix.O_CREAT, 0o644)
			if err != nil {
				t.Fatalf("creating in the working directory after the rename: %v", err)
			}
			unix.Close(fd)
			if _, err := os.Stat(n2.disk("top", "b", "s", "g")); err != nil {
				t.Fatalf("the file made there is not in the moved directory: %v", err)
			}
			must(t, os.Remove(n2.disk("top", "b", "s", "g")))
			must(t, os.Rename(n1.path("n2", "top", "b"), n1.path("n2", "top", "a")))
		})
	}
}

// The same with the directory renamed on the owner's disk directly, by a process of its own: the
// disk watcher's rename event says where it went. An exchange there cannot be told from a move
// and its move back; the names are right afterwards all the same.
func TestWorkingDirectoryFollowsARenameOnTheOwnersDisk(t *testing.T) {
	c := newTestCluster(t, "n1", "n2", "n3")
	n2, n3 := c.node("n2"), c.node("n3")
	for _, n := range []*testNode{n2, n3} {
		n.mountTree(5 * time.Second)
	}
	must(t, os.MkdirAll(n2.disk("top", "a", "s"), 0o755))
	must(t, os.MkdirAll(n2.disk("other"), 0o755))
	must(t, os.WriteFile(n2.disk("top", "a", "s", "f"), []byte("F"), 0o644))
	for _, to := range [][]string{{"top", "b"}, {"other", "b"}} {
		t.Run("to "+filepath.Join(to...), func(t *testing.T) {
			cwd, err := unix.Open(n3.path("n2", "top", "a", "s"), unix.O_PATH|unix.O_DIRECTORY, 0)
			must(t, err)
			defer unix.Close(cwd)
			listNames(t, n3.path("n2", to[0]))
			must(t, os.Rename(n2.disk("top", "a"), n2.disk(to...)))
			defer func() { must(t, os.Rename(n2.disk(to...), n2.disk("top", "a"))) }()

			eventually(t, 5*time.Second, "the working directory followed", func() error {
				fd, err := unix.Openat(cwd, "f", unix.O_RDONLY, 0)
				if err != nil {
					return fmt.Errorf("reading beside the working directory after the rename: %w", err)
				}
				unix.Close(fd)
				return nil
			})
			fd, err := unix.Openat(cwd, "g", unix.O_WRONLY|unix.O_CREAT, 0o644)
			if err != nil {
				t.Fatalf("creating in the working directory after the rename: %v", err)
			}
			unix.Close(fd)
			if _, err := os.Stat(n2.disk(append(to, "s", "g")...)); err != nil {
				t.Fatalf("the file made there is not in the moved directory: %v", err)
			}
			must(t, os.Remove(n2.disk(append(to, "s", "g")...)))
		})
	}
	t.Run("exchange", func(t *testing.T) {
		must(t, os.MkdirAll(n2.disk("top", "c"), 0o755))
		must(t, os.WriteFile(n2.disk("top", "c", "f"), []byte("C"), 0o644))
		eventually(t, 5*time.Second, "top/a back on n3", func() error {
			for _, p := range []string{"top/a/s/f", "top/c/f"} {
				if _, err := os.ReadFile(n3.path("n2", p)); err != nil {
					return err
				}
			}
			return nil
		})
		must(t, unix.Renameat2(unix.AT_FDCWD, n2.disk("top", "a"), unix.AT_FDCWD, n2.disk("top", "c"), unix.RENAME_EXCHANGE))
		eventually(t, 5*time.Second, "the exchange seen on n3", func() error {
			for p, want := range map[string]string{"top/c/s/f": "F", "top/a/f": "C"} {
				got, err := os.ReadFile(n3.path("n2", p))
				if err != nil || string(got) != want {
					return fmt.Errorf("%s reads %q (%v)", p, got, err)
				}
			}
			return nil
		})
	})
}

// A file with two names, both looked up on n3, one of them removed or renamed over by n1: the
// file is still there by its other name, for n3 as locally. (n3's client named it to the owner
// by the name it learned last, which was gone: every call failed with ENOENT.)
func TestHardLinkStaysReachableWhenAnotherNodeRemovesALink(t *testing.T) {
	c := newTestCluster(t, "n1", "n2", "n3")
	n1, n2, n3 := c.node("n1"), c.node("n2"), c.node("n3")
	for _, n := range []*testNode{n1, n2, n3} {
		n.mountTree(5 * time.Second)
	}
	must(t, os.MkdirAll(n2.disk("d1"), 0o755))
	must(t, os.MkdirAll(n2.disk("d2"), 0o755))
	must(t, os.WriteFile(n2.disk("d1", "f"), []byte("F"), 0o644))
	for _, remove := range []struct {
		how string
		do  func() error
	}{
		{"unlink", func() error { return os.Remove(n1.path("n2", "d2", "g")) }},
		{"rename over", func() error {
			must(t, os.WriteFile(n1.path("n2", "d2", "other"), nil, 0o644))
			return os.Rename(n1.path("n2", "d2", "other"), n1.path("n2", "d2", "g"))
		}},
		{"rename away", func() error { return os.Rename(n1.path("n2", "d2", "g"), n1.path("n2", "d2", "h")) }},
	} {
		t.Run(remove.how, func(t *testing.T) {
			os.Remove(n2.disk("d2", "h"))
			os.Remove(n2.disk("d2", "g"))
			must(t, os.Link(n1.path("n2", "d1", "f"), n1.path("n2", "d2", "g")))
			for _, p := range []string{n3.path("n2", "d1", "f"), n3.path("n2", "d2", "g")} {
				if _, err := os.Stat(p); err != nil {
					t.Fatal(err)
				}
			}
			must(t, remove.do())
			st, err := os.Stat(n3.path("n2", "d1", "f"))
			if err != nil {
				t.Fatalf("the file by its remaining name: %v", err)
			}
			if got := readFile(t, n3.path("n2", "d1", "f")); got != "F" {
				t.Fatalf("read %q", got)
			}
			if st.Sys().(*syscall.Stat_t).Nlink != 2 && remove.how == "rename away" {
				t.Fatalf("nlink %d", st.Sys().(*syscall.Stat_t).Nlink)
			}
		})
	}
}

// The same when the link is removed on the owner's disk directly: the disk watcher's event says
// the name went away.
func TestHardLinkStaysReachableWhenRemovedOnTheOwnersDisk(t *testing.T) {
	c := newTestCluster(t, "n1", "n2", "n3")
	n1, n2, n3 := c.node("n1"), c.node("n2"), c.node("n3")
	for _, n := range []*testNode{n1, n2, n3} {
		n.mountTree(5 * time.Second)
	}
	must(t, os.MkdirAll(n2.disk("d1"), 0o755))
	must(t, os.MkdirAll(n2.disk("d2"), 0o755))
	must(t, os.WriteFile(n2.disk("d1", "f"), []byte("F"), 0o644))
	must(t, os.Link(n2.disk("d1", "f"), n2.disk("d2", "g")))
	for _, p := range []string{n3.path("n2", "d1", "f"), n3.path("n2", "d2", "g")} {
		if _, err := os.Stat(p); err != nil {
			t.Fatal(err)
		}
	}
	must(t, os.Remove(n2.disk("d2", "g")))
	eventually(t, 2*time.Second, "the removal seen on n3", func() error {
		if _, err := os.Lstat(n3.path("n2", "d2", "g")); err == nil {
			return errors.New("d2/g still there")
		}
		return nil
	})
	if got := readFile(t, n3.path("n2", "d1", "f")); got != "F" {
		t.Fatalf("read %q", got)
	}
}

// An exchange (RENAME_EXCHANGE) by another node: each directory keeps its own working
// directories, under the other's name.
func TestWorkingDirectoryFollowsAnotherNodesExchange(t *testing.T) {
	c := newTestCluster(t, "n1", "n2", "n3")
	n1, n2, n3 := c.node("n1"), c.node("n2"), c.node("n3")
	for _, n := range []*testNode{n1, n2, n3} {
		n.mountTree(5 * time.Second)
	}
	for _, d := range []string{"a", "c"} {
		must(t, os.MkdirAll(n2.disk("top", d), 0o755))
		must(t, os.WriteFile(n2.disk("top", d, "f"), []byte(d), 0o644))
	}
	var cwds []int
	for _, d := range []string{"a", "c"} {
		fd, err := unix.Open(n3.path("n2", "top", d), unix.O_PATH|unix.O_DIRECTORY, 0)
		must(t, err)
		defer unix.Close(fd)
		cwds = append(cwds, fd)
	}
	must(t, unix.Renameat2(unix.AT_FDCWD, n1.path("n2", "top", "a"), unix.AT_FDCWD, n1.path("n2", "top", "c"), unix.RENAME_EXCHANGE))
	for i, want := range []string{"a", "c"} {
		fd, err := unix.Openat(cwds[i], "f", unix.O_RDONLY, 0)
		if err != nil {
			t.Fatalf("in the directory first named %s: %v", want, err)
		}
		buf := make([]byte, 8)
		k, _ := unix.Read(fd, buf)
		unix.Close(fd)
		if string(buf[:k]) != want {
			t.Fatalf("in the directory first named %s: read %q", want, buf[:k])
		}
	}
	if got := readFile(t, n3.path("n2", "top", "c", "f")); got != "a" {
		t.Fatalf("top/c/f reads %q after the exchange", got)
	}
}

// A call racing another node's rename: sent by the directory's old path, it fails on the owner,
// but the client has moved its node by the time the answer comes (here: the rename, which waits
// for the client to move it, is made between the naming and the sending), so it makes the call
// again by the new path and the process inside the directory does not notice, as locally.
// (An answer that comes before the owner's invalidation: TestOpensInsideADirectoryRenamedInAStorm.)
func TestCallRacingAnotherNodesRenameIsMadeAgain(t *testing.T) {
	c := newTestCluster(t, "n1", "n2", "n3")
	n1, n2, n3 := c.node("n1"), c.node("n2"), c.node("n3")
	for _, n := range []*testNode{n1, n2, n3} {
		n.mountTree(5 * time.Second)
	}
	must(t, os.MkdirAll(n2.disk("top", "b", "sub"), 0o755))
	must(t, os.WriteFile(n2.disk("top", "b", "sub", "f"), []byte("F"), 0o644))
	listNames(t, n3.path("n2", "top"))
	f := n3.path("n2", "top", "b", "sub", "f")
	if _, err := os.Stat(f); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	hook := func() {
		once.Do(func() { must(t, os.Rename(n1.path("n2", "top", "b"), n1.path("n2", "top", "x"))) })
	}
	n3.mount.beforeOpenCall.Store(&hook)
	defer n3.mount.beforeOpenCall.Store(nil)
	got, err := os.ReadFile(f) // the kernel's entry still names the file: its OPEN goes out by the old path
	if err != nil {
		t.Fatalf("open of a file whose directory another node renamed while the open was on its way: %v", err)
	}
	if string(got) != "F" {
		t.Fatalf("read %q", got)
	}
}

// TestOpensInsideADirectoryRenamedInAStorm: a process working inside a directory that another
// node renames again and again opens a file beside it as locally, every time. (An open whose
// failure by the old path came back before the owner's invalidation of the rename failed: 8 %
// of them, until the owner's answer said which of its watch messages to wait for.)
func TestOpensInsideADirectoryRenamedInAStorm(t *testing.T) {
	c := newTestCluster(t, "n1", "n2", "n3")
	n1, n2, n3 := c.node("n1"), c.node("n2"), c.node("n3")
	for _, n := range []*testNode{n1, n2, n3} {
		n.mountTree(5 * time.Second)
	}
	must(t, os.MkdirAll(n2.disk("top", "a", "sub"), 0o755))
	must(t, os.WriteFile(n2.disk("top", "a", "sub", "f"), []byte("F"), 0o644))
	listNames(t, n3.path("n2", "top"))
	cwd, err := unix.Open(n3.path("n2", "top", "a", "sub"), unix.O_PATH|unix.O_DIRECTORY, 0)
	must(t, err)
	defer unix.Close(cwd)

	stop := make(chan struct{})
	renamed := make(chan error, 1)
	go func() {
		names := []string{"a", "b"}
		for i := 0; ; i++ {
			select {
			case <-stop:
				renamed <- nil
				return
			default:
			}
			if err := os.Rename(n1.path("n2", "top", names[i%2]), n1.path("n2", "top", names[(i+1)%2])); err != nil {
				renamed <- err
				return
			}
		}
	}()
	const opens = 300
	var failed []error
	for range opens {
		fd, err := unix.Openat(cwd, "f", unix.O_RDONLY, 0)
		if err != nil {
			failed = append(failed, err)
			continue
		}
		unix.Close(fd)
	}
	close(stop)
	must(t, <-renamed)
	if len(failed) > 0 {
		t.Fatalf("%d of %d opens beside the working directory failed while another node renamed it, the first with %v", len(failed), opens, failed[0])
	}
}
