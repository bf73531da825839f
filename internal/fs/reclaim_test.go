package fs

import (
	"errors"
	"os"
	"testing"
	"time"
)

// TestLockReclaimedAfterOwnerRestart: a POSIX lock taken through the tree holds again on its
// owner once the owner's file server restarted, the file open before stays usable, and the
// holder can still unlock.
func TestLockReclaimedAfterOwnerRestart(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	n1, n2 := c.node("n1"), c.node("n2")
	n1.mountTree(time.Second)
	must(t, os.WriteFile(n2.disk("f"), make([]byte, 10), 0o644))
	a := startLockProc(t, n1.path("n2", "f"))
	if got := a.do("lk w 0 1"); got != "ok" {
		t.Fatalf("A locks byte 0: %s", got)
	}
	if got := a.do("fl ex"); got != "ok" {
		t.Fatalf("A flocks the file: %s", got)
	}

	// Twice: the files opened again are opened again after the next restart too.
	for i := range 2 {
		n2.restart(ServerConfig{})
		eventually(t, 10*time.Second, "the lock reclaimed on the restarted owner", func() error {
			if n1.mount.reclaimsDone() < uint64(i+1) || !n2.lockedOnDisk(t, "f") {
				return errors.New("not locked")
			}
			return nil
		})
	}
	b := startLockProc(t, n2.disk("f"))
	if got := b.do("lk w 0 1"); got != "EAGAIN" {
		t.Fatalf("a process on the owner locks A's byte: %s, want EAGAIN", got)
	}
	if got := b.do("fl sh"); got != "EAGAIN" {
		t.Fatalf("a process on the owner flocks A's file: %s, want EAGAIN", got)
	}
	if got := a.do("fl un"); got != "ok" {
		t.Fatalf("A unflocks after the restart: %s, want ok", got)
	}
	if got := b.do("fl sh"); got != "ok" {
		t.Fatalf("a process on the owner flocks the file A unflocked: %s, want ok", got)
	}
	if got := a.do("lk u 0 1"); got != "ok" {
		t.Fatalf("A unlocks after the restart: %s, want ok", got)
	}
	if got := b.do("lk w 0 1"); got != "ok" {
		t.Fatalf("a process on the owner locks the byte A unlocked: %s, want ok", got)
	}
}

// TestLockReclaimRefused: a lock taken by someone else while the owner's file server was down
// wins; the holder hears of its loss at its next lock call (EIO), and later calls work.
func TestLockReclaimRefused(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	n1, n2 := c.node("n1"), c.node("n2")
	n1.mountTree(time.Second)
	must(t, os.WriteFile(n2.disk("f"), make([]byte, 10), 0o644))
	a := startLockProc(t, n1.path("n2", "f"))
	if got := a.do("lk w 0 1"); got != "ok" {
		t.Fatalf("A locks byte 0: %s", got)
	}

	n2.stop()
	b := startLockProc(t, n2.disk("f"))
	if got := b.do("lk w 0 1"); got != "ok" {
		t.Fatalf("a process on the owner locks byte 0 while the server is down: %s", got)
	}
	n2.start(ServerConfig{})
	eventually(t, 10*time.Second, "the reclaim done", func() error {
		if n1.mount.reclaimsDone() == 0 {
			return errors.New("not yet")
		}
		return nil
	})
	if got := a.do("lk w 5 1"); got != "EIO" {
		t.Fatalf("A's next lock call after its lock was lost: %s, want EIO", got)
	}
	if got := a.do("lk w 5 1"); got != "ok" {
		t.Fatalf("A's lock call after that: %s, want ok", got)
	}
	if got := a.do("lk w 0 1"); got != "EAGAIN" {
		t.Fatalf("A locks byte 0, which the owner's process holds: %s, want EAGAIN", got)
	}
}

func (m *Mounted) reclaimsDone() uint64 { return m.stats.reclaims.Load() }

// TestLockWaitAcrossOwnerRestart: a process waiting for a lock through the tree goes on
// waiting after a restart of the owner's file server, the holder (on the same node) keeping
// its lock, and gets it when the holder unlocks. (An attempt of the wait made while the server
// was down ends the wait with EIO or ENOTCONN, as for any owner found down: the process then
// waits again.)
func TestLockWaitAcrossOwnerRestart(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	n1, n2 := c.node("n1"), c.node("n2")
	n1.mountTree(time.Second)
	must(t, os.WriteFile(n2.disk("f"), make([]byte, 10), 0o644))
	a := startLockProc(t, n1.path("n2", "f"))
	b := startLockProc(t, n1.path("n2", "f"))
	if got := a.do("lk w 0 1"); got != "ok" {
		t.Fatalf("A locks byte 0: %s", got)
	}
	b.send("lkw w 0 1")
	n2.awaitLockWaits(t, 1)

	n2.restart(ServerConfig{})
	eventually(t, 10*time.Second, "the reclaim done", func() error {
		if n1.mount.reclaimsDone() == 0 {
			return errors.New("not yet")
		}
		return nil
	})
	switch got := b.answer(300 * time.Millisecond); got {
	case "(none)":
	case "EIO", "ENOTCONN":
		b.send("lkw w 0 1")
	default:
		t.Fatalf("B's wait across the restart, A still holding: %s, want it waiting", got)
	}
	n2.awaitLockWaits(t, 1)
	if got := b.answer(300 * time.Millisecond); got != "(none)" {
		t.Fatalf("B's wait after the restart, A still holding: %s, want it waiting", got)
	}
	if got := a.do("lk u 0 1"); got != "ok" {
		t.Fatalf("A unlocks: %s", got)
	}
	if got := b.answer(10 * time.Second); got != "ok" {
		t.Fatalf("B's wait once A unlocked: %s, want ok", got)
	}
}
