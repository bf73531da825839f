package proc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/gpid"
	"github.com/ssi-cluster/ssi/internal/proc/cgroup"
)

// Environment variables every started process gets.
const (
	EnvNode       = "SSI_NODE"        // index of the node it runs on: its GPID is gpid.Make(SSI_NODE, its pid)
	EnvParentGPID = "SSI_PARENT_GPID" // GPID of the process that asked for it (omitted when 0)
	EnvSocket     = "SSI_SOCKET"      // the local agent's socket (omitted when empty)
)

// Spec says what to run and as whom.
type Spec struct {
	// Path is the command: a name looked up in the PATH of Env, or a path containing a
	// slash (relative to Dir). Empty means Args[0].
	Path string
	// Args is argv, Args[0] included. Empty means []string{Path}.
	Args []string
	// Env is the complete environment, normally the client's. The SSI_* variables above
	// are added (replacing any the client sent).
	Env []string
	// Dir is the working directory; it must exist on this node and be enterable by UID.
	// Empty means the agent's own.
	Dir string

	// The caller's identity: see IdentityOf. Umask is applied as-is, 0 included.
	// When the agent is not root it can only start processes as its own uid and gid,
	// and Groups is ignored.
	UID, GID uint32
	Groups   []uint32
	Umask    int

	// TTY runs the command on a new pseudo-terminal of Rows×Cols (24×80 when zero) as its
	// controlling terminal, in a new session; Stdin, Stdout and Stderr must then be nil.
	TTY        bool
	Rows, Cols uint16

	// Stdin, Stdout and Stderr are handed to the child as they are. Each one left nil
	// becomes a pipe whose other end Process.Stdin, Stdout or Stderr returns.
	Stdin, Stdout, Stderr *os.File
	// StderrToStdout, with Stderr nil, makes the child's stderr its stdout (2>&1), so that
	// their writes keep their order; Process.Stderr is then nil.
	StderrToStdout bool

	// CgroupParent is where the process tree's own cgroup is created, relative to the
	// cgroup2 mount (created if missing). CgroupMount is that mount; empty means the one
	// found in /proc/self/mountinfo.
	CgroupParent string
	CgroupMount  string
	// Name begins the cgroup's name; empty means the command's base name.
	Name string

	// ForkHere forks from the calling goroutine's thread instead of handing the start to one
	// of proc's spawner threads (see spawn.go), which saves two thread hand-offs per process.
	// The caller must be locked to a thread with its own fs_struct (unshare CLONE_FS) whose
	// umask is already Umask, with root's filesystem identity. It applies only when Dir and the
	// command are absolute paths (that thread's working directory may not be the agent's);
	// otherwise a spawner starts the process.
	ForkHere bool

	// Rlimits are the resource limits the command starts with, normally the caller's;
	// resources not listed keep what the agent's commands inherit.
	Rlimits []Rlimit

	// Nice, if not nil, is the command's nice value, as a local child inherits its
	// parent's; nil keeps the agent's.
	Nice *int

	// Ignore lists signals the command starts with ignored (SIG_IGN), as a local child
	// inherits its parent's through exec. The agent cannot fork with them ignored without
	// ignoring them itself, so /bin/sh sets them and execs the command (argv as given).
	Ignore []syscall.Signal

	// NodeIndex and ParentGPID are recorded in the environment and the Process.
	NodeIndex  int
	ParentGPID int64
	SocketPath string
}

// Start runs spec in a fresh cgroup and returns at once.
//
// A command the shell would not run yields a *CommandError (errors.Is ErrNotFound or
// ErrNotExecutable) whose Error text is the shell's message and whose Code is 127 or 126:
// no process exists then, so the caller prints the message and exits with the code.
//
// ctx only bounds the start; the process lives until it exits or Terminate, KillTree or
// Close ends it. The caller must call Wait, then Close.
func Start(ctx context.Context, spec Spec) (p *Process, err error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("start: %w", err)
	}
	name := spec.Path
	if name == "" && len(spec.Args) > 0 {
		name = spec.Args[0]
	}
	args := spec.Args
	if len(args) == 0 {
		args = []string{name}
	}
	if spec.Umask < 0 || spec.Umask > 0o777 {
		return nil, fmt.Errorf("start %s: umask %#o is out of range; pass a value from 0 to 0777", name, spec.Umask)
	}
	if spec.TTY && (spec.Stdin != nil || spec.Stdout != nil || spec.Stderr != nil) {
		return nil, fmt.Errorf("start %s: Stdin, Stdout and Stderr must be nil with TTY, the terminal is the process's stdio", name)
	}
	cred, who, err := credentialFor(spec)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	if err := checkWorkDir(spec.Dir, who); err != nil {
		return nil, err
	}
	env := mergeEnv(spec.Env, ssiEnv(spec)...)
	pathEnv, ok := lookupEnv(env, "PATH")
	if !ok {
		pathEnv = defaultPath
	}
	resolved, err := resolveCommand(name, spec.Dir, pathEnv, who)
	if err != nil {
		return nil, err
	}
	dir := spec.Dir
	fuseDir := onFUSE(dir)
	if fuseDir || onFUSE(resolved) {
		// Between clone and exec the parent thread waits in the kernel (vfork) holding its
		// processor, so the child must not need a FUSE mount there: one served by this very
		// process (the agent's cluster tree, where a caller's directory that exists only on
		// their node is reached, and programs on other nodes) waits for it to answer, which
		// it never does once a garbage collection must stop that thread: the agent froze and
		// its node was lost. A shell from the root file system changes directory and execs
		// the program instead, once the clone is done with.
		cd := ""
		if fuseDir {
			cd, dir = dir, "/"
		}
		resolved, args = trampoline(cd, spec.Ignore, args)
	} else if len(spec.Ignore) > 0 {
		resolved, args = trampoline("", spec.Ignore, args)
	}

	cgName := spec.Name
	if cgName == "" {
		cgName = filepath.Base(name)
	}
	group, err := createGroup(spec.CgroupMount, spec.CgroupParent, cgName)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	defer func() {
		if err != nil {
			_ = group.Remove() // empty: nothing was started in it
		}
	}()
	groupDir, err := group.OpenDir()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	defer groupDir.Close()

	files, err := newStdio(spec, who)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	defer files.closeChildEnds()
	defer func() {
		if err != nil {
			files.closeParentEnds()
		}
	}()

	pidfd := -1
	attr := &os.ProcAttr{
		Dir:   dir,
		Env:   env,
		Files: files.child[:],
		Sys: &syscall.SysProcAttr{
			Credential: cred,
			// A new session detaches the tree from the agent's terminal and makes the
			// command a process group leader, so job-control signals reach its group.
			Setsid:  true,
			Setctty: spec.TTY,
			Ctty:    0, // the child's stdin, which is the terminal when TTY is set
			// The cgroup is joined atomically at clone time: no descendant can be forked
			// before the tree is tracked.
			UseCgroupFD: true,
			CgroupFD:    int(groupDir.Fd()),
			PidFD:       &pidfd,
		},
	}
	limits, needed := childDefaults.resolve(spec.Rlimits)
	if !needed {
		limits = nil
	}
	var osProc *os.Process
	nice := agentNice()
	if spec.Nice != nil {
		nice = *spec.Nice
	}
	if nice < -20 || nice > 19 {
		return nil, fmt.Errorf("start %s: nice %d is out of range; pass a value from -20 to 19", name, nice)
	}
	if spec.ForkHere && filepath.IsAbs(attr.Dir) && filepath.IsAbs(resolved) && nice == agentNice() {
		osProc, err = forkExec(resolved, args, attr, limits)
	} else {
		osProc, err = startWithUmask(resolved, args, attr, spec.Umask, nice, limits)
	}
	if err != nil {
		if pidfd >= 0 {
			unix.Close(pidfd) // a child started and then failed (see forkExec)
		}
		var errno syscall.Errno
		if errors.As(err, &errno) {
			if cmdErr := execFailure(name, errno); cmdErr != nil {
				return nil, cmdErr
			}
		}
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	if pidfd < 0 {
		// Kernel without CLONE_PIDFD; the child is unreaped, so its pid is still its own.
		if pidfd, err = unix.PidfdOpen(osProc.Pid, 0); err != nil {
			_ = osProc.Kill()
			_, _ = osProc.Wait()
			return nil, fmt.Errorf("start %s: open pidfd: %w; Linux 5.3 or later is needed", name, err)
		}
	}
	// Process.wait reaps the command itself, with wait4 (to see its stops too): the
	// os.Process is not needed beyond this, and releasing it closes its copy of the pidfd.
	pid := osProc.Pid
	_ = osProc.Release()
	return &Process{
		pid:        pid,
		gpid:       gpid.Make(spec.NodeIndex, pid),
		parentGPID: spec.ParentGPID,
		jobChanged: make(chan struct{}, 1),
		group:      group,
		pidfd:      pidfd,
		stdin:      files.parentStdin,
		stdout:     files.parentStdout,
		stderr:     files.parentStderr,
		tty:        files.master,
		waited:     make(chan struct{}),
	}, nil
}

// cachedMount is the cgroup2 mount found by the last createGroup without a given mount:
// parsing /proc/self/mountinfo on every start cost more than creating the group.
var cachedMount atomic.Pointer[string]

// createGroup creates the tree's cgroup under parent of mount (empty: the cgroup2 mount of
// the agent's mount namespace, detected once and again whenever creating a group there
// fails).
func createGroup(mount, parent, name string) (*cgroup.Group, error) {
	if mount != "" {
		return cgroup.Create(mount, parent, name)
	}
	if m := cachedMount.Load(); m != nil {
		if g, err := cgroup.Create(*m, parent, name); err == nil {
			return g, nil
		}
	}
	m, err := cgroup.Mount()
	if err != nil {
		return nil, err
	}
	cachedMount.Store(&m)
	return cgroup.Create(m, parent, name)
}

func ssiEnv(spec Spec) []string {
	env := []string{EnvNode + "=" + strconv.Itoa(spec.NodeIndex)}
	if spec.ParentGPID != 0 {
		env = append(env, EnvParentGPID+"="+gpid.Format(spec.ParentGPID))
	}
	if spec.SocketPath != "" {
		env = append(env, EnvSocket+"="+spec.SocketPath)
	}
	return env
}

// credentialFor returns the credential to switch to (nil: keep the agent's) and the
// identity whose permissions decide what the command may run.
func credentialFor(spec Spec) (*syscall.Credential, caller, error) {
	euid, egid := uint32(os.Geteuid()), uint32(os.Getegid())
	who := caller{uid: spec.UID, gids: append([]uint32{spec.GID}, spec.Groups...), isRoot: spec.UID == 0}
	if euid == 0 {
		return &syscall.Credential{Uid: spec.UID, Gid: spec.GID, Groups: spec.Groups}, who, nil
	}
	if spec.UID != euid || spec.GID != egid {
		return nil, who, fmt.Errorf("the agent runs as uid %d gid %d, not root, so it cannot run processes as uid %d gid %d; run the agent as root", euid, egid, spec.UID, spec.GID)
	}
	groups, err := unix.Getgroups()
	if err != nil {
		return nil, who, fmt.Errorf("read the agent's groups: %w", err)
	}
	who.gids = []uint32{egid}
	for _, g := range groups {
		who.gids = append(who.gids, uint32(g))
	}
	return nil, who, nil
}

// stdio holds both ends of the child's standard files while starting.
type stdio struct {
	child [3]*os.File
	// closeInParent are child ends we created and must close once the child has them.
	closeInParent                           []*os.File
	parentStdin, parentStdout, parentStderr *os.File
	master                                  *os.File
}

func newStdio(spec Spec, who caller) (s *stdio, err error) {
	s = &stdio{}
	defer func() {
		if err != nil {
			s.closeChildEnds()
			s.closeParentEnds()
		}
	}()
	if spec.TTY {
		master, slave, err := pty.Open()
		if err != nil {
			return s, fmt.Errorf("open a pseudo-terminal: %w", err)
		}
		s.master = master
		s.closeInParent = append(s.closeInParent, slave)
		s.child = [3]*os.File{slave, slave, slave}
		rows, cols := spec.Rows, spec.Cols
		if rows == 0 || cols == 0 {
			rows, cols = 24, 80
		}
		if err := setWinsize(master, rows, cols); err != nil {
			return s, err
		}
		if err := giveTerminal(slave, who); err != nil {
			return s, err
		}
		return s, nil
	}
	var err2 error
	pipe := func(given *os.File, childReads bool, parentEnd **os.File) *os.File {
		if given != nil || err2 != nil {
			return given
		}
		r, w, err := os.Pipe()
		if err != nil {
			err2 = fmt.Errorf("create a pipe for the child's stdio: %w", err)
			return nil
		}
		if childReads {
			*parentEnd = w
			s.closeInParent = append(s.closeInParent, r)
			return r
		}
		*parentEnd = r
		s.closeInParent = append(s.closeInParent, w)
		return w
	}
	s.child[0] = pipe(spec.Stdin, true, &s.parentStdin)
	s.child[1] = pipe(spec.Stdout, false, &s.parentStdout)
	if spec.StderrToStdout && spec.Stderr == nil {
		s.child[2] = s.child[1]
	} else {
		s.child[2] = pipe(spec.Stderr, false, &s.parentStderr)
	}
	return s, err2
}

// giveTerminal makes the caller own the terminal as login programs do (group tty, mode
// 0620), so programs that reopen it by name can.
func giveTerminal(slave *os.File, who caller) error {
	if os.Geteuid() != 0 {
		return nil
	}
	gid := who.gids[0]
	if g, err := user.LookupGroup("tty"); err == nil {
		if v, err := strconv.ParseUint(g.Gid, 10, 32); err == nil {
			gid = uint32(v)
		}
	}
	conn, err := slave.SyscallConn()
	if err != nil {
		return fmt.Errorf("give the terminal to uid %d: %w", who.uid, err)
	}
	var opErr error
	err = conn.Control(func(fd uintptr) {
		if opErr = unix.Fchown(int(fd), int(who.uid), int(gid)); opErr == nil {
			opErr = unix.Fchmod(int(fd), 0o620)
		}
	})
	if err == nil {
		err = opErr
	}
	if err != nil {
		return fmt.Errorf("give the terminal to uid %d: %w", who.uid, err)
	}
	return nil
}

// setWinsize sets the terminal size through the master. pty.Setsize would call Fd(),
// which switches the master to blocking mode and stops Close from interrupting a Read.
func setWinsize(master *os.File, rows, cols uint16) error {
	conn, err := master.SyscallConn()
	if err != nil {
		return fmt.Errorf("set terminal size: %w", err)
	}
	var opErr error
	err = conn.Control(func(fd uintptr) {
		opErr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
	})
	if err == nil {
		err = opErr
	}
	if err != nil {
		return fmt.Errorf("set terminal size to %dx%d: %w", rows, cols, err)
	}
	return nil
}

func (s *stdio) closeChildEnds() {
	for _, f := range s.closeInParent {
		f.Close()
	}
	s.closeInParent = nil
}

func (s *stdio) closeParentEnds() {
	for _, f := range []*os.File{s.parentStdin, s.parentStdout, s.parentStderr, s.master} {
		if f != nil {
			f.Close()
		}
	}
}

// trampoline returns the path and argv of a shell that runs argv after changing to dir (if
// not "") and ignoring sigs: a trap with an empty action sets SIG_IGN, which exec keeps. The
// shell looks the command up as Start did, in the same PATH and directory, and keeps argv[0]
// as the caller gave it.
func trampoline(dir string, sigs []syscall.Signal, argv []string) (string, []string) {
	script, zero := "", "sh"
	if dir != "" {
		// $0: the directory, out of reach of the shell's option and word parsing.
		script, zero = `cd -- "$0" || exit 126; `, dir
	}
	if len(sigs) > 0 {
		nums := make([]string, 0, len(sigs))
		for _, s := range sigs {
			nums = append(nums, strconv.Itoa(int(s)))
		}
		script += "trap '' " + strings.Join(nums, " ") + "; "
	}
	script += `exec "$@"`
	return "/bin/sh", append([]string{"sh", "-c", script, zero}, argv...)
}

// fuseSuperMagic is statfs's f_type of a FUSE file system.
const fuseSuperMagic = 0x65735546

// onFUSE reports whether dir is on a FUSE file system.
func onFUSE(dir string) bool {
	if dir == "" {
		return false
	}
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == fuseSuperMagic
}
