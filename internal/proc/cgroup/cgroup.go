// Package cgroup tracks process trees with cgroup v2 groups: it finds the cgroup2 mount,
// creates and removes child groups, lists, signals and kills their members and reads their
// CPU usage.
//
// Only files present without any controller are used (cgroup.procs, cgroup.events,
// cgroup.kill, cpu.stat), so an empty-controller v2 hierarchy, as in the hybrid layout
// (/sys/fs/cgroup/unified), works as well as a pure v2 one (/sys/fs/cgroup).
package cgroup

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// FindMount returns the mount point of the first cgroup2 file system listed in the
// mountinfo file at path (normally /proc/self/mountinfo).
func FindMount(mountinfoPath string) (string, error) {
	f, err := os.Open(mountinfoPath)
	if err != nil {
		return "", fmt.Errorf("find cgroup2 mount: %w", err)
	}
	defer f.Close()
	mount, err := parseMountinfo(f)
	if err != nil {
		return "", fmt.Errorf("find cgroup2 mount in %s: %w", mountinfoPath, err)
	}
	return mount, nil
}

// Mount returns the cgroup2 mount point of this process's mount namespace.
func Mount() (string, error) {
	return FindMount("/proc/self/mountinfo")
}

// errNoCgroup2 explains the fix, since a missing mount is a host setup problem.
var errNoCgroup2 = errors.New("no cgroup2 file system is mounted; mount one, e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`")

// parseMountinfo reads proc(5) mountinfo lines:
// "36 35 98:0 / /mnt rw,noatime master:1 - cgroup2 cgroup2 rw".
// The file system type is the first field after the "-" separator; the optional fields
// before it vary in number.
func parseMountinfo(r io.Reader) (string, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		// Fields are separated by spaces alone: the kernel escapes only space, tab, newline
		// and backslash in paths, so strings.Fields would split a mount point at a form
		// feed or a no-break space.
		fields := strings.FieldsFunc(sc.Text(), func(r rune) bool { return r == ' ' })
		sep := slices.Index(fields, "-")
		if sep < 5 || sep+1 >= len(fields) {
			continue
		}
		// A cgroup2 mount of a sub-group (inside a cgroup namespace or a bind) would put
		// groups somewhere else than the paths handed to agents.
		if fields[sep+1] == "cgroup2" && fields[3] == "/" {
			return unescapeMountinfo(fields[4]), nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", errNoCgroup2
}

// unescapeMountinfo undoes the octal escapes (\040 for space, …) the kernel writes in paths.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Group is one cgroup v2 directory.
type Group struct {
	mount string
	rel   string
}

// Open returns the group at rel (a path relative to the cgroup2 mount) without checking
// that it exists.
func Open(mount, rel string) *Group {
	return &Group{mount: mount, rel: strings.Trim(filepath.Clean("/"+rel), "/")}
}

// Create makes a new, uniquely named child group "<name>-<random>" under parent (relative to
// mount), creating parent first if needed. name is reduced to [A-Za-z0-9_.-] so any
// command name can be passed.
func Create(mount, parent, name string) (*Group, error) {
	parentGroup := Open(mount, parent)
	base := sanitize(name)
	for range 8 {
		var suffix [4]byte
		if _, err := rand.Read(suffix[:]); err != nil {
			return nil, fmt.Errorf("create cgroup under %s: %w", parentGroup.Path(), err)
		}
		g := Open(mount, filepath.Join(parentGroup.rel, base+"-"+hex.EncodeToString(suffix[:])))
		err := os.Mkdir(g.Path(), 0o755)
		if errors.Is(err, os.ErrNotExist) {
			// The parent is missing (only the first time, normally): create it and retry.
			if err := os.MkdirAll(parentGroup.Path(), 0o755); err != nil {
				return nil, fmt.Errorf("create cgroup parent %s: %w", parentGroup.Path(), err)
			}
			err = os.Mkdir(g.Path(), 0o755)
		}
		if err == nil {
			return g, nil
		}
		if !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("create cgroup %s: %w", g.Path(), err)
		}
	}
	return nil, fmt.Errorf("create cgroup under %s: every random name was taken; remove stale groups there", parentGroup.Path())
}

// sanitize keeps a cgroup name readable and safe as one path element.
func sanitize(name string) string {
	const maxLen = 48
	var b strings.Builder
	for _, c := range name {
		if b.Len() >= maxLen {
			break
		}
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-':
			b.WriteRune(c)
		case c == '.' && b.Len() > 0:
			b.WriteRune(c)
		default:
			b.WriteByte('_')
		}
	}
	if b.Len() == 0 {
		return "proc"
	}
	return b.String()
}

// Path is the group's absolute directory.
func (g *Group) Path() string { return filepath.Join(g.mount, g.rel) }

// Rel is the group's path relative to the cgroup2 mount, without a leading slash.
func (g *Group) Rel() string { return g.rel }

// OpenDir opens the group directory for CLONE_INTO_CGROUP (SysProcAttr.CgroupFD).
func (g *Group) OpenDir() (*os.File, error) {
	fd, err := unix.Open(g.Path(), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open cgroup %s: %w", g.Path(), err)
	}
	return os.NewFile(uintptr(fd), g.Path()), nil
}

// Procs lists the pids (thread group ids) in the group itself, not in its children.
// A removed group has none.
func (g *Group) Procs() ([]int, error) {
	data, err := readControl(filepath.Join(g.Path(), "cgroup.procs"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list cgroup members: %w", err)
	}
	var pids []int
	for line := range strings.FieldsSeq(string(data)) {
		pid, err := strconv.Atoi(line)
		if err != nil {
			return nil, fmt.Errorf("list cgroup members: bad pid %q in %s/cgroup.procs", line, g.Path())
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// Populated reports whether any process lives in the group or its descendants
// (the "populated" key of cgroup.events). A removed group is not populated.
func (g *Group) Populated() (bool, error) {
	data, err := readControl(filepath.Join(g.Path(), "cgroup.events"))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read cgroup events: %w", err)
	}
	return parsePopulated(data, g.Path())
}

// parsePopulated reads the "populated" key of the cgroup.events of the group at dir.
func parsePopulated(events []byte, dir string) (bool, error) {
	for line := range strings.Lines(string(events)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "populated "); ok {
			return v != "0", nil
		}
	}
	return false, fmt.Errorf("read cgroup events: no populated key in %s/cgroup.events; is this a cgroup2 directory?", dir)
}

// WaitEmpty returns once the group holds no process, or ctx's error.
//
// The kernel notifies pollers of cgroup.events of its changes, but at most every 20 ms
// per group (CGROUP_FILE_NOTIFY_MIN_INTV), which is late for a killed tree that is gone
// within a millisecond. So the wait parks on the netpoller until a notification or a
// deadline, whichever comes first, and the deadline backs off as when polling: groups
// that empty at once are seen as soon as before, and long waits (a termination grace
// period) read the file about once a second instead of 50 times, yet still see the group
// empty within 20 ms.
func (g *Group) WaitEmpty(ctx context.Context) error {
	path := filepath.Join(g.Path(), "cgroup.events")
	fd, err := openControl(path, unix.O_RDONLY|unix.O_NONBLOCK)
	if errors.Is(err, os.ErrNotExist) {
		return nil // removed: empty
	}
	if err != nil {
		return fmt.Errorf("wait for cgroup %s to empty: %w", g.Path(), err)
	}
	f := os.NewFile(uintptr(fd), path) // pollable: the netpoller reports the notifications
	defer f.Close()
	conn, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("wait for cgroup %s to empty: %w", g.Path(), err)
	}
	stop := context.AfterFunc(ctx, func() { _ = f.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	var buf [256]byte
	for delay := waitEmptyFirstDelay; ; delay = min(2*delay, waitEmptyMaxDelay) {
		if err := f.SetReadDeadline(time.Now().Add(delay)); errors.Is(err, os.ErrNoDeadline) {
			return g.pollEmpty(ctx) // the netpoller refused the file
		}
		// Read, then wait for the next notification: one that comes between the two still
		// wakes the wait. ctx is checked after the deadline is set: if it ends later, stop
		// above moves the deadline; if it ended before, the check sees it.
		var populated, ctxDone bool
		var readErr error
		err := conn.Read(func(fd uintptr) bool {
			n, err := ignoringEINTR(func() (int, error) { return unix.Pread(int(fd), buf[:], 0) })
			if err != nil {
				readErr = err
				return true
			}
			if populated, readErr = parsePopulated(buf[:n], g.Path()); readErr != nil || !populated {
				return true
			}
			ctxDone = ctx.Err() != nil
			return ctxDone
		})
		switch {
		case readErr != nil:
			if errors.Is(readErr, unix.ENODEV) || errors.Is(readErr, unix.ENOENT) {
				return nil // removed while we waited: empty
			}
			return fmt.Errorf("wait for cgroup %s to empty: %w", g.Path(), readErr)
		case err == nil && !populated:
			return nil
		case ctxDone || ctx.Err() != nil:
			return fmt.Errorf("wait for cgroup %s to empty: %w", g.Path(), ctx.Err())
		case !errors.Is(err, os.ErrDeadlineExceeded):
			return fmt.Errorf("wait for cgroup %s to empty: %w", g.Path(), err)
		}
	}
}

// pollEmpty is WaitEmpty without notifications: it reads cgroup.events with a short
// capped backoff.
func (g *Group) pollEmpty(ctx context.Context) error {
	delay := waitEmptyFirstDelay
	for {
		populated, err := g.Populated()
		if err != nil {
			return err
		}
		if !populated {
			return nil
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("wait for cgroup %s to empty: %w", g.Path(), ctx.Err())
		case <-t.C:
		}
		delay = min(2*delay, 20*time.Millisecond)
	}
}

// WaitEmpty reads cgroup.events again after waitEmptyFirstDelay, then after twice as long
// each time up to waitEmptyMaxDelay, unless a notification wakes it first.
const (
	waitEmptyFirstDelay = 500 * time.Microsecond
	waitEmptyMaxDelay   = time.Second
)

// Kill sends SIGKILL to every process in the group and its descendants at once through
// cgroup.kill (Linux 5.14+), so no process can fork its way out. On older kernels it falls
// back to signalling members one by one until the group is empty.
func (g *Group) Kill(ctx context.Context) error {
	err := writeControl(filepath.Join(g.Path(), "cgroup.kill"), "1")
	if err == nil || errors.Is(err, os.ErrNotExist) && !g.exists() {
		return nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("kill cgroup %s: %w", g.Path(), err)
	}
	// No cgroup.kill file: kill members until none is left, so forks racing with us are
	// caught in a later round.
	for {
		populated, err := g.Populated()
		if err != nil || !populated {
			return err
		}
		if err := g.Signal(syscall.SIGKILL); err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("kill cgroup %s: %w", g.Path(), err)
		}
		time.Sleep(time.Millisecond)
	}
}

// writeControl writes a cgroup control file, which must already exist.
//
// Control files are read and written with plain system calls rather than os.File: these
// files are pollable, so os.File would register each one with the netpoller and remove it
// again, three extra system calls for a few bytes.
func writeControl(path, value string) error {
	fd, err := openControl(path, unix.O_WRONLY)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if _, err := ignoringEINTR(func() (int, error) { return unix.Write(fd, []byte(value)) }); err != nil {
		return &os.PathError{Op: "write", Path: path, Err: err}
	}
	return nil
}

// readControl returns the whole content of a cgroup (or proc) file; see writeControl.
func readControl(path string) ([]byte, error) {
	fd, err := openControl(path, unix.O_RDONLY)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	buf := make([]byte, 0, 512)
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, cap(buf))
		}
		n, err := ignoringEINTR(func() (int, error) { return unix.Read(fd, buf[len(buf):cap(buf)]) })
		if err != nil {
			return nil, &os.PathError{Op: "read", Path: path, Err: err}
		}
		if n == 0 {
			return buf, nil
		}
		buf = buf[:len(buf)+n]
	}
}

func openControl(path string, mode int) (int, error) {
	fd, err := ignoringEINTR(func() (int, error) { return unix.Open(path, mode|unix.O_CLOEXEC, 0) })
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return fd, nil
}

func ignoringEINTR(f func() (int, error)) (int, error) {
	for {
		n, err := f()
		if err != unix.EINTR {
			return n, err
		}
	}
}

func (g *Group) exists() bool {
	_, err := os.Stat(g.Path())
	return err == nil
}

// Signal sends sig to every process in the group and its descendant groups.
//
// cgroup v2 has no file to signal a group, so each member is signalled through a pidfd.
// A pid read from cgroup.procs may exit and be reused by an unrelated process before the
// pidfd is opened, so membership is checked again after opening: a pidfd pins one process,
// and a pid still listed then is either that process or a new member of our own tree.
func (g *Group) Signal(sig syscall.Signal) error {
	return g.SignalEach(func(int) (syscall.Signal, bool) { return sig, true })
}

// SignalEach sends each process of the group and its descendant groups the signal choose
// picks for it, if any (pinned as in Signal; choose sees a pid whose pidfd is open).
func (g *Group) SignalEach(choose func(pid int) (syscall.Signal, bool)) error {
	groups, err := g.descendants()
	if err != nil {
		return err
	}
	var errs []error
	for _, sub := range groups {
		if err := sub.signalMembers(choose); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (g *Group) signalMembers(choose func(pid int) (syscall.Signal, bool)) error {
	pids, err := g.Procs()
	if err != nil {
		return err
	}
	pidfds := make(map[int]int, len(pids))
	defer func() {
		for _, fd := range pidfds {
			unix.Close(fd)
		}
	}()
	for _, pid := range pids {
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			continue // exited already
		}
		pidfds[pid] = fd
	}
	still, err := g.Procs()
	if err != nil {
		return err
	}
	for _, pid := range still {
		fd, ok := pidfds[pid]
		if !ok {
			continue
		}
		sig, ok := choose(pid)
		if !ok {
			continue
		}
		err := unix.PidfdSendSignal(fd, sig, nil, 0)
		if err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("signal pid %d in cgroup %s: %w", pid, g.Path(), err)
		}
	}
	return nil
}

// descendants returns g followed by every group below it.
func (g *Group) descendants() ([]*Group, error) {
	out := []*Group{g}
	err := filepath.WalkDir(g.Path(), func(path string, d os.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil // removed while walking
			}
			return err
		}
		if d.IsDir() && path != g.Path() {
			rel, err := filepath.Rel(g.mount, path)
			if err != nil {
				return err
			}
			out = append(out, Open(g.mount, rel))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list groups under %s: %w", g.Path(), err)
	}
	return out, nil
}

// Children lists the groups directly below g.
func (g *Group) Children() ([]*Group, error) {
	entries, err := os.ReadDir(g.Path())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list groups under %s: %w", g.Path(), err)
	}
	var out []*Group
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, Open(g.mount, filepath.Join(g.rel, e.Name())))
		}
	}
	return out, nil
}

// CPUUsage is the CPU time used by every process that ever ran in the group and its
// descendants (usage_usec in cpu.stat), exited ones included.
func (g *Group) CPUUsage() (time.Duration, error) {
	data, err := readControl(filepath.Join(g.Path(), "cpu.stat"))
	if err != nil {
		return 0, fmt.Errorf("read cgroup cpu usage: %w", err)
	}
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "usage_usec "); ok {
			usec, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("read cgroup cpu usage: bad usage_usec %q in %s/cpu.stat", v, g.Path())
			}
			return time.Duration(usec) * time.Microsecond, nil
		}
	}
	return 0, fmt.Errorf("read cgroup cpu usage: no usage_usec in %s/cpu.stat", g.Path())
}

// Remove deletes the group and its descendant groups, deepest first. Every one of them
// must be empty of processes (the kernel refuses with EBUSY otherwise). Removing a group
// that is already gone succeeds.
func (g *Group) Remove() error {
	// Most groups have no child groups: one rmdir does, and only a refusal needs the walk.
	if err := unix.Rmdir(g.Path()); err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	groups, err := g.descendants()
	if err != nil {
		return err
	}
	for _, sub := range slices.Backward(groups) {
		if err := unix.Rmdir(sub.Path()); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove cgroup %s: %w; its processes must exit first", sub.Path(), err)
		}
	}
	return nil
}

// Of returns the cgroup v2 path (relative to the cgroup2 mount of the reader's cgroup
// namespace) of pid, read from <procRoot>/<pid>/cgroup.
func Of(procRoot string, pid int) (string, error) {
	data, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "cgroup"))
	if err != nil {
		return "", fmt.Errorf("read cgroup of pid %d: %w", pid, err)
	}
	return parseProcCgroup(string(data))
}

// parseProcCgroup picks the unified ("0::") line out of /proc/<pid>/cgroup.
func parseProcCgroup(data string) (string, error) {
	for line := range strings.Lines(data) {
		if v, ok := strings.CutPrefix(strings.TrimRight(line, "\n"), "0::"); ok {
			return strings.TrimPrefix(v, "/"), nil
		}
	}
	return "", errors.New("no cgroup v2 entry (0::) in the process's cgroup file; is a cgroup2 hierarchy mounted?")
}

// MemoryPeak is the most memory the group and its descendants have used at once since the
// group was made (memory.peak: page cache included, as the kernel charges it). ok is false
// where the memory controller is not enabled for the group, as on hosts that keep it in a
// cgroup v1 hierarchy.
func (g *Group) MemoryPeak() (peak uint64, ok bool) {
	data, err := readControl(filepath.Join(g.Path(), "memory.peak"))
	if err != nil {
		return 0, false
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
	if err != nil {
		return 0, false
	}
	return v, true
}
