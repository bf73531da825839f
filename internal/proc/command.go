package proc

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// Exit codes a POSIX shell uses when it cannot run a command.
const (
	ExitNotExecutable = 126
	ExitNotFound      = 127
)

// ErrNotFound and ErrNotExecutable classify a CommandError for errors.Is.
var (
	ErrNotFound      = errors.New("command not found")
	ErrNotExecutable = errors.New("command not executable")
)

// CommandError is returned by Start when the shell would refuse the command. Its Error text
// is what bash prints, e.g. "frobnicate: command not found", and Code is the shell's exit
// status (127 not found, 126 found but not executable): the client prints the one and exits
// with the other.
type CommandError struct {
	Command string // as given in Spec.Path or Spec.Args[0]
	Reason  string // "command not found", "No such file or directory", "Permission denied", …
	Code    int
}

func (e *CommandError) Error() string { return e.Command + ": " + e.Reason }

// Unwrap lets errors.Is match ErrNotFound or ErrNotExecutable.
func (e *CommandError) Unwrap() error {
	if e.Code == ExitNotFound {
		return ErrNotFound
	}
	return ErrNotExecutable
}

// defaultPath is dash's search path when PATH is unset.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// caller is the identity whose permission bits decide whether a file is executable.
type caller struct {
	uid    uint32
	gids   []uint32 // primary first
	isRoot bool
}

func (c caller) may(fi os.FileInfo, bit os.FileMode) bool {
	mode := fi.Mode().Perm()
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return mode&(bit|bit<<3|bit<<6) != 0
	}
	if c.isRoot {
		// Root may search any directory; it may execute a file if anyone may.
		return fi.IsDir() || mode&0o111 != 0
	}
	switch {
	case st.Uid == c.uid:
		return mode&(bit<<6) != 0
	case slices.Contains(c.gids, st.Gid):
		return mode&(bit<<3) != 0
	default:
		return mode&bit != 0
	}
}

// reaches reports whether c may search every directory on the way to path's last element,
// as far as they exist: where one may not be searched, the kernel fails a lookup with EACCES
// before it could tell whether what lies beyond exists.
func (c caller) reaches(path string) bool {
	return !filepath.IsAbs(path) || c.blockedAt(filepath.Dir(filepath.Clean(path))) == ""
}

// blockedAt returns the first directory from / down to dir (absolute, dir included) that c
// may not search, or "" if c may search all of them that exist. It looks no further than the
// first that does not exist: as the kernel, it tells the caller no more than they may learn.
func (c caller) blockedAt(dir string) string {
	if c.isRoot {
		return ""
	}
	for cur, rest := "/", strings.TrimPrefix(filepath.Clean(dir), "/"); ; {
		fi, err := os.Stat(cur)
		if err != nil || !fi.IsDir() {
			return "" // the lookup fails here for another reason, which the caller may learn
		}
		if !c.may(fi, 0o1) {
			return cur
		}
		if rest == "" {
			return ""
		}
		var next string
		next, rest, _ = strings.Cut(rest, "/")
		cur = filepath.Join(cur, next)
	}
}

// CheckReach refuses a working directory dir (absolute) that spec's user may not reach on
// this node: a directory on the way they may not search. The agent looks directories up as
// root; without this, whether it said "does not exist" or "may not enter" would tell the
// user what is in a directory they may not read.
func CheckReach(spec Spec, dir string) error {
	who := caller{uid: spec.UID, gids: append([]uint32{spec.GID}, spec.Groups...), isRoot: spec.UID == 0}
	if !filepath.IsAbs(dir) {
		return nil
	}
	if d := who.blockedAt(dir); d != "" {
		return notEnterable(who, d, dir)
	}
	return nil
}

func notEnterable(who caller, blocked, dir string) error {
	return fmt.Errorf("uid %d may not enter %q, so it cannot work in %q on this node; pass a directory that user may enter", who.uid, blocked, dir)
}

// resolveCommand finds name the way a shell does, with the caller's PATH and permissions,
// so that "not found" and "not executable" are reported before anything starts, with the
// shell's message. Relative paths are taken relative to dir, where the child will run.
// Permission bits are checked, ACLs and the search permission of each directory on the way
// are not: the kernel still checks everything at exec time, and Start maps that failure to
// the same kind of CommandError.
func resolveCommand(name, dir, pathEnv string, who caller) (string, error) {
	if name == "" {
		return "", &CommandError{Command: name, Reason: "command not found", Code: ExitNotFound}
	}
	if strings.Contains(name, "/") {
		path := name
		if !filepath.IsAbs(path) && dir != "" {
			path = filepath.Join(dir, path)
		}
		fi, err := os.Stat(path)
		switch {
		case errors.Is(err, syscall.ENOTDIR):
			return "", &CommandError{Command: name, Reason: "Not a directory", Code: ExitNotExecutable}
		case err != nil && !who.reaches(path):
			// The agent looked as root: a caller who may not search a directory on the way
			// learns no more of what is in it than the shell would tell them.
			return "", &CommandError{Command: name, Reason: "Permission denied", Code: ExitNotExecutable}
		case err != nil:
			return "", &CommandError{Command: name, Reason: "No such file or directory", Code: ExitNotFound}
		case fi.IsDir():
			return "", &CommandError{Command: name, Reason: "Is a directory", Code: ExitNotExecutable}
		case !who.may(fi, 0o1):
			return "", &CommandError{Command: name, Reason: "Permission denied", Code: ExitNotExecutable}
		}
		return path, nil
	}
	deniedFound := false
	for _, elem := range filepath.SplitList(pathEnv) {
		if elem == "" {
			elem = "." // an empty PATH element means the working directory
		}
		if !filepath.IsAbs(elem) && dir != "" {
			elem = filepath.Join(dir, elem)
		}
		candidate := filepath.Join(elem, name)
		fi, err := os.Stat(candidate)
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		if who.may(fi, 0o1) {
			return candidate, nil
		}
		deniedFound = true
	}
	if deniedFound {
		return "", &CommandError{Command: name, Reason: "Permission denied", Code: ExitNotExecutable}
	}
	return "", &CommandError{Command: name, Reason: "command not found", Code: ExitNotFound}
}

// execFailure turns the errno of a failed execve in the child into the shell's verdict.
// It returns nil for errors that are not about the command.
func execFailure(name string, errno syscall.Errno) *CommandError {
	switch errno {
	case syscall.ENOENT:
		// The file was there a moment ago, so its interpreter (#! line or ELF loader) is not.
		return &CommandError{Command: name, Reason: "No such file or directory", Code: ExitNotFound}
	case syscall.EACCES, syscall.EPERM:
		return &CommandError{Command: name, Reason: "Permission denied", Code: ExitNotExecutable}
	case syscall.ENOEXEC:
		return &CommandError{Command: name, Reason: "cannot execute binary file: Exec format error", Code: ExitNotExecutable}
	case syscall.ETXTBSY:
		return &CommandError{Command: name, Reason: "Text file busy", Code: ExitNotExecutable}
	case syscall.EISDIR:
		return &CommandError{Command: name, Reason: "Is a directory", Code: ExitNotExecutable}
	}
	return nil
}

// checkWorkDir verifies that dir exists and that the caller may enter it and every
// directory above it, so that a failed chdir in the child is not mistaken for a problem
// with the command.
func checkWorkDir(dir string, who caller) error {
	if dir == "" {
		return nil
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("working directory %q does not exist on this node; run from a directory that exists there or pass another", dir)
	}
	if !fi.IsDir() {
		return fmt.Errorf("working directory %q is not a directory on this node; pass a directory", dir)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("working directory %q: %w", dir, err)
	}
	// From / down, as the kernel looks: the first directory the user may not search is the
	// one named, not one below it whose existence they could not learn.
	if d := who.blockedAt(abs); d != "" {
		return notEnterable(who, d, dir)
	}
	return nil
}

// mergeEnv returns env with each name set once (the last setting wins, as with os/exec),
// in first-seen order, followed by the names of extra that env did not set.
func mergeEnv(env []string, extra ...string) []string {
	all := append(slices.Clip(env), extra...)
	index := make(map[string]int, len(all))
	out := make([]string, 0, len(all))
	for _, kv := range all {
		name, _, _ := strings.Cut(kv, "=")
		if i, ok := index[name]; ok {
			out[i] = kv
			continue
		}
		index[name] = len(out)
		out = append(out, kv)
	}
	return out
}

// lookupEnv returns the value of name in env, as the child will see it after mergeEnv.
func lookupEnv(env []string, name string) (string, bool) {
	for _, kv := range slices.Backward(env) {
		if v, ok := strings.CutPrefix(kv, name+"="); ok {
			return v, true
		}
	}
	return "", false
}
