package proc

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"
)

// An agent serves the cluster tree itself and starts commands whose directory or program is
// on it. Between clone and exec the parent thread waits in the kernel (vfork) holding its
// processor; a child that needs the mount there waits for this process, which cannot answer
// once a garbage collection waits for that processor: every goroutine froze. So the test runs
// in a child process, which it kills if it freezes.
func TestStartFromOwnFUSEMount(t *testing.T) {
	requireRoot(t)
	mnt := os.Getenv("SSI_TEST_OWN_FUSE")
	if mnt == "" {
		mnt = t.TempDir()
		cmd := exec.Command(os.Args[0], "-test.run=^TestStartFromOwnFUSEMount$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), "SSI_TEST_OWN_FUSE="+mnt)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		// A child stuck in vfork holds the output pipe and the mount's /dev/fuse descriptor.
		cmd.WaitDelay = 5 * time.Second
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("%v:\n%s", err, out.String())
			}
		case <-time.After(30 * time.Second):
			// The stuck child keeps the connection open itself: abort it, or it waits for
			// ever.
			abortFUSE(t, mnt)
			cmd.Process.Kill()
			<-done
			_ = unix.Unmount(mnt, unix.MNT_DETACH)
			t.Fatalf("the process froze starting commands on its own FUSE mount:\n%s", out.String())
		}
		return
	}

	src := t.TempDir()
	program, err := os.ReadFile("/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "true"), program, 0o755); err != nil {
		t.Fatal(err)
	}
	root, err := fusefs.NewLoopbackRoot(src)
	if err != nil {
		t.Fatal(err)
	}
	// No kernel caching: the child's chdir and exec ask this process every time.
	zero := time.Duration(0)
	server, err := fusefs.Mount(mnt, root, &fusefs.Options{EntryTimeout: &zero, AttrTimeout: &zero, NegativeTimeout: &zero})
	if err != nil {
		t.Fatal(err)
	}
	defer server.Unmount()

	var stop atomic.Bool
	defer stop.Store(true)
	go func() {
		for !stop.Load() {
			runtime.GC()
		}
	}()
	for i := range 30 {
		for _, spec := range []Spec{
			func() Spec { s := rootSpec("true"); s.Dir = mnt; return s }(),
			rootSpec(filepath.Join(mnt, "true")),
		} {
			p, err := Start(context.Background(), spec)
			if err != nil {
				t.Fatalf("round %d: %v", i, err)
			}
			code, err := p.Wait()
			p.Close()
			if err != nil || code != 0 {
				t.Fatalf("round %d, %s in %s: exit %d, %v", i, spec.Args[0], spec.Dir, code, err)
			}
		}
	}
}

// abortFUSE aborts the FUSE connection of the mount at dir, found in the mount table (a stat of
// dir would wait for the frozen server).
func abortFUSE(t *testing.T, dir string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Log(err)
		return
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == dir {
			_, minor, _ := strings.Cut(f[2], ":")
			if err := os.WriteFile("/sys/fs/fuse/connections/"+minor+"/abort", []byte("1"), 0); err != nil {
				t.Log(err)
			}
		}
	}
}
