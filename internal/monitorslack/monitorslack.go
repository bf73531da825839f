// Package monitorslack lets the Go runtime's monitor thread (sysmon) sleep in coarser steps.
//
// An idle agent wakes a few dozen times a second (etcd's raft ticks and loops, gossip
// probes). After each wake-up sysmon polls the processors every 20 µs until all are idle
// again, and on this kind of machine every such sleep is a context switch: in perf profiles
// of idle servers sysmon was ~30 % of the agent's CPU. The kernel's timer slack for that one
// thread (default 50 µs) decides how far those short sleeps may stretch; a slack of a
// millisecond or two halves sysmon's wake-ups. What sysmon does on each pass is unchanged: it
// only takes back a processor from a blocked system call, or preempts a long-running
// goroutine, up to the slack later. The threads sysmon starts to take over such a processor
// inherit its slack (the kernel copies it to a new thread), so their timed sleeps (a timer
// that comes due while one of them waits in the poller) may stretch by as much too.
package monitorslack

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Set gives the calling process's sysmon thread a timer slack of d.
//
// The runtime starts sysmon before anything else can start a thread (in runtime.main, before
// package initialization), so it is the process's second thread: the first thread id the
// kernel handed out after the process's own, in the order ids are allocated (they wrap at
// pid_max).
func Set(d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("timer slack must be positive, not %s", d)
	}
	tids, err := threadIDs()
	if err != nil {
		return err
	}
	pidMax, err := readInt("/proc/sys/kernel/pid_max")
	if err != nil {
		return err
	}
	tid, ok := secondThread(os.Getpid(), pidMax, tids)
	if !ok {
		return fmt.Errorf("finding the runtime's monitor thread: the process has %d thread(s)", len(tids))
	}
	path := fmt.Sprintf("/proc/%d/timerslack_ns", tid)
	if err := os.WriteFile(path, []byte(strconv.FormatInt(d.Nanoseconds(), 10)), 0); err != nil {
		return fmt.Errorf("setting the monitor thread's timer slack: %w", err)
	}
	return nil
}

// secondThread returns the thread created right after the process's main thread: the id that
// follows pid most closely in allocation order.
func secondThread(pid, pidMax int, tids []int) (int, bool) {
	best, bestDist := 0, 0
	for _, t := range tids {
		if t == pid || t <= 0 || t >= pidMax {
			continue
		}
		dist := (t - pid + pidMax) % pidMax
		if best == 0 || dist < bestDist {
			best, bestDist = t, dist
		}
	}
	return best, best != 0
}

func threadIDs() ([]int, error) {
	entries, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return nil, fmt.Errorf("listing the process's threads: %w", err)
	}
	tids := make([]int, 0, len(entries))
	for _, e := range entries {
		if t, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, t)
		}
	}
	return tids, nil
}

func readInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("reading %s: %w", path, err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("reading %s: %w", path, err)
	}
	return n, nil
}
