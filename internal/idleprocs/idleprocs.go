// Package idleprocs narrows a daemon's Go scheduler to one processor while the daemon is idle,
// and widens it again as soon as it has work; while the daemon stays idle, it also runs an
// upkeep now and then (the agent returns memory to the system).
//
// An idle agent still wakes a few hundred times a second (gossip probes, etcd's raft ticks
// and loops). With GOMAXPROCS at the machine's core count, each wake-up makes the runtime wake
// another thread to look for work (a "spinning" M) that finds none and sleeps again: on the
// 2-core machine that was a quarter of an idle agent's CPU. With one processor there is no
// other to wake. Work that needs the cores (a job array, a large transfer) raises the
// process's CPU use, and the governor gives the processors back within one interval.
package idleprocs

import (
	"context"
	"os"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// interval is how often the governor measures the process's CPU use.
	interval = time.Second
	// busyShare is the share of one core at or above which the process gets all processors.
	busyShare = 0.25
	// idleShare is the share below which an interval counts as idle, and idleIntervals how
	// many idle intervals in a row narrow the scheduler to one processor.
	idleShare     = 0.05
	idleIntervals = 3
	// upkeepIntervals is how many idle intervals in a row separate two upkeeps. An idle agent's
	// periodic work (gossip, etcd's loops) leaves ~60 KB/s of garbage, and the runtime collects
	// only once the heap has doubled: minutes of growth, each megabyte of it resident.
	upkeepIntervals = 30
)

// Run governs GOMAXPROCS until ctx ends, then restores it; it leaves GOMAXPROCS alone when
// the user set it or the process has one processor anyway. If upkeep is not nil, Run calls it
// after every upkeepIntervals idle intervals in a row.
func Run(ctx context.Context, upkeep func()) {
	full := runtime.GOMAXPROCS(0)
	govern := os.Getenv("GOMAXPROCS") == "" && full > 1
	if !govern && upkeep == nil {
		return
	}
	defer runtime.GOMAXPROCS(full)
	t := time.NewTicker(interval)
	defer t.Stop()
	cur, idleRuns := full, 0
	lastCPU, lastAt := cpuTime(), time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			used := cpuTime()
			share := (used - lastCPU).Seconds() / now.Sub(lastAt).Seconds()
			lastCPU, lastAt = used, now
			var next int
			next, idleRuns = decide(cur, full, share, idleRuns)
			if govern && next != cur {
				runtime.GOMAXPROCS(next)
				cur = next
			}
			if upkeep != nil && upkeepDue(idleRuns) {
				upkeep()
			}
		}
	}
}

// decide returns the processors for the next interval and the updated count of idle
// intervals in a row, given the current setting, the full one, and the share of a core the
// process used in the last interval.
func decide(cur, full int, share float64, idleRuns int) (next, runs int) {
	switch {
	case share >= busyShare:
		return full, 0
	case share < idleShare:
		idleRuns++
		if idleRuns >= idleIntervals {
			return 1, idleRuns
		}
		return cur, idleRuns
	default:
		return cur, 0
	}
}

// upkeepDue reports whether the idle interval that made idleRuns in a row is one for the upkeep.
func upkeepDue(idleRuns int) bool {
	return idleRuns > 0 && idleRuns%upkeepIntervals == 0
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
