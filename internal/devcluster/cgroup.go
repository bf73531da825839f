package devcluster

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

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
