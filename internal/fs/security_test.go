package fs

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/fs/fspb"
)

// openToAll makes the harness's directories traversable by other users, so that the second
// user reaches the mount point.
func openToAll(t *testing.T, c *testCluster) {
	t.Helper()
	for _, n := range c.nodes {
		for d := n.mnt; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
			os.Chmod(d, 0o755)
		}
	}
}

func TestSecondUserIsDeniedWhereUnixPermissionsDeny(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	local, owner := c.node("n1"), c.node("n2")
	local.mountTree(5 * time.Second)
	openToAll(t, c)

	disk := owner.disk()
	must(t, os.WriteFile(filepath.Join(disk, "secret"), []byte("s"), 0o600))
	must(t, os.WriteFile(filepath.Join(disk, "public"), []byte("p"), 0o644))
	must(t, os.Mkdir(filepath.Join(disk, "private"), 0o700))
	must(t, os.WriteFile(filepath.Join(disk, "private", "inside"), []byte("i"), 0o644))
	must(t, os.Mkdir(filepath.Join(disk, "shared"), 0o777))
	must(t, os.Chmod(filepath.Join(disk, "shared"), 0o777))
	must(t, unix.Setxattr(filepath.Join(disk, "public"), "trusted.t", []byte("v"), 0))

	// Root looks first, so the kernel caches entries that the other user must still not pass.
	for _, p := range []string{"secret", "public", "private/inside"} {
		_, err := os.Stat(local.path("n2", p))
		must(t, err)
	}

	const nobody = 65534
	m := func(p string) string { return local.path("n2", p) }
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"read", m("secret")}, "EACCES"},
		{[]string{"read", m("public")}, "ok"},
		{[]string{"append", m("public")}, "EACCES"},
		{[]string{"list", m("private")}, "EACCES"},
		{[]string{"stat", m("private/inside")}, "EACCES"},
		{[]string{"read", m("private/inside")}, "EACCES"},
		{[]string{"write", m("newfile")}, "EACCES"},
		{[]string{"mkdir", m("newdir")}, "EACCES"},
		{[]string{"unlink", m("public")}, "EACCES"},
		{[]string{"chown", m("public")}, "EPERM"},
		{[]string{"chmod", m("public")}, "EPERM"},
		{[]string{"getxattr", m("public"), "trusted.t"}, "ENODATA"},
		{[]string{"setxattr", m("public"), "trusted.u"}, "EPERM"},
		{[]string{"write", m("shared/mine")}, "ok"},
	}
	for _, tc := range cases {
		if got := as(t, nobody, tc.args...); got != tc.want {
			t.Errorf("as nobody: %v: %s, want %s", tc.args, got, tc.want)
		}
	}
	var st unix.Stat_t
	must(t, unix.Stat(filepath.Join(disk, "shared", "mine"), &st))
	if st.Uid != nobody || st.Gid != nobody {
		t.Errorf("file created by nobody is owned by %d:%d on the owner", st.Uid, st.Gid)
	}
	// Root can.
	if got := as(t, 0, "read", m("secret")); got != "ok" {
		t.Errorf("root reading secret: %s", got)
	}
}

func TestRootSquashReadOnlyAndExports(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	local, owner := c.node("n1"), c.node("n2")
	disk := owner.disk()
	must(t, os.WriteFile(filepath.Join(disk, "secret"), []byte("s"), 0o600))
	must(t, os.Mkdir(filepath.Join(disk, "pub"), 0o777))
	must(t, os.Chmod(filepath.Join(disk, "pub"), 0o777))
	must(t, os.WriteFile(filepath.Join(disk, "pub", "f"), []byte("f"), 0o644))
	m := func(p string) string { return local.path("n2", p) }

	t.Run("root squash", func(t *testing.T) {
		owner.restart(ServerConfig{RootSquash: true})
		local.mountTree(5 * time.Second)
		defer func() { local.mount.Close(); local.mount = nil }()
		_, err := os.ReadFile(m("secret"))
		wantErrno(t, err, syscall.EACCES)
		must(t, os.WriteFile(m("pub/squashed"), nil, 0o644))
		var st unix.Stat_t
		must(t, unix.Stat(filepath.Join(disk, "pub", "squashed"), &st))
		if st.Uid != nobodyID {
			t.Fatalf("root's new file is owned by %d on the owner, want nobody", st.Uid)
		}
	})
	t.Run("read-only", func(t *testing.T) {
		owner.restart(ServerConfig{ReadOnly: true})
		local.mountTree(5 * time.Second)
		defer func() { local.mount.Close(); local.mount = nil }()
		if got := readFile(t, m("pub/f")); got != "f" {
			t.Fatalf("read %q", got)
		}
		wantErrno(t, os.WriteFile(m("pub/f"), []byte("x"), 0o644), syscall.EROFS)
		wantErrno(t, os.Mkdir(m("d"), 0o755), syscall.EROFS)
		wantErrno(t, os.Remove(m("pub/f")), syscall.EROFS)
		wantErrno(t, os.Chmod(m("pub/f"), 0o600), syscall.EROFS)
	})
	t.Run("exports", func(t *testing.T) {
		owner.restart(ServerConfig{Exports: []string{"/pub"}})
		local.mountTree(5 * time.Second)
		defer func() { local.mount.Close(); local.mount = nil }()
		entries, err := os.ReadDir(m(""))
		must(t, err)
		if len(entries) != 1 || entries[0].Name() != "pub" {
			t.Fatalf("the owner's root lists %v, want only pub", entries)
		}
		_, err = os.Stat(m("secret"))
		wantErrno(t, err, syscall.ENOENT)
		wantErrno(t, os.WriteFile(m("newfile"), nil, 0o644), syscall.EACCES)
		wantErrno(t, os.Rename(m("pub"), m("moved")), syscall.EACCES)
		must(t, os.Chmod(m("pub"), 0o775)) // an export's root is exported
		wantErrno(t, os.Chmod(m(""), 0o700), syscall.EACCES)
		must(t, os.WriteFile(m("pub/new"), []byte("n"), 0o644))
		if got := readFile(t, filepath.Join(disk, "pub", "new")); got != "n" {
			t.Fatalf("owner has %q", got)
		}
	})
}

func TestNothingEscapesTheOwnersRoot(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	local, owner := c.node("n1"), c.node("n2")
	local.mountTree(5 * time.Second)
	disk := owner.disk()
	// The host has /etc/passwd; the owner's root has no etc at all.
	if _, err := os.Stat("/etc/passwd"); err != nil {
		t.Skip("needs /etc/passwd on the host to prove nothing reaches it")
	}
	must(t, os.Symlink("/etc/passwd", filepath.Join(disk, "abs")))
	must(t, os.Symlink("../../../../../../../../etc/passwd", filepath.Join(disk, "climb")))
	must(t, os.Mkdir(filepath.Join(disk, "sub"), 0o755))
	must(t, os.Symlink("../../../../../../etc", filepath.Join(disk, "sub", "up")))
	must(t, os.Symlink("/", filepath.Join(disk, "slash")))
	must(t, os.MkdirAll(filepath.Join(disk, "sub", "deeper", "mark"), 0o755))
	must(t, os.Symlink("loop2", filepath.Join(disk, "loop1")))
	must(t, os.Symlink("loop1", filepath.Join(disk, "loop2")))

	t.Run("through the mount", func(t *testing.T) {
		for _, p := range []string{"abs", "climb", "sub/up/passwd", "slash/etc/passwd"} {
			_, err := os.ReadFile(local.path("n2", p))
			wantErrno(t, err, syscall.ENOENT)
		}
		got, err := os.Readlink(local.path("n2", "climb"))
		must(t, err)
		if want := local.path("n2", "etc/passwd"); got != want {
			t.Fatalf("readlink climb = %q, want %q", got, want)
		}
		_, err = os.Stat(local.path("n2", "loop1"))
		wantErrno(t, err, syscall.ELOOP)
	})

	t.Run("in requests a client could forge", func(t *testing.T) {
		s := owner.server
		ctx := withCallerNode(context.Background(), "n1")
		lookup := func(dir, name string) int32 {
			r, err := s.Lookup(ctx, &fspb.LookupRequest{Session: []byte("forger"), Caller: &fspb.Caller{}, Dir: &fspb.NodeRef{Path: []byte(dir)}, Name: []byte(name)})
			must(t, err)
			return r.Errno
		}
		for _, tc := range []struct {
			dir, name string
			want      syscall.Errno
		}{
			{"", "..", syscall.EINVAL},
			{"..", "etc", syscall.EINVAL},
			{"sub/../..", "etc", syscall.EINVAL},
			{"/etc", "passwd", syscall.EINVAL},
			{"", "a/b", syscall.EINVAL},
			{"", "nul\x00", syscall.EINVAL},
			{"sub//", "x", syscall.EINVAL},
			// Symlinks followed on the owner stay inside its root. (A client never sends a
			// path through a symlink; a directory it knew may have become one, which the owner
			// refuses as a last component.)
			{"slash/etc", "passwd", syscall.ENOENT},
			{"sub/up/..", "etc", syscall.EINVAL},
			{"slash/sub/up", "passwd", syscall.ENOTDIR},
			{"slash/slash/slash/sub", "up", 0},
			{"loop1/x", "y", syscall.ELOOP},
		} {
			if got := syscall.Errno(lookup(tc.dir, tc.name)); got != tc.want {
				t.Errorf("lookup %q in %q: %v, want %v", tc.name, tc.dir, got, tc.want)
			}
		}
		// Listing through a symlink to "/" lists the owner's root, not the host's.
		r, err := s.Readdir(ctx, &fspb.ReaddirRequest{Session: []byte("forger"), Caller: &fspb.Caller{}, Dir: &fspb.NodeRef{Path: []byte("slash/slash/sub/deeper")}})
		must(t, err)
		var names []string
		for _, e := range r.Entries {
			names = append(names, string(e.Name))
		}
		if r.Errno != 0 || !slices.Contains(names, "mark") {
			t.Fatalf("listing slash/slash/sub/deeper: errno %d, %q", r.Errno, names)
		}
	})
}

// TestChildrenDoNotInheritTheFUSEDevice starts a command after mounting, as the agent starts
// ssi run's and jobs' processes: it must not hold the mount's /dev/fuse, which would let it
// read and answer other users' file requests, and keep the connection alive (its callers
// stuck) after the agent died.
func TestChildrenDoNotInheritTheFUSEDevice(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	c.node("n1").mountTree(5 * time.Second)
	out, err := exec.Command("sh", "-c", `for f in /proc/$$/fd/*; do readlink "$f" || true; done`).Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "/dev/fuse") {
		t.Fatalf("a child of the mounting process holds /dev/fuse; its descriptors:\n%s", out)
	}
}
