package proc

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// SignalDisposition tells whether sig has its default action in process pid: not caught
// and not ignored (the SigCgt: and SigIgn: masks of /proc/<procRoot>/<pid>/status).
func SignalDisposition(procRoot string, pid int, sig syscall.Signal) (isDefault bool, err error) {
	f, err := os.Open(fmt.Sprintf("%s/%d/status", procRoot, pid))
	if err != nil {
		return false, err
	}
	defer f.Close()
	return parseSignalDisposition(f, sig)
}

// parseSignalDisposition reads the SigCgt: and SigIgn: lines of a proc status file: hex
// masks where bit N-1 stands for signal N.
func parseSignalDisposition(r io.Reader, sig syscall.Signal) (bool, error) {
	if sig < 1 || sig > 64 {
		return false, fmt.Errorf("signal %d out of range", sig)
	}
	bit := uint64(1) << (uint(sig) - 1)
	seen := 0
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), ":")
		if !ok || (key != "SigCgt" && key != "SigIgn") {
			continue
		}
		mask, err := strconv.ParseUint(strings.TrimSpace(value), 16, 64)
		if err != nil {
			return false, fmt.Errorf("malformed %s: line %q", key, sc.Text())
		}
		if mask&bit != 0 {
			return false, nil
		}
		seen++
	}
	if err := sc.Err(); err != nil {
		return false, err
	}
	if seen != 2 {
		return false, errors.New("status lacks the SigCgt and SigIgn lines")
	}
	return true, nil
}

// SignalJob delivers sig as a terminal delivers a job-control key to its foreground job: to
// every process of the tree in the command's process group (the command leads a session of
// its own, so the group is the command and those of its descendants that stayed in it).
// That group is orphaned, so the kernel would discard a stop signal (TSTP, TTIN, TTOU)
// whose action is the default (POSIX); a process with that default gets SIGSTOP instead,
// what the default action does, and one that catches the signal gets the signal itself.
// procRoot is where /proc is mounted. Each SIGCONT is counted in JobState.Continues,
// whether or not the command was stopped.
func (p *Process) SignalJob(sig syscall.Signal, procRoot string) error {
	if sig == syscall.SIGCONT {
		// Under jobMu, so that a stop the waiter collects is reported either before this
		// count (and the client knows this SIGCONT ended it) or not at all (noteStopped).
		p.jobMu.Lock()
		defer func() {
			p.job.Stopped, p.job.Signal = false, 0
			p.job.Continues++
			p.notifyJobLocked()
			p.jobMu.Unlock()
		}()
	}
	stop := sig == syscall.SIGTSTP || sig == syscall.SIGTTIN || sig == syscall.SIGTTOU
	err := p.group.SignalEach(func(pid int) (syscall.Signal, bool) {
		if pgid, err := unix.Getpgid(pid); err != nil || pgid != p.pid {
			return 0, false
		}
		if stop {
			if isDefault, err := SignalDisposition(procRoot, pid, sig); err == nil && isDefault {
				return syscall.SIGSTOP, true
			}
		}
		return sig, true
	})
	if err != nil {
		return fmt.Errorf("send %v to the job of pid %d: %w", sig, p.pid, err)
	}
	return nil
}
