package fs

import (
	"bytes"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A node serving its whole tree: devices are read and written through it, pseudo files read
// fresh, and the cluster's own mounts are not followed into.
func TestDevicesAndPseudoFilesOfAWholeTree(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	n1, n2 := c.node("n1"), c.node("n2")
	n2.restart(ServerConfig{Root: "/"})
	n1.mountTree(5 * time.Second)

	read := func(p string, n int) []byte {
		f, err := os.Open(n1.path("n2", p))
		must(t, err)
		defer f.Close()
		b := make([]byte, n)
		_, err = io.ReadFull(f, b)
		must(t, err)
		return b
	}
	a, b := read("dev/urandom", 64), read("dev/urandom", 64)
	if bytes.Equal(a, b) || bytes.Equal(a, make([]byte, 64)) {
		t.Fatal("/dev/urandom read through its owner is not random")
	}
	if z := read("dev/zero", 4096); !bytes.Equal(z, make([]byte, 4096)) {
		t.Fatal("/dev/zero is not zeros")
	}
	must(t, os.WriteFile(n1.path("n2", "dev/null"), []byte("into the void"), 0o666))
	st, err := os.Stat(n1.path("n2", "dev/null"))
	must(t, err)
	if !st.Mode().IsRegular() || st.Size() != 0 {
		t.Fatalf("/dev/null shows as %v size %d, want a regular file of size 0", st.Mode(), st.Size())
	}
	// Pseudo files have no meaningful size: they are read directly, every time. (Of pid 1:
	// the agent's own /proc/self is not in the tree.)
	status := string(read("proc/1/status", 5))
	if status != "Name:" {
		t.Fatalf("/proc/1/status starts with %q", status)
	}
	for range 2 {
		b, err := os.ReadFile(n1.path("n2", "proc/uptime"))
		must(t, err)
		if len(b) == 0 || !strings.Contains(string(b), ".") {
			t.Fatalf("/proc/uptime reads %q", b)
		}
	}
	// The tree does not loop back into itself through the cluster mount on the owner.
	_, err = os.Stat(n1.path("n2", n1.mnt, "n2"))
	wantErrno(t, err, syscall.ENOENT)
}
