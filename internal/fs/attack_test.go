package fs

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/fs/fspb"
)

// TestHostileUserGetsWhatLocalPermissionsAllow: an unprivileged user trying what Unix
// permissions refuse (links to others' files, set-ID bits, sticky directories, devices, times)
// gets through the mount exactly what they get on the owner's disk.
func TestHostileUserGetsWhatLocalPermissionsAllow(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	local, owner := c.node("n1"), c.node("n2")
	local.mountTree(5 * time.Second)
	openToAll(t, c)
	disk := owner.disk()
	must(t, os.Chmod(disk, 0o777))
	must(t, os.Mkdir(filepath.Join(disk, "sticky"), 0o777))
	must(t, unix.Chmod(filepath.Join(disk, "sticky"), 0o1777))
	file := func(mode uint32, uid, gid int) func(string) {
		return func(p string) {
			must(t, os.WriteFile(p, []byte("x"), 0o600))
			must(t, os.Chown(p, uid, gid))
			must(t, unix.Chmod(p, mode))
		}
	}
	dir := func(mode uint32, uid, gid int) func(string) {
		return func(p string) {
			must(t, os.Mkdir(p, 0o700))
			must(t, os.Chown(p, uid, gid))
			must(t, unix.Chmod(p, mode))
		}
	}
	const user, other, group = 1001, 1002, 3000
	for i, tc := range []struct {
		dir     string
		prepare func(string)
		uid     uint32
		groups  []uint32
		op      []string
		want    string
	}{
		// protected_hardlinks: no link to a file one may not both read and write.
		{"", file(0o600, 0, 0), user, nil, []string{"link", ".l"}, "EPERM"},
		{"", file(0o644, 0, 0), user, nil, []string{"link", ".l"}, "EPERM"},
		{"", file(0o4777, 0, 0), user, nil, []string{"link", ".l"}, "EPERM"},
		{"", file(0o666, 0, 0), user, nil, []string{"link", ".l"}, "ok"},
		// chmod g+s on one's own file of a group one is not in keeps the rest, drops the bit.
		{"", file(0o644, user, group), user, nil, []string{"chmodto", "2755"}, "ok"},
		{"", file(0o644, user, group), user, []uint32{group}, []string{"chmodto", "2755"}, "ok"},
		{"", file(0o644, user, group), user, nil, []string{"chmodto", "4755"}, "ok"},
		{"", file(0o644, user, user), user, nil, []string{"chgrp", fmt.Sprint(group)}, "EPERM"},
		{"", file(0o6755, user, user), user, []uint32{group}, []string{"chgrp", fmt.Sprint(group)}, "ok"},
		{"", file(0o644, user, user), user, nil, []string{"chown"}, "EPERM"},
		// Pages written through a shared mapping leave set-ID bits alone.
		{"", file(0o6777, 0, 0), user, nil, []string{"mmapwrite"}, "ok"},
		// Times: anyone who may write sets them to now, only the owner to a given time.
		{"", file(0o666, other, other), user, nil, []string{"settimes"}, "EPERM"},
		{"", file(0o666, other, other), user, nil, []string{"touch"}, "ok"},
		{"", file(0o644, other, other), user, nil, []string{"touch"}, "EACCES"},
		// Sticky directories: others' files stay where they are.
		{"sticky", file(0o666, other, other), user, nil, []string{"rename", ".r"}, "EPERM"},
		{"sticky", file(0o666, other, other), user, nil, []string{"exchange"}, "EPERM"},
		{"sticky", file(0o666, user, user), user, nil, []string{"rename", ".r"}, "ok"},
		// Devices only by root.
		{"", dir(0o777, 0, 0), user, nil, []string{"mknodchr", "/null"}, "EPERM"},
		// A setgid directory: a new directory inherits the group and the bit, whatever the
		// umask.
		{"", dir(0o2777, 0, group), user, nil, []string{"mkdirin", "0777", "002"}, "42775"},
		{"", dir(0o2777, 0, group), user, nil, []string{"mkdirin", "0777", "022"}, "42755"},
		{"", dir(0o2777, 0, group), user, nil, []string{"mkdirin", "0700", "077"}, "42700"},
	} {
		name := filepath.Join(tc.dir, fmt.Sprint("hostile", i))
		got := sameAsLocal(t, local, disk, name, tc.prepare, tc.uid, tc.uid, tc.groups, tc.op[0], tc.op[1:]...)
		if got != tc.want {
			t.Errorf("%v as %d (groups %v): %s, want %s", tc.op, tc.uid, tc.groups, got, tc.want)
		}
	}
}

// TestPseudoFilesReadAsTheirReader: some pseudo files check the reader at read time, not at
// open: /proc/<pid>/stat shows the addresses of a process's code and stack only to those who
// may trace it (ASLR stays secret from others). Read through the tree by a user who may not,
// they must stay hidden as on the owner, not be read with the agent's privileges.
func TestPseudoFilesReadAsTheirReader(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	local, owner := c.node("n1"), c.node("n2")
	owner.restart(ServerConfig{Root: "/", Exports: []string{"/proc"}})
	local.mountTree(5 * time.Second)
	openToAll(t, c)
	// A process of root's other than the test's own (which is the owner's agent here: a
	// process may always look at itself): nobody may not trace it.
	sleeper := exec.Command("sleep", "60")
	must(t, sleeper.Start())
	defer func() { sleeper.Process.Kill(); sleeper.Wait() }()
	stat := fmt.Sprintf("proc/%d/stat", sleeper.Process.Pid)
	// startcode, endcode and startstack: fields 26 to 28, counted from the pid.
	addresses := func(b string) string {
		if i := strings.LastIndexByte(b, ')'); i >= 0 {
			if f := strings.Fields(b[i+1:]); len(f) > 25 {
				return strings.Join(f[23:26], " ")
			}
		}
		return "unparsed: " + b
	}
	onDisk := addresses(as(t, 65534, "cat", "/"+stat))
	through := addresses(as(t, 65534, "cat", local.path("n2", stat)))
	if through != onDisk {
		t.Errorf("nobody reads the code and stack addresses of a root process as %q through the tree, %q on the owner", through, onDisk)
	}
	if root := addresses(as(t, 0, "cat", local.path("n2", stat))); root == onDisk {
		t.Errorf("root reads them as %q through the tree too: the test shows nothing", root)
	}
}

// TestCreateOfAnExistingNameIsAnOpenWithOCreat: a create that finds its name taken (made
// meanwhile by someone else: the client's lookup said it was free) opens what is there as
// open(2) with O_CREAT would, with that flag's checks: a directory fails with EISDIR, and in
// sticky directories the kernel's protected_regular and protected_fifos rules apply.
func TestCreateOfAnExistingNameIsAnOpenWithOCreat(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	owner := c.node("n2")
	disk := owner.disk()
	must(t, os.Chmod(disk, 0o777))
	must(t, os.Mkdir(filepath.Join(disk, "dir"), 0o777))
	must(t, os.WriteFile(filepath.Join(disk, "file"), nil, 0o666))
	must(t, unix.Chmod(filepath.Join(disk, "file"), 0o666))
	must(t, os.Mkdir(filepath.Join(disk, "sticky"), 0o777))
	must(t, unix.Chmod(filepath.Join(disk, "sticky"), 0o1777))
	must(t, os.WriteFile(filepath.Join(disk, "sticky", "planted"), nil, 0o666))
	must(t, unix.Chmod(filepath.Join(disk, "sticky", "planted"), 0o666))
	must(t, os.Chown(filepath.Join(disk, "sticky", "planted"), 1002, 1002))
	s := owner.server
	ctx := withCallerNode(context.Background(), "n1")
	var none uint64
	nobody := &fspb.Caller{Uid: 65534, Gid: 65534, Capabilities: &none}
	cases := []struct {
		dir, name string
		flags     int
		want      syscall.Errno
	}{
		{"", "dir", unix.O_RDONLY, syscall.EISDIR},
		{"", "dir", unix.O_WRONLY, syscall.EISDIR},
		{"", "file", unix.O_WRONLY, 0},
		{"", "file", unix.O_RDONLY | unix.O_EXCL, syscall.EEXIST},
	}
	// The machine decides whether another's file planted in a sticky directory may be
	// opened with O_CREAT.
	if b, err := os.ReadFile("/proc/sys/fs/protected_regular"); err == nil && strings.TrimSpace(string(b)) != "0" {
		cases = append(cases, struct {
			dir, name string
			flags     int
			want      syscall.Errno
		}{"sticky", "planted", unix.O_WRONLY, syscall.EACCES})
	}
	for _, tc := range cases {
		r, err := s.Create(ctx, &fspb.CreateRequest{Session: []byte("creator"), Caller: nobody, Dir: &fspb.NodeRef{Path: []byte(tc.dir)},
			Name: []byte(tc.name), Flags: uint32(tc.flags | unix.O_CREAT), Mode: 0o644})
		must(t, err)
		if got := syscall.Errno(r.Errno); got != tc.want {
			t.Errorf("create of the existing %s with flags %#o: %v, want %v", tc.name, tc.flags, got, tc.want)
		}
	}
}

// TestOpenToExecuteTruncatesNothing: the owner opens a program others may only execute as
// the agent, for the kernel that runs it. Such an open never truncates: one that asks to,
// which no kernel sends for an exec (a forging client could), is the caller's own open.
func TestOpenToExecuteTruncatesNothing(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	owner := c.node("n2")
	owner.restart(ServerConfig{RootSquash: true})
	disk := owner.disk()
	must(t, os.Chmod(disk, 0o755))
	prog := filepath.Join(disk, "prog")
	must(t, os.WriteFile(prog, []byte("#!/bin/sh\n"), 0o711))
	must(t, unix.Chmod(prog, 0o4711))
	s := owner.server
	ctx := withCallerNode(context.Background(), "n1")
	for _, flags := range []int{unix.O_RDONLY | unix.O_TRUNC, unix.O_RDONLY | unix.O_TRUNC | unix.O_APPEND} {
		r, err := s.Open(ctx, &fspb.OpenRequest{Session: []byte("exec"), Caller: &fspb.Caller{}, Node: &fspb.NodeRef{Path: []byte("prog")},
			Flags: uint32(flags | fmodeExec)})
		must(t, err)
		if syscall.Errno(r.Errno) != syscall.EACCES {
			t.Errorf("open of a 4711 program of root's to execute, flags %#o, by squashed root: %v, want EACCES", flags, syscall.Errno(r.Errno))
		}
	}
	if got := readFile(t, prog); got != "#!/bin/sh\n" {
		t.Errorf("the program now holds %q", got)
	}
}

// TestReadLocksOpenNothingForWriting: a user who may only read a program takes a read lock
// on it through the tree. The owner holds the lock on a description of its own, which must
// not be open for writing: while one is, the kernel refuses to execute the program
// (ETXTBSY), so anyone could stop /bin/sh from running on the owner.
func TestReadLocksOpenNothingForWriting(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	owner := c.node("n2")
	disk := owner.disk()
	must(t, os.Chmod(disk, 0o755))
	prog := filepath.Join(disk, "prog")
	must(t, os.WriteFile(prog, []byte("#!/bin/sh\nexit 0\n"), 0o755))
	s := owner.server
	ctx := withCallerNode(context.Background(), "n1")
	var none uint64
	nobody := &fspb.Caller{Uid: 65534, Gid: 65534, Capabilities: &none}
	sess := []byte("locker")
	o, err := s.Open(ctx, &fspb.OpenRequest{Session: sess, Caller: nobody, Node: &fspb.NodeRef{Path: []byte("prog")}, Flags: unix.O_RDONLY})
	must(t, err)
	if o.Errno != 0 {
		t.Fatalf("open: %v", syscall.Errno(o.Errno))
	}
	defer s.Release(ctx, &fspb.HandleRequest{Session: sess, Handle: o.Handle})
	l, err := s.Lock(ctx, &fspb.LockRequest{Session: sess, Handle: o.Handle, Op: fspb.LockRequest_SET, Type: unix.F_RDLCK, End: 1<<63 - 1, Owner: 7})
	must(t, err)
	if l.Errno != 0 {
		t.Fatalf("read lock: %v", syscall.Errno(l.Errno))
	}
	if err := exec.Command(prog).Run(); err != nil {
		t.Errorf("the program, read-locked through the tree, does not run on the owner: %v", err)
	}
	// A write lock through a handle open for reading only fails, as fcntl does, and opens
	// nothing for writing either.
	l, err = s.Lock(ctx, &fspb.LockRequest{Session: sess, Handle: o.Handle, Op: fspb.LockRequest_SET, Type: unix.F_WRLCK, End: 1<<63 - 1, Owner: 6})
	must(t, err)
	if syscall.Errno(l.Errno) != syscall.EBADF {
		t.Errorf("write lock through a read-only handle: %v, want EBADF", syscall.Errno(l.Errno))
	}
	if err := exec.Command(prog).Run(); err != nil {
		t.Errorf("the program does not run on the owner after a write lock through a read-only handle: %v", err)
	}

	// A lock owner with a read lock taken through a read-only handle takes a write lock
	// through a handle open for writing: its locks move to a description open for writing,
	// and hold all along against another's.
	must(t, os.WriteFile(filepath.Join(disk, "data"), make([]byte, 100), 0o666))
	must(t, unix.Chmod(filepath.Join(disk, "data"), 0o666))
	open := func(sess []byte, flags int) uint64 {
		o, err := s.Open(ctx, &fspb.OpenRequest{Session: sess, Caller: nobody, Node: &fspb.NodeRef{Path: []byte("data")}, Flags: uint32(flags)})
		must(t, err)
		if o.Errno != 0 {
			t.Fatalf("open data: %v", syscall.Errno(o.Errno))
		}
		return o.Handle
	}
	lock := func(sess []byte, h uint64, owner uint64, typ int, start, end uint64) syscall.Errno {
		l, err := s.Lock(ctx, &fspb.LockRequest{Session: sess, Handle: h, Op: fspb.LockRequest_SET, Type: uint32(typ), Start: start, End: end, Owner: owner})
		must(t, err)
		return syscall.Errno(l.Errno)
	}
	other := []byte("other")
	ro, rw, theirs := open(sess, unix.O_RDONLY), open(sess, unix.O_RDWR), open(other, unix.O_RDWR)
	for _, step := range []struct {
		sess  []byte
		h     uint64
		owner uint64
		typ   int
		start uint64
		end   uint64
		want  syscall.Errno
	}{
		{sess, ro, 8, unix.F_RDLCK, 0, 9, 0},
		{sess, rw, 8, unix.F_WRLCK, 5, 20, 0},
		{other, theirs, 9, unix.F_WRLCK, 0, 4, syscall.EAGAIN}, // the read lock moved
		{other, theirs, 9, unix.F_RDLCK, 0, 4, 0},
		{other, theirs, 9, unix.F_RDLCK, 5, 5, syscall.EAGAIN}, // the write lock
		{other, theirs, 9, unix.F_WRLCK, 21, 30, 0},
	} {
		if got := lock(step.sess, step.h, step.owner, step.typ, step.start, step.end); got != step.want {
			t.Errorf("owner %d: lock type %d on %d-%d: %v, want %v", step.owner, step.typ, step.start, step.end, got, step.want)
		}
	}
}

// TestReadOnlyExportRefusesEveryChange sends every request that changes a file or a
// directory to a read-only export, as root: each fails with EROFS and the disk stays as it was.
func TestReadOnlyExportRefusesEveryChange(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	owner := c.node("n2")
	disk := owner.disk()
	must(t, os.WriteFile(filepath.Join(disk, "f"), []byte("content"), 0o644))
	must(t, os.WriteFile(filepath.Join(disk, "g"), []byte("other"), 0o644))
	owner.restart(ServerConfig{ReadOnly: true})
	s := owner.server
	ctx := withCallerNode(context.Background(), "n1")
	sess := []byte("ro")
	root := &fspb.Caller{}
	ref := func(p string) *fspb.NodeRef { return &fspb.NodeRef{Path: []byte(p)} }
	o, err := s.Open(ctx, &fspb.OpenRequest{Session: sess, Caller: root, Node: ref("f"), Flags: unix.O_RDONLY})
	must(t, err)
	if o.Errno != 0 {
		t.Fatalf("open for reading: %v", syscall.Errno(o.Errno))
	}
	for _, tc := range []struct {
		what string
		call func() (int32, error)
	}{
		{"touch", func() (int32, error) {
			r, err := s.Setattr(ctx, &fspb.SetattrRequest{Session: sess, Caller: root, Node: ref("f"), Valid: setAtimeNow | setMtimeNow})
			return r.GetErrno(), err
		}},
		{"truncate through a handle", func() (int32, error) {
			r, err := s.Setattr(ctx, &fspb.SetattrRequest{Session: sess, Caller: root, Node: &fspb.NodeRef{Path: []byte("f"), Handle: o.Handle}, Valid: setSize})
			return r.GetErrno(), err
		}},
		{"setxattr", func() (int32, error) {
			r, err := s.Xattr(ctx, &fspb.XattrRequest{Session: sess, Caller: root, Node: ref("f"), Op: fspb.XattrRequest_SET, Name: []byte("user.x"), Value: []byte("v")})
			return r.GetErrno(), err
		}},
		{"removexattr", func() (int32, error) {
			r, err := s.Xattr(ctx, &fspb.XattrRequest{Session: sess, Caller: root, Node: ref("f"), Op: fspb.XattrRequest_REMOVE, Name: []byte("user.x")})
			return r.GetErrno(), err
		}},
		{"fallocate", func() (int32, error) {
			r, err := s.Allocate(ctx, &fspb.AllocateRequest{Session: sess, Caller: root, Handle: o.Handle, Length: 1 << 20})
			return r.GetErrno(), err
		}},
		{"write through a read handle", func() (int32, error) {
			r, err := s.Write(ctx, &fspb.WriteRequest{Session: sess, Caller: root, Handle: o.Handle, Data: []byte("x")})
			return r.GetErrno(), err
		}},
		{"link", func() (int32, error) {
			r, err := s.Link(ctx, &fspb.LinkRequest{Session: sess, Caller: root, Target: ref("f"), Dir: ref(""), Name: []byte("l")})
			return r.GetErrno(), err
		}},
		{"exchange", func() (int32, error) {
			r, err := s.Rename(ctx, &fspb.RenameRequest{Session: sess, Caller: root, Dir: ref(""), Name: []byte("f"), NewDir: ref(""), NewName: []byte("g"), Flags: unix.RENAME_EXCHANGE})
			return r.GetErrno(), err
		}},
		{"mknod a fifo", func() (int32, error) {
			r, err := s.Mknod(ctx, &fspb.MknodRequest{Session: sess, Caller: root, Dir: ref(""), Name: []byte("p"), Mode: syscall.S_IFIFO | 0o644})
			return r.GetErrno(), err
		}},
		{"symlink", func() (int32, error) {
			r, err := s.Symlink(ctx, &fspb.SymlinkRequest{Session: sess, Caller: root, Dir: ref(""), Name: []byte("s"), Target: []byte("f")})
			return r.GetErrno(), err
		}},
		{"open with O_TRUNC", func() (int32, error) {
			r, err := s.Open(ctx, &fspb.OpenRequest{Session: sess, Caller: root, Node: ref("f"), Flags: unix.O_RDONLY | unix.O_TRUNC})
			return r.GetErrno(), err
		}},
		{"create over it", func() (int32, error) {
			r, err := s.Create(ctx, &fspb.CreateRequest{Session: sess, Caller: root, Dir: ref(""), Name: []byte("f"), Flags: unix.O_WRONLY | unix.O_TRUNC, Mode: 0o644})
			return r.GetErrno(), err
		}},
	} {
		errno, err := tc.call()
		must(t, err)
		if syscall.Errno(errno) != syscall.EROFS {
			t.Errorf("%s on a read-only export: %v, want EROFS", tc.what, syscall.Errno(errno))
		}
	}
	if got := readFile(t, filepath.Join(disk, "f")); got != "content" {
		t.Errorf("f now holds %q", got)
	}
	entries, err := os.ReadDir(disk)
	must(t, err)
	if len(entries) != 2 {
		t.Errorf("the export holds %d entries, want 2", len(entries))
	}
}

// TestHandlesOfUnexportedDirectoriesChangeNothing: the directories leading to an export may
// be opened (to list them) but not changed, through a handle as much as by path: a forged
// setattr on a handle of the owner's root would otherwise chmod or chown its "/".
func TestHandlesOfUnexportedDirectoriesChangeNothing(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	owner := c.node("n2")
	disk := owner.disk()
	must(t, os.MkdirAll(filepath.Join(disk, "srv", "pub"), 0o755))
	must(t, os.Chmod(disk, 0o755))
	owner.restart(ServerConfig{Exports: []string{"/srv/pub"}})
	s := owner.server
	ctx := withCallerNode(context.Background(), "n1")
	sess := []byte("forger")
	root := &fspb.Caller{}
	for _, p := range []string{"", "srv"} {
		o, err := s.Open(ctx, &fspb.OpenRequest{Session: sess, Caller: root, Node: &fspb.NodeRef{Path: []byte(p)}, Flags: unix.O_RDONLY})
		must(t, err)
		if o.Errno != 0 {
			t.Fatalf("open %q: %v", p, syscall.Errno(o.Errno))
		}
		for _, req := range []*fspb.SetattrRequest{
			{Valid: setMode, Mode: 0o777},
			{Valid: setUID | setGID, Uid: 1000, Gid: 1000},
			{Valid: setMtime, MtimeSec: 1},
		} {
			req.Session, req.Caller, req.Node = sess, root, &fspb.NodeRef{Path: []byte(p), Handle: o.Handle}
			r, err := s.Setattr(ctx, req)
			must(t, err)
			if syscall.Errno(r.Errno) != syscall.EACCES {
				t.Errorf("setattr %#x of %q through a handle: %v, want EACCES", req.Valid, p, syscall.Errno(r.Errno))
			}
		}
		var st unix.Stat_t
		must(t, unix.Stat(filepath.Join(disk, p), &st))
		if st.Mode&0o7777 != 0o755 || st.Uid != 0 || st.Mtim.Sec == 1 {
			t.Errorf("%q is now mode %o, owner %d, mtime %d", p, st.Mode&0o7777, st.Uid, st.Mtim.Sec)
		}
	}
}

// TestBlockedCallsOfOneUserAreBounded: a call may wait in the owner's kernel for ever (a read
// of a pty of /dev/ptmx, which everyone may open), holding one of the agent's threads, and the
// Go runtime ends the agent at 10,000 of them. One user's calls beyond a bound wait for their
// others to end rather than take another thread; other users' go on.
func TestBlockedCallsOfOneUserAreBounded(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	owner := c.node("n2")
	disk := owner.disk()
	must(t, os.Chmod(disk, 0o755))
	owner.restart(ServerConfig{callsPerUser: 2})
	s := owner.server
	ctx := withCallerNode(context.Background(), "n1")
	var none uint64
	caller := func(uid uint32) *fspb.Caller { return &fspb.Caller{Uid: uid, Gid: uid, Capabilities: &none} }
	sess := []byte("reader")
	type pending struct {
		fifo   string
		handle uint64
		done   chan struct{}
	}
	open := func(name string, uid uint32) *pending {
		fifo := filepath.Join(disk, name)
		must(t, unix.Mkfifo(fifo, 0o666))
		must(t, unix.Chmod(fifo, 0o666))
		o, err := s.Open(ctx, &fspb.OpenRequest{Session: sess, Caller: caller(uid), Node: &fspb.NodeRef{Path: []byte(name)}, Flags: unix.O_RDWR})
		must(t, err)
		if o.Errno != 0 {
			t.Fatalf("open %s: %v", name, syscall.Errno(o.Errno))
		}
		return &pending{fifo: fifo, handle: o.Handle, done: make(chan struct{})}
	}
	read := func(p *pending) {
		go func() {
			defer close(p.done)
			s.Read(ctx, &fspb.ReadRequest{Session: sess, Handle: p.handle, Size: 1})
		}()
	}
	feed := func(p *pending) {
		f, err := os.OpenFile(p.fifo, os.O_WRONLY, 0)
		must(t, err)
		_, err = f.Write([]byte("x"))
		must(t, err)
		f.Close()
	}
	returned := func(p *pending, within time.Duration) bool {
		select {
		case <-p.done:
			return true
		case <-time.After(within):
			return false
		}
	}
	first, second, third, theirs := open("f1", 1001), open("f2", 1001), open("f3", 1001), open("f4", 1002)
	read(first)
	read(second)
	time.Sleep(100 * time.Millisecond) // both waiting in the kernel
	read(third)
	read(theirs)
	feed(theirs)
	if !returned(theirs, 2*time.Second) {
		t.Errorf("another user's read of a fifo with data waits")
	}
	feed(third)
	if returned(third, 200*time.Millisecond) {
		t.Errorf("a user's third read under way returned while the first two wait, with a bound of 2")
	}
	// So does any other call of theirs.
	looked := make(chan struct{})
	go func() {
		defer close(looked)
		s.Getattr(ctx, &fspb.NodeRequest{Session: sess, Caller: caller(1001), Node: &fspb.NodeRef{Path: []byte("f1")}})
	}()
	select {
	case <-looked:
		t.Errorf("a getattr of the user's returned while two of their reads wait")
	case <-time.After(100 * time.Millisecond):
	}
	feed(first)
	if !returned(first, 2*time.Second) || !returned(third, 2*time.Second) {
		t.Errorf("the reads did not end once the first had its data")
	}
	feed(second)
	if !returned(second, 2*time.Second) {
		t.Errorf("the second read did not end")
	}
	<-looked
}

// TestOpenFilesOfOneUserAreBounded: the owner's descriptors serve every user of every node.
// One user may hold only a share of them open; past it their opens and creates fail with
// ENFILE (and make nothing), as on a system out of files, while others' go on.
func TestOpenFilesOfOneUserAreBounded(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	owner := c.node("n2")
	disk := owner.disk()
	must(t, os.Chmod(disk, 0o777))
	must(t, os.WriteFile(filepath.Join(disk, "f"), nil, 0o644))
	owner.restart(ServerConfig{handlesPerUser: 2})
	s := owner.server
	ctx := withCallerNode(context.Background(), "n1")
	var none uint64
	caller := func(uid uint32) *fspb.Caller { return &fspb.Caller{Uid: uid, Gid: uid, Capabilities: &none} }
	sess := []byte("opener")
	open := func(uid uint32) (uint64, syscall.Errno) {
		o, err := s.Open(ctx, &fspb.OpenRequest{Session: sess, Caller: caller(uid), Node: &fspb.NodeRef{Path: []byte("f")}, Flags: unix.O_RDONLY})
		must(t, err)
		return o.Handle, syscall.Errno(o.Errno)
	}
	first, errno := open(1001)
	if errno != 0 {
		t.Fatalf("first open: %v", errno)
	}
	if _, errno := open(1001); errno != 0 {
		t.Fatalf("second open: %v", errno)
	}
	if _, errno := open(1001); errno != syscall.ENFILE {
		t.Errorf("a third open by a user with a share of 2: %v, want ENFILE", errno)
	}
	r, err := s.Create(ctx, &fspb.CreateRequest{Session: sess, Caller: caller(1001), Dir: &fspb.NodeRef{}, Name: []byte("new"), Flags: unix.O_WRONLY, Mode: 0o644})
	must(t, err)
	if syscall.Errno(r.Errno) != syscall.ENFILE {
		t.Errorf("a create by a user with a share of 2 open: %v, want ENFILE", syscall.Errno(r.Errno))
	}
	if _, err := os.Lstat(filepath.Join(disk, "new")); err == nil {
		t.Errorf("the refused create made its file")
	}
	if _, errno := open(1002); errno != 0 {
		t.Errorf("another user's open: %v", errno)
	}
	s.Release(ctx, &fspb.HandleRequest{Session: sess, Handle: first})
	if _, errno := open(1001); errno != 0 {
		t.Errorf("an open once one of the user's files was released: %v", errno)
	}
}

// TestWritebackWritesCountAsTheirOpeners: the kernel writes a shared writable mapping's pages
// back with no process behind the request (uid, gid and pid 0). On the owner such a write
// must still be the opener's, not root's: root may fill the blocks ext4 keeps for it, and
// exceed quotas, where the user who mapped the file may not.
func TestWritebackWritesCountAsTheirOpeners(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	owner := c.node("n2")
	disk := owner.disk()
	must(t, os.Chmod(disk, 0o755))
	// A small ext4 with half its blocks kept for root.
	img := filepath.Join(t.TempDir(), "small.img")
	must(t, os.WriteFile(img, nil, 0o600))
	must(t, os.Truncate(img, 8<<20))
	if out, err := exec.Command("mkfs.ext4", "-q", "-m", "50", img).CombinedOutput(); err != nil {
		t.Skipf("needs mkfs.ext4: %v: %s", err, out)
	}
	small := filepath.Join(disk, "small")
	must(t, os.Mkdir(small, 0o755))
	if out, err := exec.Command("mount", "-o", "loop", img, small).CombinedOutput(); err != nil {
		t.Skipf("needs loop mounts: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", small).Run() })
	must(t, os.Chmod(small, 0o777))
	must(t, os.WriteFile(filepath.Join(small, "f"), nil, 0o644))
	must(t, os.Chown(filepath.Join(small, "f"), 1001, 1001))
	s := owner.server
	ctx := withCallerNode(context.Background(), "n1")
	var none uint64
	sess := []byte("mapper")
	o, err := s.Open(ctx, &fspb.OpenRequest{Session: sess, Caller: &fspb.Caller{Uid: 1001, Gid: 1001, Pid: 1234, Capabilities: &none},
		Node: &fspb.NodeRef{Path: []byte("small/f")}, Flags: unix.O_WRONLY})
	must(t, err)
	if o.Errno != 0 {
		t.Fatalf("open: %v", syscall.Errno(o.Errno))
	}
	defer s.Release(ctx, &fspb.HandleRequest{Session: sess, Handle: o.Handle})
	// About 2.3 MB are free for users, 6.4 MB for root.
	const piece = 256 << 10
	var refused syscall.Errno
	for off := int64(0); off < 5<<20 && refused == 0; off += piece {
		w, err := s.Write(ctx, &fspb.WriteRequest{Session: sess, Caller: &fspb.Caller{}, Handle: o.Handle, Offset: off, Data: make([]byte, piece)})
		must(t, err)
		refused = syscall.Errno(w.Errno)
	}
	if refused != syscall.ENOSPC {
		t.Errorf("writebacks of 5 MiB for a user on an ext4 with 2.3 MB free for users: %v, want ENOSPC", refused)
	}
}

// TestSwappingADirectoryForASymlinkEscapesNothing: a user on the owner swaps a directory of
// an export with a symlink to "/" (and with a directory moved out of the export) as fast as
// they can, while requests go through it: none reaches the file outside the export.
func TestSwappingADirectoryForASymlinkEscapesNothing(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	owner := c.node("n2")
	disk := owner.disk()
	must(t, os.MkdirAll(filepath.Join(disk, "pub", "d"), 0o755))
	must(t, os.MkdirAll(filepath.Join(disk, "outside"), 0o755))
	must(t, os.WriteFile(filepath.Join(disk, "secret"), []byte("s"), 0o644))
	must(t, os.WriteFile(filepath.Join(disk, "outside", "secret"), []byte("s"), 0o644))
	must(t, os.Symlink("/", filepath.Join(disk, "pub", "slash")))
	must(t, os.Symlink("..", filepath.Join(disk, "pub", "up")))
	owner.restart(ServerConfig{Exports: []string{"/pub"}})
	s := owner.server
	ctx := withCallerNode(context.Background(), "n1")
	stop := make(chan struct{})
	swapped := make(chan struct{})
	go func() {
		defer close(swapped)
		d, tmp := filepath.Join(disk, "pub", "d"), filepath.Join(disk, "pub", "tmp")
		out := filepath.Join(disk, "moved")
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			// d becomes a symlink to /, to .. (the owner's root, holding secret), or to a
			// directory moved out of the export.
			switch i % 3 {
			case 0:
				os.Symlink("/", tmp)
			case 1:
				os.Symlink("..", tmp)
			case 2:
				os.Rename(filepath.Join(disk, "outside"), out)
				os.Symlink(out, tmp)
			}
			unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, d, unix.RENAME_EXCHANGE)
			unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, d, unix.RENAME_EXCHANGE)
			os.Remove(tmp)
			os.Rename(out, filepath.Join(disk, "outside"))
		}
	}()
	defer func() { close(stop); <-swapped }()
	sess := []byte("racer")
	root := &fspb.Caller{}
	deadline := time.Now().Add(time.Second)
	for n := 0; time.Now().Before(deadline); n++ {
		for _, dir := range []string{"pub/d", "pub/d/outside", "pub/d/pub/d", "pub/slash/d", "pub/up/d"} {
			l, err := s.Lookup(ctx, &fspb.LookupRequest{Session: sess, Caller: root, Dir: &fspb.NodeRef{Path: []byte(dir)}, Name: []byte("secret")})
			must(t, err)
			if l.Errno == 0 {
				t.Fatalf("lookup of secret in %s found it (after %d rounds)", dir, n)
			}
			o, err := s.Open(ctx, &fspb.OpenRequest{Session: sess, Caller: root, Node: &fspb.NodeRef{Path: []byte(dir + "/secret")}, Flags: unix.O_RDONLY})
			must(t, err)
			if o.Errno == 0 {
				t.Fatalf("open of %s/secret succeeded (after %d rounds)", dir, n)
			}
		}
	}
}

// TestCallersTheClientCannotSeeHoldNoCapabilities: the client names the capabilities of a
// request's process from /proc. One it cannot look at (killed while its request was on its
// way) holds none on the owner, root included: a root process that gave its capabilities up
// must not get them all back by dying in time. Root's requests of no process (pid 0) keep them.
func TestCallersTheClientCannotSeeHoldNoCapabilities(t *testing.T) {
	c := newTestCluster(t, "n2")
	s := c.node("n2").server
	gone := exec.Command("true")
	must(t, gone.Run())
	g := newGroupCache()
	for _, tc := range []struct {
		what string
		pid  uint32
		all  bool
	}{
		{"a root process gone", uint32(gone.Process.Pid), false},
		{"a root request of no process", 0, true},
		{"the test's own root process", uint32(os.Getpid()), true},
	} {
		ctx := &fuse.Context{Caller: fuse.Caller{Owner: fuse.Owner{Uid: 0, Gid: 0}, Pid: tc.pid}}
		who, err := s.identityOf(g.caller(ctx), true)
		must(t, err)
		if got := who.caps == allCaps; got != tc.all {
			t.Errorf("%s: capabilities %#x on the owner, want all: %v", tc.what, who.caps, tc.all)
		}
	}
}

// TestTheAgentsOwnProcIsHidden: the owner serves requests on threads of its agent, and the
// kernel lets a process look at itself whatever its credentials. The agent's /proc/<pid>
// would show anyone its memory layout (maps), and give a root caller without capabilities its
// memory (mem, 0600 for root) to write: it is not in the tree.
func TestTheAgentsOwnProcIsHidden(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	local, owner := c.node("n1"), c.node("n2")
	owner.restart(ServerConfig{Root: "/", Exports: []string{"/proc"}})
	local.mountTree(5 * time.Second)
	openToAll(t, c)
	pid := fmt.Sprint(os.Getpid())
	for _, p := range []string{"proc/self/maps", "proc/" + pid + "/maps", "proc/thread-self/stat", "proc/" + pid + "/task"} {
		if got := as(t, 65534, "read", local.path("n2", p)); got == "ok" {
			t.Errorf("nobody read /%s of the owner's agent through the tree", p)
		}
	}
	entries, err := os.ReadDir(local.path("n2", "proc"))
	must(t, err)
	for _, e := range entries {
		if e.Name() == pid {
			t.Errorf("the owner's /proc lists the agent's pid %s", pid)
		}
	}
	s := owner.server
	ctx := withCallerNode(context.Background(), "n1")
	var none uint64
	rootWithout := &fspb.Caller{Uid: 0, Gid: 0, Pid: 1, Capabilities: &none}
	for _, p := range []string{"proc/self/mem", "proc/" + pid + "/mem"} {
		o, err := s.Open(ctx, &fspb.OpenRequest{Session: []byte("s"), Caller: rootWithout, Node: &fspb.NodeRef{Path: []byte(p)}, Flags: unix.O_RDWR})
		must(t, err)
		if o.Errno == 0 {
			t.Errorf("root without capabilities opened /%s of the owner's agent for writing", p)
		}
	}
	// Other processes' stay.
	if got := as(t, 65534, "read", local.path("n2", "proc/1/stat")); got != "ok" {
		t.Errorf("nobody reading /proc/1/stat through the tree: %s", got)
	}
}
