// Package exetrim lets a long-running process drop its mappings of executable pages that only
// its start-up used.
//
// Go runs the init code of every linked package at start-up, and the agent links the embedded
// etcd server, gRPC, Prometheus and protobuf registrations: starting touches most of the 40 MB
// executable, and the kernel maps each touched page with its neighbours (fault-around). An
// idle client agent thus kept ~27 MiB of the executable resident that it never runs again.
// Once started, Trim unmaps the executable's read-only segments; the pages stay in the page
// cache (shared with every other ssi process), and the ones the process still runs fault back
// in on first use, so what stays resident is the code the process actually uses — much as a
// kernel frees its init sections after boot.
package exetrim

import (
	"bufio"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Release returns what an idle process holds without using: the heap's garbage (a collection,
// with the freed memory given back to the system) and the executable's pages (Trim). It
// returns how many bytes of the executable's address space it advised.
func Release() (int64, error) {
	debug.FreeOSMemory()
	return Trim()
}

// Trim unmaps the calling process's read-only mappings of its own executable
// (madvise MADV_DONTNEED) and returns how many bytes of address space it advised. Writable
// mappings (data, bss) are never touched: dropping them would lose their contents.
func Trim() (int64, error) {
	exe, err := os.Stat("/proc/self/exe")
	if err != nil {
		return 0, fmt.Errorf("exetrim: %w", err)
	}
	st, ok := exe.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, fmt.Errorf("exetrim: no inode for /proc/self/exe")
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return 0, fmt.Errorf("exetrim: %w", err)
	}
	defer f.Close()
	var advised int64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		m, ok := parseMapping(sc.Text())
		if !ok || m.inode != st.Ino || m.dev != st.Dev || strings.ContainsRune(m.perms, 'w') {
			continue
		}
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, m.start, m.end-m.start, unix.MADV_DONTNEED); errno != 0 {
			return advised, fmt.Errorf("exetrim: madvise %x-%x: %w", m.start, m.end, errno)
		}
		advised += int64(m.end - m.start)
	}
	if err := sc.Err(); err != nil {
		return advised, fmt.Errorf("exetrim: reading /proc/self/maps: %w", err)
	}
	return advised, nil
}

// mapping is one line of /proc/PID/maps.
type mapping struct {
	start, end uintptr
	perms      string
	dev, inode uint64
}

// parseMapping parses "start-end perms offset major:minor inode [path]".
func parseMapping(line string) (mapping, bool) {
	f := strings.Fields(line)
	if len(f) < 5 {
		return mapping{}, false
	}
	lo, hi, ok := strings.Cut(f[0], "-")
	if !ok {
		return mapping{}, false
	}
	start, err1 := strconv.ParseUint(lo, 16, 64)
	end, err2 := strconv.ParseUint(hi, 16, 64)
	major, minor, ok := strings.Cut(f[3], ":")
	if !ok || err1 != nil || err2 != nil || end <= start {
		return mapping{}, false
	}
	maj, err3 := strconv.ParseUint(major, 16, 32)
	mnr, err4 := strconv.ParseUint(minor, 16, 32)
	inode, err5 := strconv.ParseUint(f[4], 10, 64)
	if err3 != nil || err4 != nil || err5 != nil {
		return mapping{}, false
	}
	return mapping{
		start: uintptr(start), end: uintptr(end), perms: f[1],
		dev: unix.Mkdev(uint32(maj), uint32(mnr)), inode: inode,
	}, true
}
