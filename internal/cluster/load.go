package cluster

import (
	"bufio"
	"bytes"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Load is a node's load vector as gossiped to every other node.
type Load struct {
	CPUs     uint32  `json:"c"`
	Load1    float64 `json:"l1"`
	Load5    float64 `json:"l5"`
	Load15   float64 `json:"l15"`
	Runnable uint32  `json:"r"`
	MemTotal uint64  `json:"mt"`
	MemFree  uint64  `json:"mf"`
	CPUUsed  float64 `json:"cu"` // cores used by the node's own processes over the last interval
}

// LoadSampler measures a node's load. On a machine of its own, the kernel's load averages and
// CPU counters describe the node. When several simulated nodes share one kernel, they do not:
// CPU use is then read from the node's cgroup and load averages are computed from the runnable
// tasks the node's own /proc shows (its PID namespace), the way the kernel computes them.
type LoadSampler struct {
	procRoot  string
	cgroupDir string // absolute cgroup v2 directory of the node; "" for the whole machine

	lastCPU  float64 // seconds of CPU used, cumulative
	lastTime time.Time
	avg      [3]float64
	started  bool
}

// NewLoadSampler returns a sampler reading procRoot (normally /proc) and, when cgroupDir is not
// empty, measuring the node through that cgroup v2 directory.
func NewLoadSampler(procRoot, cgroupDir string) *LoadSampler {
	return &LoadSampler{procRoot: procRoot, cgroupDir: cgroupDir}
}

var loadPeriods = [3]float64{60, 300, 900}

// Sample returns the load vector at now. Call it periodically; CPU use and computed load
// averages are rates over the time since the previous call.
func (s *LoadSampler) Sample(now time.Time) (Load, error) {
	l := Load{CPUs: uint32(runtime.NumCPU())}
	var err error
	if l.MemTotal, l.MemFree, err = readMeminfo(filepath.Join(s.procRoot, "meminfo")); err != nil {
		return l, err
	}
	cpu, err := s.cpuSeconds()
	if err != nil {
		return l, err
	}
	if s.cgroupDir == "" {
		if l.Load1, l.Load5, l.Load15, l.Runnable, err = readLoadavg(filepath.Join(s.procRoot, "loadavg")); err != nil {
			return l, err
		}
	} else {
		n, err := countRunnable(s.procRoot)
		if err != nil {
			return l, err
		}
		l.Runnable = n
		s.decayLoad(now, float64(n))
		l.Load1, l.Load5, l.Load15 = round2(s.avg[0]), round2(s.avg[1]), round2(s.avg[2])
	}
	if s.started {
		if dt := now.Sub(s.lastTime).Seconds(); dt > 0 {
			l.CPUUsed = round2(math.Max(0, cpu-s.lastCPU) / dt)
		}
	}
	s.lastCPU, s.lastTime, s.started = cpu, now, true
	return l, nil
}

func (s *LoadSampler) decayLoad(now time.Time, runnable float64) {
	if !s.started {
		s.avg = [3]float64{runnable, runnable, runnable}
		return
	}
	dt := now.Sub(s.lastTime).Seconds()
	for i, period := range loadPeriods {
		e := math.Exp(-dt / period)
		s.avg[i] = s.avg[i]*e + runnable*(1-e)
	}
}

func round2(f float64) float64 { return math.Round(f*100) / 100 }

// cpuSeconds is the cumulative CPU time of the node: its cgroup's usage, or the machine's
// non-idle time.
func (s *LoadSampler) cpuSeconds() (float64, error) {
	if s.cgroupDir != "" {
		b, err := os.ReadFile(filepath.Join(s.cgroupDir, "cpu.stat"))
		if err != nil {
			return 0, fmt.Errorf("reading node CPU use: %w", err)
		}
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
				us, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
				if err != nil {
					return 0, fmt.Errorf("parsing %s/cpu.stat: %w", s.cgroupDir, err)
				}
				return us / 1e6, nil
			}
		}
		return 0, fmt.Errorf("%s/cpu.stat has no usage_usec", s.cgroupDir)
	}
	b, err := os.ReadFile(filepath.Join(s.procRoot, "stat"))
	if err != nil {
		return 0, fmt.Errorf("reading CPU use: %w", err)
	}
	return parseProcStatBusy(b)
}

// parseProcStatBusy returns the non-idle CPU seconds from /proc/stat's first line.
func parseProcStatBusy(b []byte) (float64, error) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 5 || f[0] != "cpu" {
		return 0, fmt.Errorf("unexpected /proc/stat first line %q", line)
	}
	var busy float64
	for i, v := range f[1:] {
		n, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return 0, fmt.Errorf("parsing /proc/stat: %w", err)
		}
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		if i >= 7 { // steal, guest and guest_nice are not this machine's work (guest is inside user)
			break
		}
		busy += n
	}
	return busy / 100, nil // USER_HZ is 100 on every Linux ABI Go supports
}

func readMeminfo(path string) (total, free uint64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, fmt.Errorf("reading memory info: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		kb, err := strconv.ParseUint(fields[1], 10, 64)
		if err != nil {
			continue
		}
		switch fields[0] {
		case "MemTotal:":
			total = kb * 1024
		case "MemAvailable:":
			free = kb * 1024
		}
	}
	if total == 0 {
		return 0, 0, fmt.Errorf("%s has no MemTotal", path)
	}
	return total, free, sc.Err()
}

func readLoadavg(path string) (l1, l5, l15 float64, runnable uint32, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, 0, 0, fmt.Errorf("reading load averages: %w", err)
	}
	return parseLoadavg(string(b))
}

func parseLoadavg(s string) (l1, l5, l15 float64, runnable uint32, err error) {
	f := strings.Fields(s)
	if len(f) < 4 {
		return 0, 0, 0, 0, fmt.Errorf("unexpected loadavg %q", s)
	}
	var vals [3]float64
	for i := range vals {
		if vals[i], err = strconv.ParseFloat(f[i], 64); err != nil {
			return 0, 0, 0, 0, fmt.Errorf("parsing loadavg: %w", err)
		}
	}
	running, _, _ := strings.Cut(f[3], "/")
	r, err := strconv.ParseUint(running, 10, 32)
	if err != nil {
		return 0, 0, 0, 0, fmt.Errorf("parsing loadavg: %w", err)
	}
	return vals[0], vals[1], vals[2], uint32(r), nil
}

// countRunnable counts tasks in state R among the processes procRoot shows. Threads count, as
// in the kernel's load average.
func countRunnable(procRoot string) (uint32, error) {
	d, err := os.Open(procRoot)
	if err != nil {
		return 0, fmt.Errorf("listing processes: %w", err)
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return 0, fmt.Errorf("listing processes: %w", err)
	}
	var n uint32
	buf := make([]byte, 512)
	for _, name := range names {
		if name[0] < '0' || name[0] > '9' {
			continue
		}
		tasks, err := os.ReadDir(filepath.Join(procRoot, name, "task"))
		if err != nil {
			continue // the process ended while we looked
		}
		for _, t := range tasks {
			if taskRunnable(filepath.Join(procRoot, name, "task", t.Name(), "stat"), buf) {
				n++
			}
		}
	}
	return n, nil
}

func taskRunnable(path string, buf []byte) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	n, _ := f.Read(buf)
	f.Close()
	// The state follows the command name, which is in parentheses and may itself contain ") ".
	i := bytes.LastIndexByte(buf[:n], ')')
	return i >= 0 && i+2 < n && buf[i+2] == 'R'
}
