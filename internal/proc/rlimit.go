package proc

import (
	"fmt"
	"os/exec"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// Rlimit is a resource limit of a process: what getrlimit(2) gives for Resource.
type Rlimit struct {
	Resource int
	Cur, Max uint64
}

// rlimitOptions are the limits a started command inherits from its caller, by the option of
// prlimit(1) that sets each. Not NOFILE: the Go runtime raises its own soft limit to the hard
// one at start, so a Go client's does not show what its shell set.
var rlimitOptions = map[int]string{
	unix.RLIMIT_AS:      "--as",
	unix.RLIMIT_CORE:    "--core",
	unix.RLIMIT_CPU:     "--cpu",
	unix.RLIMIT_DATA:    "--data",
	unix.RLIMIT_FSIZE:   "--fsize",
	unix.RLIMIT_MEMLOCK: "--memlock",
	unix.RLIMIT_NPROC:   "--nproc",
	unix.RLIMIT_STACK:   "--stack",
}

// RlimitsOf returns the limits of pid that a command it asks for inherits (see
// rlimitOptions), as the kernel has them.
func RlimitsOf(pid int) ([]Rlimit, error) {
	out := make([]Rlimit, 0, len(rlimitOptions))
	for res := range rlimitOptions {
		var l unix.Rlimit
		if err := unix.Prlimit(pid, res, nil, &l); err != nil {
			return nil, fmt.Errorf("read resource limit %d of pid %d: %w", res, pid, err)
		}
		out = append(out, Rlimit{Resource: res, Cur: l.Cur, Max: l.Max})
	}
	return out, nil
}

// prlimitPath is prlimit(1), or "" where it is missing.
var prlimitPath = sync.OnceValue(func() string {
	p, err := exec.LookPath("prlimit")
	if err != nil {
		return ""
	}
	return p
})

// withRlimits returns the path and argv that run argv with limits where they differ from
// the agent's own, which a child would otherwise inherit: through prlimit(1), which sets them
// and execs argv (argv[0] as given), since the agent cannot fork with limits of the child's
// own. A hard limit above the agent's is lowered to it: the command, once its credentials are
// the caller's, could not raise it. It returns path and argv as they are when nothing
// differs, or without prlimit.
func withRlimits(limits []Rlimit, path string, argv []string) (string, []string, error) {
	var opts []string
	for _, l := range limits {
		opt, ok := rlimitOptions[l.Resource]
		if !ok {
			continue
		}
		var own unix.Rlimit
		if err := unix.Getrlimit(l.Resource, &own); err != nil {
			return "", nil, fmt.Errorf("read the agent's resource limit %d: %w", l.Resource, err)
		}
		max, cur := min(l.Max, own.Max), min(l.Cur, l.Max, own.Max)
		if cur == own.Cur && max == own.Max {
			continue
		}
		opts = append(opts, opt+"="+rlimitValue(cur)+":"+rlimitValue(max))
	}
	if len(opts) == 0 || prlimitPath() == "" {
		return path, argv, nil
	}
	args := append([]string{"prlimit"}, opts...)
	return prlimitPath(), append(append(args, "--"), argv...), nil
}

func rlimitValue(v uint64) string {
	if v == unix.RLIM_INFINITY {
		return "unlimited"
	}
	return strconv.FormatUint(v, 10)
}
