package fs

import (
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A directory of 100,000 entries lists completely and exactly once each, through many
// continued READDIRPLUS requests. The owner's disk is a tmpfs here: making 100,000 files on
// the machine's disk would take most of a minute.
func TestHundredThousandEntryDirectory(t *testing.T) {
	if testing.Short() {
		t.Skip("makes 100,000 files")
	}
	c := newTestCluster(t, "n1", "n2")
	n1, n2 := c.node("n1"), c.node("n2")
	dir := n2.disk("big")
	must(t, os.Mkdir(dir, 0o755))
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=256m,nr_inodes=200000"); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	const entries = 100000
	for i := range entries {
		fd, err := unix.Open(fmt.Sprintf("%s/entry-%06d", dir, i), unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
		must(t, err)
		unix.Close(fd)
	}
	n1.mountTree(30 * time.Second)

	start := time.Now()
	list, err := os.ReadDir(n1.path("n2", "big"))
	must(t, err)
	t.Logf("listed %d entries in %v", len(list), time.Since(start))
	if len(list) != entries {
		t.Fatalf("listed %d entries, want %d", len(list), entries)
	}
	seen := make(map[string]bool, entries)
	for _, e := range list {
		if seen[e.Name()] {
			t.Fatalf("%s listed twice", e.Name())
		}
		seen[e.Name()] = true
	}
	for _, i := range []int{0, 4242, entries - 1} {
		if _, err := os.Stat(n1.path("n2", "big", fmt.Sprintf("entry-%06d", i))); err != nil {
			t.Fatal(err)
		}
	}
	_, err = os.Stat(n1.path("n2", "big", "entry-missing"))
	wantErrno(t, err, syscall.ENOENT)
}
