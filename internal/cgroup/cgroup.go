// Package cgroup finds the cgroup v2 hierarchy, wherever the machine mounts it: at
// /sys/fs/cgroup on pure v2 hosts, or beside v1 controllers (e.g. /sys/fs/cgroup/unified) on
// hybrid ones.
package cgroup

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
)

// ErrNoV2 means the machine has no cgroup v2 hierarchy mounted.
var ErrNoV2 = errors.New("no cgroup v2 hierarchy is mounted: mount one (e.g. mount -t cgroup2 none /sys/fs/cgroup/unified)")

// Mount returns the mount point of the cgroup v2 hierarchy.
func Mount() (string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("reading mounts: %w", err)
	}
	return mountFromMountinfo(b)
}

// mountFromMountinfo picks the first cgroup2 mount point from /proc/self/mountinfo content.
func mountFromMountinfo(b []byte) (string, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		// Fields before " - " are mount fields; after it: fstype, source, options.
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f := strings.Fields(pre)
		if len(f) < 5 {
			continue
		}
		if fs := strings.Fields(post); len(fs) > 0 && fs[0] == "cgroup2" {
			return unescapeOctal(f[4]), nil
		}
	}
	return "", ErrNoV2
}

// unescapeOctal undoes mountinfo's \NNN escaping of spaces and the like.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var out strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, ok := octal(s[i+1 : i+4]); ok {
				out.WriteByte(v)
				i += 3
				continue
			}
		}
		out.WriteByte(s[i])
	}
	return out.String()
}

func octal(s string) (byte, bool) {
	if len(s) != 3 {
		return 0, false
	}
	var v int
	for _, c := range s {
		if c < '0' || c > '7' {
			return 0, false
		}
		v = v*8 + int(c-'0')
	}
	if v > 255 {
		return 0, false
	}
	return byte(v), true
}

// Self returns this process's cgroup v2 path relative to the hierarchy's mount, e.g. "/a/b".
func Self() (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", fmt.Errorf("reading own cgroup: %w", err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p, nil
		}
	}
	return "", ErrNoV2
}
