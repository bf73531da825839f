package fs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/fs/fspb"
)

// The tests here compare what a user may do through /<mount>/n2 with what the same user may
// do on n2's disk directly: each operation runs in a helper process as that user, once on each
// side, and must give the same result and leave the same mode.

// sameAsLocal runs op as (uid, gid, groups) on a fresh copy of a file made by prepare, once
// through the mount and once on the owner's disk, and fails unless both give the same result
// and mode. It returns the result.
func sameAsLocal(t *testing.T, local *testNode, disk string, name string, prepare func(p string), uid, gid uint32, groups []uint32, op string, args ...string) string {
	t.Helper()
	var results [2]string
	var modes [2]uint32
	for i, where := range []string{"mount", "disk"} {
		file := fmt.Sprintf("%s-%s", name, where)
		p := filepath.Join(disk, file)
		prepare(p)
		target := p
		if where == "mount" {
			target = local.path("n2", file)
			// Cached first, as a client that looked at it before.
			if _, err := os.Stat(target); err != nil {
				t.Fatal(err)
			}
		}
		results[i] = asUser(t, uid, gid, groups, append([]string{op, target}, args...)...)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); errors.Is(err, unix.ENOENT) {
			continue // removed: mode 0
		} else if err != nil {
			t.Fatal(err)
		}
		modes[i] = st.Mode
		if where == "mount" {
			// What the mount shows afterwards is what the owner has.
			var seen unix.Stat_t
			must(t, unix.Lstat(target, &seen))
			if seen.Mode&0o7777 != st.Mode&0o7777 {
				t.Errorf("%s %s as %d: the mount shows mode %o, the owner has %o", op, name, uid, seen.Mode&0o7777, st.Mode&0o7777)
			}
		}
	}
	if results[0] != results[1] || modes[0] != modes[1] {
		t.Errorf("%s %s as %d (groups %v): through the mount %s, mode %o; on the disk %s, mode %o",
			op, name, uid, groups, results[0], modes[0], results[1], modes[1])
	}
	return results[0]
}

func TestWritesByOthersClearSetIDBitsAsLocally(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	local, owner := c.node("n1"), c.node("n2")
	local.mountTree(5 * time.Second)
	openToAll(t, c)
	disk := owner.disk()
	must(t, os.Chmod(disk, 0o777))
	setID := func(mode uint32) func(p string) {
		return func(p string) {
			must(t, os.WriteFile(p, []byte("content"), 0o644))
			must(t, os.Chown(p, 1000, 1000))
			must(t, unix.Chmod(p, mode))
		}
	}
	const owner1000, member, outsider = 1000, 1001, 1002
	for i, tc := range []struct {
		mode   uint32
		uid    uint32
		groups []uint32
		op     []string
		want   string
	}{
		// A group member who may write but not chmod: the kernel clears the bits all the same.
		{0o6775, member, []uint32{1000}, []string{"overwrite"}, "ok"},
		{0o6775, member, []uint32{1000}, []string{"append"}, "ok"},
		{0o6775, member, []uint32{1000}, []string{"truncate", "1"}, "ok"},
		{0o6775, member, []uint32{1000}, []string{"write"}, "ok"},
		// Set-group-ID without group execute is not cleared by a write.
		{0o2765, member, []uint32{1000}, []string{"overwrite"}, "ok"},
		// The file's owner, and a chown by the owner.
		{0o6775, owner1000, []uint32{3000}, []string{"overwrite"}, "ok"},
		{0o6775, owner1000, []uint32{3000}, []string{"chgrp", "3000"}, "ok"},
		// Root keeps them on a write (CAP_FSETID), not on a chown.
		{0o6775, 0, nil, []string{"overwrite"}, "ok"},
		{0o6775, 0, nil, []string{"chgrp", "3000"}, "ok"},
		// Someone who may not write changes nothing.
		{0o6775, outsider, nil, []string{"overwrite"}, "EACCES"},
	} {
		got := sameAsLocal(t, local, disk, fmt.Sprintf("f%d", i), setID(tc.mode), tc.uid, tc.uid, tc.groups, tc.op[0], tc.op[1:]...)
		if got != tc.want {
			t.Errorf("%o %v as %d: %s, want %s", tc.mode, tc.op, tc.uid, got, tc.want)
		}
	}
}

func TestNamesOver255BytesAreTooLong(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	local, owner := c.node("n1"), c.node("n2")
	local.mountTree(5 * time.Second)
	long := strings.Repeat("n", maxNameLen+1)
	must(t, os.Mkdir(owner.disk("d"), 0o755))
	// Listed first, so that the client knows every name there and could answer by itself.
	_, err := os.ReadDir(local.path("n2", "d"))
	must(t, err)
	must(t, os.Mkdir(local.path("n2", "empty"), 0o755))
	for _, p := range []string{local.path(long), local.path("n2", long), local.path("n2", "d", long), local.path("n2", "empty", long)} {
		_, err := os.Lstat(p)
		wantErrno(t, err, syscall.ENAMETOOLONG)
		_, err = os.Create(p)
		wantErrno(t, err, syscall.ENAMETOOLONG)
	}
	_, err = os.Lstat(filepath.Join(owner.disk("d"), long))
	wantErrno(t, err, syscall.ENAMETOOLONG)
}

func TestRootMakesDevicesAndFifosAsLocally(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	local, owner := c.node("n1"), c.node("n2")
	local.mountTree(5 * time.Second)
	openToAll(t, c)
	must(t, os.Chmod(owner.disk(), 0o777))
	for _, tc := range []struct {
		name string
		mode uint32
		dev  int
	}{
		{"null", syscall.S_IFCHR | 0o666, int(unix.Mkdev(1, 3))},
		{"blk", syscall.S_IFBLK | 0o600, int(unix.Mkdev(7, 200))},
		{"fifo", syscall.S_IFIFO | 0o640, 0},
		{"sock", syscall.S_IFSOCK | 0o640, 0},
	} {
		must(t, unix.Mknod(local.path("n2", tc.name), tc.mode, tc.dev))
		must(t, unix.Mknod(owner.disk(tc.name+"-local"), tc.mode, tc.dev))
		var st, want unix.Stat_t
		must(t, unix.Lstat(owner.disk(tc.name), &st))
		must(t, unix.Lstat(owner.disk(tc.name+"-local"), &want))
		if st.Mode != want.Mode || st.Rdev != want.Rdev {
			t.Errorf("mknod %s: the owner has mode %o rdev %#x, want %o %#x", tc.name, st.Mode, st.Rdev, want.Mode, want.Rdev)
		}
		wantErrno(t, unix.Mknod(local.path("n2", tc.name), tc.mode, tc.dev), syscall.EEXIST)
	}
	// The device made through the tree works through it.
	must(t, os.WriteFile(local.path("n2", "null"), []byte("into the void"), 0))
	if got := readFile(t, local.path("n2", "null")); got != "" {
		t.Fatalf("read %q from the owner's /dev/null copy", got)
	}
	// Others may not.
	if got := as(t, 65534, "mknod", local.path("n2", "null2")); got != "EPERM" {
		t.Errorf("mknod of a device by nobody: %s, want EPERM", got)
	}
}

func TestRootSquashSparesTheOwnersOwnRoot(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	local, owner := c.node("n1"), c.node("n2")
	must(t, os.WriteFile(owner.disk("secret"), []byte("s"), 0o600))
	owner.restart(ServerConfig{RootSquash: true})
	local.mountTree(5 * time.Second)
	owner.mountTree(5 * time.Second)

	// Root of n2, through n2's own mount, is n2's root.
	if got := readFile(t, owner.path("n2", "secret")); got != "s" {
		t.Fatalf("n2's root read %q through its own mount", got)
	}
	must(t, os.WriteFile(owner.path("n2", "mine"), nil, 0o644))
	var st unix.Stat_t
	must(t, unix.Stat(owner.disk("mine"), &st))
	if st.Uid != 0 {
		t.Errorf("n2's root made a file owned by %d through its own mount, want 0", st.Uid)
	}
	// Root of n1 is still squashed.
	_, err := os.ReadFile(local.path("n2", "secret"))
	wantErrno(t, err, syscall.EACCES)
}

func TestACLsDecideAsLocally(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	local, owner := c.node("n1"), c.node("n2")
	local.mountTree(5 * time.Second)
	openToAll(t, c)
	disk := owner.disk()
	must(t, os.Chmod(disk, 0o755))
	withACL := func(entries ...aclEntry) func(p string) {
		return func(p string) {
			must(t, os.WriteFile(p, []byte("content"), 0o600))
			setACL(t, p, "system.posix_acl_access", entries...)
		}
	}
	// Named user 1001 may read; group 3000 may read and write; the mask allows reading only.
	acl := withACL(aclEntry{aclUserObj, 6, 0}, aclEntry{aclUser, 4, 1001}, aclEntry{aclGroupObj, 0, 0},
		aclEntry{aclGroup, 6, 3000}, aclEntry{aclMask, 4, 0}, aclEntry{aclOther, 0, 0})
	for i, tc := range []struct {
		uid    uint32
		groups []uint32
		op     string
		want   string
	}{
		{1001, nil, "read", "ok"},
		{1001, nil, "overwrite", "EACCES"},
		{1002, []uint32{3000}, "read", "ok"},
		{1002, []uint32{3000}, "overwrite", "EACCES"}, // masked
		{1002, nil, "read", "EACCES"},
	} {
		if got := sameAsLocal(t, local, disk, fmt.Sprintf("acl%d", i), acl, tc.uid, tc.uid, tc.groups, tc.op); got != tc.want {
			t.Errorf("%s as %d %v: %s, want %s", tc.op, tc.uid, tc.groups, got, tc.want)
		}
	}
	// A directory whose ACL lets 1001 search it, and only 1001.
	dir := func(p string) {
		must(t, os.Mkdir(p, 0o700))
		must(t, os.WriteFile(filepath.Join(p, "f"), []byte("f"), 0o644))
		setACL(t, p, "system.posix_acl_access", aclEntry{aclUserObj, 7, 0}, aclEntry{aclUser, 5, 1001},
			aclEntry{aclGroupObj, 0, 0}, aclEntry{aclMask, 5, 0}, aclEntry{aclOther, 0, 0})
	}
	for _, uid := range []uint32{1001, 1002} {
		var results [2]string
		for i, base := range []string{local.path("n2"), disk} {
			name := fmt.Sprintf("dir%d-%d", uid, i)
			dir(filepath.Join(disk, name))
			results[i] = asUser(t, uid, uid, nil, "read", filepath.Join(base, name, "f"))
		}
		if results[0] != results[1] {
			t.Errorf("reading through a directory with an ACL as %d: %s through the mount, %s on the disk", uid, results[0], results[1])
		}
	}
	// The kernel caches ACLs: a change on the owner's disk reaches it as any other change.
	p := filepath.Join(disk, "changing")
	acl(p)
	if got := asUser(t, 1001, 1001, nil, "read", local.path("n2", "changing")); got != "ok" {
		t.Fatalf("1001 reading changing: %s", got)
	}
	setACL(t, p, "system.posix_acl_access", aclEntry{aclUserObj, 6, 0}, aclEntry{aclUser, 0, 1001}, aclEntry{aclGroupObj, 0, 0},
		aclEntry{aclMask, 4, 0}, aclEntry{aclOther, 0, 0})
	eventually(t, 2*time.Second, "1001 denied once its ACL entry is gone", func() error {
		if got := asUser(t, 1001, 1001, nil, "read", local.path("n2", "changing")); got != "EACCES" {
			return fmt.Errorf("read: %s", got)
		}
		return nil
	})
}

func TestCreatesUnderDefaultACLsGetTheLocalMode(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	local, owner := c.node("n1"), c.node("n2")
	local.mountTree(5 * time.Second)
	openToAll(t, c)
	disk := owner.disk()
	withDefault := func(p string) {
		must(t, os.Mkdir(p, 0o777))
		must(t, os.Chmod(p, 0o777))
		setACL(t, p, "system.posix_acl_default", aclEntry{aclUserObj, 7, 0}, aclEntry{aclUser, 7, 1001},
			aclEntry{aclGroupObj, 5, 0}, aclEntry{aclMask, 7, 0}, aclEntry{aclOther, 0, 0})
	}
	plain := func(p string) {
		must(t, os.Mkdir(p, 0o777))
		must(t, os.Chmod(p, 0o777))
	}
	for _, tc := range []struct {
		dir   string
		make  func(string)
		op    string
		mode  string
		umask string
	}{
		{"default", withDefault, "createmode", "0666", "022"},
		{"default", withDefault, "createmode", "0640", "077"},
		{"default", withDefault, "mkdirmode", "0777", "027"},
		{"default", withDefault, "mkfifomode", "0666", "022"},
		{"plain", plain, "createmode", "0666", "027"},
		{"plain", plain, "mkdirmode", "0777", "077"},
		{"plain", plain, "mkfifomode", "0666", "002"},
	} {
		var modes [2]uint32
		var acls [2]string
		for i, base := range []string{local.path("n2"), disk} {
			dir := fmt.Sprintf("%s-%s-%s-%s-%d", tc.dir, tc.op, tc.mode, tc.umask, i)
			tc.make(filepath.Join(disk, dir))
			if got := asUser(t, 1001, 1001, nil, tc.op, filepath.Join(base, dir, "new"), tc.mode, tc.umask); got != "ok" {
				t.Fatalf("%s in %s: %s", tc.op, dir, got)
			}
			var st unix.Stat_t
			must(t, unix.Lstat(filepath.Join(disk, dir, "new"), &st))
			modes[i] = st.Mode
			b := make([]byte, 256)
			n, _ := unix.Lgetxattr(filepath.Join(disk, dir, "new"), "system.posix_acl_access", b)
			acls[i] = fmt.Sprintf("%x", b[:max(n, 0)])
		}
		if modes[0] != modes[1] || acls[0] != acls[1] {
			t.Errorf("%s %s under umask %s in a %s directory: through the mount mode %o, ACL %s; on the disk mode %o, ACL %s",
				tc.op, tc.mode, tc.umask, tc.dir, modes[0], acls[0], modes[1], acls[1])
		}
	}
}

// TestPathsLongerThanPathMax walks a tree deeper than PATH_MAX one directory at a time, as a
// program does with openat, through the mount: the owner must serve it as its disk does.
func TestPathsLongerThanPathMax(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	local, owner := c.node("n1"), c.node("n2")
	local.mountTree(5 * time.Second)
	name := strings.Repeat("d", 200)
	const depth = 30 // 6,030 bytes below the root
	fd, err := unix.Open(owner.disk(), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(t, err)
	for range depth {
		must(t, unix.Mkdirat(fd, name, 0o755))
		next, err := unix.Openat(fd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		must(t, err)
		unix.Close(fd)
		fd = next
	}
	must(t, unix.Close(fd))

	walk := func() int {
		t.Helper()
		fd, err := unix.Open(local.path("n2"), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		must(t, err)
		for i := range depth {
			next, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatalf("open directory %d deep through the mount: %v", i+1, err)
			}
			unix.Close(fd)
			fd = next
		}
		return fd
	}
	dir := walk()
	defer unix.Close(dir)
	f, err := unix.Openat(dir, "file", unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
	must(t, err)
	_, err = unix.Write(f, []byte("deep"))
	must(t, err)
	must(t, unix.Close(f))
	must(t, unix.Mkdirat(dir, "sub", 0o755))
	must(t, unix.Renameat(dir, "file", dir, "renamed"))
	must(t, unix.Fchmodat(dir, "renamed", 0o600, 0))
	var st unix.Stat_t
	must(t, unix.Fstatat(dir, "renamed", &st, 0))
	if st.Size != 4 || st.Mode&0o777 != 0o600 {
		t.Fatalf("deep file: size %d mode %o", st.Size, st.Mode)
	}
	must(t, unix.Symlinkat("renamed", dir, "link"))
	buf := make([]byte, 64)
	n, err := unix.Readlinkat(dir, "link", buf)
	must(t, err)
	if string(buf[:n]) != "renamed" {
		t.Fatalf("readlink %q", buf[:n])
	}
	must(t, unix.Setxattr(fmt.Sprintf("/proc/self/fd/%d/renamed", dir), "user.deep", []byte("1"), 0))
	names := make([]byte, 4096)
	n, err = unix.Getdents(dir, names)
	must(t, err)
	for _, want := range []string{"renamed", "sub", "link"} {
		if !strings.Contains(string(names[:n]), want) {
			t.Errorf("listing of the deep directory lacks %q", want)
		}
	}
	must(t, unix.Unlinkat(dir, "link", 0))
	must(t, unix.Unlinkat(dir, "sub", unix.AT_REMOVEDIR))
	// Read back from the disk, then through a fresh walk.
	dfd, err := unix.Open(owner.disk(), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(t, err)
	for range depth {
		next, err := unix.Openat(dfd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		must(t, err)
		unix.Close(dfd)
		dfd = next
	}
	defer unix.Close(dfd)
	var dst unix.Stat_t
	must(t, unix.Fstatat(dfd, "renamed", &dst, 0))
	if dst.Size != 4 {
		t.Fatalf("the owner's deep file has size %d", dst.Size)
	}
}

// TestCloseWhileAnotherMountNamespaceHoldsTheMount: a process in a mount namespace made while
// the tree was mounted (a simulated host, unshare -m) keeps a copy of the mount. Unmounting
// ours then leaves the FUSE connection alive, and Close must not wait for it for ever.
func TestCloseWhileAnotherMountNamespaceHoldsTheMount(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	local := c.node("n1")
	m := local.mountTree(5 * time.Second)
	must(t, os.WriteFile(c.node("n2").disk("f"), []byte("f"), 0o644))
	if got := readFile(t, local.path("n2", "f")); got != "f" {
		t.Fatalf("read %q", got)
	}
	holder := exec.Command("sleep", "600")
	holder.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	must(t, holder.Start())
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })

	closed := make(chan error, 1)
	go func() { closed <- m.Close() }()
	select {
	case err := <-closed:
		must(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("Close still waits 30 s after unmounting, for a mount another namespace holds")
	}
	local.mount = nil
	// The holder's copy is cut off rather than left hanging: its requests fail at once.
	out, err := exec.Command("nsenter", "-t", fmt.Sprint(holder.Process.Pid), "-m", "cat", local.path("n2", "f")).CombinedOutput()
	if err == nil {
		t.Fatalf("read through the other namespace's copy after Close: %q", out)
	}
	if errors.Is(err, exec.ErrNotFound) {
		t.Logf("no nsenter to look through the other namespace: %v", err)
	}
}

// TestRootWithoutCapabilitiesIsDeniedAsLocally: what lets root past permissions is its
// capabilities, not its uid. Root without them (a container's root, a daemon that dropped
// them) is refused locally, and so through the tree.
func TestRootWithoutCapabilitiesIsDeniedAsLocally(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	local, owner := c.node("n1"), c.node("n2")
	local.mountTree(5 * time.Second)
	disk := owner.disk()
	must(t, os.WriteFile(filepath.Join(disk, "private"), []byte("p"), 0o600))
	must(t, os.Chown(filepath.Join(disk, "private"), 1001, 1001))
	must(t, os.Mkdir(filepath.Join(disk, "closed"), 0o755))
	must(t, os.Chown(filepath.Join(disk, "closed"), 1001, 1001))
	for _, tc := range []struct{ op, path, want string }{
		{"nocapsread", "private", "EACCES"},
		{"nocapswrite", "closed/new", "EACCES"},
		{"read", "private", "ok"},
	} {
		var results [2]string
		for i, base := range []string{local.path("n2"), disk} {
			results[i] = as(t, 0, tc.op, filepath.Join(base, tc.path))
		}
		if results[0] != results[1] || results[0] != tc.want {
			t.Errorf("%s %s as root: %s through the mount, %s on the disk, want %s", tc.op, tc.path, results[0], results[1], tc.want)
		}
	}
}

// TestACLQuestionsAnsweredWithoutTheOwner: with ACLs on, the kernel asks for a file's access
// ACL before its first permission check. Owners say in the attributes which ACLs an object
// has, so that the question about a file without one costs no round trip, and files on the
// owner's file systems without ACLs (/proc) are not refused for want of an answer.
func TestACLQuestionsAnsweredWithoutTheOwner(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	local, owner := c.node("n1"), c.node("n2")
	owner.restart(ServerConfig{Root: "/", Exports: []string{owner.disk(), "/proc"}})
	local.mountTree(5 * time.Second)
	openToAll(t, c)
	m := func(p ...string) string { return local.path("n2", append([]string{owner.disk()}, p...)...) }
	must(t, os.WriteFile(owner.disk("plain"), []byte("p"), 0o644))
	must(t, os.WriteFile(owner.disk("acl"), []byte("a"), 0o640))
	setACL(t, owner.disk("acl"), xattrACLAccess, aclEntry{aclUserObj, 6, 0}, aclEntry{aclUser, 4, 1001},
		aclEntry{aclGroupObj, 4, 0}, aclEntry{aclMask, 4, 0}, aclEntry{aclOther, 0, 0})

	f, err := os.Open(m("plain"))
	must(t, err)
	defer f.Close()
	before := owner.server.Stats().Ops
	_, err = unix.Fgetxattr(int(f.Fd()), xattrACLAccess, make([]byte, 256))
	wantErrno(t, err, syscall.ENODATA)
	if after := owner.server.Stats().Ops; after != before {
		t.Errorf("asking for the access ACL of a file known to have none took %d requests to the owner", after-before)
	}
	// A file with one is asked for, and an ACL set from here is seen at once.
	n, err := unix.Getxattr(m("acl"), xattrACLAccess, make([]byte, 256))
	if err != nil || n != 4+5*8 {
		t.Fatalf("getxattr of the access ACL: %d, %v", n, err)
	}
	setACL(t, m("plain"), xattrACLAccess, aclEntry{aclUserObj, 6, 0}, aclEntry{aclUser, 0, 65534},
		aclEntry{aclGroupObj, 4, 0}, aclEntry{aclMask, 4, 0}, aclEntry{aclOther, 4, 0})
	if got := as(t, 65534, "read", m("plain")); got != "EACCES" {
		t.Errorf("nobody reading a file whose ACL now excludes it: %s", got)
	}
	if got := asUser(t, 1001, 1001, nil, "read", m("acl")); got != "ok" {
		t.Errorf("1001 reading a file whose ACL lets it: %s", got)
	}
	// /proc has no ACLs: its files are read as their mode allows.
	if got := as(t, 65534, "read", local.path("n2", "proc/uptime")); got != "ok" {
		t.Errorf("nobody reading /proc/uptime through the tree: %s", got)
	}
}

// TestReadOnlyExportStillWritesDevices: a read-only file system refuses changes to its files,
// directories and symlinks, not writes to the devices and fifos in it (a serial line, /dev/null).
func TestReadOnlyExportStillWritesDevices(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	local, owner := c.node("n1"), c.node("n2")
	must(t, unix.Mknod(owner.disk("null"), syscall.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(t, os.WriteFile(owner.disk("file"), []byte("f"), 0o666))
	owner.restart(ServerConfig{ReadOnly: true})
	local.mountTree(5 * time.Second)

	// As on a read-only mount of the owner's disk.
	ro := filepath.Join(t.TempDir(), "ro")
	must(t, os.Mkdir(ro, 0o755))
	must(t, unix.Mount(owner.disk(), ro, "", unix.MS_BIND, ""))
	defer unix.Unmount(ro, unix.MNT_DETACH)
	must(t, unix.Mount("", ro, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""))
	for _, base := range []string{ro, local.path("n2")} {
		must(t, os.WriteFile(filepath.Join(base, "null"), []byte("into the void"), 0))
		wantErrno(t, os.WriteFile(filepath.Join(base, "file"), []byte("x"), 0), syscall.EROFS)
	}
}

// TestTreeIsNosuid: a set-user-ID program of another node does not run with its owner's
// privileges from the tree (as on an NFS mount with nosuid), nor do file capabilities apply.
func TestTreeIsNosuid(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	local := c.node("n1")
	local.mountTree(5 * time.Second)
	var sfs unix.Statfs_t
	must(t, unix.Statfs(local.path("n2"), &sfs))
	if sfs.Flags&unix.ST_NOSUID == 0 || sfs.Flags&unix.ST_NODEV == 0 {
		t.Fatalf("the tree is mounted with flags %#x, want nosuid and nodev", sfs.Flags)
	}
}

// TestForgedChangesStayInsideTheExports sends the owner link, rename, create and setattr
// requests that a broken or hostile client could make, naming things outside the exports
// directly or through symlinks: none may reach them.
func TestForgedChangesStayInsideTheExports(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	owner := c.node("n2")
	disk := owner.disk()
	must(t, os.Mkdir(filepath.Join(disk, "pub"), 0o777))
	must(t, os.WriteFile(filepath.Join(disk, "pub", "f"), []byte("f"), 0o644))
	must(t, os.WriteFile(filepath.Join(disk, "secret"), []byte("s"), 0o600))
	must(t, os.Symlink("/", filepath.Join(disk, "pub", "slash")))
	must(t, os.Symlink("..", filepath.Join(disk, "pub", "up")))
	owner.restart(ServerConfig{Exports: []string{"/pub"}})
	s := owner.server
	ctx := withCallerNode(context.Background(), "n1")
	sess := []byte("forger")
	root := &fspb.Caller{}
	const pub, secret = "pub", "secret"
	ref := func(p string) *fspb.NodeRef { return &fspb.NodeRef{Path: []byte(p)} }
	for _, tc := range []struct {
		what string
		call func() (int32, error)
	}{
		{"link the unexported secret into pub", func() (int32, error) {
			r, err := s.Link(ctx, &fspb.LinkRequest{Session: sess, Caller: root, Target: ref(secret), Dir: ref(pub), Name: []byte("stolen")})
			return r.GetErrno(), err
		}},
		{"link through a symlink to / out of pub", func() (int32, error) {
			r, err := s.Link(ctx, &fspb.LinkRequest{Session: sess, Caller: root, Target: ref(pub + "/slash/" + secret), Dir: ref(pub), Name: []byte("stolen")})
			return r.GetErrno(), err
		}},
		{"link pub/f out into the unexported parent", func() (int32, error) {
			r, err := s.Link(ctx, &fspb.LinkRequest{Session: sess, Caller: root, Target: ref(pub + "/f"), Dir: ref(""), Name: []byte("out")})
			return r.GetErrno(), err
		}},
		{"rename pub/f out of the export", func() (int32, error) {
			r, err := s.Rename(ctx, &fspb.RenameRequest{Session: sess, Caller: root, Dir: ref(pub), Name: []byte("f"), NewDir: ref(""), NewName: []byte("out")})
			return r.GetErrno(), err
		}},
		{"rename through pub/up", func() (int32, error) {
			r, err := s.Rename(ctx, &fspb.RenameRequest{Session: sess, Caller: root, Dir: ref(pub), Name: []byte("f"), NewDir: ref(pub + "/up"), NewName: []byte("out")})
			return r.GetErrno(), err
		}},
		{"rename the export itself", func() (int32, error) {
			r, err := s.Rename(ctx, &fspb.RenameRequest{Session: sess, Caller: root, Dir: ref(""), Name: []byte("pub"), NewDir: ref(""), NewName: []byte("moved")})
			return r.GetErrno(), err
		}},
		{"create beside the export", func() (int32, error) {
			r, err := s.Create(ctx, &fspb.CreateRequest{Session: sess, Caller: root, Dir: ref(""), Name: []byte("new"), Flags: uint32(os.O_WRONLY), Mode: 0o644})
			return r.GetErrno(), err
		}},
		{"chmod the unexported secret", func() (int32, error) {
			r, err := s.Setattr(ctx, &fspb.SetattrRequest{Session: sess, Caller: root, Node: ref(secret), Valid: setMode, Mode: 0o666})
			return r.GetErrno(), err
		}},
		{"chmod through pub/slash", func() (int32, error) {
			r, err := s.Setattr(ctx, &fspb.SetattrRequest{Session: sess, Caller: root, Node: ref(pub + "/slash/" + secret), Valid: setMode, Mode: 0o666})
			return r.GetErrno(), err
		}},
	} {
		errno, err := tc.call()
		if err != nil {
			t.Errorf("%s: %v", tc.what, err)
			continue
		}
		if errno == 0 {
			t.Errorf("%s: done", tc.what)
		}
	}
	var st unix.Stat_t
	must(t, unix.Stat(filepath.Join(disk, "secret"), &st))
	if st.Mode&0o777 != 0o600 || st.Nlink != 1 {
		t.Errorf("the secret is now mode %o with %d links", st.Mode&0o777, st.Nlink)
	}
	if _, err := os.Stat(filepath.Join(disk, "pub", "f")); err != nil {
		t.Errorf("pub/f: %v", err)
	}
	for _, p := range []string{"out", "moved", "new"} {
		if _, err := os.Lstat(filepath.Join(disk, p)); err == nil {
			t.Errorf("%s was made beside the export", p)
		}
	}
}

// TestCapabilitiesOfOrdinaryUsersCount: what a capability lets a process do locally, it may
// do through the tree, whatever its uid; and not more.
func TestCapabilitiesOfOrdinaryUsersCount(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	local, owner := c.node("n1"), c.node("n2")
	local.mountTree(5 * time.Second)
	openToAll(t, c)
	disk := owner.disk()
	must(t, os.Chmod(disk, 0o755))
	must(t, os.WriteFile(filepath.Join(disk, "private"), []byte("p"), 0o600))
	const dacReadSearch, dacOverride = 2, 1 // CAP_DAC_READ_SEARCH, CAP_DAC_OVERRIDE
	for _, tc := range []struct {
		caps []uintptr
		op   string
		want string
	}{
		{[]uintptr{dacReadSearch}, "read", "ok"},
		{[]uintptr{dacReadSearch}, "overwrite", "EACCES"},
		{[]uintptr{dacOverride}, "overwrite", "ok"},
		{nil, "read", "EACCES"},
	} {
		var results [2]string
		for i, base := range []string{local.path("n2"), disk} {
			results[i] = asUserWithCaps(t, 1001, tc.caps, tc.op, filepath.Join(base, "private"))
		}
		if results[0] != results[1] || results[0] != tc.want {
			t.Errorf("%s as 1001 with capabilities %v: %s through the mount, %s on the disk, want %s", tc.op, tc.caps, results[0], results[1], tc.want)
		}
	}
}

// TestMoreChecksAsLocally: sticky directories, O_NOATIME, xattr namespaces, access(2) and
// touch, for users other than the owner, through the mount as on the owner's disk.
func TestMoreChecksAsLocally(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	local, owner := c.node("n1"), c.node("n2")
	local.mountTree(5 * time.Second)
	openToAll(t, c)
	disk := owner.disk()
	must(t, os.Chmod(disk, 0o777))
	must(t, os.Mkdir(filepath.Join(disk, "sticky"), 0o777))
	must(t, unix.Chmod(filepath.Join(disk, "sticky"), 0o1777))
	shared := func(p string) {
		must(t, os.WriteFile(p, []byte("x"), 0o666))
		must(t, unix.Chmod(p, 0o666))
		must(t, os.Chown(p, 1001, 1001))
	}
	plain := func(p string) { must(t, os.WriteFile(p, []byte("x"), 0o644)) }
	for i, tc := range []struct {
		dir     string
		prepare func(string)
		uid     uint32
		op      []string
		want    string
	}{
		{"sticky", shared, 1002, []string{"unlink"}, "EPERM"},
		{"sticky", shared, 1002, []string{"overwrite"}, "ok"},
		{"sticky", shared, 1001, []string{"unlink"}, "ok"},
		{"", shared, 1002, []string{"noatime"}, "EPERM"},
		{"", shared, 1001, []string{"noatime"}, "ok"},
		{"", shared, 1002, []string{"touch"}, "ok"},
		{"", shared, 1002, []string{"chmod"}, "EPERM"},
		{"", shared, 1002, []string{"setxattr", "trusted.t"}, "EPERM"},
		{"", shared, 1002, []string{"setxattr", "security.t"}, "EPERM"},
		{"", shared, 1002, []string{"setxattr", "user.t"}, "ok"},
		{"", plain, 1002, []string{"setxattr", "user.t"}, "EACCES"},
		{"", plain, 0, []string{"access", "1"}, "EACCES"}, // X_OK: root needs an x bit
		{"", plain, 0, []string{"access", "2"}, "ok"},
		{"", plain, 1002, []string{"access", "2"}, "EACCES"},
	} {
		name := filepath.Join(tc.dir, fmt.Sprint("more", i))
		got := sameAsLocal(t, local, disk, name, tc.prepare, tc.uid, tc.uid, nil, tc.op[0], tc.op[1:]...)
		if got != tc.want {
			t.Errorf("%v as %d: %s, want %s", tc.op, tc.uid, got, tc.want)
		}
	}
}

// TestExecuteOnlyProgramsRun: a program that others may execute but not read (mode 0711)
// runs for them locally, the kernel reading it on their behalf, and so through the tree; it
// still cannot be read.
func TestExecuteOnlyProgramsRun(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	local, owner := c.node("n1"), c.node("n2")
	local.mountTree(5 * time.Second)
	openToAll(t, c)
	disk := owner.disk()
	must(t, os.Chmod(disk, 0o755))
	program, err := os.ReadFile("/bin/true")
	if err != nil {
		t.Skipf("needs /bin/true: %v", err)
	}
	for _, tc := range []struct {
		mode uint32
		op   string
		want string
	}{
		{0o711, "exec", "ok"},
		{0o711, "read", "EACCES"},
		{0o700, "exec", "EACCES"},
		{0o644, "exec", "EACCES"},
	} {
		var results [2]string
		for i, base := range []string{local.path("n2"), disk} {
			name := fmt.Sprintf("prog-%o-%s-%d", tc.mode, tc.op, i)
			must(t, os.WriteFile(filepath.Join(disk, name), program, 0o700))
			must(t, unix.Chmod(filepath.Join(disk, name), tc.mode))
			results[i] = as(t, 65534, tc.op, filepath.Join(base, name))
		}
		if results[0] != results[1] || results[0] != tc.want {
			t.Errorf("%s of a %o program as nobody: %s through the mount, %s on the disk, want %s", tc.op, tc.mode, results[0], results[1], tc.want)
		}
	}
}
