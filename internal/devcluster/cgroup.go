package devcluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cgroup2Mount returns where the cgroup v2 hierarchy is mounted on this
// machine: /sys/fs/cgroup on pure v2 systems, /sys/fs/cgroup/unified on hybrid
// ones.
func cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find the cgroup2 mount: %w", err)
	}
	defer f.Close()
	return parseCgroup2Mount(f)
}

// parseCgroup2Mount reads mountinfo lines (proc(5)) and returns the mount
// point of the first cgroup2 file system mounted from its root.
func parseCgroup2Mount(r io.Reader) (string, error) {
	scanner := bufio.NewScanner(r)
	scanner.Buffer(make([]byte, 64*1024), 1024*1024)
	for scanner.Scan() {
		line := scanner.Text()
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		postFields := strings.Fields(post)
		preFields := strings.Fields(pre)
		if len(postFields) < 1 || len(preFields) < 5 || postFields[0] != "cgroup2" {
			continue
		}
		// A cgroup2 mount whose root is a sub-group (as inside a cgroup
		// namespace or a container bind) would put our groups somewhere else
		// than the path we hand to the agent.
		if preFields[3] != "/" {
			continue
		}
		return unescapeMountinfo(preFields[4]), nil
	}
	if err := scanner.Err(); err != nil {
		return "", fmt.Errorf("read mountinfo: %w", err)
	}
	return "", errors.New("no cgroup2 file system is mounted: mount one (mount -t cgroup2 none /sys/fs/cgroup) or boot with cgroup v2 enabled")
}

// unescapeMountinfo undoes the octal escapes (\040 for space, …) that the
// kernel writes in mountinfo paths.
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

// killCgroupTree kills every process in the group and its descendants.
// cgroup.kill (Linux 5.14+) does it atomically; on older kernels each process
// listed in cgroup.procs is killed, which can miss a process forked meanwhile,
// so callers retry until the group is empty.
func killCgroupTree(dir string) error {
	err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
	if err == nil {
		return nil
	}
	if !exists(dir) {
		return nil
	}
	var errs []error
	walkErr := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		data, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
		if err != nil {
			return nil
		}
		for _, field := range strings.Fields(string(data)) {
			pid, err := strconv.Atoi(field)
			if err != nil {
				continue
			}
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				errs = append(errs, fmt.Errorf("kill pid %d of cgroup %s: %w", pid, path, err))
			}
		}
		return nil
	})
	if walkErr != nil {
		errs = append(errs, walkErr)
	}
	return errors.Join(errs...)
}

// removeCgroupTree removes the group and all its descendants, deepest first.
// A group can only be removed once its processes are gone, which takes a
// moment after they are killed, so EBUSY is retried until ctx ends.
func removeCgroupTree(ctx context.Context, dir string) error {
	for {
		err := removeCgroupTreeOnce(dir)
		if err == nil || !errors.Is(err, syscall.EBUSY) {
			return err
		}
		if killErr := killCgroupTree(dir); killErr != nil {
			return errors.Join(err, killErr)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cgroup %s still has processes after they were killed: %w", dir, err)
		case <-time.After(pollInterval):
		}
	}
}

func removeCgroupTreeOnce(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list cgroup %s: %w", dir, err)
	}
	for _, e := range entries {
		if e.IsDir() {
			if err := removeCgroupTreeOnce(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	// Only rmdir works on cgroup directories: their files cannot be unlinked.
	if err := syscall.Rmdir(dir); err != nil && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("remove cgroup %s: %w", dir, err)
	}
	return nil
}

// cgroupPopulated reports whether any process is left in the group or its
// descendants.
func cgroupPopulated(dir string) (bool, error) {
	data, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read cgroup.events of %s: %w", dir, err)
	}
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "populated "); ok {
			return v != "0", nil
		}
	}
	return false, fmt.Errorf("cgroup.events of %s has no populated line", dir)
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}
