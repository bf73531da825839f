package sched

import (
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)

const cpu = millicoresPerCPU // one whole cpu in millicores
const gib = int64(1) << 30

func newScheduler(t testing.TB, cfg Config) *Scheduler {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// node is an alive node with whole cpus and GiB of memory.
func node(name string, cpus, memGiB int64) Node {
	return Node{Name: name, CPUs: cpus * cpu, Memory: memGiB * gib, Alive: true}
}

// job is a one-task, one-cpu job of user alice; options adjust it.
func job(id string, opts ...func(*Job)) Job {
	j := Job{ID: id, User: "alice", CPUsPerTask: cpu, Tasks: 1}
	for _, o := range opts {
		o(&j)
	}
	return j
}

func cpus(n int64) func(*Job)           { return func(j *Job) { j.CPUsPerTask = n * cpu } }
func memGiB(n int64) func(*Job)         { return func(j *Job) { j.MemoryPerTask = n * gib } }
func tasks(n int) func(*Job)            { return func(j *Job) { j.Tasks = n } }
func nodes(n int) func(*Job)            { return func(j *Job) { j.Nodes = n } }
func user(u string) func(*Job)          { return func(j *Job) { j.User = u } }
func prio(p int) func(*Job)             { return func(j *Job) { j.Priority = p } }
func queue(q string) func(*Job)         { return func(j *Job) { j.Queue = q } }
func limit(d time.Duration) func(*Job)  { return func(j *Job) { j.TimeLimit = d } }
func after(ids ...string) func(*Job)    { return func(j *Job) { j.After = ids } }
func afterAny(ids ...string) func(*Job) { return func(j *Job) { j.AfterAny = ids } }
func submitted(at time.Time) func(*Job) { return func(j *Job) { j.SubmitTime = at } }
func held() func(*Job)                  { return func(j *Job) { j.Hold = true } }

func mustSubmit(t testing.TB, h *Harness, jobs ...Job) {
	t.Helper()
	if err := h.Submit(jobs...); err != nil {
		t.Fatal(err)
	}
}

func mustRun(t testing.TB, h *Harness, s *Scheduler) Plan {
	t.Helper()
	plan, err := h.Run(s)
	if err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, h)
	return plan
}

// checkInvariants holds after every applied plan: no node is over capacity (unless a queue
// oversubscribes it), and every pending job says why it waits.
func checkInvariants(t testing.TB, h *Harness) {
	t.Helper()
	factor := 1.0
	for _, q := range h.Queues() {
		factor = max(factor, q.Oversubscribe)
	}
	load := h.Load()
	for _, n := range h.Nodes() {
		l := load[n.Name]
		if float64(l.CPUs) > float64(n.CPUs)*factor || l.Memory > n.Memory {
			t.Errorf("node %s oversubscribed: %d/%d millicores, %d/%d bytes", n.Name, l.CPUs, n.CPUs, l.Memory, n.Memory)
		}
	}
	for _, j := range h.Jobs() {
		if j.State == StatePending && strings.TrimSpace(j.Reason) == "" {
			t.Errorf("pending job %s has no reason", j.ID)
		}
	}
}

func startedIDs(p Plan) []string {
	var ids []string
	for _, s := range p.Starts {
		ids = append(ids, s.JobID)
	}
	return ids
}

func reasonOf(t testing.TB, h *Harness, id string) string {
	t.Helper()
	j := h.Job(id)
	if j == nil {
		t.Fatalf("no job %s", id)
	}
	return j.Reason
}

// runOn puts a pending job straight onto one node, as if an earlier pass had started it now.
func runOn(t testing.TB, h *Harness, id, nodeName string) {
	t.Helper()
	j := h.Job(id)
	if j == nil || j.State != StatePending {
		t.Fatalf("runOn: job %s is not pending", id)
	}
	j.State, j.StartTime, j.Reason = StateRunning, h.Now(), ""
	j.Allocation = []NodeTasks{{Node: nodeName, Tasks: j.Tasks}}
}
