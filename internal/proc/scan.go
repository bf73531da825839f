package proc

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/procfs"

	"github.com/ssi-cluster/ssi/internal/proc/cgroup"
)

// userHZ is the unit of the tick counts in /proc/<pid>/stat. It is 100 on every Linux
// architecture Go supports (the kernel converts its internal HZ to USER_HZ).
const userHZ = 100

// Info describes one process the way `ps aux` does.
type Info struct {
	PID  int    `json:"pid"`
	PPID int    `json:"ppid"`
	UID  uint32 `json:"uid"` // effective uid
	User string `json:"user"`
	// State is ps's STAT: the kernel state letter (R, S, D, Z, T, t, I, …) followed by
	// flags: < high priority, N low priority, s session leader, l multi-threaded,
	// + in the foreground process group of its terminal.
	State      string        `json:"state"`
	CPUPercent float64       `json:"cpu_percent"` // CPU time over time since start, as ps computes it
	RSSBytes   uint64        `json:"rss_bytes"`
	StartTime  time.Time     `json:"start_time"`
	CPUTime    time.Duration `json:"cpu_time_ns"`
	// Command is the full command line, or [comm] for kernel threads and zombies
	// (with " <defunct>" for zombies), as ps prints it.
	Command string `json:"command"`
	Comm    string `json:"comm"`
	Cgroup  string `json:"cgroup,omitempty"` // cgroup v2 path relative to the cgroup2 mount
}

// Scan lists the processes of the proc file system mounted at procRoot (normally "/proc").
// Processes that exit while being read are left out rather than failing the scan.
func Scan(procRoot string) ([]Info, error) {
	fs, err := procfs.NewFS(procRoot)
	if err != nil {
		return nil, fmt.Errorf("scan processes: %w", err)
	}
	uptime, err := readUptime(procRoot)
	if err != nil {
		return nil, fmt.Errorf("scan processes: %w", err)
	}
	now := time.Now()
	boot := now.Add(-uptime)

	procs, err := fs.AllProcs()
	if err != nil {
		return nil, fmt.Errorf("scan processes in %s: %w", procRoot, err)
	}
	names := map[uint32]string{}
	out := make([]Info, 0, len(procs))
	for _, p := range procs {
		info, err := readInfo(procRoot, p, boot, uptime)
		if err != nil {
			// Every per-process failure is a process that exited mid-read or one whose files
			// we may not read (hidepid); neither is a reason to lose the whole listing.
			continue
		}
		name, ok := names[info.UID]
		if !ok {
			name = UserName(info.UID)
			names[info.UID] = name
		}
		info.User = name
		out = append(out, info)
	}
	return out, nil
}

func readInfo(procRoot string, p procfs.Proc, boot time.Time, uptime time.Duration) (Info, error) {
	stat, err := p.Stat()
	if err != nil {
		return Info{}, err
	}
	status, err := p.NewStatus()
	if err != nil {
		return Info{}, err
	}
	cmdline, err := p.CmdLine()
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return Info{}, err
	}
	sinceBoot := ticks(stat.Starttime)
	cpu := ticks(uint64(stat.UTime) + uint64(stat.STime))
	info := Info{
		PID:       stat.PID,
		PPID:      stat.PPID,
		UID:       uint32(status.UIDs[1]),
		State:     psState(stat),
		RSSBytes:  uint64(max(stat.ResidentMemory(), 0)),
		StartTime: boot.Add(sinceBoot),
		CPUTime:   cpu,
		Comm:      stat.Comm,
		Command:   psCommand(stat, cmdline),
	}
	if elapsed := uptime - sinceBoot; elapsed > 0 {
		info.CPUPercent = 100 * cpu.Seconds() / elapsed.Seconds()
	}
	// Optional: a process may exit between its stat and cgroup reads.
	if cg, err := cgroup.Of(procRoot, stat.PID); err == nil {
		info.Cgroup = cg
	}
	return info, nil
}

func ticks(n uint64) time.Duration {
	return time.Duration(n) * (time.Second / userHZ)
}

func psState(s procfs.ProcStat) string {
	var b strings.Builder
	b.WriteString(s.State)
	switch {
	case s.Nice < 0:
		b.WriteByte('<')
	case s.Nice > 0:
		b.WriteByte('N')
	}
	if s.Session == s.PID {
		b.WriteByte('s')
	}
	if s.NumThreads > 1 {
		b.WriteByte('l')
	}
	if s.TTY != 0 && s.TPGID == s.PGRP {
		b.WriteByte('+')
	}
	return b.String()
}

func psCommand(s procfs.ProcStat, cmdline []string) string {
	if len(cmdline) > 0 {
		return strings.Join(cmdline, " ")
	}
	if s.State == "Z" {
		return "[" + s.Comm + "] <defunct>"
	}
	return "[" + s.Comm + "]"
}

// readUptime returns the first field of <procRoot>/uptime: time since boot.
func readUptime(procRoot string) (time.Duration, error) {
	data, err := os.ReadFile(filepath.Join(procRoot, "uptime"))
	if err != nil {
		return 0, err
	}
	fields := strings.Fields(string(data))
	if len(fields) == 0 {
		return 0, fmt.Errorf("empty %s/uptime", procRoot)
	}
	secs, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return 0, fmt.Errorf("bad %s/uptime %q: %w", procRoot, fields[0], err)
	}
	return time.Duration(secs * float64(time.Second)), nil
}
