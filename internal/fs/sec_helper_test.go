package fs

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// moreHelperOps are the helper's operations for the permission tests: each prints "ok" or the
// errno's name, as the others do.
func moreHelperOps(op, path string, rest []string) (int, bool) {
	arg := func(i int) int {
		if i >= len(rest) {
			return 0
		}
		n, _ := strconv.ParseInt(rest[i], 0, 64)
		return int(n)
	}
	var err error
	switch op {
	case "overwrite":
		// Write at the start without truncating, through the page cache.
		var f *os.File
		if f, err = os.OpenFile(path, os.O_WRONLY, 0); err == nil {
			_, err = f.WriteAt([]byte("w"), 0)
			f.Close()
		}
	case "truncate":
		err = os.Truncate(path, int64(arg(0)))
	case "chgrp":
		err = os.Lchown(path, -1, arg(0))
	case "access":
		err = unix.Faccessat(unix.AT_FDCWD, path, uint32(arg(0)), 0)
	case "createmode", "mkdirmode", "mkfifomode":
		// Make it with the mode given (octal), under the umask given (octal).
		mode, _ := strconv.ParseUint(rest[0], 8, 32)
		umask, _ := strconv.ParseUint(rest[1], 8, 32)
		syscall.Umask(int(umask))
		switch op {
		case "createmode":
			var fd int
			if fd, err = unix.Open(path, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY, uint32(mode)); err == nil {
				unix.Close(fd)
			}
		case "mkdirmode":
			err = unix.Mkdir(path, uint32(mode))
		case "mkfifomode":
			err = unix.Mkfifo(path, uint32(mode))
		}
	case "mknod":
		err = unix.Mknod(path, syscall.S_IFCHR|0o666, int(unix.Mkdev(1, 3)))
	case "touch":
		err = unix.UtimesNanoAt(unix.AT_FDCWD, path, []unix.Timespec{{Nsec: unix.UTIME_NOW}, {Nsec: unix.UTIME_NOW}}, 0)
	case "noatime":
		var fd int
		if fd, err = unix.Open(path, unix.O_RDONLY|unix.O_NOATIME, 0); err == nil {
			unix.Close(fd)
		}
	case "nocapsread", "nocapswrite":
		// As root, with no effective capability on this thread (a container's root, or a
		// daemon that gave them up).
		runtime.LockOSThread()
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var caps [2]unix.CapUserData
		if err = unix.Capget(&hdr, &caps[0]); err == nil {
			caps[0].Effective, caps[1].Effective = 0, 0
			err = unix.Capset(&hdr, &caps[0])
		}
		if err == nil && op == "nocapsread" {
			var fd int
			if fd, err = unix.Open(path, unix.O_RDONLY, 0); err == nil {
				unix.Close(fd)
			}
		} else if err == nil {
			var fd int
			if fd, err = unix.Open(path, unix.O_WRONLY|unix.O_CREAT, 0o644); err == nil {
				unix.Close(fd)
			}
		}
	case "exec":
		// Run the program (with no arguments) and report how that went: from a helper,
		// since a process that execs from a FUSE mount it serves itself deadlocks.
		err = exec.Command(path).Run()
	case "chmodto":
		// Change the mode to the one given (octal).
		mode, _ := strconv.ParseUint(rest[0], 8, 32)
		err = unix.Chmod(path, uint32(mode))
	case "link", "rename":
		// Link or rename it to its own name with the suffix given, in the same directory.
		if op == "link" {
			err = unix.Link(path, path+rest[0])
		} else {
			err = unix.Rename(path, path+rest[0])
		}
	case "exchange":
		// Make a file of one's own beside it and exchange the two.
		var fd int
		if fd, err = unix.Open(path+".mine", unix.O_CREAT|unix.O_WRONLY, 0o644); err == nil {
			unix.Close(fd)
			err = unix.Renameat2(unix.AT_FDCWD, path, unix.AT_FDCWD, path+".mine", unix.RENAME_EXCHANGE)
		}
	case "mkdirin":
		// Make a directory inside it with the mode given (octal) under the umask given (octal)
		// and print the mode it got.
		mode, _ := strconv.ParseUint(rest[0], 8, 32)
		umask, _ := strconv.ParseUint(rest[1], 8, 32)
		syscall.Umask(int(umask))
		sub := filepath.Join(path, "sub")
		if err = unix.Mkdir(sub, uint32(mode)); err == nil {
			var st unix.Stat_t
			if err = unix.Lstat(sub, &st); err == nil {
				fmt.Printf("%o\n", st.Mode)
				return 0, true
			}
		}
	case "settimes":
		// Set both times to the epoch (not to now).
		err = unix.UtimesNanoAt(unix.AT_FDCWD, path, []unix.Timespec{{}, {}}, 0)
	case "mknodchr":
		err = unix.Mknod(path+rest[0], syscall.S_IFCHR|0o666, int(unix.Mkdev(1, 3)))
	case "cat":
		var b []byte
		if b, err = os.ReadFile(path); err == nil {
			os.Stdout.Write(b)
			return 0, true
		}
	case "mmapwrite":
		var f *os.File
		if f, err = os.OpenFile(path, os.O_RDWR, 0); err == nil {
			var m []byte
			if m, err = unix.Mmap(int(f.Fd()), 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err == nil {
				m[0] = 'w'
				unix.Munmap(m)
			}
			f.Close()
		}
	case "statmode":
		var st unix.Stat_t
		if err = unix.Lstat(path, &st); err == nil {
			fmt.Printf("%o\n", st.Mode)
			return 0, true
		}
	default:
		return 0, false
	}
	fmt.Println(errName(err))
	return 0, true
}

// asUser runs one helper operation as uid with gid and exactly the supplementary groups given.
func asUser(t testing.TB, uid, gid uint32, groups []uint32, args ...string) string {
	t.Helper()
	cmd := exec.Command(helperBinary(t), args...)
	cmd.Env = append(os.Environ(), "SSI_FS_HELPER=1")
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: append([]uint32{}, groups...)}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper %v: %v: %s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// aclEntry is one entry of a POSIX ACL: a tag (aclUser...), its permissions (rwx as 4, 2, 1)
// and, for aclUser and aclGroup, the id.
type aclEntry struct {
	tag  uint16
	perm uint16
	id   uint32
}

const (
	aclUserObj  = 0x01
	aclUser     = 0x02
	aclGroupObj = 0x04
	aclGroup    = 0x08
	aclMask     = 0x10
	aclOther    = 0x20
)

// setACL writes an ACL (system.posix_acl_access or system.posix_acl_default) in the kernel's
// xattr format, so that the tests need no setfacl. Entries must be in the kernel's order.
func setACL(t testing.TB, path, xattr string, entries ...aclEntry) {
	t.Helper()
	b := binary.LittleEndian.AppendUint32(nil, 2)
	for _, e := range entries {
		id := e.id
		if e.tag != aclUser && e.tag != aclGroup {
			id = 0xffffffff
		}
		b = binary.LittleEndian.AppendUint16(b, e.tag)
		b = binary.LittleEndian.AppendUint16(b, e.perm)
		b = binary.LittleEndian.AppendUint32(b, id)
	}
	if err := unix.Setxattr(path, xattr, b, 0); err != nil {
		t.Fatalf("set %s on %s: %v", xattr, path, err)
	}
}

// asUserWithCaps is asUser with ambient capabilities: an ordinary user whose process may pass
// some permission checks, as a backup tool with CAP_DAC_READ_SEARCH.
func asUserWithCaps(t testing.TB, uid uint32, caps []uintptr, args ...string) string {
	t.Helper()
	cmd := exec.Command(helperBinary(t), args...)
	cmd.Env = append(os.Environ(), "SSI_FS_HELPER=1")
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential:  &syscall.Credential{Uid: uid, Gid: uid, Groups: []uint32{}},
		AmbientCaps: caps,
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper %v: %v: %s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}
