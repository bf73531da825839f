package proc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/proc/cgroup"
)

// killWait bounds how long KillTree waits for SIGKILLed processes to leave the cgroup
// (a process in uninterruptible sleep leaves only when its I/O completes).
const killWait = 10 * time.Second

// Process is a started process tree: the command and all its descendants, tracked by its
// own cgroup. Its methods are safe for concurrent use.
type Process struct {
	pid        int
	gpid       int64
	parentGPID int64

	stdin, stdout, stderr, tty *os.File

	// sigMu keeps pidfd open while a signal is being sent through it: a closed fd number
	// could be reused by another file, and pidfd_send_signal on it must never reach a
	// different process.
	sigMu sync.RWMutex
	pidfd int

	// jobMu orders the stops the waiter reports against the SIGCONTs SignalJob delivers
	// (see JobState); jobChanged is signalled after each change of job.
	jobMu      sync.Mutex
	job        JobState
	jobChanged chan struct{}

	waitOnce sync.Once
	waited   chan struct{}
	result   Result
	waitErr  error

	groupMu      sync.Mutex
	group        *cgroup.Group
	groupRemoved bool
	treeCPU      time.Duration
	treeMemPeak  uint64

	closeOnce sync.Once
	closeErr  error
}

// Result is how the process ended and what it used.
type Result struct {
	// ExitCode is the shell's $?: the exit status, or 128+N after death by signal N.
	ExitCode int
	// Signal is the signal that killed the process, 0 if it exited.
	Signal     syscall.Signal
	CoreDumped bool
	// UserCPU, SystemCPU and MaxRSSBytes come from wait4: the command plus those of its
	// descendants it waited for. MaxRSSBytes is 0 when it may be the agent's own size rather
	// than the command's: the kernel gives a child started with vfork, as every command is
	// started, at least the high-water mark of the parent's memory as it stood at exec.
	UserCPU, SystemCPU time.Duration
	MaxRSSBytes        uint64
	// TreeMemPeak is the most memory the whole tree used at once (its cgroup's memory.peak,
	// page cache included), 0 where the kernel does not keep it for the group; final once
	// TreeGone is true.
	TreeMemPeak uint64
	// TreeCPU is the CPU time of the whole tree from its cgroup, orphans included. It is
	// final once TreeGone is true; while descendants outlive the command it is read at
	// Close.
	TreeCPU  time.Duration
	TreeGone bool
}

// JobState is what job control has done to the command, as its parent sees it with
// wait(2)'s WUNTRACED and WCONTINUED: the client of an attached command mirrors it, stopping
// itself when the command stops, as a shell's job would.
type JobState struct {
	// Stopped is true from a stop of the command until it continues; Signal is the signal
	// that stopped it.
	Stopped bool
	Signal  syscall.Signal
	// Stops counts the stops seen: a new stop is one with a higher count.
	Stops uint64
	// Continues counts the SIGCONTs SignalJob delivered. A stop counted before the
	// Continues that follows it is over; one reported after it is new: a stop the waiter
	// collected as a SIGCONT came is not reported once the SIGCONT has been counted.
	Continues uint64
}

// cldContinued is siginfo's si_code for a child continued by SIGCONT (CLD_CONTINUED).
const cldContinued = 6

// Job returns the command's job-control state; JobChanged signals each change of it.
func (p *Process) Job() JobState {
	p.jobMu.Lock()
	defer p.jobMu.Unlock()
	return p.job
}

// JobChanged receives after the job-control state changed (Job); changes that come while
// no one receives collapse into one.
func (p *Process) JobChanged() <-chan struct{} { return p.jobChanged }

// notifyJobLocked signals a change of p.job; jobMu is held.
func (p *Process) notifyJobLocked() {
	select {
	case p.jobChanged <- struct{}{}:
	default:
	}
}

// noteStopped records a stop by sig that wait4 reported, unless the command has continued
// since: the SIGCONT that continued it (counted by SignalJob under jobMu, or another's)
// must not be followed by a report of the stop it ended.
func (p *Process) noteStopped(sig syscall.Signal) {
	p.jobMu.Lock()
	defer p.jobMu.Unlock()
	// WNOWAIT leaves the continuation for the waiter's next wait4.
	var info unix.Siginfo
	err := unix.Waitid(unix.P_PID, p.pid, &info, unix.WCONTINUED|unix.WNOHANG|unix.WNOWAIT, nil)
	if err == nil && info.Code == cldContinued {
		return
	}
	p.job.Stopped, p.job.Signal = true, sig
	p.job.Stops++
	p.notifyJobLocked()
}

// noteContinued records that the command continued after a stop.
func (p *Process) noteContinued() {
	p.jobMu.Lock()
	defer p.jobMu.Unlock()
	if p.job.Stopped {
		p.job.Stopped, p.job.Signal = false, 0
		p.notifyJobLocked()
	}
}

// PID is the process's pid on this node.
func (p *Process) PID() int { return p.pid }

// GPID is the process's cluster-wide id.
func (p *Process) GPID() int64 { return p.gpid }

// ParentGPID is the GPID recorded as its parent (Spec.ParentGPID).
func (p *Process) ParentGPID() int64 { return p.parentGPID }

// Cgroup is the tree's cgroup path relative to the cgroup2 mount.
func (p *Process) Cgroup() string { return p.group.Rel() }

// CgroupDir is the tree's cgroup directory.
func (p *Process) CgroupDir() string { return p.group.Path() }

// Stdin is the write end of the child's stdin pipe; close it to send EOF. It is nil if
// Spec.Stdin was given or with TTY.
func (p *Process) Stdin() *os.File { return p.stdin }

// Stdout is the read end of the child's stdout pipe. It reaches EOF once every process
// holding the write end (background descendants too) has closed it or exited. It is nil if
// Spec.Stdout was given or with TTY. Reads that find the pipe empty park the goroutine, not
// a thread, and the child blocks when the pipe is full: reading only as fast as the client
// takes the data gives back-pressure.
func (p *Process) Stdout() *os.File { return p.stdout }

// Stderr is like Stdout for the child's stderr.
func (p *Process) Stderr() *os.File { return p.stderr }

// TTY is the pseudo-terminal master, nil without Spec.TTY. Writes are the terminal's
// input, reads its output. Once every process has closed the terminal, Read fails with
// syscall.EIO instead of returning io.EOF: treat EIO as the end of output.
func (p *Process) TTY() *os.File { return p.tty }

// Signal sends sig to the command itself through its pidfd, so it can never reach another
// process that later reuses the pid. It returns os.ErrProcessDone once the command has
// exited.
func (p *Process) Signal(sig syscall.Signal) error {
	p.sigMu.RLock()
	defer p.sigMu.RUnlock()
	if p.pidfd < 0 {
		return os.ErrProcessDone
	}
	err := unix.PidfdSendSignal(p.pidfd, sig, nil, 0)
	if errors.Is(err, unix.ESRCH) {
		return os.ErrProcessDone
	}
	if err != nil {
		return fmt.Errorf("send %v to pid %d: %w", sig, p.pid, err)
	}
	return nil
}

// SignalTree sends sig to every process of the tree (see cgroup.Group.Signal).
func (p *Process) SignalTree(sig syscall.Signal) error {
	if err := p.group.Signal(sig); err != nil {
		return fmt.Errorf("send %v to the tree of pid %d: %w", sig, p.pid, err)
	}
	return nil
}

// KillTree kills every process of the tree at once (cgroup.kill) and waits until they are
// gone. Forks cannot escape it.
func (p *Process) KillTree() error {
	ctx, cancel := context.WithTimeout(context.Background(), killWait)
	defer cancel()
	if err := p.group.Kill(ctx); err != nil {
		return fmt.Errorf("kill the tree of pid %d: %w", p.pid, err)
	}
	if err := p.group.WaitEmpty(ctx); err != nil {
		return fmt.Errorf("kill the tree of pid %d: %w; a process may be stuck in uninterruptible I/O", p.pid, err)
	}
	return nil
}

// Terminate ends the tree as a lost terminal would: SIGHUP (and SIGCONT, so stopped jobs
// see it) to every process, then, for whatever is left after grace, KillTree. It returns
// once the tree is gone. The agent calls it when the client goes away.
func (p *Process) Terminate(grace time.Duration) error {
	if err := p.SignalTree(syscall.SIGHUP); err != nil {
		return err
	}
	if err := p.SignalTree(syscall.SIGCONT); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	err := p.group.WaitEmpty(ctx)
	cancel()
	if err == nil {
		return nil
	}
	return p.KillTree()
}

// Resize sets the terminal size; the kernel sends SIGWINCH to the foreground job.
func (p *Process) Resize(rows, cols uint16) error {
	if p.tty == nil {
		return errors.New("resize: the process has no terminal; start it with Spec.TTY")
	}
	return setWinsize(p.tty, rows, cols)
}

// Wait waits for the command (not its descendants) to exit and returns the shell-style
// exit code (see Result). If the tree is empty by then, its cgroup is removed. Wait may be
// called any number of times, concurrently too; all calls return the same.
func (p *Process) Wait() (exitCode int, err error) {
	p.waitOnce.Do(p.wait)
	return p.result.ExitCode, p.waitErr
}

func (p *Process) wait() {
	defer close(p.waited)
	// By pid, not pidfd: the command is this process's child and only this loop reaps it,
	// so until then its pid cannot name another process. Stops and continuations come
	// through the same wait (WUNTRACED, WCONTINUED), so none is missed and the exit is
	// still collected here.
	var ws unix.WaitStatus
	var ru unix.Rusage
	for {
		_, err := unix.Wait4(p.pid, &ws, unix.WUNTRACED|unix.WCONTINUED, &ru)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			p.waitErr = fmt.Errorf("wait for pid %d: %w", p.pid, err)
			return
		}
		if ws.Stopped() {
			p.noteStopped(ws.StopSignal())
			continue
		}
		if ws.Continued() {
			p.noteContinued()
			continue
		}
		break
	}
	p.noteContinued() // a dead command is not stopped
	r := Result{ExitCode: ws.ExitStatus()}
	if ws.Signaled() {
		r.Signal = ws.Signal()
		r.ExitCode = 128 + int(r.Signal)
		r.CoreDumped = ws.CoreDump()
	}
	r.UserCPU = time.Duration(ru.Utime.Nano())
	r.SystemCPU = time.Duration(ru.Stime.Nano())
	if maxRSS := uint64(ru.Maxrss) * 1024; maxRSS > ownHighWater() {
		r.MaxRSSBytes = maxRSS
	}
	p.result = r
	// Best effort: descendants may still run; Close removes the group then.
	_, _ = p.removeGroupIfEmpty()
}

// Result returns how the command ended; it is the zero Result before Wait returns.
func (p *Process) Result() Result {
	select {
	case <-p.waited:
	default:
		return Result{}
	}
	r := p.result
	p.groupMu.Lock()
	r.TreeCPU, r.TreeMemPeak, r.TreeGone = p.treeCPU, p.treeMemPeak, p.groupRemoved
	p.groupMu.Unlock()
	return r
}

func (p *Process) groupGone() bool {
	p.groupMu.Lock()
	defer p.groupMu.Unlock()
	return p.groupRemoved
}

// removeGroupIfEmpty removes the cgroup once no process is left in it, recording the tree's
// final CPU usage first.
func (p *Process) removeGroupIfEmpty() (bool, error) {
	p.groupMu.Lock()
	defer p.groupMu.Unlock()
	if p.groupRemoved {
		return true, nil
	}
	populated, err := p.group.Populated()
	if err != nil || populated {
		return false, err
	}
	if cpu, err := p.group.CPUUsage(); err == nil {
		p.treeCPU = cpu
	}
	if peak, ok := p.group.MemoryPeak(); ok {
		p.treeMemPeak = peak
	}
	if err := p.group.Remove(); err != nil {
		return false, err
	}
	p.groupRemoved = true
	return true, nil
}

// Close ends the tree if anything of it still runs (KillTree), reaps the command, removes
// the cgroup and closes the process's pidfd, pipes and terminal. Pumps still reading
// Stdout, Stderr or TTY then fail with os.ErrClosed, so drain them before calling Close
// when the output matters.
func (p *Process) Close() error {
	p.closeOnce.Do(func() {
		var errs []error
		// A removed group holds no process and can never gain one again.
		if !p.groupGone() {
			if err := p.KillTree(); err != nil {
				errs = append(errs, err)
			}
		}
		if _, err := p.Wait(); err != nil {
			errs = append(errs, err)
		}
		if _, err := p.removeGroupIfEmpty(); err != nil {
			errs = append(errs, fmt.Errorf("close pid %d: %w", p.pid, err))
		}
		for _, f := range []*os.File{p.stdin, p.stdout, p.stderr, p.tty} {
			if f != nil {
				f.Close()
			}
		}
		p.sigMu.Lock()
		if p.pidfd >= 0 {
			unix.Close(p.pidfd)
			p.pidfd = -1
		}
		p.sigMu.Unlock()
		p.closeErr = errors.Join(errs...)
	})
	return p.closeErr
}

// TerminateLeftovers ends the process trees found in the child cgroups of parent (relative
// to the cgroup2 mount; empty mount: detect it) and removes those cgroups. An agent calls it
// at start-up: trees a previous agent instance started have lost their clients. Each tree
// gets SIGHUP, then SIGKILL after grace. It returns how many trees it ended.
func TerminateLeftovers(ctx context.Context, mount, parent string, grace time.Duration) (int, error) {
	if mount == "" {
		var err error
		if mount, err = cgroup.Mount(); err != nil {
			return 0, fmt.Errorf("terminate leftover trees: %w", err)
		}
	}
	children, err := cgroup.Open(mount, parent).Children()
	if err != nil {
		return 0, fmt.Errorf("terminate leftover trees: %w", err)
	}
	for _, g := range children {
		_ = g.Signal(syscall.SIGHUP)
		_ = g.Signal(syscall.SIGCONT)
	}
	graceCtx, cancel := context.WithTimeout(ctx, grace)
	defer cancel()
	var errs []error
	for _, g := range children {
		if graceCtx.Err() == nil {
			_ = g.WaitEmpty(graceCtx)
		}
		killCtx, cancelKill := context.WithTimeout(ctx, killWait)
		if err := g.Kill(killCtx); err != nil {
			errs = append(errs, err)
		} else if err := g.WaitEmpty(killCtx); err != nil {
			errs = append(errs, err)
		} else if err := g.Remove(); err != nil {
			errs = append(errs, err)
		}
		cancelKill()
	}
	if err := errors.Join(errs...); err != nil {
		return len(children), fmt.Errorf("terminate leftover trees under %s: %w", parent, err)
	}
	return len(children), nil
}

// ownHighWater is the most memory this process (the agent) has had resident: a child's
// wait4 maxrss at or below it may be the agent's, inherited through vfork and exec.
func ownHighWater() uint64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return uint64(ru.Maxrss) * 1024
}
