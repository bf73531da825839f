package fs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/fs/fspb"
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
	a.expect("lk w 0 1", "A locks byte 0", "ok")
	a.expect("fl ex", "A flocks the file", "ok")

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
	b.expect("lk w 0 1", "a process on the owner locks A's byte", "EAGAIN")
	b.expect("fl sh", "a process on the owner flocks A's file", "EAGAIN")
	a.expect("fl un", "A unflocks after the restart", "ok")
	b.expect("fl sh", "a process on the owner flocks the file A unflocked", "ok")
	a.expect("lk u 0 1", "A unlocks after the restart", "ok")
	b.expect("lk w 0 1", "a process on the owner locks the byte A unlocked", "ok")
}

// TestLockReclaimRefused: a lock taken by someone else while the owner's file server was down
// wins; the holder hears of its loss at its next lock call (EIO), and later calls work.
func TestLockReclaimRefused(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	n1, n2 := c.node("n1"), c.node("n2")
	n1.mountTree(time.Second)
	must(t, os.WriteFile(n2.disk("f"), make([]byte, 10), 0o644))
	a := startLockProc(t, n1.path("n2", "f"))
	a.expect("lk w 0 1", "A locks byte 0", "ok")

	n2.stop()
	b := startLockProc(t, n2.disk("f"))
	b.expect("lk w 0 1", "a process on the owner locks byte 0 while the server is down", "ok")
	// Within the grace period: it makes no room for a reclaim over a lock taken meanwhile.
	n2.start(ServerConfig{reclaimGrace: time.Second})
	eventually(t, 10*time.Second, "the reclaim done", func() error {
		if n1.mount.reclaimsDone() == 0 {
			return errors.New("not yet")
		}
		return nil
	})
	a.expect("lk w 5 1", "A's next lock call after its lock was lost", "EIO")
	a.expect("lk w 5 1", "A's lock call after that", "ok")
	a.expect("lk w 0 1", "A locks byte 0, which the owner's process holds", "EAGAIN")
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
	a.expect("lk w 0 1", "A locks byte 0", "ok")
	b.send("lkw w 0 1")
	n2.awaitLockWaits(t, 1)

	// B's attempts wait for the grace period, then for A's lock again.
	n2.restart(ServerConfig{reclaimGrace: time.Second})
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
	a.expect("lk u 0 1", "A unlocks", "ok")
	if got := b.answer(10 * time.Second); got != "ok" {
		t.Fatalf("B's wait once A unlocked: %s, want ok", got)
	}
}

// TestLockGraceHoldsCompetitorsBack: after the owner's file server restarted, another node's
// lock request that reaches it before the holder's reclaim waits for the grace period and is
// then refused, rather than taking the lock; a blocking wait held back by the grace period is
// still interrupted by a signal.
func TestLockGraceHoldsCompetitorsBack(t *testing.T) {
	c := newTestCluster(t, "n1", "n2", "n3")
	n1, n2, n3 := c.node("n1"), c.node("n2"), c.node("n3")
	n1.mountTree(time.Second)
	n3.mountTree(time.Second)
	must(t, os.WriteFile(n2.disk("f"), make([]byte, 10), 0o644))
	a := startLockProc(t, n1.path("n2", "f"))
	a.expect("lk w 0 1", "A locks byte 0", "ok")
	a.expect("fl ex", "A flocks the file", "ok")

	// n1 does not hear of the restart while muted, so its reclaim comes after the
	// competitors' requests: about 6 s after the restart, as the watch stream it opens while
	// muted hears nothing until it gives up (the client's heartbeat limit).
	const grace = 8 * time.Second
	n1.mute.Store(true)
	t.Cleanup(func() { n1.mute.Store(false) }) // before the cluster's: a muted mount does not close
	n2.restart(ServerConfig{reclaimGrace: grace})
	restarted := time.Now()
	b := startLockProc(t, n3.path("n2", "f"))
	b.send("lk w 0 1")
	d := startLockProc(t, n3.path("n2", "f"))
	d.send("gk 0 1")
	e := startLockProc(t, n3.path("n2", "f"))
	e.send("lkwi 5 1 300")
	if got := e.answer(5 * time.Second); got != "EINTR" {
		t.Fatalf("a blocking wait interrupted during the grace period: %s, want EINTR", got)
	}
	if got := b.answer(300 * time.Millisecond); got != "(none)" {
		t.Fatalf("another node locks A's byte before A's reclaim: %s, want it held back", got)
	}
	n1.mute.Store(false)
	if got := b.answer(2 * grace); got != "EAGAIN" {
		t.Fatalf("another node's lock of A's byte during the grace period: %s after %v (reclaims %d), want EAGAIN after A's reclaim", got, time.Since(restarted), n1.mount.reclaimsDone())
	}
	if took := time.Since(restarted); took < grace-100*time.Millisecond {
		t.Fatalf("the competitor was answered %v after the restart, within the grace period (%v)", took, grace)
	}
	if n1.mount.reclaimsDone() == 0 {
		t.Fatal("the competitor was answered before A's reclaim")
	}
	if got := d.answer(time.Second); got != "w" {
		t.Fatalf("F_GETLK during the grace period: %s, want A's write lock", got)
	}
	b.expect("fl sh", "another node flocks A's file", "EWOULDBLOCK", "EAGAIN")
	a.expect("lk u 0 1", "A unlocks", "ok")
	a.expect("fl un", "A unflocks", "ok")
	b.expect("lk w 0 1", "another node locks the byte A unlocked", "ok")
	b.expect("fl ex", "another node flocks the file A unflocked", "ok")
}

// TestLockGraceServer: during the grace period the owner holds back the requests that take or
// test a lock, not reclaims nor unlocks; a reclaim never takes a lock someone else holds,
// during the grace period or after it.
func TestLockGraceServer(t *testing.T) {
	c := newTestCluster(t, "n2")
	n2 := c.node("n2")
	must(t, os.WriteFile(n2.disk("f"), nil, 0o644))
	const grace = time.Second
	n2.restart(ServerConfig{reclaimGrace: grace})
	end := time.Now().Add(grace)
	type client struct {
		ctx     context.Context
		session []byte
		h       uint64
	}
	open := func(node string) client {
		cl := client{ctx: withCallerNode(context.Background(), node), session: []byte("s")}
		reply, err := n2.server.Open(cl.ctx, &fspb.OpenRequest{Session: cl.session, Caller: &fspb.Caller{},
			Node: &fspb.NodeRef{Path: []byte("f")}, Flags: unix.O_RDWR})
		must(t, err)
		if reply.Errno != 0 {
			t.Fatalf("open: %v", syscall.Errno(reply.Errno))
		}
		cl.h = reply.Handle
		return cl
	}
	lock := func(cl client, req *fspb.LockRequest) *fspb.LockReply {
		t.Helper()
		req.Session, req.Handle, req.Owner, req.End = cl.session, cl.h, 1, req.Start
		reply, err := n2.server.Lock(cl.ctx, req)
		must(t, err)
		return reply
	}
	set := fspb.LockRequest_SET
	a, b := open("n1"), open("n3")

	for _, req := range []*fspb.LockRequest{
		{Op: set, Type: unix.F_WRLCK},
		{Op: set, Type: unix.F_RDLCK, Wait: 7},
		{Op: set, Type: unix.F_WRLCK, Flock: true},
		{Op: fspb.LockRequest_GET, Type: unix.F_WRLCK},
	} {
		if r := lock(b, req); r.GraceMs == 0 || r.Errno != int32(syscall.EAGAIN) || time.Duration(r.GraceMs)*time.Millisecond > grace+time.Millisecond {
			t.Fatalf("%v during the grace period: %v, want held back", req, r)
		}
	}
	for _, req := range []*fspb.LockRequest{
		{Op: set, Type: unix.F_UNLCK},
		{Op: set, Type: unix.F_UNLCK, Flock: true},
		{Op: fspb.LockRequest_RELEASE_OWNER},
		{Op: set, Type: unix.F_WRLCK, Reclaim: true},
		{Op: set, Type: unix.F_WRLCK, Flock: true, Reclaim: true},
	} {
		if r := lock(a, req); r.GraceMs != 0 || r.Errno != 0 {
			t.Fatalf("%v during the grace period: %v, want served", req, r)
		}
	}
	for _, req := range []*fspb.LockRequest{
		{Op: set, Type: unix.F_WRLCK, Reclaim: true, Wait: 8},
		{Op: fspb.LockRequest_GET, Type: unix.F_WRLCK, Reclaim: true},
	} {
		if r := lock(b, req); r.Errno != int32(syscall.EINVAL) {
			t.Fatalf("%v: %v, want EINVAL (a reclaim is a non-blocking SET)", req, r)
		}
	}
	jump := func(when string) {
		t.Helper()
		if r := lock(b, &fspb.LockRequest{Op: set, Type: unix.F_RDLCK, Reclaim: true}); r.GraceMs != 0 || r.Errno != int32(syscall.EAGAIN) {
			t.Fatalf("a reclaim of a POSIX lock another holds, %s: %v, want EAGAIN", when, r)
		}
		if r := lock(b, &fspb.LockRequest{Op: set, Type: unix.F_RDLCK, Flock: true, Reclaim: true}); r.GraceMs != 0 || r.Errno != int32(syscall.EWOULDBLOCK) {
			t.Fatalf("a reclaim of an flock another holds, %s: %v, want EWOULDBLOCK", when, r)
		}
	}
	jump("during the grace period")
	time.Sleep(time.Until(end))
	jump("after the grace period")
	if r := lock(b, &fspb.LockRequest{Op: fspb.LockRequest_GET, Type: unix.F_WRLCK}); r.GraceMs != 0 || r.Errno != 0 || r.Type != unix.F_WRLCK {
		t.Fatalf("F_GETLK after the grace period: %v, want a's write lock", r)
	}
	if r := lock(b, &fspb.LockRequest{Op: set, Type: unix.F_WRLCK, Start: 3}); r.GraceMs != 0 || r.Errno != 0 {
		t.Fatalf("a lock nobody holds after the grace period: %v, want it", r)
	}
}

// TestGracePeriodOnlyWhenLocksMayBeHeld: a file server with a state directory has a grace
// period only after a life in which clients took locks and did not release them all: not on
// its first start, nor after a clean stop with no lock held. Each kind of lock (POSIX, flock)
// keeps the record.
func TestGracePeriodOnlyWhenLocksMayBeHeld(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	n1, n2 := c.node("n1"), c.node("n2")
	n1.mountTree(time.Second)
	must(t, os.WriteFile(n2.disk("f"), make([]byte, 10), 0o644))
	// Longer than a lock call is given to answer: a grace period shows as a call that waits.
	cfg := ServerConfig{reclaimGrace: time.Minute, StateDir: filepath.Join(t.TempDir(), "fs")}
	record := filepath.Join(cfg.StateDir, lockMarkName)
	inGrace := func() bool { return time.Now().Before(n2.server.graceEnd) }

	n2.restart(cfg)
	if inGrace() {
		t.Fatal("a grace period on the first start")
	}
	for _, lock := range []string{"lk w 0 1", "fl ex"} {
		t.Run(lock, func(t *testing.T) {
			a := startLockProc(t, n1.path("n2", "f"))
			a.expect(lock, "A locks after a start without the record", "ok")
			if _, err := os.Stat(record); err != nil {
				t.Fatalf("no record of the lock: %v", err)
			}
			n2.restart(cfg)
			if !inGrace() {
				t.Fatal("no grace period after a stop with a lock held")
			}
			// The lock is released with the file.
			a.exit()
			eventually(t, 10*time.Second, "the file closed on the owner", func() error {
				if open := n2.server.Stats().OpenFiles; open != 0 {
					return fmt.Errorf("%d files open", open)
				}
				return nil
			})
			n2.restart(cfg)
			if inGrace() {
				t.Fatal("a grace period after a stop with no lock held")
			}
			if _, err := os.Stat(record); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("the record is still there after a stop with no lock held: %v", err)
			}
		})
	}
}

// TestCallRightAfterOwnerRestart: a call on a file opened before the owner's file server
// restarted, made as soon as this client has noticed the restart (its watch stream broke), before
// it has opened its files there again, waits for the file to be opened again rather than
// failing with EIO. (A call made before the client noticed goes on the broken connection and
// fails with ENOTCONN, as any call while the owner is down.)
func TestCallRightAfterOwnerRestart(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	n1, n2 := c.node("n1"), c.node("n2")
	n1.mountTree(time.Second)
	must(t, os.WriteFile(n2.disk("f"), []byte("0123456789"), 0o644))
	f, err := os.OpenFile(n1.path("n2", "f"), os.O_RDWR, 0)
	must(t, err)
	defer f.Close()
	p := n1.mount.peer("n2")
	for i := range 5 {
		p.mu.Lock()
		before := p.instance
		p.mu.Unlock()
		n2.restart(ServerConfig{})
		eventually(t, 5*time.Second, "the restart noticed", func() error {
			p.mu.Lock()
			defer p.mu.Unlock()
			if p.up && bytes.Equal(p.instance, before) {
				return errors.New("not yet")
			}
			return nil
		})
		if _, err := f.WriteAt([]byte{'a' + byte(i)}, 0); err != nil {
			t.Fatalf("restart %d: a write right after it: %v", i+1, err)
		}
		if err := f.Sync(); err != nil {
			t.Fatalf("restart %d: fsync right after it: %v", i+1, err)
		}
	}
	if got := readFile(t, n2.disk("f")); got[0] != 'e' {
		t.Fatalf("the file reads %q on the owner", got)
	}
}

// TestUnlockByCloseWhileOwnerUnreachable: a process that closes a descriptor of a file while
// the owner cannot be reached loses its POSIX locks on the file, as locally, though it keeps
// the file open by another descriptor: the unlock reaches the owner once it answers again,
// before any later lock request of that process on the file.
func TestUnlockByCloseWhileOwnerUnreachable(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	n1, n2 := c.node("n1"), c.node("n2")
	n1.mountTree(time.Second)
	must(t, os.WriteFile(n2.disk("f"), make([]byte, 10), 0o644))
	a := startLockProc(t, n1.path("n2", "f"))
	a.expect("lk w 0 1", "A locks byte 0", "ok")
	a.expect("open", "A opens the file again", "ok")

	c.gone.Store("n2", true)
	a.expect("close", "A closes its second descriptor while the owner is unreachable", "ok")
	c.gone.Delete("n2")

	b := startLockProc(t, n2.disk("f"))
	eventually(t, 5*time.Second, "A's lock dropped on the owner", func() error {
		if got := b.do("lk w 0 1"); got != "ok" {
			return fmt.Errorf("a process on the owner locks A's byte: %s", got)
		}
		return nil
	})
	b.expect("lk u 0 1", "the process on the owner unlocks", "ok")
	a.expect("lk w 0 1", "A locks byte 0 again", "ok")
	b.expect("lk w 0 1", "a process on the owner locks A's byte again", "EAGAIN")
}

// TestReclaimSurvivesOneFailedOpen: an open of a reclaim that fails as if the owner could not be
// reached, while the owner's watch stream is up on the restarted server, is made once more on a
// new connection rather than losing the files (whose calls would fail with EIO for good).
func TestReclaimSurvivesOneFailedOpen(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	n1, n2 := c.node("n1"), c.node("n2")
	n1.mountTree(time.Second)
	must(t, os.WriteFile(n2.disk("f"), []byte("0123456789"), 0o644))
	f, err := os.OpenFile(n1.path("n2", "f"), os.O_RDWR, 0)
	must(t, err)
	defer f.Close()
	var failed atomic.Bool
	fail := func() syscall.Errno {
		if failed.CompareAndSwap(false, true) {
			return syscall.ENOTCONN
		}
		return 0
	}
	n1.mount.reopenFails.Store(&fail)
	defer n1.mount.reopenFails.Store(nil)
	n2.restart(ServerConfig{})
	eventually(t, 10*time.Second, "the reclaim done", func() error {
		if n1.mount.reclaimsDone() == 0 {
			return errors.New("not yet")
		}
		return nil
	})
	if !failed.Load() {
		t.Fatal("the reclaim made no open")
	}
	if _, err := f.WriteAt([]byte("x"), 0); err != nil {
		t.Fatalf("a write after the reclaim: %v", err)
	}
	if got := readFile(t, n2.disk("f")); got[0] != 'x' {
		t.Fatalf("the file reads %q on the owner", got)
	}
}
