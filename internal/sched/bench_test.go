package sched

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// benchCluster builds 1,000 nodes about 60% busy with running jobs and pendingJobs pending jobs
// of mixed shapes: single tasks, packed and spread multi-task jobs, a few wide ones, arrays
// with running limits, time limits on half of them (so backfill has end times to plan with),
// holds, dependencies, five queues and 200 users with different usage.
func benchCluster(tb testing.TB, pendingJobs int, busy bool) *Harness {
	tb.Helper()
	rng := rand.New(rand.NewPCG(42, 7))
	h := NewHarness(t0, 7*24*time.Hour)
	const nodeCount = 1000
	names := make([]string, nodeCount)
	for i := range nodeCount {
		names[i] = fmt.Sprintf("n%04d", i)
		if i < 800 {
			h.AddNode(node(names[i], 32, 128))
		} else {
			h.AddNode(node(names[i], 64, 256))
		}
	}
	h.AddQueue(Queue{Name: "batch"})
	h.AddQueue(Queue{Name: "short", Nodes: names[:200], MaxTime: 2 * time.Hour})
	h.AddQueue(Queue{Name: "long", Nodes: names[500:]})
	h.AddQueue(Queue{Name: "debug", Nodes: names[:10], MaxRunningJobs: 20, MaxTime: 30 * time.Minute})
	h.AddQueue(Queue{Name: "shared", Nodes: names[900:], Oversubscribe: 1.5, MaxCPUsPerUser: 64 * cpu})
	for u := range 200 {
		h.UsageTable().Add(fmt.Sprintf("user%03d", u), float64(rng.IntN(1_000_000)), t0)
	}
	queues := []string{"batch", "batch", "batch", "short", "long", "debug", "shared"}

	// Running work: about 60% of each node's cpus, ending over the next 12 hours.
	id := 0
	for i := range nodeCount {
		if !busy {
			break
		}
		capacity := int64(32)
		if i >= 800 {
			capacity = 64
		}
		for used := int64(0); used < capacity*6/10; {
			id++
			c := int64(1 + rng.IntN(8))
			j := job(fmt.Sprint(id), cpus(c), memGiB(int64(rng.IntN(4))), user(fmt.Sprintf("user%03d", rng.IntN(200))),
				limit(time.Duration(1+rng.IntN(12*60))*time.Minute))
			mustSubmit(tb, h, j)
			stored := h.Job(j.ID)
			stored.State, stored.StartTime = StateRunning, t0.Add(-time.Duration(rng.IntN(60))*time.Minute)
			stored.Allocation = []NodeTasks{{Node: names[i], Tasks: 1}}
			used += c
		}
	}

	for made := 0; made < pendingJobs; {
		id++
		j := job(fmt.Sprint(id), user(fmt.Sprintf("user%03d", rng.IntN(200))), prio(rng.IntN(4)),
			submitted(t0.Add(-time.Duration(rng.IntN(86400))*time.Second)), queue(queues[rng.IntN(len(queues))]))
		switch r := rng.IntN(100); {
		case r < 60:
			j.CPUsPerTask = int64(1+rng.IntN(4)) * cpu
		case r < 75:
			j.Tasks = 2 + rng.IntN(15)
		case r < 90:
			j.Nodes = 2 + rng.IntN(7)
			j.Tasks = j.Nodes * (1 + rng.IntN(4))
		case r < 93:
			j.Nodes = 16 + rng.IntN(49)
			j.Tasks = j.Nodes * 4
		default:
			j.CPUsPerTask = 500 // half a cpu
		}
		j.MemoryPerTask = int64(rng.IntN(8)) * gib / 2
		if rng.IntN(2) == 0 {
			j.TimeLimit = time.Duration(10+rng.IntN(12*60)) * time.Minute
		}
		switch j.Queue {
		case "short":
			j.TimeLimit = min(j.TimeLimit, 2*time.Hour)
		case "debug":
			j.TimeLimit = min(j.TimeLimit, 30*time.Minute)
		}
		j.Hold = rng.IntN(20) == 0
		if rng.IntN(30) == 0 {
			j.After = []string{fmt.Sprint(id - 1 - rng.IntN(100))}
		}
		if rng.IntN(10) == 0 {
			spec := ArraySpec{Ranges: []ArrayRange{{First: 1, Last: 100, Step: 1}}, MaxRunning: 10}
			elems := ExpandArray(j, spec)
			mustSubmit(tb, h, elems...)
			made += len(elems)
			continue
		}
		mustSubmit(tb, h, j)
		made++
	}
	return h
}

func BenchmarkPass100kJobs1kNodes(b *testing.B) {
	benchmarkPass(b, benchCluster(b, 100_000, true))
}

// BenchmarkPass100kJobs1kNodesIdle starts from an empty cluster, the pass with the most starts
// and so the most node searches.
func BenchmarkPass100kJobs1kNodesIdle(b *testing.B) {
	benchmarkPass(b, benchCluster(b, 100_000, false))
}

func benchmarkPass(b *testing.B, h *Harness) {
	s := newScheduler(b, Config{})
	var plan Plan
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		plan = s.Pass(h, t0)
	}
	b.StopTimer()
	b.ReportMetric(float64(plan.Stats.Pending), "pending")
	b.ReportMetric(float64(plan.Stats.Started), "started")
	b.ReportMetric(float64(plan.Stats.Backfilled), "backfilled")
	b.ReportMetric(float64(plan.Stats.Examined), "examined")
	b.ReportMetric(float64(len(plan.Reservations)), "reservations")
}
