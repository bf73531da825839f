package fs

import (
	"errors"
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
