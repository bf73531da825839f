package fs

import (
	"bufio"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// Some tests need another process: a second lock owner, or a second, unprivileged user. The
// test binary runs itself in helper mode for that (SSI_FS_HELPER=1), doing one operation and
// printing "ok" or the errno's name.

func TestMain(m *testing.M) {
	if os.Getenv("SSI_FS_HELPER") == "1" {
		os.Exit(helperMain(os.Args[1:]))
	}
	code := m.Run()
	if helperPath != "" {
		os.RemoveAll(filepath.Dir(helperPath))
	}
	os.Exit(code)
}

func helperMain(args []string) int {
	if len(args) < 2 {
		fmt.Println("usage: op path [arg]")
		return 2
	}
	op, path := args[0], args[1]
	if code, ok := moreHelperOps(op, path, args[2:]); ok {
		return code
	}
	var err error
	switch op {
	case "read":
		_, err = os.ReadFile(path)
	case "write":
		err = os.WriteFile(path, []byte("written by helper"), 0o644)
	case "append":
		var f *os.File
		if f, err = os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0); err == nil {
			_, err = f.WriteString("appended\n")
			f.Close()
		}
	case "stat":
		_, err = os.Stat(path)
	case "list":
		_, err = os.ReadDir(path)
	case "mkdir":
		err = os.Mkdir(path, 0o755)
	case "unlink":
		err = os.Remove(path)
	case "chown":
		err = os.Chown(path, 0, 0)
	case "chmod":
		err = os.Chmod(path, 0o777)
	case "getxattr":
		_, err = unix.Getxattr(path, args[2], make([]byte, 256))
	case "setxattr":
		err = unix.Setxattr(path, args[2], []byte("v"), 0)
	case "mmap":
		// Map the file shared and read-only; print the SHA-256 of the mapping, then the byte at
		// each offset given on stdin, one per line. Mappings of files in the tree are made in a
		// helper because a process that maps a FUSE file it serves itself can deadlock.
		return mmapHelper(path)
	case "setlk", "setlkw":
		// Take a POSIX write lock on the whole file and hold it until stdin closes.
		var f *os.File
		if f, err = os.OpenFile(path, os.O_RDWR, 0); err == nil {
			cmd := unix.F_SETLK
			if op == "setlkw" {
				cmd = unix.F_SETLKW
			}
			lk := unix.Flock_t{Type: unix.F_WRLCK}
			if err = unix.FcntlFlock(f.Fd(), cmd, &lk); err == nil {
				fmt.Println("ok")
				io.Copy(io.Discard, os.Stdin)
				return 0
			}
		}
	default:
		fmt.Println("unknown op", op)
		return 2
	}
	fmt.Println(errName(err))
	return 0
}

func mmapHelper(path string) int {
	f, err := os.Open(path)
	if err != nil {
		fmt.Println(errName(err))
		return 0
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		fmt.Println(errName(err))
		return 0
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		fmt.Println(errName(err))
		return 0
	}
	defer unix.Munmap(m)
	fmt.Printf("%x\n", sha256.Sum256(m))
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		var off int
		fmt.Sscan(in.Text(), &off)
		if off < 0 || off >= len(m) {
			fmt.Println(-1)
			continue
		}
		fmt.Println(m[off])
	}
	return 0
}

func errName(err error) string {
	if err == nil {
		return "ok"
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return unix.ErrnoName(errno)
	}
	return err.Error()
}

var (
	helperOnce sync.Once
	helperPath string
	helperErr  error
)

// helperBinary is a copy of the test binary that any user may run.
func helperBinary(t testing.TB) string {
	helperOnce.Do(func() {
		self, err := os.Executable()
		if err != nil {
			helperErr = err
			return
		}
		dir, err := os.MkdirTemp("", "ssi-fs-helper-")
		if err != nil {
			helperErr = err
			return
		}
		os.Chmod(dir, 0o755)
		b, err := os.ReadFile(self)
		if err != nil {
			helperErr = err
			return
		}
		helperPath = filepath.Join(dir, "helper")
		helperErr = os.WriteFile(helperPath, b, 0o755)
	})
	if helperErr != nil {
		t.Fatalf("prepare the helper binary: %v", helperErr)
	}
	return helperPath
}

// helperCmd prepares the helper to run op as uid (and gid) — or as root if uid is 0.
func helperCmd(t testing.TB, uid uint32, args ...string) *exec.Cmd {
	cmd := exec.Command(helperBinary(t), args...)
	cmd.Env = append(os.Environ(), "SSI_FS_HELPER=1")
	cmd.Dir = "/"
	if uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid, Groups: []uint32{}}}
	}
	return cmd
}

// as runs one operation as uid and returns "ok" or the errno's name.
func as(t testing.TB, uid uint32, args ...string) string {
	t.Helper()
	out, err := helperCmd(t, uid, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("helper %v: %v: %s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// lockHolder is a helper process holding (or waiting for) a POSIX lock.
type lockHolder struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
}

func startLockHolder(t testing.TB, wait bool, path string) *lockHolder {
	op := "setlk"
	if wait {
		op = "setlkw"
	}
	cmd := helperCmd(t, 0, op, path)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &lockHolder{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	t.Cleanup(h.release)
	return h
}

// result is what the helper printed: "ok" once it holds the lock, or the errno's name.
func (h *lockHolder) result() string {
	line, _ := h.out.ReadString('\n')
	return strings.TrimSpace(line)
}

func (h *lockHolder) release() {
	h.stdin.Close()
	h.cmd.Wait()
}

// mapper is a helper process holding a shared mapping of a file.
type mapper struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
	// Sum is the SHA-256 of the mapping when it was made, or the errno's name.
	Sum string
}

func startMapper(t testing.TB, path string) *mapper {
	cmd := helperCmd(t, 0, "mmap", path)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m := &mapper{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	t.Cleanup(func() { m.stdin.Close(); m.cmd.Wait() })
	line, _ := m.out.ReadString('\n')
	m.Sum = strings.TrimSpace(line)
	return m
}

// byteAt reads the mapping at off in the helper.
func (m *mapper) byteAt(t testing.TB, off int) byte {
	t.Helper()
	fmt.Fprintln(m.stdin, off)
	line, err := m.out.ReadString('\n')
	if err != nil {
		t.Fatalf("mapping helper: %v", err)
	}
	var b int
	fmt.Sscan(line, &b)
	return byte(b)
}
