package proc

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Rlimit is a resource limit a command starts with, as setrlimit(2) takes it.
type Rlimit struct {
	Resource int // unix.RLIMIT_*
	Cur, Max uint64
	// CurUnknown says the caller could not tell its soft limit, only the hard one: a Go
	// program raises its soft limit on open files to the hard one as it starts and cannot see
	// what it was. The command then gets the soft limit the agent's commands get, at most Max.
	CurUnknown bool
}

// The limits a command must start with cannot be set from Go between fork and exec, and
// setting them on the agent would set them for all its threads. So the child is started
// traced (PTRACE_TRACEME, just before its execve), stops at the SIGTRAP of its exec before it
// runs an instruction of its own, gets its limits with prlimit(2) and is let go. That costs a
// stop and two wake-ups, so it happens only when a limit differs from what the command would
// inherit; the first traced start learns what that is.

// inherited is what a command started by this agent gets by default: the agent's limits,
// except the soft limit on open files, which Go restores to the one the agent started with.
type inherited struct {
	mu     sync.Mutex
	limits map[int]unix.Rlimit // nil until a traced start read them off its child
}

var childDefaults inherited

// resolve fills in soft limits the caller could not tell and says whether the command needs
// its limits set, i.e. whether they differ from what it would inherit (or that is not known).
func (d *inherited) resolve(limits []Rlimit) ([]Rlimit, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := slices.Clone(limits)
	differs := d.limits == nil
	for i := range out {
		l := &out[i]
		def, known := d.limits[l.Resource]
		if l.CurUnknown {
			if !known {
				continue // set once the defaults are read, in setLimits
			}
			l.Cur, l.CurUnknown = min(def.Cur, l.Max), false
		}
		if !known || def.Cur != l.Cur || def.Max != l.Max {
			differs = true
		}
	}
	return out, differs
}

// learn reads the limits a command inherited off a child stopped at its exec, once.
func (d *inherited) learn(pid int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.limits != nil {
		return nil
	}
	m := map[int]unix.Rlimit{}
	for res := range rlimitCount {
		var old unix.Rlimit
		if err := unix.Prlimit(pid, res, nil, &old); err != nil {
			return fmt.Errorf("read the limits of a new command: %w", err)
		}
		m[res] = old
	}
	d.limits = m
	return nil
}

func (d *inherited) get(res int) (unix.Rlimit, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	l, ok := d.limits[res]
	return l, ok
}

// rlimitCount is the number of resources Linux has limits for (RLIMIT_RTTIME is the last).
const rlimitCount = unix.RLIMIT_RTTIME + 1

// rlimitNames name the limits in /proc/<pid>/limits.
var rlimitNames = map[string]int{
	"Max cpu time":          unix.RLIMIT_CPU,
	"Max file size":         unix.RLIMIT_FSIZE,
	"Max data size":         unix.RLIMIT_DATA,
	"Max stack size":        unix.RLIMIT_STACK,
	"Max core file size":    unix.RLIMIT_CORE,
	"Max resident set":      unix.RLIMIT_RSS,
	"Max processes":         unix.RLIMIT_NPROC,
	"Max open files":        unix.RLIMIT_NOFILE,
	"Max locked memory":     unix.RLIMIT_MEMLOCK,
	"Max address space":     unix.RLIMIT_AS,
	"Max file locks":        unix.RLIMIT_LOCKS,
	"Max pending signals":   unix.RLIMIT_SIGPENDING,
	"Max msgqueue size":     unix.RLIMIT_MSGQUEUE,
	"Max nice priority":     unix.RLIMIT_NICE,
	"Max realtime priority": unix.RLIMIT_RTPRIO,
	"Max realtime timeout":  unix.RLIMIT_RTTIME,
}

// RlimitsOf returns the limits of process pid, for a command it asks for to start with. They
// come from /proc/<pid>/limits, which anyone may read: prlimit(2) on another user's process
// needs CAP_SYS_RESOURCE, which an agent in a container may lack. The soft limit on open files
// is marked unknown when it equals the hard one, since a Go client (ssi) raised it there as it
// started (see Rlimit.CurUnknown).
func RlimitsOf(pid int) ([]Rlimit, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/limits")
	if err != nil {
		return nil, err
	}
	return parseLimits(string(b))
}

// parseLimits reads a /proc/<pid>/limits file: a header, then a line per limit with its name,
// soft and hard values ("unlimited" or a number) and perhaps units.
func parseLimits(text string) ([]Rlimit, error) {
	var out []Rlimit
	for line := range strings.SplitSeq(text, "\n") {
		for name, res := range rlimitNames {
			rest, ok := strings.CutPrefix(line, name+" ")
			if !ok {
				continue
			}
			f := strings.Fields(rest)
			if len(f) < 2 {
				return nil, fmt.Errorf("malformed limits line %q", line)
			}
			cur, err1 := parseLimitValue(f[0])
			max, err2 := parseLimitValue(f[1])
			if err := errors.Join(err1, err2); err != nil {
				return nil, fmt.Errorf("malformed limits line %q: %w", line, err)
			}
			out = append(out, Rlimit{Resource: res, Cur: cur, Max: max, CurUnknown: res == unix.RLIMIT_NOFILE && cur == max})
		}
	}
	if len(out) != len(rlimitNames) {
		return nil, fmt.Errorf("limits has %d of the %d limits looked for", len(out), len(rlimitNames))
	}
	return out, nil
}

func parseLimitValue(s string) (uint64, error) {
	if s == "unlimited" {
		return unix.RLIM_INFINITY, nil
	}
	return strconv.ParseUint(s, 10, 64)
}

// forkExec starts the process; with limits, it sets them before the new program runs (see
// above).
func forkExec(path string, args []string, attr *os.ProcAttr, limits []Rlimit) (*os.Process, error) {
	if len(limits) == 0 {
		return os.StartProcess(path, args, attr)
	}
	// The tracer is the thread that forked: the waits and ptrace calls must come from it.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	sys := *attr.Sys
	sys.Ptrace = true
	traced := *attr
	traced.Sys = &sys
	p, err := os.StartProcess(path, args, &traced)
	if err != nil {
		return nil, err
	}
	if err := setLimitsAtExec(p.Pid, limits, attr.Sys.Credential); err != nil {
		_ = unix.Kill(p.Pid, unix.SIGKILL)
		_, _ = unix.Wait4(p.Pid, nil, unix.WALL, nil) // ECHILD if it was reaped already
		return nil, fmt.Errorf("set the command's limits: %w", err)
	}
	return p, nil
}

// setLimitsAtExec waits for the traced child to stop at its exec, sets its limits and lets it
// go. Signals that reach it before are held back and sent again once it runs untraced, as
// they would have reached it then.
func setLimitsAtExec(pid int, limits []Rlimit, cred *syscall.Credential) error {
	var held []syscall.Signal
	for {
		var ws unix.WaitStatus
		_, err := unix.Wait4(pid, &ws, unix.WALL, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("wait for the command's exec: %w", err)
		}
		if !ws.Stopped() {
			// Reaped here, so no Process can wait for it: the start failed.
			return fmt.Errorf("the command ended as it started (status %#x)", uint32(ws))
		}
		if ws.StopSignal() == syscall.SIGTRAP {
			break
		}
		held = append(held, ws.StopSignal())
		if err := unix.PtraceCont(pid, 0); err != nil {
			return fmt.Errorf("continue the command to its exec: %w", err)
		}
	}
	asUser := cred != nil && (cred.Uid != 0 || cred.Gid != 0)
	if err := childDefaults.learn(pid); errors.Is(err, unix.EPERM) && asUser {
		// Without CAP_SYS_RESOURCE, only the same user and group may read them (see below).
		_ = asUserOnThisThread(cred.Uid, cred.Gid, func() error { return childDefaults.learn(pid) })
	}
	for _, l := range limits {
		def, known := childDefaults.get(l.Resource)
		if l.CurUnknown {
			if !known {
				continue
			}
			l.Cur = min(def.Cur, l.Max)
		}
		lim := unix.Rlimit{Cur: l.Cur, Max: l.Max}
		if asUser && known && lim.Max > def.Max {
			// Only root may raise a hard limit above what the agent's commands get: a user's
			// request names no limit they could not have had here anyway.
			lim.Max, lim.Cur = def.Max, min(lim.Cur, def.Max)
		}
		err := unix.Prlimit(pid, l.Resource, &lim, nil)
		if errors.Is(err, unix.EPERM) && asUser {
			// Without CAP_SYS_RESOURCE (the root of some containers) only a caller of the same
			// user and group may set another process's limits.
			err = asUserOnThisThread(cred.Uid, cred.Gid, func() error { return unix.Prlimit(pid, l.Resource, &lim, nil) })
		}
		if errors.Is(err, unix.EPERM) && known && lim.Max > def.Max {
			// Raising a hard limit above the agent's own needs CAP_SYS_RESOURCE; without it the
			// command keeps the hard limit it inherited, as a local user above theirs would.
			lim.Max, lim.Cur = def.Max, min(lim.Cur, def.Max)
			err = unix.Prlimit(pid, l.Resource, &lim, nil)
		}
		if err != nil {
			slog.Debug("setting a command's limit", "resource", l.Resource, "cur", l.Cur, "max", l.Max, "err", err)
		}
	}
	if err := unix.PtraceDetach(pid); err != nil {
		return fmt.Errorf("let the command run: %w", err)
	}
	for _, sig := range held {
		_ = unix.Kill(pid, sig) // not reaped yet: the pid is still the command's
	}
	return nil
}

// asUserOnThisThread runs fn on the calling (locked) thread with its real and effective user
// and group set to uid and gid, then takes root's back. Linux keeps credentials per thread, so
// no other thread of the agent changes. The saved ids stay root's, which is what allows the
// way back.
func asUserOnThisThread(uid, gid uint32, fn func() error) error {
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(gid), uintptr(gid), ^uintptr(0)); e != 0 {
		return fmt.Errorf("take group %d: %w", gid, e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(uid), uintptr(uid), ^uintptr(0)); e != 0 {
		restoreRootOnThisThread()
		return fmt.Errorf("take user %d: %w", uid, e)
	}
	err := fn()
	restoreRootOnThisThread()
	return err
}

func restoreRootOnThisThread() {
	_, _, e1 := unix.RawSyscall(unix.SYS_SETRESUID, 0, 0, ^uintptr(0))
	_, _, e2 := unix.RawSyscall(unix.SYS_SETRESGID, 0, 0, ^uintptr(0))
	if e1 != 0 || e2 != 0 {
		// A thread that cannot be root again must not run anything else of the agent.
		panic(fmt.Sprintf("proc: cannot take back root's ids on a thread: %v, %v", e1, e2))
	}
}
