package fs

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// isDownErr reports whether err is how a call fails for want of its node.
func isDownErr(err error) bool {
	return errors.Is(err, syscall.EIO) || errors.Is(err, syscall.ENOTCONN)
}

func TestOwnerStoppedAndRestarted(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	n1, n2 := c.node("n1"), c.node("n2")
	const timeout = time.Second
	n1.mountTree(timeout)
	must(t, os.WriteFile(n1.path("n2", "f"), []byte("before"), 0o644))
	f, err := os.OpenFile(n1.path("n2", "f"), os.O_RDWR, 0)
	must(t, err)
	defer f.Close()

	n2.stop()
	start := time.Now()
	_, err = os.Stat(n1.path("n2", "never-seen"))
	if !isDownErr(err) {
		t.Fatalf("stat on a stopped node: %v, want EIO or ENOTCONN", err)
	}
	if took := time.Since(start); took > timeout+time.Second {
		t.Fatalf("stat on a stopped node took %v, want under %v", took, timeout+time.Second)
	}
	eventually(t, 3*time.Second, "reading an open file of a stopped node fails", func() error {
		_, err := f.ReadAt(make([]byte, 6), 0)
		if !isDownErr(err) {
			return fmt.Errorf("read: %v", err)
		}
		return nil
	})
	if _, err := f.WriteAt([]byte("x"), 0); !isDownErr(err) {
		t.Fatalf("write on a stopped node: %v", err)
	}
	if _, err := os.ReadDir(n1.path("n2")); !isDownErr(err) {
		t.Fatalf("listing a stopped node: %v", err)
	}
	if st := n1.mount.Stats(); st.Failures == 0 || len(st.Nodes) == 0 || st.Nodes[0].Connected {
		t.Fatalf("stats do not show the node down: %+v", st)
	}

	n2.start(ServerConfig{})
	eventually(t, 5*time.Second, "the restarted node answers", func() error {
		b, err := os.ReadFile(n1.path("n2", "f"))
		if err != nil || string(b) != "before" {
			return fmt.Errorf("read %q: %v", b, err)
		}
		return nil
	})
	must(t, os.WriteFile(n1.path("n2", "after"), []byte("ok"), 0o644))
	// Files opened before the restart are opened again on the new server (reclaim.go).
	if _, err := f.WriteAt([]byte("x"), 0); err != nil {
		t.Fatalf("write to a file opened before the restart: %v", err)
	}
	if b, err := os.ReadFile(n2.disk("f")); err != nil || string(b) != "xefore" {
		t.Fatalf("the owner's file after the write: %q, %v", b, err)
	}
}

// TestOwnerRestartedWithoutTheFile: a file open before its owner's file server restarted that
// cannot be opened again there (it was removed meanwhile) stays lost: its calls fail with EIO.
func TestOwnerRestartedWithoutTheFile(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	n1, n2 := c.node("n1"), c.node("n2")
	n1.mountTree(time.Second)
	must(t, os.WriteFile(n1.path("n2", "f"), []byte("before"), 0o644))
	f, err := os.OpenFile(n1.path("n2", "f"), os.O_RDWR, 0)
	must(t, err)
	defer f.Close()
	n2.stop()
	must(t, os.Remove(n2.disk("f")))
	n2.start(ServerConfig{})
	eventually(t, 10*time.Second, "the reclaim done", func() error {
		if n1.mount.reclaimsDone() == 0 {
			return errors.New("not yet")
		}
		return nil
	})
	if _, err := f.WriteAt([]byte("x"), 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("write to a file removed while its owner was down: %v, want EIO", err)
	}
	if _, err := os.Stat(n2.disk("f")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the removed file is back on the owner: %v", err)
	}
}

func TestOwnerThatStopsAnsweringFailsCallsWithinTheTimeout(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	n1, n2 := c.node("n1"), c.node("n2")
	const timeout = time.Second
	n1.mountTree(timeout)
	must(t, os.WriteFile(n1.path("n2", "f"), []byte("data"), 0o644))

	n2.hang.Store(true)
	for _, name := range []string{"a", "b"} {
		start := time.Now()
		_, err := os.Stat(n1.path("n2", name))
		if !isDownErr(err) {
			t.Fatalf("stat on a silent node: %v", err)
		}
		if took := time.Since(start); took > timeout+time.Second {
			t.Fatalf("stat on a silent node took %v", took)
		}
	}
	n2.hang.Store(false)
	eventually(t, 10*time.Second, "the node answers again", func() error {
		_, err := os.ReadFile(n1.path("n2", "f"))
		return err
	})
}

// TestOwnerKnownGoneFailsCallsAtOnce: once membership reports an owner failed, calls to it
// end with ENOTCONN without waiting for the timeout, and work again when it is back.
func TestOwnerKnownGoneFailsCallsAtOnce(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	n1, n2 := c.node("n1"), c.node("n2")
	const timeout = 30 * time.Second
	n1.mountTree(timeout)
	must(t, os.WriteFile(n1.path("n2", "f"), []byte("data"), 0o644))

	n2.hang.Store(true)
	c.gone.Store("n2", true)
	done := make(chan error, 1)
	go func() {
		_, err := os.Stat(n1.path("n2", "not-cached"))
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, syscall.ENOTCONN) {
			t.Fatalf("stat on a node known to be gone: %v, want ENOTCONN", err)
		}
	case <-time.After(timeout / 2):
		t.Fatal("stat on a node known to be gone waited for the request timeout")
	}
	n2.hang.Store(false)
	c.gone.Delete("n2")
	eventually(t, 10*time.Second, "the node answers again", func() error {
		_, err := os.ReadFile(n1.path("n2", "f"))
		return err
	})
}

// TestCloseWhileOwnerUnreachableReachesItLater: a file closed while its owner could not be
// reached (here gossip had it down for a moment; a partition or a freeze shorter than the
// session expiry does the same) is closed on the owner once it answers again, with its flock:
// the owner keeps the session, so nothing else would ever close it there.
func TestCloseWhileOwnerUnreachableReachesItLater(t *testing.T) {
	c := newTestCluster(t, "n1", "n2", "n3")
	n1, n2, n3 := c.node("n1"), c.node("n2"), c.node("n3")
	n1.mountTree(time.Second)
	n3.mountTree(time.Second)
	must(t, os.WriteFile(n2.disk("f"), []byte("data"), 0o644))
	locked, err := os.OpenFile(n1.path("n2", "f"), os.O_RDWR, 0)
	must(t, err)
	must(t, unix.Flock(int(locked.Fd()), unix.LOCK_EX))
	plain, err := os.Open(n1.path("n2", "f"))
	must(t, err)
	if open := n2.server.Stats().OpenFiles; open != 2 {
		t.Fatalf("files open on the owner: %d, want 2", open)
	}

	c.gone.Store("n2", true)
	locked.Close()
	plain.Close()
	time.Sleep(100 * time.Millisecond) // past the batching of closes (releaseDelay)
	c.gone.Delete("n2")

	eventually(t, 10*time.Second, "the files closed on the owner", func() error {
		if open := n2.server.Stats().OpenFiles; open != 0 {
			return fmt.Errorf("%d files still open there", open)
		}
		return nil
	})
	g, err := os.OpenFile(n3.path("n2", "f"), os.O_RDWR, 0)
	must(t, err)
	defer g.Close()
	if err := unix.Flock(int(g.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Fatalf("another node's flock of the file whose holder closed it: %v", err)
	}
}

// TestSilentOwnerFailsEachCallWithinTheTimeout: the kernel makes some calls twice when the
// first fails (a lookup whose revalidation failed, a read whose read-ahead failed), and an
// owner that is frozen or cut off (not dead: nothing refuses the connection) must not make
// each of them wait for the timeout: the process's call fails within the one timeout.
func TestSilentOwnerFailsEachCallWithinTheTimeout(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	n1, n2 := c.node("n1"), c.node("n2")
	// The default: longer than two heartbeats, after which an owner that said nothing counts
	// as silent.
	const timeout = defaultTimeout
	n1.mountTree(timeout)
	must(t, os.MkdirAll(n2.disk("d"), 0o755))
	must(t, os.WriteFile(n2.disk("d", "f"), make([]byte, 4<<20), 0o644))
	f, err := os.Open(n1.path("n2", "d", "f"))
	must(t, err)
	defer f.Close()

	n2.hang.Store(true)
	defer n2.hang.Store(false)
	for _, call := range []struct {
		what string
		do   func() error
	}{
		{"stat of a name not cached", func() error { _, err := os.Stat(n1.path("n2", "d", "new")); return err }},
		{"read of data not cached", func() error { _, err := f.ReadAt(make([]byte, 1<<20), 2<<20); return err }},
		{"listing", func() error { _, err := os.ReadDir(n1.path("n2", "d")); return err }},
	} {
		start := time.Now()
		err := call.do()
		if !isDownErr(err) {
			t.Fatalf("%s on a silent owner: %v, want EIO or ENOTCONN", call.what, err)
		}
		if took := time.Since(start); took > timeout*3/2 {
			t.Errorf("%s on a silent owner took %v, over the timeout (%v)", call.what, took, timeout)
		}
	}
}

// TestOpenAnsweredTooLateIsClosed: an open that the owner made but answered after the
// client's timeout (a frozen or overloaded owner) is closed there: the process got EIO and
// will never close it, and the owner keeps the session, so it would stay open for good.
func TestOpenAnsweredTooLateIsClosed(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	n1, n2 := c.node("n1"), c.node("n2")
	const timeout = time.Second
	n1.mountTree(timeout)
	must(t, os.WriteFile(n2.disk("f"), []byte("data"), 0o644))
	var slow atomic.Bool
	n2.restart(ServerConfig{afterOpen: func() {
		if slow.Load() {
			time.Sleep(timeout * 3 / 2)
		}
	}})
	if _, err := os.Stat(n1.path("n2", "f")); err != nil {
		t.Fatal(err)
	}

	slow.Store(true)
	for _, open := range []func() (*os.File, error){
		func() (*os.File, error) { return os.Open(n1.path("n2", "f")) },
		func() (*os.File, error) { return os.Create(n1.path("n2", "new")) },
	} {
		f, err := open()
		if err == nil {
			f.Close()
			t.Fatal("an open answered after the timeout worked")
		}
		if !isDownErr(err) {
			t.Fatalf("an open answered after the timeout: %v", err)
		}
		time.Sleep(timeout) // past the owner's answer: the next call tries it again
	}
	slow.Store(false)
	// The client hears the late answers when it next reads from the owner.
	probes := 0
	eventually(t, 5*time.Second, "the opens answered too late closed on the owner", func() error {
		probes++
		os.Stat(n1.path("n2", fmt.Sprint("probe", probes)))
		if open := n2.server.Stats().OpenFiles; open != 0 {
			return fmt.Errorf("%d files open there", open)
		}
		return nil
	})
}

// TestClientAgentStopReleasesItsFiles: a client agent that stops (its mount closed) while
// processes hold files open through it tells the owners: the files close there and their
// locks go at once, not after the session's 30 s, and the node's new mount works. The
// processes' calls fail (with ENOTCONN once the agent is gone).
func TestClientAgentStopReleasesItsFiles(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	n1, n2 := c.node("n1"), c.node("n2")
	n1.mountTree(time.Second)
	must(t, os.WriteFile(n2.disk("f"), make([]byte, 10), 0o644))
	a := startLockProc(t, n1.path("n2", "f"))
	a.expect("lk w 0 1", "A locks byte 0", "ok")
	a.expect("fl ex", "A flocks the file", "ok")
	if !n2.lockedOnDisk(t, "f") {
		t.Fatal("not locked on the owner")
	}

	must(t, n1.mount.Close())
	a.expect("lk w 5 1", "A's lock call once its node's mount is gone", "ENOTCONN", "EIO")
	eventually(t, 5*time.Second, "the stopped mount's files and locks gone from the owner", func() error {
		if open := n2.server.Stats().OpenFiles; open != 0 || n2.lockedOnDisk(t, "f") {
			return fmt.Errorf("%d files open there, locked: %v", open, n2.lockedOnDisk(t, "f"))
		}
		return nil
	})
	a.exit()
	n1.mountTree(time.Second)
	if b, err := os.ReadFile(n1.path("n2", "f")); err != nil || len(b) != 10 {
		t.Fatalf("read through the new mount: %d bytes, %v", len(b), err)
	}
}

// TestKilledProcessOfSilentOwnerEndsAtOnce: a process blocked reading or writing a file of an
// owner that does not answer ends as soon as it is killed (SIGKILL, or SIGINT without a
// handler), not when the request times out: the kernel waits for the agent's answer before
// it lets a process with a request in flight die.
func TestKilledProcessOfSilentOwnerEndsAtOnce(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	n1, n2 := c.node("n1"), c.node("n2")
	const timeout = 30 * time.Second
	n1.mountTree(timeout)
	defer n2.hang.Store(false)
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGINT} {
		for _, io := range []string{"cat <&3 >/dev/null", "cat /dev/zero >&3"} {
			// A file of its own: the pages of a killed reader's read-ahead stay locked until
			// the owner answers or the request times out, and a writer of the same pages
			// waits for them (a limit, in docs/fs.md).
			name := fmt.Sprintf("f-%d-%d", sig, len(io))
			must(t, os.WriteFile(n2.disk(name), make([]byte, 4<<20), 0o644))
			// Opened before the owner goes silent; read (with nothing cached) or written after.
			cmd := exec.Command("sh", "-c", `exec 3<>"$1"; echo opened; read go; exec `+io, "sh", n1.path("n2", name))
			stdin, stdout := startPiped(t, cmd)
			if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "opened\n" {
				t.Fatalf("%s: %q, %v", io, line, err)
			}
			n2.hang.Store(true)
			fmt.Fprintln(stdin, "go")
			time.Sleep(200 * time.Millisecond) // in its read or write
			start := time.Now()
			cmd.Process.Signal(sig)
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			select {
			case <-exited:
			case <-time.After(timeout / 3):
				t.Fatalf("%s on a silent owner, sent %v: still runs after %v", io, sig, time.Since(start))
			}
			n2.hang.Store(false)
			time.Sleep(time.Second) // the owner heard from again
		}
	}
}

// TestWriterAcrossOwnerRestart: a process writing a large file while the owner's file server
// restarts sees its writes fail (EIO or ENOTCONN) while the owner is down, and work again on
// the same descriptor once it is back (the file opened again there); every write it was told
// succeeded is in the file. This is what docs/fs.md promises (not NFS's hard mount, which
// would wait).
func TestWriterAcrossOwnerRestart(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	n1, n2 := c.node("n1"), c.node("n2")
	n1.mountTree(time.Second)
	f, err := os.Create(n1.path("n2", "big"))
	must(t, err)
	defer f.Close()
	const chunk = 1 << 20
	written := map[int64]bool{}
	var failures []error
	write := func(i int64) {
		if _, err := f.WriteAt(bytes.Repeat([]byte{byte(i + 1)}, chunk), i*chunk); err != nil {
			failures = append(failures, err)
			return
		}
		written[i] = true
	}
	i := int64(0)
	for ; i < 8; i++ {
		write(i)
	}
	n2.stop()
	for ; i < 12; i++ {
		write(i)
	}
	n2.start(ServerConfig{})
	eventually(t, 10*time.Second, "writes work again", func() error {
		write(i)
		i++
		if !written[i-1] {
			return failures[len(failures)-1]
		}
		return nil
	})
	for end := i + 8; i < end; i++ {
		write(i)
		if !written[i] {
			t.Fatalf("write %d after the owner came back: %v", i, failures[len(failures)-1])
		}
	}
	if len(failures) == 0 {
		t.Fatal("no write failed while the owner was down")
	}
	for _, err := range failures {
		if !isDownErr(err) {
			t.Fatalf("a write while the owner was down: %v, want EIO or ENOTCONN", err)
		}
	}
	disk, err := os.ReadFile(n2.disk("big"))
	must(t, err)
	for j := range written {
		if got := disk[j*chunk : (j+1)*chunk]; !bytes.Equal(got, bytes.Repeat([]byte{byte(j + 1)}, chunk)) {
			t.Fatalf("chunk %d, written, is not in the owner's file", j)
		}
	}
}

// TestClientCutOffPastSessionExpiry: a client node cut off from an owner for longer than the
// owner keeps its session (its files closed and locks dropped there) finds, when it is back,
// the files it had open refused with EIO, never read from what it cached before; a new open
// sees the owner's current data.
func TestClientCutOffPastSessionExpiry(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	n1, n2 := c.node("n1"), c.node("n2")
	n2.restart(ServerConfig{grace: time.Second})
	n1.mountTree(time.Second)
	must(t, os.WriteFile(n2.disk("f"), []byte("before"), 0o644))
	f, err := os.OpenFile(n1.path("n2", "f"), os.O_RDWR, 0)
	must(t, err)
	defer f.Close()
	b := make([]byte, 6)
	if _, err := f.ReadAt(b, 0); err != nil || string(b) != "before" {
		t.Fatalf("read %q: %v", b, err)
	}
	must(t, unix.Flock(int(f.Fd()), unix.LOCK_EX))

	n1.mute.Store(true)
	t.Cleanup(func() { n1.mute.Store(false) }) // before the cluster's: a muted mount does not close
	eventually(t, 4*heartbeat*heartbeatMisses, "the owner expired the silent client's session", func() error {
		if open := n2.server.Stats().OpenFiles; open != 0 {
			return fmt.Errorf("%d files still open there", open)
		}
		return nil
	})
	must(t, os.WriteFile(n2.disk("f"), []byte("after!"), 0o644))
	// The harness's mute holds the client's watch in its receive, where a real cut-off has it
	// give up after the heartbeat limit: it sees the stream gone only now.
	flushes := n1.mount.Stats().Flushes
	n1.mute.Store(false)
	eventually(t, 10*time.Second, "the client back", func() error {
		if st := n1.mount.Stats(); len(st.Nodes) == 0 || !st.Nodes[0].Connected || st.Flushes < flushes+2 {
			return errors.New("not reconnected")
		}
		return nil
	})
	clear(b)
	if _, err := f.ReadAt(b, 0); string(b) == "before" || err == nil && string(b) != "after!" || err != nil && !errors.Is(err, syscall.EIO) {
		t.Fatalf("read of a file whose session expired: %q, %v; want EIO (or the owner's data)", b, err)
	}
	if _, err := f.WriteAt([]byte("x"), 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("write to a file whose session expired: %v, want EIO", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_UN); !errors.Is(err, syscall.EIO) {
		t.Fatalf("unlock of an flock dropped with the session: %v, want EIO", err)
	}
	if got, err := os.ReadFile(n1.path("n2", "f")); err != nil || string(got) != "after!" {
		t.Fatalf("a new open reads %q, %v; want the owner's data", got, err)
	}
	if got, _ := os.ReadFile(n2.disk("f")); string(got) != "after!" {
		t.Fatalf("the owner's file: %q", got)
	}
}

// TestWedgedWireIsReplaced: a file wire connection that stops carrying answers while the
// owner is otherwise heard from (its Watch stream's heartbeats: a connection a middlebox
// lost, not a silent owner) is given up after one timeout, and the calls go on a new one,
// instead of each call waiting for the timeout for as long as the connection stays open.
func TestWedgedWireIsReplaced(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	n1, n2 := c.node("n1"), c.node("n2")
	// Longer than the heartbeat, so that the owner is heard from within it.
	const timeout = 2*heartbeat + time.Second/2
	n1.mountTree(timeout)
	must(t, os.WriteFile(n2.disk("f"), []byte("data"), 0o644))
	if _, err := os.ReadFile(n1.path("n2", "f")); err != nil {
		t.Fatal(err)
	}
	n2.wedgeWires()
	time.Sleep(2 * heartbeat) // the owner heard from on its Watch stream since
	failed := 0
	for i := range 5 {
		if _, err := os.Stat(n1.path("n2", fmt.Sprint("new", i))); !errors.Is(err, os.ErrNotExist) {
			failed++
			if !isDownErr(err) {
				t.Fatalf("stat over a wedged wire: %v", err)
			}
		}
	}
	if failed > 1 {
		t.Fatalf("%d of 5 stats failed over a wedged wire connection, want the first at most", failed)
	}
}

// TestOwnerRestartsTwiceUnderLoad: two nodes writing large files and creating small ones on
// a third while its file server restarts twice see only EIO or ENOTCONN, and only while it is
// down; their open files work after each restart, and once they are done nothing is left
// open on the owner.
func TestOwnerRestartsTwiceUnderLoad(t *testing.T) {
	c := newTestCluster(t, "n1", "n2", "n3")
	n1, n2, n3 := c.node("n1"), c.node("n2"), c.node("n3")
	// The default timeout: a loaded machine answers some calls slower than a second.
	n1.mountTree(defaultTimeout)
	n3.mountTree(defaultTimeout)
	var stop atomic.Bool
	var mu sync.Mutex
	var failures []error
	fail := func(err error) {
		mu.Lock()
		failures = append(failures, err)
		mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
	var wg sync.WaitGroup
	writes := make([]atomic.Int64, 4)
	for i, cl := range []*testNode{n1, n3} {
		wg.Go(func() {
			f, err := os.Create(cl.path("n2", "big-"+cl.name))
			for ; err != nil; f, err = os.Create(cl.path("n2", "big-"+cl.name)) {
				if fail(err); stop.Load() {
					return
				}
			}
			defer f.Close()
			data := bytes.Repeat([]byte{1}, 1<<20)
			for j := int64(0); !stop.Load(); j++ {
				if _, err := f.WriteAt(data, j%32<<20); err != nil {
					fail(err)
					continue
				}
				writes[i].Add(1)
			}
		})
		wg.Go(func() {
			for j := 0; !stop.Load(); j++ {
				if err := os.WriteFile(cl.path("n2", fmt.Sprintf("small-%s-%d", cl.name, j%50)), []byte("x"), 0o644); err != nil {
					fail(err)
					continue
				}
				writes[2+i].Add(1)
			}
		})
	}
	progress := func(what string) {
		t.Helper()
		var before [4]int64
		for i := range writes {
			before[i] = writes[i].Load()
		}
		eventually(t, 10*time.Second, what, func() error {
			for i := range writes {
				if writes[i].Load() <= before[i] {
					mu.Lock()
					defer mu.Unlock()
					return fmt.Errorf("writer %d made no progress (failures: %v)", i, failures)
				}
			}
			return nil
		})
	}
	progress("the writers under way")
	for i := range 2 {
		n2.stop()
		time.Sleep(200 * time.Millisecond)
		n2.start(ServerConfig{})
		progress(fmt.Sprint("the writers going on after restart ", i+1))
	}
	stop.Store(true)
	wg.Wait()
	for _, err := range failures {
		if !isDownErr(err) {
			t.Fatalf("a call while the owner restarted: %v, want EIO or ENOTCONN", err)
		}
	}
	eventually(t, 5*time.Second, "nothing left open on the owner", func() error {
		if open := n2.server.Stats().OpenFiles; open != 0 {
			return fmt.Errorf("%d files open there", open)
		}
		return nil
	})
}
