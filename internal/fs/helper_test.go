package fs

import (
	"bufio"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

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
	case "lockscript":
		return lockScript(path)
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

// startPiped starts a helper process with pipes to its stdin and from its stdout.
func startPiped(t testing.TB, cmd *exec.Cmd) (io.WriteCloser, io.Reader) {
	t.Helper()
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
	return stdin, stdout
}

func startLockHolder(t testing.TB, wait bool, path string) *lockHolder {
	op := "setlk"
	if wait {
		op = "setlkw"
	}
	cmd := helperCmd(t, 0, op, path)
	stdin, stdout := startPiped(t, cmd)
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
	stdin, stdout := startPiped(t, cmd)
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

// lockScript opens path read-write and runs the POSIX lock calls read from stdin, one a line,
// printing "ok" or the errno's name for each, until stdin closes (which ends the process and
// so drops its locks):
//
//	lk r|w|u START LEN     F_SETLK
//	lkw r|w|u START LEN    F_SETLKW
//	lkwi START LEN MS      F_SETLKW of a write lock, interrupted by a signal after MS ms
//	fl sh|ex|un            flock with LOCK_NB
//	gk START LEN           F_GETLK of a write lock: "none", or the conflicting lock's "r" or "w"
//	open                   open the file a second time
//	close                  close that second descriptor (which drops the process's POSIX locks)
func lockScript(path string) int {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		fmt.Println(errName(err))
		return 0
	}
	defer f.Close()
	// A handled signal interrupts a wait rather than ending the process; and it must be
	// handled without SA_RESTART, as with alarm(2) in a C program, or the kernel restarts the
	// wait (FUSE lock requests are restartable) and it never returns EINTR.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGUSR1)
	if err := noRestart(syscall.SIGUSR1); err != nil {
		fmt.Println("sigaction:", err)
		return 1
	}
	types := map[string]int16{"r": unix.F_RDLCK, "w": unix.F_WRLCK, "u": unix.F_UNLCK}
	var second *os.File
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		var op, typ string
		var start, length, ms int64
		fields := strings.Fields(in.Text())
		switch {
		case len(fields) == 4 && (fields[0] == "lk" || fields[0] == "lkw"):
			fmt.Sscan(in.Text(), &op, &typ, &start, &length)
		case len(fields) == 4 && fields[0] == "lkwi":
			fmt.Sscan(in.Text(), &op, &start, &length, &ms)
			typ = "w"
		case len(fields) == 3 && fields[0] == "gk":
			fmt.Sscan(in.Text(), &op, &start, &length)
			lk := unix.Flock_t{Type: unix.F_WRLCK, Start: start, Len: length}
			if err := unix.FcntlFlock(f.Fd(), unix.F_GETLK, &lk); err != nil {
				fmt.Println(errName(err))
				continue
			}
			fmt.Println(map[int16]string{unix.F_UNLCK: "none", unix.F_RDLCK: "r", unix.F_WRLCK: "w"}[lk.Type])
			continue
		case len(fields) == 1 && fields[0] == "open":
			second, err = os.OpenFile(path, os.O_RDWR, 0)
			fmt.Println(errName(err))
			continue
		case len(fields) == 1 && fields[0] == "close":
			fmt.Println(errName(second.Close()))
			continue
		case len(fields) == 2 && fields[0] == "fl":
			how := map[string]int{"sh": unix.LOCK_SH, "ex": unix.LOCK_EX, "un": unix.LOCK_UN}[fields[1]]
			fmt.Println(errName(unix.Flock(int(f.Fd()), how|unix.LOCK_NB)))
			continue
		default:
			fmt.Println("bad command", in.Text())
			continue
		}
		lk := unix.Flock_t{Type: types[typ], Start: start, Len: length}
		cmd := unix.F_SETLK
		if op != "lk" {
			cmd = unix.F_SETLKW
		}
		if op == "lkwi" {
			err = interruptedAfter(time.Duration(ms)*time.Millisecond, func() error { return unix.FcntlFlock(f.Fd(), cmd, &lk) })
		} else {
			err = unix.FcntlFlock(f.Fd(), cmd, &lk)
		}
		fmt.Println(errName(err))
	}
	return 0
}

// noRestart clears SA_RESTART from the handler the Go runtime installed for sig.
func noRestart(sig syscall.Signal) error {
	// struct sigaction as the kernel takes it (rt_sigaction).
	var act struct {
		handler  uintptr
		flags    uint64
		restorer uintptr
		mask     uint64
	}
	const saRestart = 0x10000000
	if _, _, errno := unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(sig), 0, uintptr(unsafe.Pointer(&act)), 8, 0, 0); errno != 0 {
		return errno
	}
	act.flags &^= saRestart
	if _, _, errno := unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(sig), uintptr(unsafe.Pointer(&act)), 0, 8, 0, 0); errno != 0 {
		return errno
	}
	return nil
}

// interruptedAfter runs call on this thread, sending the thread SIGUSR1 after d (and again
// every 100 ms until call returns, in case the first came before it began to wait).
func interruptedAfter(d time.Duration, call func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	pid, tid := unix.Getpid(), unix.Gettid()
	done := make(chan struct{})
	go func() {
		t := time.NewTimer(d)
		for {
			select {
			case <-done:
				return
			case <-t.C:
				unix.Tgkill(pid, tid, syscall.SIGUSR1)
				t.Reset(100 * time.Millisecond)
			}
		}
	}()
	err := call()
	close(done)
	return err
}

// lockProc is a helper process running a lockScript.
type lockProc struct {
	t     testing.TB
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
}

func startLockProc(t testing.TB, path string) *lockProc {
	cmd := helperCmd(t, 0, "lockscript", path)
	stdin, stdout := startPiped(t, cmd)
	p := &lockProc{t: t, cmd: cmd, stdin: stdin, lines: make(chan string, 16)}
	go func() {
		defer close(p.lines)
		out := bufio.NewScanner(stdout)
		for out.Scan() {
			p.lines <- out.Text()
		}
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		p.exit()
	})
	return p
}

// send starts a command; answer reads its result.
func (p *lockProc) send(command string) {
	p.t.Helper()
	if _, err := fmt.Fprintln(p.stdin, command); err != nil {
		p.t.Fatalf("lock helper: %v", err)
	}
}

// answer returns the next result, or "(none)" if there is none within d.
func (p *lockProc) answer(d time.Duration) string {
	select {
	case line, ok := <-p.lines:
		if !ok {
			return "(exited)"
		}
		return line
	case <-time.After(d):
		return "(none)"
	}
}

// do runs a command that must not wait, and returns its result.
func (p *lockProc) do(command string) string {
	p.t.Helper()
	p.send(command)
	return p.answer(10 * time.Second)
}

// expect runs command and fails the test, saying what was tried, unless the answer is one of
// want.
func (p *lockProc) expect(command, what string, want ...string) {
	p.t.Helper()
	if got := p.do(command); !slices.Contains(want, got) {
		p.t.Fatalf("%s: %s, want %s", what, got, strings.Join(want, " or "))
	}
}

// exit ends the process (its locks go with it) and waits for it.
func (p *lockProc) exit() {
	p.stdin.Close()
	p.cmd.Wait()
}
