package jobs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/proc"
)

// identity is whom a job runs as.
type identity struct {
	uid, gid uint32
	groups   []uint32
	umask    int
	// rlimits are a submitter's resource limits (see callerRlimits); they are not part of the
	// key of its file threads (see key).
	rlimits []proc.Rlimit
}

// do runs f on the thread of who's identity (see thread) and returns once f has. f works as
// the user: opening files (openAsThread) the kernel checks every directory and the file as that
// user, and a new file is owned by the user and gets the user's umask, so nothing is ever opened
// as root on a user's behalf and a job cannot write where its user may not (through a symlink
// to /etc, say). What needs root's filesystem identity f does through t.asRoot, which may fork
// the user's task right there (proc.Spec.ForkHere): the thread's umask is the user's.
//
// A few such threads serve every task of the same identity, so an array of ten thousand tasks
// costs a few threads, not ten thousand, and each task one hand-off for its files and its
// start together. When the agent is not root, f runs on the calling goroutine (jobs then run as
// the agent; proc.Start refuses others).
func (p *userThreads) do(who identity, f func(t *onThread)) error {
	if os.Geteuid() != 0 {
		f(&onThread{})
		return nil
	}
	done := make(chan struct{})
	req := func(t *onThread) {
		defer close(done)
		f(t)
	}
	key := who.key()
	for {
		// A thread waiting for work takes the request at once.
		p.mu.Lock()
		list := slices.Clone(p.threads[key])
		p.mu.Unlock()
		for _, t := range list {
			select {
			case t.reqs <- req:
				<-done
				return nil
			default:
			}
		}
		t, err := p.thread(who)
		if err != nil {
			return err
		}
		select {
		case t.reqs <- req:
			<-done
			return nil
		case <-t.done:
			// It retired while idle; take another.
		}
	}
}

// onThread is where a function given to userThreads.do runs.
type onThread struct {
	locked bool // on a user thread with the user's filesystem identity
	who    identity
	broken bool // it could not take the user's identity back: it must retire
}

// asRoot runs f with root's filesystem identity (fsuid and fsgid 0) and then takes the
// user's back. Off a user thread it just runs f.
func (t *onThread) asRoot(f func()) error {
	if !t.locked {
		f()
		return nil
	}
	if err := setFSIDs(0, 0); err != nil {
		t.broken = true
		return err
	}
	f()
	if err := setFSIDs(t.who.uid, t.who.gid); err != nil {
		t.broken = true
	}
	return nil
}

// emptyAsUser removes everything in a directory of the user's, as the user, so root never
// walks a tree the user controls.
func (p *userThreads) emptyAsUser(dir string, who identity) error {
	var err error
	if doErr := p.do(who, func(*onThread) { err = emptyDir(dir) }); doErr != nil {
		return doErr
	}
	return err
}

// dirIsEmpty reports whether dir is a directory that holds nothing. It only lists dir itself
// (never following a symbolic link put in its place), so root may call it on a user's
// directory; anything unexpected counts as not empty.
func dirIsEmpty(dir string) bool {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	var buf [1024]byte
	for {
		n, err := unix.Getdents(fd, buf[:])
		if err != nil {
			return false
		}
		if n == 0 {
			return true
		}
		// ParseDirent skips "." and "..".
		if _, _, names := unix.ParseDirent(buf[:n], 1, nil); len(names) > 0 {
			return false
		}
	}
}

// emptyDir removes what dir holds, which is normally nothing.
func emptyDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return err
	}
	for _, n := range names {
		if err := os.RemoveAll(filepath.Join(dir, n)); err != nil {
			return err
		}
	}
	return nil
}

// openAsThread opens each path for appending, creating it if needed, as whoever the calling
// thread is, after creating mkdir (mode 0700), if set.
func openAsThread(paths []string, mkdir string) ([]*os.File, error) {
	if mkdir != "" {
		err := os.Mkdir(mkdir, 0o700)
		if errors.Is(err, os.ErrExist) {
			err = emptyDir(mkdir) // left by an earlier agent
		}
		if err != nil {
			return nil, fmt.Errorf("create the checkpoint directory: %w", err)
		}
	}
	return openAll(paths, os.O_WRONLY|os.O_CREATE|os.O_APPEND|syscall.O_CLOEXEC)
}

// userThreads keeps a few threads per job identity while it is in use.
type userThreads struct {
	mu      sync.Mutex
	threads map[string][]*userThread
	next    int // spreads requests that find every thread busy
	max     int // threads per identity
	idle    time.Duration
}

type userThread struct {
	reqs chan func(*onThread)
	done chan struct{} // closed when the thread retires
}

// maxUserThreads bounds the threads of one identity: each one forks its tasks and waits for
// them to exec, so one alone would make a node's slots take turns starting; more than the
// machine's processors would mostly wait. (Not GOMAXPROCS: internal/idleprocs narrows that
// to one while the agent is idle.)
func maxUserThreads() int { return max(1, min(runtime.NumCPU(), 4)) }

func newUserThreads() *userThreads {
	return &userThreads{threads: map[string][]*userThread{}, max: maxUserThreads(), idle: 10 * time.Second}
}

func (who identity) key() string {
	return fmt.Sprintf("%d:%d:%v:%o", who.uid, who.gid, who.groups, who.umask)
}

// thread returns a thread of who's identity for a request that found them all busy: a new one
// while there are fewer than max, otherwise one of them in turn.
//
// The thread is a goroutine locked to a fresh OS thread that gave itself a private fs_struct
// (unshare CLONE_FS) for the umask and switched its filesystem uid, gid and groups with raw
// system calls, which affect only the calling thread (Go's own wrappers would change every
// thread of the agent). When it retires it ends without unlocking, so the runtime discards the
// altered thread instead of reusing it.
func (p *userThreads) thread(who identity) (*userThread, error) {
	key := who.key()
	p.mu.Lock()
	defer p.mu.Unlock()
	if list := p.threads[key]; len(list) >= p.max {
		p.next++
		return list[p.next%len(list)], nil
	}
	t := &userThread{reqs: make(chan func(*onThread)), done: make(chan struct{})}
	ready := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := becomeForFiles(who); err != nil {
			ready <- err
			return
		}
		ready <- nil
		idle := time.NewTimer(p.idle)
		retire := func() {
			p.mu.Lock()
			p.threads[key] = slices.DeleteFunc(p.threads[key], func(x *userThread) bool { return x == t })
			if len(p.threads[key]) == 0 {
				delete(p.threads, key)
			}
			close(t.done)
			p.mu.Unlock()
		}
		for {
			select {
			case req := <-t.reqs:
				on := &onThread{locked: true, who: who}
				req(on)
				if on.broken {
					retire()
					return
				}
				idle.Reset(p.idle)
			case <-idle.C:
				retire()
				return
			}
		}
	}()
	if err := <-ready; err != nil {
		return nil, err
	}
	p.threads[key] = append(p.threads[key], t)
	return t, nil
}

func openAll(paths []string, flags int) ([]*os.File, error) {
	files := make([]*os.File, 0, len(paths))
	for _, p := range paths {
		f, err := os.OpenFile(p, flags, 0o666)
		if err != nil {
			for _, g := range files {
				g.Close()
			}
			return nil, err
		}
		files = append(files, f)
	}
	return files, nil
}

// becomeForFiles switches the calling (locked) thread's umask, groups, fsgid and fsuid.
func becomeForFiles(who identity) error {
	if err := unix.Unshare(unix.CLONE_FS); err != nil {
		return fmt.Errorf("give the opening thread its own umask: %w", err)
	}
	unix.Umask(who.umask)
	groups := who.groups
	var ptr unsafe.Pointer
	if len(groups) > 0 {
		ptr = unsafe.Pointer(&groups[0])
	}
	if _, _, errno := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(groups)), uintptr(ptr), 0); errno != 0 {
		return fmt.Errorf("take the groups of uid %d: %w", who.uid, errno)
	}
	return setFSIDs(who.uid, who.gid)
}

// setFSIDs switches the calling (locked) thread's filesystem uid and gid. Leaving uid 0 drops
// the thread's filesystem capabilities; coming back to it restores them. setfsgid and setfsuid
// report no errors; asking again with an invalid id (-1) returns the value in force, which
// must be the one just set.
func setFSIDs(uid, gid uint32) error {
	if uid == 0 {
		// Root's identity first, so that nothing runs with the user's uid and root's gid.
		unix.RawSyscall(unix.SYS_SETFSUID, 0, 0, 0)
		if cur, _, _ := unix.RawSyscall(unix.SYS_SETFSUID, ^uintptr(0), 0, 0); uint32(cur) != 0 {
			return fmt.Errorf("take the filesystem uid 0: the kernel kept %d", uint32(cur))
		}
	}
	unix.RawSyscall(unix.SYS_SETFSGID, uintptr(gid), 0, 0)
	if cur, _, _ := unix.RawSyscall(unix.SYS_SETFSGID, ^uintptr(0), 0, 0); uint32(cur) != gid {
		return fmt.Errorf("take the filesystem gid %d: the kernel kept %d", gid, uint32(cur))
	}
	unix.RawSyscall(unix.SYS_SETFSUID, uintptr(uid), 0, 0)
	if cur, _, _ := unix.RawSyscall(unix.SYS_SETFSUID, ^uintptr(0), 0, 0); uint32(cur) != uid {
		return fmt.Errorf("take the filesystem uid %d: the kernel kept %d", uid, uint32(cur))
	}
	return nil
}

// ensureUserDir makes dir (whose parent is root's) owned by the user with mode 0700, keeping
// it if it exists. It refuses anything but a real directory, so a user cannot redirect it.
func ensureUserDir(dir string, who identity) error {
	err := os.Mkdir(dir, 0o700)
	if err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory: remove it", dir)
	}
	if os.Geteuid() != 0 {
		return nil
	}
	if err := os.Lchown(dir, int(who.uid), int(who.gid)); err != nil {
		return err
	}
	return os.Chmod(dir, 0o700)
}

// writeUserFile writes data to path (in a directory of root's) as a file owned by the user
// with mode 0500, replacing what was there.
func writeUserFile(path string, data []byte, who identity) error {
	_ = os.Remove(path)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o500)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil && os.Geteuid() == 0 {
		err = f.Chown(int(who.uid), int(who.gid))
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
	}
	return err
}
