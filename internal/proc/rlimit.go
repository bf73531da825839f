package proc

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
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

// rlimitNames are the names /proc/<pid>/limits gives the limits of rlimitOptions.
var rlimitNames = map[string]int{
	"Max address space":  unix.RLIMIT_AS,
	"Max core file size": unix.RLIMIT_CORE,
	"Max cpu time":       unix.RLIMIT_CPU,
	"Max data size":      unix.RLIMIT_DATA,
	"Max file size":      unix.RLIMIT_FSIZE,
	"Max locked memory":  unix.RLIMIT_MEMLOCK,
	"Max processes":      unix.RLIMIT_NPROC,
	"Max stack size":     unix.RLIMIT_STACK,
}

// RlimitsOf returns the limits of pid that a command it asks for inherits (see
// rlimitOptions), from /proc/<pid>/limits: prlimit(2) would need CAP_SYS_RESOURCE, which an
// agent in a user namespace may lack, for another user's process.
func RlimitsOf(pid int) ([]Rlimit, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/limits")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseLimits(f)
}

// parseLimits reads a /proc/<pid>/limits file: a line per limit, its name, soft and hard
// values ("unlimited" or a number) and units.
func parseLimits(r io.Reader) ([]Rlimit, error) {
	var out []Rlimit
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		for name, res := range rlimitNames {
			rest, ok := strings.CutPrefix(sc.Text(), name+" ")
			if !ok {
				continue
			}
			f := strings.Fields(rest)
			if len(f) < 2 {
				return nil, fmt.Errorf("malformed limits line %q", sc.Text())
			}
			cur, err1 := parseLimitValue(f[0])
			max, err2 := parseLimitValue(f[1])
			if err := errors.Join(err1, err2); err != nil {
				return nil, fmt.Errorf("malformed limits line %q: %w", sc.Text(), err)
			}
			out = append(out, Rlimit{Resource: res, Cur: cur, Max: max})
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
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
