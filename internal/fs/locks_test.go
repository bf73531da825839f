package fs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/fs/fspb"
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
		err = setlk(g.Fd(), unix.F_OFD_SETLK, unix.F_WRLCK, 100, 1)
		// Closed before failing: a file of its own mount left open hangs the test process's
		// exit, which waits for the FUSE server that has gone.
		g.Close()
		must(t, err)
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

// A lock the owner grants after the client closed the file (the request raced with the
// close, or the close's unlock was lost) goes with the file's last handle.
func TestLockGrantedAfterCloseDropped(t *testing.T) {
	c := newTestCluster(t, "n2")
	n2 := c.node("n2")
	must(t, os.WriteFile(n2.disk("f"), nil, 0o644))
	ctx := withCallerNode(context.Background(), "n1")
	session := []byte("s")
	open := func() uint64 {
		reply, err := n2.server.Open(ctx, &fspb.OpenRequest{Session: session, Caller: &fspb.Caller{},
			Node: &fspb.NodeRef{Path: []byte("f")}, Flags: unix.O_RDWR})
		must(t, err)
		if reply.Errno != 0 {
			t.Fatalf("open: %v", syscall.Errno(reply.Errno))
		}
		return reply.Handle
	}
	lock := func(h, owner uint64) {
		reply, err := n2.server.Lock(ctx, &fspb.LockRequest{Session: session, Handle: h, Op: fspb.LockRequest_SET,
			Owner: owner, Type: unix.F_WRLCK, Start: owner, End: owner})
		must(t, err)
		if reply.Errno != 0 {
			t.Fatalf("lock: %v", syscall.Errno(reply.Errno))
		}
	}
	release := func(h uint64) {
		reply, err := n2.server.Release(ctx, &fspb.HandleRequest{Session: session, Handle: h})
		must(t, err)
		if reply.Errno != 0 {
			t.Fatalf("release: %v", syscall.Errno(reply.Errno))
		}
	}
	locked := func(at int64) bool {
		local, err := os.Open(n2.disk("f"))
		must(t, err)
		defer local.Close()
		probe := unix.Flock_t{Type: unix.F_RDLCK, Start: at, Len: 1}
		must(t, unix.FcntlFlock(local.Fd(), unix.F_OFD_GETLK, &probe))
		return probe.Type != unix.F_UNLCK
	}

	a, b := open(), open()
	lock(a, 1)
	lock(b, 2)
	// The file is still open through b: a process holding it open may still hold its locks.
	release(a)
	if !locked(1) || !locked(2) {
		t.Fatal("a lock went while the client still had the file open")
	}
	release(b)
	if locked(1) || locked(2) {
		t.Fatal("locks stayed after the client's last handle on the file was released")
	}
	if n := n2.serverLockOwners(); n != 0 {
		t.Fatalf("the owner keeps %d lock descriptions", n)
	}
}

// watching reports whether node's mount has its invalidation stream to n attached.
func (n *testNode) watching(node string) bool {
	for _, sess := range n.server.allSessions() {
		if sess.node == node && sess.currentStream() != nil {
			return true
		}
	}
	return false
}

// lockedOnDisk reports whether a process on the owner finds a lock on name's first byte.
func (n *testNode) lockedOnDisk(t *testing.T, name string) bool {
	t.Helper()
	f, err := os.Open(n.disk(name))
	must(t, err)
	defer f.Close()
	probe := unix.Flock_t{Type: unix.F_WRLCK, Start: 0, Len: 1}
	must(t, unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &probe))
	return probe.Type != unix.F_UNLCK
}

// A client that goes silent with its connection still open loses its watch, and with it,
// after the grace period, its locks; a live client that is merely idle keeps both.
func TestLockSilentClientLosesItsLocks(t *testing.T) {
	c := newTestCluster(t, "n1", "n2", "n3")
	n1, n2, n3 := c.node("n1"), c.node("n2"), c.node("n3")
	n2.restart(ServerConfig{grace: time.Second})
	n1.mountTree(5 * time.Second)
	n3.mountTree(5 * time.Second)
	must(t, os.WriteFile(n2.disk("idle"), nil, 0o644))
	must(t, os.WriteFile(n2.disk("silent"), nil, 0o644))
	hold := func(p string) {
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		must(t, err)
		t.Cleanup(func() { f.Close() })
		must(t, setlk(f.Fd(), unix.F_SETLK, unix.F_WRLCK, 0, 0))
	}
	hold(n1.path("n2", "idle"))
	hold(n3.path("n2", "silent"))
	eventually(t, 5*time.Second, "both clients watching", func() error {
		if !n2.watching("n1") || !n2.watching("n3") {
			return errors.New("a client is not watching")
		}
		return nil
	})

	n3.mute.Store(true)
	defer n3.mute.Store(false)
	eventually(t, 4*heartbeat*heartbeatMisses, "silent client's watch dropped", func() error {
		if n2.watching("n3") {
			return errors.New("still watching")
		}
		return nil
	})
	eventually(t, 10*time.Second, "silent client's lock released after the grace period", func() error {
		if n2.lockedOnDisk(t, "silent") {
			return errors.New("still locked")
		}
		return nil
	})
	// n1 has been idle all along, for longer than the silence that lost n3 its watch.
	if !n2.watching("n1") {
		t.Fatal("the idle client lost its watch")
	}
	if !n2.lockedOnDisk(t, "idle") {
		t.Fatal("the idle client lost its lock")
	}
}

// fakeWatch is the client end of a Watch stream that a test drives by hand.
type fakeWatch struct {
	ctx  context.Context
	up   chan *fspb.WatchUp
	down chan *fspb.WatchDown
}

func (w *fakeWatch) Send(m *fspb.WatchDown) error {
	select {
	case w.down <- m:
		return nil
	case <-w.ctx.Done():
		return w.ctx.Err()
	}
}

func (w *fakeWatch) Recv() (*fspb.WatchUp, error) {
	select {
	case m := <-w.up:
		return m, nil
	case <-w.ctx.Done():
		return nil, w.ctx.Err()
	}
}

func (w *fakeWatch) Context() context.Context { return w.ctx }

// A client from before heartbeats were answered never answers them: it keeps its watch while
// its connection lasts.
func TestLockClientThatNeverAnswersHeartbeatsKeepsItsWatch(t *testing.T) {
	c := newTestCluster(t, "n2")
	n2 := c.node("n2")
	ctx, cancel := context.WithCancel(withCallerNode(context.Background(), "old"))
	defer cancel()
	w := &fakeWatch{ctx: ctx, up: make(chan *fspb.WatchUp, 1), down: make(chan *fspb.WatchDown, 64)}
	w.up <- &fspb.WatchUp{Session: []byte("s")}
	go n2.server.serveWatch(w)
	deadline := time.After(heartbeat*heartbeatMisses + 2*heartbeat)
	beats := 0
	for done := false; !done; {
		select {
		case m := <-w.down:
			if m.Seq == 0 && m.Instance == nil {
				beats++
			}
		case <-deadline:
			done = true
		}
	}
	if beats == 0 {
		t.Fatal("no heartbeat came")
	}
	if !n2.watching("old") {
		t.Fatal("the owner dropped the watch of a client that never answered heartbeats")
	}
}

// TestLockDeadlockDetected: two processes through the tree, each holding a lock the other
// waits for, answer as on a local disk: the wait that closes the cycle fails with EDEADLK, and
// the other gets its lock once the first process is gone. The processes use the owner's file
// from two client nodes, from one, and from the owner's own mount and a client node.
func TestLockDeadlockDetected(t *testing.T) {
	c := newTestCluster(t, "n1", "n2", "n3")
	n1, n2, n3 := c.node("n1"), c.node("n2"), c.node("n3")
	for _, n := range []*testNode{n1, n2, n3} {
		n.mountTree(5 * time.Second)
	}
	local := filepath.Join(t.TempDir(), "f")
	must(t, os.WriteFile(local, make([]byte, 10), 0o644))
	want := crossWait(t, local, local, waitingLocally)
	if !slices.Contains(want, "B lkw w 0 1: EDEADLK") {
		t.Fatalf("locally:\n%s\nwant B's wait to fail with EDEADLK", strings.Join(want, "\n"))
	}
	for i, tc := range []struct {
		name   string
		first  *testNode
		second *testNode
	}{
		{"from two nodes", n1, n3},
		{"from one node", n1, n1},
		{"from the owner and a node", n2, n1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := fmt.Sprintf("deadlock%d", i)
			must(t, os.WriteFile(n2.disk(name), make([]byte, 10), 0o644))
			got := crossWait(t, tc.first.path("n2", name), tc.second.path("n2", name), func(t *testing.T, _ *lockProc) {
				n2.awaitLockWaits(t, 1)
			})
			if !slices.Equal(got, want) {
				t.Errorf("through the mount:\n%s\nlocally:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			n2.awaitLockWaits(t, 0)
		})
	}
}

// crossWait runs two processes, A on pathA and B on pathB (the same file), into a deadlock:
// A holds byte 0 and waits for byte 1, which B holds; then B waits for byte 0. waiting returns
// once A waits. It returns what each call answered.
func crossWait(t *testing.T, pathA, pathB string, waiting func(*testing.T, *lockProc)) []string {
	a := startLockProc(t, pathA)
	b := startLockProc(t, pathB)
	var out []string
	note := func(who, call, answer string) { out = append(out, fmt.Sprintf("%s %s: %s", who, call, answer)) }
	note("A", "lk w 0 1", a.do("lk w 0 1"))
	note("B", "lk w 1 1", b.do("lk w 1 1"))
	a.send("lkw w 1 1")
	waiting(t, a)
	b.send("lkw w 0 1")
	note("B", "lkw w 0 1", b.answer(10*time.Second))
	note("A", "lkw w 1 1, before B exits", a.answer(200*time.Millisecond))
	b.exit()
	note("A", "lkw w 1 1, after B exits", a.answer(10*time.Second))
	return out
}

// waitingLocally returns once the process waits for a lock on the local disk.
func waitingLocally(t *testing.T, p *lockProc) {
	t.Helper()
	eventually(t, 10*time.Second, "the process waiting for a lock", func() error {
		b, err := os.ReadFile("/proc/locks")
		if err != nil {
			return err
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) > 5 && f[1] == "->" && f[5] == strconv.Itoa(p.cmd.Process.Pid) {
				return nil
			}
		}
		return errors.New("not in /proc/locks")
	})
}

// TestLockWaitForgottenWhenInterrupted: a wait given up no longer counts, so that a later wait
// for the lock its process holds does not fail with EDEADLK.
func TestLockWaitForgottenWhenInterrupted(t *testing.T) {
	c := newTestCluster(t, "n1", "n2", "n3")
	n1, n2, n3 := c.node("n1"), c.node("n2"), c.node("n3")
	n1.mountTree(5 * time.Second)
	n3.mountTree(5 * time.Second)
	must(t, os.WriteFile(n2.disk("f"), make([]byte, 10), 0o644))
	a := startLockProc(t, n1.path("n2", "f"))
	b := startLockProc(t, n3.path("n2", "f"))
	a.expect("lk w 0 1", "A locks byte 0", "ok")
	b.expect("lk w 1 1", "B locks byte 1", "ok")
	a.expect("lkwi 1 1 300", "A's wait for B, interrupted", "EINTR")
	// Cancelled before the process was answered, not left to grow stale.
	if n := n2.server.lockGraph.waiting(time.Now()); n != 0 {
		t.Fatalf("the owner still counts %d lock waits after the only one was interrupted", n)
	}
	b.send("lkw w 0 1")
	n2.awaitLockWaits(t, 1)
	if got := b.answer(300 * time.Millisecond); got != "(none)" {
		t.Fatalf("B's wait for A, who no longer waits: %s, want it waiting", got)
	}
	a.expect("lk u 0 1", "A unlocks byte 0", "ok")
	if got := b.answer(10 * time.Second); got != "ok" {
		t.Fatalf("B's wait once A unlocked: %s, want ok", got)
	}
}

// awaitLockWaits waits until the node's server counts n lock waits.
func (n *testNode) awaitLockWaits(t *testing.T, want int) {
	t.Helper()
	eventually(t, 10*time.Second, fmt.Sprintf("%d lock waits on %s", want, n.name), func() error {
		if got := n.server.lockGraph.waiting(time.Now()); got != want {
			return fmt.Errorf("%d waits", got)
		}
		return nil
	})
}
