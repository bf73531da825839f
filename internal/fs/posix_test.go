package fs

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The POSIX conformance set runs every case over /<mount>/n2 as seen from n1, in a fresh
// directory, and checks results and errnos as a local file system would give them.

type posixCase struct {
	name string
	run  func(t *testing.T, dir string, env posixEnv)
}

type posixEnv struct {
	c     *testCluster
	owner *testNode // n2: where the files are
	local *testNode // n1: whose mount is used
	disk  string    // the case's directory on the owner's disk
}

func wantErrno(t *testing.T, err error, want syscall.Errno) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("got error %v, want %v", err, want)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	must(t, err)
	return string(b)
}

var posixCases = []posixCase{
	{"the top of the mount refuses changes with EROFS", func(t *testing.T, dir string, env posixEnv) {
		top := env.local.mnt
		file := filepath.Join(dir, "f")
		must(t, os.WriteFile(file, []byte("x"), 0o644))
		for _, tc := range []struct {
			what string
			err  error
		}{
			{"rmdir of a node", syscall.Rmdir(filepath.Join(top, "n2"))},
			{"rename of a node", syscall.Rename(filepath.Join(top, "n2"), filepath.Join(top, "n9"))},
			{"mkdir", syscall.Mkdir(filepath.Join(top, "n9"), 0o755)},
			{"create", func() error { _, err := os.Create(filepath.Join(top, "f")); return err }()},
			{"mkfifo", syscall.Mkfifo(filepath.Join(top, "p"), 0o644)},
			{"symlink", os.Symlink("n2", filepath.Join(top, "l"))},
			{"hard link", os.Link(file, filepath.Join(top, "h"))},
			{"chmod", os.Chmod(top, 0o777)},
			{"setxattr", unix.Setxattr(top, "user.a", []byte("1"), 0)},
		} {
			if !errors.Is(tc.err, syscall.EROFS) {
				t.Errorf("%s at the top of the mount: %v, want EROFS", tc.what, tc.err)
			}
		}
		if _, err := os.Stat(dir); err != nil {
			t.Fatalf("n2's tree after the refused changes: %v", err)
		}
	}},
	{"create, write, read back", func(t *testing.T, dir string, env posixEnv) {
		p := filepath.Join(dir, "f")
		must(t, os.WriteFile(p, []byte("hello world"), 0o640))
		if got := readFile(t, p); got != "hello world" {
			t.Fatalf("read %q", got)
		}
		st, err := os.Stat(p)
		must(t, err)
		if st.Size() != 11 || st.Mode().Perm() != 0o640 {
			t.Fatalf("size %d mode %v", st.Size(), st.Mode())
		}
		if got := readFile(t, filepath.Join(env.disk, "f")); got != "hello world" {
			t.Fatalf("owner's disk has %q", got)
		}
	}},
	{"exclusive create", func(t *testing.T, dir string, env posixEnv) {
		p := filepath.Join(dir, "f")
		f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		must(t, err)
		f.Close()
		_, err = os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		wantErrno(t, err, syscall.EEXIST)
	}},
	{"open with O_TRUNC", func(t *testing.T, dir string, env posixEnv) {
		p := filepath.Join(dir, "f")
		must(t, os.WriteFile(p, []byte("long content"), 0o644))
		must(t, os.WriteFile(p, []byte("ab"), 0o644))
		if got := readFile(t, p); got != "ab" {
			t.Fatalf("read %q", got)
		}
	}},
	{"append from two descriptors", func(t *testing.T, dir string, env posixEnv) {
		p := filepath.Join(dir, "log")
		a, err := os.OpenFile(p, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		must(t, err)
		defer a.Close()
		b, err := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0o644)
		must(t, err)
		defer b.Close()
		for i := range 10 {
			w := a
			if i%2 == 1 {
				w = b
			}
			_, err := fmt.Fprintf(w, "%d\n", i)
			must(t, err)
		}
		if got := readFile(t, p); got != "0\n1\n2\n3\n4\n5\n6\n7\n8\n9\n" {
			t.Fatalf("read %q", got)
		}
	}},
	{"write and read at offsets", func(t *testing.T, dir string, env posixEnv) {
		p := filepath.Join(dir, "f")
		f, err := os.Create(p)
		must(t, err)
		defer f.Close()
		_, err = f.WriteAt([]byte("xyz"), 1<<20)
		must(t, err)
		_, err = f.WriteAt([]byte("abc"), 10)
		must(t, err)
		buf := make([]byte, 3)
		_, err = f.ReadAt(buf, 1<<20)
		must(t, err)
		if string(buf) != "xyz" {
			t.Fatalf("read %q", buf)
		}
		_, err = f.ReadAt(buf, 5)
		must(t, err)
		if !bytes.Equal(buf, []byte{0, 0, 0}) {
			t.Fatalf("hole reads %v", buf)
		}
		st, err := f.Stat()
		must(t, err)
		if st.Size() != 1<<20+3 {
			t.Fatalf("size %d", st.Size())
		}
		// A sparse file: its hole is found on the owner.
		off, err := unix.Seek(int(f.Fd()), 0, unix.SEEK_DATA)
		must(t, err)
		if off != 0 {
			t.Fatalf("first data at %d", off)
		}
	}},
	{"truncate", func(t *testing.T, dir string, env posixEnv) {
		p := filepath.Join(dir, "f")
		must(t, os.WriteFile(p, []byte("0123456789"), 0o644))
		must(t, os.Truncate(p, 4))
		if got := readFile(t, p); got != "0123" {
			t.Fatalf("read %q", got)
		}
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		must(t, err)
		defer f.Close()
		must(t, f.Truncate(6))
		if got := readFile(t, p); got != "0123\x00\x00" {
			t.Fatalf("read %q", got)
		}
	}},
	{"mkdir and rmdir", func(t *testing.T, dir string, env posixEnv) {
		d := filepath.Join(dir, "d")
		must(t, os.Mkdir(d, 0o750))
		wantErrno(t, os.Mkdir(d, 0o750), syscall.EEXIST)
		st, err := os.Stat(d)
		must(t, err)
		if !st.IsDir() || st.Mode().Perm() != 0o750 {
			t.Fatalf("mode %v", st.Mode())
		}
		must(t, os.WriteFile(filepath.Join(d, "x"), nil, 0o644))
		wantErrno(t, syscall.Rmdir(d), syscall.ENOTEMPTY)
		must(t, os.Remove(filepath.Join(d, "x")))
		must(t, syscall.Rmdir(d))
		_, err = os.Stat(d)
		wantErrno(t, err, syscall.ENOENT)
	}},
	{"unlink an open file", func(t *testing.T, dir string, env posixEnv) {
		p := filepath.Join(dir, "f")
		must(t, os.WriteFile(p, []byte("still here"), 0o644))
		f, err := os.Open(p)
		must(t, err)
		defer f.Close()
		must(t, os.Remove(p))
		_, err = os.Stat(p)
		wantErrno(t, err, syscall.ENOENT)
		b, err := io.ReadAll(f)
		must(t, err)
		if string(b) != "still here" {
			t.Fatalf("read %q", b)
		}
		var st unix.Stat_t
		must(t, unix.Fstat(int(f.Fd()), &st))
		if st.Nlink != 0 {
			t.Fatalf("nlink %d after unlink", st.Nlink)
		}
		wantErrno(t, os.Remove(p), syscall.ENOENT)
	}},
	{"rename", func(t *testing.T, dir string, env posixEnv) {
		a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
		must(t, os.WriteFile(a, []byte("A"), 0o644))
		must(t, os.WriteFile(b, []byte("B"), 0o644))
		must(t, os.Rename(a, b))
		if got := readFile(t, b); got != "A" {
			t.Fatalf("read %q", got)
		}
		_, err := os.Stat(a)
		wantErrno(t, err, syscall.ENOENT)
		// Directories, and into a subdirectory.
		d, sub := filepath.Join(dir, "d"), filepath.Join(dir, "sub")
		must(t, os.Mkdir(d, 0o755))
		must(t, os.Mkdir(sub, 0o755))
		must(t, os.WriteFile(filepath.Join(d, "inner"), []byte("i"), 0o644))
		must(t, os.Rename(d, filepath.Join(sub, "moved")))
		if got := readFile(t, filepath.Join(sub, "moved", "inner")); got != "i" {
			t.Fatalf("read %q", got)
		}
		// RENAME_NOREPLACE and RENAME_EXCHANGE.
		must(t, os.WriteFile(a, []byte("A2"), 0o644))
		wantErrno(t, unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_NOREPLACE), syscall.EEXIST)
		must(t, unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_EXCHANGE))
		if readFile(t, a) != "A" || readFile(t, b) != "A2" {
			t.Fatalf("exchange gave %q %q", readFile(t, a), readFile(t, b))
		}
		// Between nodes, as between file systems.
		wantErrno(t, os.Rename(a, env.local.path(env.local.name, "x")), syscall.EXDEV)
	}},
	{"hard links", func(t *testing.T, dir string, env posixEnv) {
		a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
		must(t, os.WriteFile(a, []byte("shared"), 0o644))
		must(t, os.Link(a, b))
		sa, err := os.Stat(a)
		must(t, err)
		sb, err := os.Stat(b)
		must(t, err)
		if !os.SameFile(sa, sb) || sa.Sys().(*syscall.Stat_t).Nlink != 2 {
			t.Fatalf("links: same %v nlink %d", os.SameFile(sa, sb), sa.Sys().(*syscall.Stat_t).Nlink)
		}
		must(t, os.WriteFile(b, []byte("changed"), 0o644))
		if got := readFile(t, a); got != "changed" {
			t.Fatalf("through the other link: %q", got)
		}
		wantErrno(t, os.Link(a, filepath.Join(dir, "b")), syscall.EEXIST)
		wantErrno(t, os.Link(a, env.local.path(env.local.name, "x")), syscall.EXDEV)
	}},
	{"symlinks", func(t *testing.T, dir string, env posixEnv) {
		must(t, os.WriteFile(filepath.Join(dir, "target"), []byte("T"), 0o644))
		l := filepath.Join(dir, "rel")
		must(t, os.Symlink("target", l))
		got, err := os.Readlink(l)
		must(t, err)
		if got != "target" {
			t.Fatalf("readlink %q", got)
		}
		if readFile(t, l) != "T" {
			t.Fatal("reading through a relative link")
		}
		st, err := os.Lstat(l)
		must(t, err)
		if st.Mode()&os.ModeSymlink == 0 {
			t.Fatalf("lstat mode %v", st.Mode())
		}
		// An absolute link means the path on its own node.
		abs := filepath.Join(dir, "abs")
		rel, _ := filepath.Rel(env.owner.root, filepath.Join(env.disk, "target"))
		must(t, os.Symlink("/"+rel, abs))
		got, err = os.Readlink(abs)
		must(t, err)
		if want := env.local.path(env.owner.name, rel); got != want {
			t.Fatalf("readlink %q, want %q", got, want)
		}
		if readFile(t, abs) != "T" {
			t.Fatal("reading through an absolute link")
		}
		// What readlink returned, written back as tar x, cp -a or ln -s "$(readlink abs)" do,
		// is the same link: stored as the owner's own path, it reads back unchanged.
		copied := filepath.Join(dir, "copied")
		must(t, os.Symlink(got, copied))
		if again, err := os.Readlink(copied); err != nil || again != got {
			t.Fatalf("link made from readlink's %q reads %q (%v)", got, again, err)
		}
		if readFile(t, copied) != "T" {
			t.Fatal("reading through a link made from readlink's target")
		}
		if onDisk, err := os.Readlink(filepath.Join(env.disk, "copied")); err != nil || onDisk != "/"+rel {
			t.Fatalf("on the owner's disk %q (%v), want %q", onDisk, err, "/"+rel)
		}
		// A link into another node's part of the tree names the same file on the owner
		// (through its own mount) as here: it reads back as written, not moved below the owner.
		other := env.local.path("n3", "x")
		must(t, os.Symlink(other, filepath.Join(dir, "other")))
		if again, err := os.Readlink(filepath.Join(dir, "other")); err != nil || again != other {
			t.Fatalf("link to %q reads %q (%v)", other, again, err)
		}
		must(t, os.Symlink("nowhere", filepath.Join(dir, "dangling")))
		_, err = os.Stat(filepath.Join(dir, "dangling"))
		wantErrno(t, err, syscall.ENOENT)
	}},
	{"chmod, chown, utimes", func(t *testing.T, dir string, env posixEnv) {
		p := filepath.Join(dir, "f")
		must(t, os.WriteFile(p, nil, 0o644))
		must(t, os.Chmod(p, os.ModeSetuid|0o751))
		st, err := os.Stat(p)
		must(t, err)
		if st.Mode()&(os.ModePerm|os.ModeSetuid) != 0o751|os.ModeSetuid {
			t.Fatalf("mode %v", st.Mode())
		}
		must(t, os.Chown(p, 65534, 65534))
		st, err = os.Stat(p)
		must(t, err)
		if s := st.Sys().(*syscall.Stat_t); s.Uid != 65534 || s.Gid != 65534 {
			t.Fatalf("owner %d:%d", s.Uid, s.Gid)
		}
		when := time.Date(2001, 2, 3, 4, 5, 6, 7000, time.UTC)
		must(t, os.Chtimes(p, when, when))
		st, err = os.Stat(p)
		must(t, err)
		if !st.ModTime().Equal(when) {
			t.Fatalf("mtime %v", st.ModTime())
		}
		var dst unix.Stat_t
		must(t, unix.Stat(filepath.Join(env.disk, "f"), &dst))
		if dst.Mtim.Sec != when.Unix() || dst.Uid != 65534 {
			t.Fatalf("owner's disk: mtime %d uid %d", dst.Mtim.Sec, dst.Uid)
		}
	}},
	{"statfs", func(t *testing.T, dir string, env posixEnv) {
		var sfs, disk unix.Statfs_t
		must(t, unix.Statfs(dir, &sfs))
		must(t, unix.Statfs(env.disk, &disk))
		if sfs.Blocks != disk.Blocks || sfs.Bsize != disk.Bsize {
			t.Fatalf("statfs %d×%d, owner has %d×%d", sfs.Blocks, sfs.Bsize, disk.Blocks, disk.Bsize)
		}
	}},
	{"extended attributes", func(t *testing.T, dir string, env posixEnv) {
		p := filepath.Join(dir, "f")
		must(t, os.WriteFile(p, nil, 0o644))
		must(t, unix.Setxattr(p, "user.color", []byte("blue"), 0))
		buf := make([]byte, 64)
		n, err := unix.Getxattr(p, "user.color", buf)
		must(t, err)
		if string(buf[:n]) != "blue" {
			t.Fatalf("getxattr %q", buf[:n])
		}
		_, err = unix.Getxattr(p, "user.color", make([]byte, 2))
		wantErrno(t, err, syscall.ERANGE)
		n, err = unix.Listxattr(p, buf)
		must(t, err)
		if !strings.Contains(string(buf[:n]), "user.color\x00") {
			t.Fatalf("listxattr %q", buf[:n])
		}
		n, err = unix.Getxattr(filepath.Join(env.disk, "f"), "user.color", buf)
		must(t, err)
		if string(buf[:n]) != "blue" {
			t.Fatalf("owner's disk has %q", buf[:n])
		}
		must(t, unix.Removexattr(p, "user.color"))
		_, err = unix.Getxattr(p, "user.color", buf)
		wantErrno(t, err, syscall.ENODATA)
		wantErrno(t, unix.Setxattr(p, "user.color", []byte("x"), unix.XATTR_REPLACE), syscall.ENODATA)
	}},
	{"fsync and fdatasync", func(t *testing.T, dir string, env posixEnv) {
		f, err := os.Create(filepath.Join(dir, "f"))
		must(t, err)
		defer f.Close()
		_, err = f.WriteString("durable")
		must(t, err)
		must(t, f.Sync())
		must(t, unix.Fdatasync(int(f.Fd())))
	}},
	{"the owner's errnos", func(t *testing.T, dir string, env posixEnv) {
		_, err := os.Open(filepath.Join(dir, "missing"))
		wantErrno(t, err, syscall.ENOENT)
		must(t, os.WriteFile(filepath.Join(dir, "file"), nil, 0o644))
		_, err = os.Stat(filepath.Join(dir, "file", "below"))
		wantErrno(t, err, syscall.ENOTDIR)
		wantErrno(t, os.Mkdir(filepath.Join(dir, "file"), 0o755), syscall.EEXIST)
		must(t, os.Mkdir(filepath.Join(dir, "d"), 0o755))
		_, err = os.OpenFile(filepath.Join(dir, "d"), os.O_WRONLY, 0)
		wantErrno(t, err, syscall.EISDIR)
		wantErrno(t, syscall.Rmdir(filepath.Join(dir, "file")), syscall.ENOTDIR)
		wantErrno(t, syscall.Unlink(filepath.Join(dir, "d")), syscall.EISDIR)
	}},
	{"odd names", func(t *testing.T, dir string, env posixEnv) {
		names := []string{
			strings.Repeat("n", 255),
			"new\nline",
			"invalid-utf8-\xff\xfe",
			"space and\ttab",
			"-dash",
			"ünïcødé",
		}
		for _, name := range names {
			must(t, os.WriteFile(filepath.Join(dir, name), []byte(name), 0o644))
		}
		_, err := os.Create(filepath.Join(dir, strings.Repeat("n", 256)))
		wantErrno(t, err, syscall.ENAMETOOLONG)
		entries, err := os.ReadDir(dir)
		must(t, err)
		var got []string
		for _, e := range entries {
			got = append(got, e.Name())
			if readFile(t, filepath.Join(dir, e.Name())) != e.Name() {
				t.Fatalf("content of %q", e.Name())
			}
		}
		slices.Sort(got)
		slices.Sort(names)
		if !slices.Equal(got, names) {
			t.Fatalf("listing %q, want %q", got, names)
		}
	}},
	{"listing a directory", func(t *testing.T, dir string, env posixEnv) {
		const n = 700 // more than one batch of directory entries
		for i := range n {
			must(t, os.WriteFile(filepath.Join(env.disk, fmt.Sprintf("file-%04d", i)), nil, 0o644))
		}
		entries, err := os.ReadDir(dir)
		must(t, err)
		if len(entries) != n {
			t.Fatalf("listed %d entries, want %d", len(entries), n)
		}
		for i, e := range entries {
			if e.Name() != fmt.Sprintf("file-%04d", i) || !e.Type().IsRegular() {
				t.Fatalf("entry %d: %q %v", i, e.Name(), e.Type())
			}
			info, err := e.Info()
			must(t, err)
			if info.Size() != 0 {
				t.Fatalf("%s: size %d", e.Name(), info.Size())
			}
		}
	}},
	{"mmap shared read", func(t *testing.T, dir string, env posixEnv) {
		p := filepath.Join(dir, "f")
		content := bytes.Repeat([]byte("0123456789abcdef"), 1000)
		must(t, os.WriteFile(p, content, 0o644))
		if got, want := startMapper(t, p).Sum, fmt.Sprintf("%x", sha256.Sum256(content)); got != want {
			t.Fatalf("mapped content hashes to %s, want %s", got, want)
		}
	}},
	{"flock between two open files", func(t *testing.T, dir string, env posixEnv) {
		p := filepath.Join(dir, "f")
		must(t, os.WriteFile(p, nil, 0o644))
		a, err := os.Open(p)
		must(t, err)
		defer a.Close()
		b, err := os.Open(p)
		must(t, err)
		defer b.Close()
		must(t, unix.Flock(int(a.Fd()), unix.LOCK_EX|unix.LOCK_NB))
		wantErrno(t, unix.Flock(int(b.Fd()), unix.LOCK_EX|unix.LOCK_NB), syscall.EWOULDBLOCK)
		must(t, unix.Flock(int(a.Fd()), unix.LOCK_UN))
		must(t, unix.Flock(int(b.Fd()), unix.LOCK_EX|unix.LOCK_NB))
		// Closing the holder releases its lock; FUSE sends that release after close returns.
		b.Close()
		eventually(t, 2*time.Second, "flock after the holder closed", func() error {
			return unix.Flock(int(a.Fd()), unix.LOCK_SH|unix.LOCK_NB)
		})
	}},
}

func TestPOSIX(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	local, owner := c.node("n1"), c.node("n2")
	local.mountTree(5 * time.Second)
	for i, tc := range posixCases {
		t.Run(tc.name, func(t *testing.T) {
			name := fmt.Sprintf("case%02d", i)
			must(t, os.Mkdir(owner.disk(name), 0o755))
			tc.run(t, local.path("n2", name), posixEnv{c: c, owner: owner, local: local, disk: owner.disk(name)})
		})
	}
}
