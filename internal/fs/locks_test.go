package fs

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fsAppendFL is FS_APPEND_FL of linux/fs.h, which x/sys/unix does not define.
const fsAppendFL = 0x20

// setAppendOnly sets or clears a file's append-only attribute (chattr +a), skipping the test
// where the disk has no such attribute.
func setAppendOnly(t *testing.T, path string, on bool) {
	t.Helper()
	f, err := os.Open(path)
	must(t, err)
	defer f.Close()
	flags, err := unix.IoctlGetInt(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	if errors.Is(err, syscall.ENOTTY) || errors.Is(err, syscall.EOPNOTSUPP) {
		t.Skipf("the disk has no append-only attribute: %v", err)
	}
	must(t, err)
	if on {
		flags |= fsAppendFL
	} else {
		flags &^= fsAppendFL
	}
	err = unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, flags)
	if on && (errors.Is(err, syscall.ENOTTY) || errors.Is(err, syscall.EOPNOTSUPP)) {
		t.Skipf("the disk has no append-only attribute: %v", err)
	}
	must(t, err)
}

// An append-only file opens for writing with O_APPEND only: its write locks must not depend
// on the owner opening it otherwise.
func TestLockWriteOnAppendOnlyFile(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	n1, n2 := c.node("n1"), c.node("n2")
	n1.mountTree(5 * time.Second)
	must(t, os.WriteFile(n2.disk("log"), nil, 0o644))
	setAppendOnly(t, n2.disk("log"), true)
	t.Cleanup(func() { setAppendOnly(t, n2.disk("log"), false) })

	f, err := os.OpenFile(n1.path("n2", "log"), os.O_WRONLY|os.O_APPEND, 0)
	must(t, err)
	defer f.Close()
	lk := unix.Flock_t{Type: unix.F_WRLCK, Start: 0, Len: 10}
	must(t, unix.FcntlFlock(f.Fd(), unix.F_SETLK, &lk))
	lk = unix.Flock_t{Type: unix.F_WRLCK, Start: 100, Len: 10}
	must(t, unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk))

	// Both hold on the owner against its own processes.
	local, err := os.Open(n2.disk("log"))
	must(t, err)
	defer local.Close()
	for _, start := range []int64{0, 100} {
		probe := unix.Flock_t{Type: unix.F_RDLCK, Start: start, Len: 1}
		must(t, unix.FcntlFlock(local.Fd(), unix.F_OFD_GETLK, &probe))
		if probe.Type != unix.F_WRLCK {
			t.Fatalf("the owner sees lock type %d at %d, want a write lock", probe.Type, start)
		}
	}
}

// serverLockOwners counts the lock descriptions the node's server keeps for its clients.
func (n *testNode) serverLockOwners() int {
	total := 0
	for _, sess := range n.server.allSessions() {
		sess.mu.Lock()
		total += len(sess.locks)
		sess.mu.Unlock()
	}
	return total
}

func setlk(fd uintptr, cmd int, typ int16, start, length int64) error {
	lk := unix.Flock_t{Type: typ, Start: start, Len: length}
	return unix.FcntlFlock(fd, cmd, &lk)
}

// An OFD lock belongs to its open file description: it goes with the description's last
// close, as locally.
func TestLockOFDReleasedWithTheDescription(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	n1, n2 := c.node("n1"), c.node("n2")
	n1.mountTree(5 * time.Second)
	p := n1.path("n2", "f")
	must(t, os.WriteFile(p, nil, 0o644))
	a, err := os.OpenFile(p, os.O_RDWR, 0)
	must(t, err)
	defer a.Close()
	b, err := os.OpenFile(p, os.O_RDWR, 0)
	must(t, err)
	defer b.Close()
	must(t, setlk(a.Fd(), unix.F_OFD_SETLK, unix.F_WRLCK, 0, 0))
	wantErrno(t, setlk(b.Fd(), unix.F_OFD_SETLK, unix.F_WRLCK, 0, 0), syscall.EAGAIN)

	// A duplicate shares the description: closing one of them keeps the lock.
	dup, err := unix.Dup(int(a.Fd()))
	must(t, err)
	must(t, unix.Close(dup))
	wantErrno(t, setlk(b.Fd(), unix.F_OFD_SETLK, unix.F_WRLCK, 0, 0), syscall.EAGAIN)

	// FUSE sends the release after close returns.
	a.Close()
	eventually(t, 5*time.Second, "OFD lock after its description was closed", func() error {
		return setlk(b.Fd(), unix.F_OFD_SETLK, unix.F_WRLCK, 0, 0)
	})
	b.Close()
	eventually(t, 5*time.Second, "lock owners forgotten", func() error {
		if n := n1.mount.locks.lockOwners(); n != 0 {
			return fmt.Errorf("the mount keeps %d lock owners", n)
		}
		if n := n2.serverLockOwners(); n != 0 {
			return fmt.Errorf("the owner keeps %d lock descriptions", n)
		}
		return nil
	})
}

// Lock owners whose locks are all gone leave no state behind on the client or the owner.
func TestLockOwnersForgotten(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	n1, n2 := c.node("n1"), c.node("n2")
	n1.mountTree(5 * time.Second)
	p := n1.path("n2", "f")
	must(t, os.WriteFile(p, nil, 0o644))
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	must(t, err)
	defer f.Close()
	for i := range 20 {
		// Locked and unlocked whole while the file stays open: by a process, by a description.
		must(t, setlk(f.Fd(), unix.F_SETLK, unix.F_WRLCK, int64(i), 1))
		must(t, setlk(f.Fd(), unix.F_SETLK, unix.F_UNLCK, 0, 0))
		must(t, setlk(f.Fd(), unix.F_OFD_SETLK, unix.F_RDLCK, int64(i), 1))
		must(t, setlk(f.Fd(), unix.F_OFD_SETLK, unix.F_UNLCK, 0, 0))
		// Locked, and closed with the lock held.
		g, err := os.OpenFile(p, os.O_RDWR, 0)
		must(t, err)
		must(t, setlk(g.Fd(), unix.F_OFD_SETLK, unix.F_WRLCK, 100, 1))
		g.Close()
	}
	eventually(t, 5*time.Second, "lock owners forgotten", func() error {
		if n := n1.mount.locks.lockOwners(); n != 0 {
			return fmt.Errorf("the mount keeps %d lock owners", n)
		}
		if n := n2.serverLockOwners(); n != 0 {
			return fmt.Errorf("the owner keeps %d lock descriptions", n)
		}
		return nil
	})
}
