package proc

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// The umask lives in the fs_struct (with the working and root directories), which all
// threads of the agent share, so setting it in the agent would race with every file the
// agent creates meanwhile, and with other starts. A process whose umask is not the agent's
// own is therefore forked from a spawner: a goroutine locked for good to its own OS thread,
// which gave that thread a private fs_struct (unshare CLONE_FS) once. A spawner serves one
// start at a time: it sets its thread's umask, forks and execs (Go's forkExec from a locked
// thread), and sets the umask back, so only the child sees the caller's umask. A few
// spawners share the requests; each start costs two thread wake-ups instead of creating and
// destroying a thread, and keeps the child's argv[0] and exec errors exactly as the caller
// gave them.
//
// Nothing else about the spawner threads changes: credentials are switched in the child
// only (SysProcAttr.Credential), no namespace but the fs_struct is unshared, and the
// goroutines never unlock their threads, so the Go runtime never runs other goroutines
// on them.
//
// A private fs_struct no longer follows the agent's working directory. Starts that depend
// on it (no Dir, a relative Dir or a relative command path) pass the caller's working
// directory to the spawner, which moves there first.

// maxSpawners bounds the spawner threads: a fork blocks its spawner only until the child
// has exec'd, so more than a few would sit idle.
const maxSpawners = 4

type spawnRequest struct {
	path  string
	args  []string
	attr  *os.ProcAttr
	umask int
	// limits, if any, are set before the new program runs (see forkExec).
	limits []Rlimit
	nice   int
	// cwd, when >= 0, is an O_PATH descriptor of the caller's working directory.
	cwd  int
	done chan spawnResult
}

type spawnResult struct {
	p   *os.Process
	err error
}

var (
	spawnersOnce sync.Once
	spawnQueue   chan *spawnRequest
)

// startWithUmask starts the process with the given umask and nice value without touching
// the agent's (see the spawners above). The nice value is a thread's own, and a child
// inherits that of the thread that forked it: a spawner sets its own for the fork.
func startWithUmask(path string, args []string, attr *os.ProcAttr, umask, nice int, limits []Rlimit) (*os.Process, error) {
	if umask == agentUmask() && nice == agentNice() {
		// The usual case: the child would inherit this umask from any thread of the agent.
		// Forking right here saves the spawner's two thread hand-offs, which cost ~0.7 ms of
		// an `ssi run` on an idle machine (vCPUs that halt wake up slowly).
		return forkExec(path, args, attr, limits)
	}
	spawnersOnce.Do(startSpawners)
	req := &spawnRequest{path: path, args: args, attr: attr, umask: umask, nice: nice, limits: limits, cwd: -1, done: make(chan spawnResult, 1)}
	if !filepath.IsAbs(attr.Dir) || !filepath.IsAbs(path) {
		fd, err := unix.Open(".", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("open the agent's working directory: %w", err)
		}
		defer unix.Close(fd)
		req.cwd = fd
	}
	spawnQueue <- req
	r := <-req.done
	return r.p, r.err
}

// agentUmask is the umask of the agent's shared fs_struct, or -1 if unknown. It is read from
// /proc once, as setting it to read it would race with files being created: nothing in the
// agent changes it afterwards (the spawners change only their private ones).
var agentUmask = sync.OnceValue(func() int {
	u, err := UmaskOf(os.Getpid())
	if err != nil {
		return -1
	}
	return u
})

func startSpawners() {
	spawnQueue = make(chan *spawnRequest)
	for range max(1, min(runtime.GOMAXPROCS(0), maxSpawners)) {
		go spawner(nil)
	}
}

// spawner serves start requests for the life of the agent on its own locked thread. It
// closes locked, if not nil, once it holds a thread other than the main one.
func spawner(locked chan<- struct{}) {
	// Never unlocked: the thread's fs_struct is not the agent's any more, so no other
	// goroutine may run on it.
	runtime.LockOSThread()
	if unix.Gettid() == unix.Getpid() {
		// The main thread must keep the shared fs_struct: /proc/<pid> reports the agent's
		// umask and directories from it, and the runtime never discards it. Keep holding
		// it until a new spawner has locked another thread, then give it back.
		moved := make(chan struct{})
		go spawner(moved)
		<-moved
		runtime.UnlockOSThread()
		return
	}
	if locked != nil {
		close(locked)
	}
	setupErr := unix.Unshare(unix.CLONE_FS)
	if setupErr != nil {
		setupErr = fmt.Errorf("give the starting thread its own umask: %w", setupErr)
	}
	for req := range spawnQueue {
		if setupErr != nil {
			req.done <- spawnResult{err: setupErr}
			continue
		}
		req.done <- spawnOne(req)
	}
}

// spawnOne forks and execs one request on the spawner's thread.
func spawnOne(req *spawnRequest) spawnResult {
	if req.cwd >= 0 {
		if err := unix.Fchdir(req.cwd); err != nil {
			return spawnResult{err: fmt.Errorf("enter the agent's working directory: %w", err)}
		}
	}
	if req.nice != agentNice() {
		// The thread's own nice value (who 0 with PRIO_PROCESS is the calling thread).
		if err := unix.Setpriority(unix.PRIO_PROCESS, 0, req.nice); err != nil {
			return spawnResult{err: fmt.Errorf("set the nice value %d to start with: %w", req.nice, err)}
		}
		defer func() { _ = unix.Setpriority(unix.PRIO_PROCESS, 0, agentNice()) }()
	}
	old := unix.Umask(req.umask)
	p, err := forkExec(req.path, req.args, req.attr, req.limits)
	unix.Umask(old)
	return spawnResult{p, err}
}

// agentNice is the agent's nice value, read once: nothing in the agent changes it but the
// spawners, each on its own thread and back at once.
var agentNice = sync.OnceValue(func() int {
	n, err := NiceOf(os.Getpid())
	if err != nil {
		return 0
	}
	return n
})
