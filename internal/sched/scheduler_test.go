package sched

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestNewRejectsBadConfig(t *testing.T) {
	for _, cfg := range []Config{
		{DefaultTimeLimit: -time.Second},
		{BackfillMaxJobTest: -1},
		{MaxReservations: -1},
		{Placement: Placement(7)},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted a bad config", cfg)
		}
	}
	s := newScheduler(t, Config{})
	if got := s.Config(); got.DefaultTimeLimit != 24*time.Hour || got.BackfillMaxJobTest != 10_000 || got.MaxReservations != 16 {
		t.Errorf("defaults = %+v", got)
	}
}

func TestOrder(t *testing.T) {
	tests := []struct {
		name  string
		usage map[string]float64
		jobs  []Job
		want  []string // start order on a node with room for all
	}{
		{
			name: "priority first",
			jobs: []Job{job("1", prio(1)), job("2", prio(5)), job("3", prio(3))},
			want: []string{"2", "3", "1"},
		},
		{
			name:  "fair-share between users at equal priority",
			usage: map[string]float64{"heavy": 1e6, "light": 10},
			jobs:  []Job{job("1", user("heavy")), job("2", user("light")), job("3", user("new"))},
			want:  []string{"3", "2", "1"},
		},
		{
			name:  "priority beats fair-share",
			usage: map[string]float64{"heavy": 1e6},
			jobs:  []Job{job("1", user("light")), job("2", user("heavy"), prio(1))},
			want:  []string{"2", "1"},
		},
		{
			name: "submit time at equal priority and usage",
			jobs: []Job{job("1", submitted(t0.Add(time.Minute))), job("2", submitted(t0)), job("3", submitted(t0.Add(time.Second)))},
			want: []string{"2", "3", "1"},
		},
		{
			name: "numeric id last",
			jobs: []Job{job("10", submitted(t0)), job("9", submitted(t0)), job("9_10", submitted(t0)), job("9_2", submitted(t0)), job("x", submitted(t0))},
			want: []string{"9", "9_2", "9_10", "10", "x"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := NewHarness(t0, time.Hour)
			h.AddNode(node("n1", 64, 64))
			for u, v := range tt.usage {
				h.UsageTable().Add(u, v, t0)
			}
			mustSubmit(t, h, tt.jobs...)
			plan := mustRun(t, h, newScheduler(t, Config{}))
			if got := startedIDs(plan); !slices.Equal(got, tt.want) {
				t.Fatalf("start order %v, want %v", got, tt.want)
			}
		})
	}
}

func TestFairShareDecidesWhoGetsTheLastSlot(t *testing.T) {
	h := NewHarness(t0, time.Hour)
	h.AddNode(node("n1", 1, 8))
	// bob used more, but long ago: after 10 half-lives his usage is below alice's recent use.
	h.UsageTable().Add("bob", 100_000, t0.Add(-10*time.Hour))
	h.UsageTable().Add("alice", 1_000, t0)
	mustSubmit(t, h, job("1", user("alice")), job("2", user("bob")))
	plan := mustRun(t, h, newScheduler(t, Config{}))
	if got := startedIDs(plan); !slices.Equal(got, []string{"2"}) {
		t.Fatalf("started %v, want bob's job 2", got)
	}
}

func TestResourceReasons(t *testing.T) {
	tests := []struct {
		name string
		j    Job
		want string
	}{
		{name: "cpus", j: job("9", cpus(4)), want: "waiting for resources: needs 4 cpus, largest free is 2 (n2)"},
		{name: "memory", j: job("9", memGiB(7)), want: "waiting for resources: needs 7G memory, largest free is 6G (n2)"},
		{name: "never on one node", j: job("9", cpus(16)), want: "needs 16 cpus on one node, the largest node in queue batch has 8"},
		{name: "too many nodes", j: job("9", tasks(3), nodes(3)), want: "needs 3 nodes, queue batch has 2"},
		{name: "spread", j: job("9", tasks(2), nodes(2), cpus(2)), want: "waiting for resources: needs 2 nodes with room for 1 tasks of 2 cpus each, 1 have it"},
		{name: "packed", j: job("9", tasks(4), cpus(1)), want: "waiting for resources: needs 4 tasks of 1 cpus each, room for 3 now"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := NewHarness(t0, time.Hour)
			h.AddNode(node("n1", 8, 8))
			h.AddNode(node("n2", 8, 8))
			mustSubmit(t, h, job("1", cpus(7), memGiB(4)), job("2", cpus(6), memGiB(2)))
			mustRun(t, h, newScheduler(t, Config{}))
			mustSubmit(t, h, tt.j)
			plan := mustRun(t, h, newScheduler(t, Config{}))
			if len(plan.Starts) != 0 {
				t.Fatalf("started %v, want nothing", startedIDs(plan))
			}
			if got := reasonOf(t, h, "9"); !strings.HasPrefix(got, tt.want) {
				t.Fatalf("reason %q, want it to start with %q", got, tt.want)
			}
		})
	}
}

func TestGangAllOrNone(t *testing.T) {
	h := NewHarness(t0, time.Hour)
	for _, n := range []string{"n1", "n2", "n3"} {
		h.AddNode(node(n, 4, 16))
	}
	// Each node has 2 cpus left after these.
	mustSubmit(t, h, job("1", cpus(2)), job("2", cpus(2)), job("3", cpus(2)))
	s := newScheduler(t, Config{})
	mustRun(t, h, s)
	// 4 tasks on 4 nodes cannot fit 3 nodes; 8 packed 1-cpu tasks need 8 cpus and only 6 are free.
	mustSubmit(t, h, job("wide", tasks(4), nodes(3), cpus(2)), job("packed", tasks(8)))
	plan := mustRun(t, h, s)
	if len(plan.Starts) != 0 {
		t.Fatalf("a gang started partly or wrongly: %+v", plan.Starts)
	}
	for _, id := range []string{"wide", "packed"} {
		if j := h.Job(id); j.State != StatePending || len(j.Allocation) != 0 {
			t.Errorf("job %s is %s on %v, want pending with nothing allocated", id, j.State, j.Allocation)
		}
	}
	// Freeing one node lets the packed job start whole: 4 + 2 + 2 cpus for 8 tasks.
	if err := h.Finish("1", StateCompleted); err != nil {
		t.Fatal(err)
	}
	plan = mustRun(t, h, s)
	if len(plan.Starts) != 1 || plan.Starts[0].JobID != "packed" {
		t.Fatalf("starts %+v, want packed alone", plan.Starts)
	}
	total := 0
	for _, nt := range plan.Starts[0].Nodes {
		total += nt.Tasks
	}
	if total != 8 || len(plan.Starts[0].Nodes) != 3 {
		t.Fatalf("packed placement %+v, want 8 tasks over 3 nodes", plan.Starts[0].Nodes)
	}
}

func TestSpreadOverDistinctNodes(t *testing.T) {
	tests := []struct {
		name      string
		j         Job
		wantTasks []int // tasks per node, in node order
	}{
		{name: "even", j: job("1", tasks(4), nodes(4)), wantTasks: []int{1, 1, 1, 1}},
		{name: "remainder", j: job("1", tasks(7), nodes(3)), wantTasks: []int{3, 2, 2}},
		{name: "one node", j: job("1", tasks(3), nodes(1)), wantTasks: []int{3}},
		{name: "packed fits one node", j: job("1", tasks(3)), wantTasks: []int{3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := NewHarness(t0, time.Hour)
			for i := range 5 {
				h.AddNode(node(fmt.Sprintf("n%d", i), 4, 16))
			}
			mustSubmit(t, h, tt.j)
			plan := mustRun(t, h, newScheduler(t, Config{}))
			if len(plan.Starts) != 1 {
				t.Fatalf("starts %+v, want one", plan.Starts)
			}
			var got []int
			seen := map[string]bool{}
			for _, nt := range plan.Starts[0].Nodes {
				if seen[nt.Node] {
					t.Fatalf("node %s used twice in %+v", nt.Node, plan.Starts[0].Nodes)
				}
				seen[nt.Node] = true
				got = append(got, nt.Tasks)
			}
			slices.SortFunc(got, func(a, b int) int { return b - a })
			if !slices.Equal(got, tt.wantTasks) {
				t.Fatalf("tasks per node %v, want %v", got, tt.wantTasks)
			}
		})
	}
}

func TestPlacementPolicy(t *testing.T) {
	tests := []struct {
		policy Placement
		j      Job
		want   string
	}{
		{BestFit, job("j", cpus(1)), "n1"},     // fills n1 exactly
		{BestFit, job("j", cpus(2)), "n2"},     // n1 is too full; n2 is left with 1 cpu, n3 with 6
		{LeastLoaded, job("j", cpus(1)), "n3"}, // 7/8 free beats 3/4 and 1/4
		{LeastLoaded, job("j", cpus(3)), "n3"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("policy %d cpus %s", tt.policy, FormatCPUs(tt.j.CPUsPerTask)), func(t *testing.T) {
			h := NewHarness(t0, time.Hour)
			h.AddNode(node("n1", 4, 16))
			h.AddNode(node("n2", 4, 16))
			h.AddNode(node("n3", 8, 16))
			mustSubmit(t, h, job("a", cpus(3)), job("b", cpus(1)))
			runOn(t, h, "a", "n1")
			runOn(t, h, "b", "n2")
			mustSubmit(t, h, tt.j)
			plan := mustRun(t, h, newScheduler(t, Config{Placement: tt.policy}))
			if len(plan.Starts) != 1 || plan.Starts[0].Nodes[0].Node != tt.want {
				t.Fatalf("starts %+v, want j on %s", plan.Starts, tt.want)
			}
		})
	}
}

func TestNeverOversubscribeUnlessQueueAllows(t *testing.T) {
	tests := []struct {
		name    string
		factor  float64
		started int
	}{
		{name: "no oversubscription", factor: 0, started: 4},
		{name: "factor 1.5", factor: 1.5, started: 6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := NewHarness(t0, time.Hour)
			h.AddNode(node("n1", 4, 64))
			h.AddQueue(Queue{Name: "batch", Oversubscribe: tt.factor})
			for i := range 10 {
				mustSubmit(t, h, job(fmt.Sprint(i)))
			}
			plan := mustRun(t, h, newScheduler(t, Config{}))
			if len(plan.Starts) != tt.started {
				t.Fatalf("started %d, want %d", len(plan.Starts), tt.started)
			}
		})
	}
	t.Run("memory is never oversubscribed", func(t *testing.T) {
		h := NewHarness(t0, time.Hour)
		h.AddNode(node("n1", 4, 4))
		h.AddQueue(Queue{Name: "batch", Oversubscribe: 4})
		mustSubmit(t, h, job("1", memGiB(3)), job("2", memGiB(3)))
		if plan := mustRun(t, h, newScheduler(t, Config{})); len(plan.Starts) != 1 {
			t.Fatalf("started %v, want only one 3G job on a 4G node", startedIDs(plan))
		}
	})
}

// TestRandomWorkloadKeepsInvariants drives many passes of a random workload and checks, after
// each, that no node is over capacity and that every pending job has a reason.
func TestRandomWorkloadKeepsInvariants(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	h := NewHarness(t0, time.Hour)
	for i := range 12 {
		h.AddNode(node(fmt.Sprintf("n%02d", i), int64(4+rng.IntN(3)*4), int64(8+rng.IntN(4)*8)))
	}
	h.AddQueue(Queue{Name: "batch"})
	h.AddQueue(Queue{Name: "small", Nodes: []string{"n00", "n01", "n02"}, MaxRunningJobs: 3, MaxTime: time.Hour})
	s := newScheduler(t, Config{BackfillMaxJobTest: 50})
	next := 0
	for round := range 60 {
		for range rng.IntN(8) {
			next++
			j := job(fmt.Sprint(next), user(fmt.Sprintf("u%d", rng.IntN(4))), cpus(int64(1+rng.IntN(4))),
				memGiB(int64(rng.IntN(4))), tasks(1+rng.IntN(4)), prio(rng.IntN(3)))
			j.Nodes = rng.IntN(j.Tasks + 1)
			if rng.IntN(2) == 0 {
				j.TimeLimit = time.Duration(1+rng.IntN(120)) * time.Minute
			}
			if rng.IntN(4) == 0 {
				j.Queue = "small"
				j.TimeLimit = min(j.TimeLimit, time.Hour)
			}
			if next > 3 && rng.IntN(6) == 0 {
				j.After = []string{fmt.Sprint(rng.IntN(next-1) + 1)}
			}
			mustSubmit(t, h, j)
		}
		plan := mustRun(t, h, s)
		for _, st := range plan.Starts {
			for _, nt := range st.Nodes {
				if i := slices.IndexFunc(h.Nodes(), func(n Node) bool { return n.Name == nt.Node }); h.Nodes()[i].Draining {
					t.Fatalf("round %d: job %s started on draining node %s", round, st.JobID, nt.Node)
				}
			}
		}
		if round%7 == 0 {
			_ = h.SetNode(fmt.Sprintf("n%02d", rng.IntN(12)), func(n *Node) { n.Draining = !n.Draining })
		}
		h.Advance(time.Duration(5+rng.IntN(20)) * time.Minute)
		for _, j := range h.Jobs() {
			if j.State == StateRunning && rng.IntN(3) == 0 {
				if err := h.Finish(j.ID, []JobState{StateCompleted, StateFailed}[rng.IntN(2)]); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if started := len(h.Load()); started == 0 {
		t.Fatal("random workload never ran anything")
	}
}

func TestPassIsDeterministic(t *testing.T) {
	h := NewHarness(t0, time.Hour)
	for i := range 6 {
		h.AddNode(node(fmt.Sprintf("n%d", i), 8, 32))
	}
	for i := range 40 {
		mustSubmit(t, h, job(fmt.Sprint(i), cpus(int64(1+i%5)), tasks(1+i%3), user(fmt.Sprint("u", i%3)), limit(time.Duration(1+i%4)*time.Hour)))
	}
	s := newScheduler(t, Config{})
	a, b := s.Pass(h, t0), s.Pass(h, t0)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("two passes over the same state differ")
	}
}

func TestArrayMaxRunning(t *testing.T) {
	spec, err := ParseArray("1-10%3")
	if err != nil {
		t.Fatal(err)
	}
	h := NewHarness(t0, time.Hour)
	h.AddNode(node("n1", 32, 32))
	mustSubmit(t, h, ExpandArray(job("42"), spec)...)
	s := newScheduler(t, Config{})
	plan := mustRun(t, h, s)
	if got := startedIDs(plan); !slices.Equal(got, []string{"42_1", "42_2", "42_3"}) {
		t.Fatalf("started %v, want the first three elements", got)
	}
	if got := reasonOf(t, h, "42_4"); got != "array limit %3 reached" {
		t.Fatalf("reason %q", got)
	}
	if err := h.Finish("42_2", StateCompleted); err != nil {
		t.Fatal(err)
	}
	plan = mustRun(t, h, s)
	if got := startedIDs(plan); !slices.Equal(got, []string{"42_4"}) {
		t.Fatalf("after one finished, started %v, want 42_4", got)
	}
}

func TestDependencies(t *testing.T) {
	tests := []struct {
		name      string
		setup     func(t *testing.T, h *Harness) // runs before job "d" is submitted
		d         Job
		wantStart bool
		reason    string
		never     bool
	}{
		{
			name:   "after waits for success",
			setup:  func(t *testing.T, h *Harness) { mustSubmit(t, h, job("41", held())) },
			d:      job("d", after("41")),
			reason: "waiting for job 41 to succeed",
		},
		{
			name:      "after starts once the dependency completed",
			setup:     endAs("41", StateCompleted),
			d:         job("d", after("41")),
			wantStart: true,
		},
		{
			name:   "after a failed dependency is never runnable",
			setup:  endAs("41", StateFailed),
			d:      job("d", after("41")),
			reason: "dependency 41 failed: never runnable",
			never:  true,
		},
		{
			name:   "after a timed-out dependency is never runnable",
			setup:  endAs("41", StateTimeout),
			d:      job("d", after("41")),
			reason: "dependency 41 timed out: never runnable",
			never:  true,
		},
		{
			name:      "after-any starts after a failure",
			setup:     endAs("41", StateFailed),
			d:         job("d", afterAny("41")),
			wantStart: true,
		},
		{
			name: "after-any waits while running",
			setup: func(t *testing.T, h *Harness) {
				mustSubmit(t, h, job("41"))
				mustRun(t, h, newScheduler(t, Config{}))
			},
			d:      job("d", afterAny("41")),
			reason: "waiting for job 41 to end",
		},
		{
			name:   "unknown dependency",
			d:      job("d", after("999")),
			reason: "dependency 999 not found: never runnable",
			never:  true,
		},
		{
			name: "never runnable propagates down a chain",
			setup: func(t *testing.T, h *Harness) {
				endAs("41", StateFailed)(t, h)
				mustSubmit(t, h, job("mid", after("41")))
			},
			d:      job("d", after("mid")),
			reason: "dependency mid can never run: never runnable",
			never:  true,
		},
		{
			name:   "cycle",
			setup:  func(t *testing.T, h *Harness) { mustSubmit(t, h, job("c1", after("d"))) },
			d:      job("d", after("c1")),
			reason: "dependency c1 can never run: never runnable",
			never:  true,
		},
		{
			name: "array dependency waits for every element",
			setup: func(t *testing.T, h *Harness) {
				spec, _ := ParseArray("1-2")
				mustSubmit(t, h, ExpandArray(job("7"), spec)...)
				mustRun(t, h, newScheduler(t, Config{}))
				if err := h.Finish("7_1", StateCompleted); err != nil {
					t.Fatal(err)
				}
			},
			d:      job("d", after("7")),
			reason: "waiting for job 7 to succeed",
		},
		{
			name:   "hold comes before dependencies",
			setup:  endAs("41", StateFailed),
			d:      job("d", after("41"), held()),
			reason: "held by user",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := NewHarness(t0, time.Hour)
			h.AddNode(node("n1", 8, 8))
			if tt.setup != nil {
				tt.setup(t, h)
			}
			mustSubmit(t, h, tt.d)
			plan := mustRun(t, h, newScheduler(t, Config{}))
			started := slices.Contains(startedIDs(plan), "d")
			if started != tt.wantStart {
				t.Fatalf("started = %v, want %v (reason %q)", started, tt.wantStart, reasonOf(t, h, "d"))
			}
			if tt.wantStart {
				return
			}
			if got := reasonOf(t, h, "d"); got != tt.reason {
				t.Fatalf("reason %q, want %q", got, tt.reason)
			}
			i := slices.IndexFunc(plan.Reasons, func(r ReasonUpdate) bool { return r.JobID == "d" })
			if plan.Reasons[i].NeverRunnable != tt.never {
				t.Fatalf("never runnable = %v, want %v", plan.Reasons[i].NeverRunnable, tt.never)
			}
		})
	}
}

// endAs makes job id run and end in state.
func endAs(id string, state JobState) func(t *testing.T, h *Harness) {
	return func(t *testing.T, h *Harness) {
		mustSubmit(t, h, job(id))
		mustRun(t, h, newScheduler(t, Config{}))
		if err := h.Finish(id, state); err != nil {
			t.Fatal(err)
		}
	}
}

func TestHold(t *testing.T) {
	h := NewHarness(t0, time.Hour)
	h.AddNode(node("n1", 8, 8))
	mustSubmit(t, h, job("1", held()), job("2"))
	s := newScheduler(t, Config{})
	plan := mustRun(t, h, s)
	if got := startedIDs(plan); !slices.Equal(got, []string{"2"}) {
		t.Fatalf("started %v, want only the unheld job", got)
	}
	if got := reasonOf(t, h, "1"); got != "held by user" {
		t.Fatalf("reason %q", got)
	}
	h.Job("1").Hold = false
	if plan = mustRun(t, h, s); !slices.Equal(startedIDs(plan), []string{"1"}) {
		t.Fatalf("released job did not start: %v", startedIDs(plan))
	}
}

func TestDrain(t *testing.T) {
	h := NewHarness(t0, time.Hour)
	h.AddNode(node("n1", 4, 8))
	h.AddNode(node("n2", 8, 8))
	mustSubmit(t, h, job("running", cpus(2)))
	s := newScheduler(t, Config{Placement: LeastLoaded})
	mustRun(t, h, s)
	if got := h.Job("running").Allocation[0].Node; got != "n2" {
		t.Fatalf("setup: job ran on %s", got)
	}
	if err := h.SetNode("n2", func(n *Node) { n.Draining, n.DrainReason = true, "disk swap" }); err != nil {
		t.Fatal(err)
	}
	mustSubmit(t, h, job("small", cpus(1)), job("big", cpus(6)))
	plan := mustRun(t, h, s)
	if got := startedIDs(plan); !slices.Equal(got, []string{"small"}) || plan.Starts[0].Nodes[0].Node != "n1" {
		t.Fatalf("starts %+v, want small on n1 only", plan.Starts)
	}
	if len(plan.Ends) != 0 {
		t.Fatalf("draining ended running work: %+v", plan.Ends)
	}
	if got := reasonOf(t, h, "big"); !strings.Contains(got, "node n2 could run it but is draining (disk swap)") {
		t.Fatalf("reason %q does not name the draining node", got)
	}
	_ = h.SetNode("n1", func(n *Node) { n.Draining = true })
	mustSubmit(t, h, job("late"))
	mustRun(t, h, s)
	if got := reasonOf(t, h, "late"); got != "queue batch has no usable node: node n1 draining, node n2 draining (disk swap)" {
		t.Fatalf("reason %q", got)
	}
}

func TestQueues(t *testing.T) {
	newCluster := func() *Harness {
		h := NewHarness(t0, time.Hour)
		for _, n := range []string{"n1", "n2", "n3"} {
			h.AddNode(node(n, 4, 16))
		}
		h.AddQueue(Queue{Name: "batch"})
		h.AddQueue(Queue{Name: "gpu", Nodes: []string{"n3"}})
		h.AddQueue(Queue{Name: "debug", Nodes: []string{"n1"}, MaxRunningJobs: 2, MaxTime: 30 * time.Minute})
		h.AddQueue(Queue{Name: "shared", MaxCPUsPerUser: 3 * cpu})
		return h
	}
	t.Run("node set", func(t *testing.T) {
		h := newCluster()
		mustSubmit(t, h, job("1", queue("gpu"), cpus(3)), job("2", queue("gpu"), cpus(3)))
		plan := mustRun(t, h, newScheduler(t, Config{}))
		if len(plan.Starts) != 1 || plan.Starts[0].Nodes[0].Node != "n3" {
			t.Fatalf("starts %+v, want one job on n3", plan.Starts)
		}
		if got := reasonOf(t, h, "2"); !strings.HasPrefix(got, "waiting for resources: needs 3 cpus, largest free is 1 (n3)") {
			t.Fatalf("reason %q", got)
		}
	})
	t.Run("running-job limit", func(t *testing.T) {
		h := newCluster()
		mustSubmit(t, h, job("1", queue("debug")), job("2", queue("debug")), job("3", queue("debug")))
		plan := mustRun(t, h, newScheduler(t, Config{}))
		if len(plan.Starts) != 2 {
			t.Fatalf("started %v, want 2", startedIDs(plan))
		}
		if got := reasonOf(t, h, "3"); got != "queue debug at its running-job limit (2)" {
			t.Fatalf("reason %q", got)
		}
	})
	t.Run("max time and queue default limit", func(t *testing.T) {
		h := newCluster()
		mustSubmit(t, h, job("long", queue("debug"), limit(time.Hour)), job("unset", queue("debug")))
		plan := mustRun(t, h, newScheduler(t, Config{}))
		if len(plan.Starts) != 1 || plan.Starts[0].JobID != "unset" || plan.Starts[0].TimeLimit != 30*time.Minute {
			t.Fatalf("starts %+v, want unset with the queue's 30m limit", plan.Starts)
		}
		if got := reasonOf(t, h, "long"); got != "time limit 01:00:00 is over queue debug's max time 00:30:00: lower --time" {
			t.Fatalf("reason %q", got)
		}
	})
	t.Run("per-user cpus", func(t *testing.T) {
		h := newCluster()
		mustSubmit(t, h, job("1", queue("shared"), cpus(2)), job("2", queue("shared"), cpus(2)),
			job("3", queue("shared"), cpus(2), user("bob")), job("4", queue("shared"), cpus(4)))
		plan := mustRun(t, h, newScheduler(t, Config{}))
		if got := startedIDs(plan); !slices.Equal(got, []string{"1", "3"}) {
			t.Fatalf("started %v, want 1 and 3", got)
		}
		if got := reasonOf(t, h, "2"); got != "user alice at queue shared's cpu limit (3 cpus)" {
			t.Fatalf("reason %q", got)
		}
		if got := reasonOf(t, h, "4"); !strings.Contains(got, "over queue shared's per-user limit of 3") {
			t.Fatalf("reason %q", got)
		}
	})
	t.Run("unknown queue", func(t *testing.T) {
		h := newCluster()
		mustSubmit(t, h, job("1", queue("nope")))
		mustRun(t, h, newScheduler(t, Config{}))
		if got := reasonOf(t, h, "1"); !strings.HasPrefix(got, "queue nope does not exist") {
			t.Fatalf("reason %q", got)
		}
	})
}

func TestTimeoutAndNodeFailure(t *testing.T) {
	h := NewHarness(t0, time.Hour)
	h.AddNode(node("n1", 4, 8))
	h.AddNode(node("n2", 4, 8))
	mustSubmit(t, h, job("short", limit(time.Hour)), job("requeue", tasks(2), nodes(2)), job("plain", tasks(2), nodes(2)))
	h.Job("requeue").Requeue = true
	s := newScheduler(t, Config{})
	mustRun(t, h, s)

	h.Advance(time.Hour)
	if plan := mustRun(t, h, s); len(plan.Ends) != 0 {
		t.Fatalf("a job at exactly its limit was ended: %+v", plan.Ends)
	}
	h.Advance(time.Second)
	plan := mustRun(t, h, s)
	want := []End{{JobID: "short", State: StateTimeout, Reason: "reached its time limit of 01:00:00"}}
	if !reflect.DeepEqual(plan.Ends, want) {
		t.Fatalf("ends %+v, want %+v", plan.Ends, want)
	}

	_ = h.SetNode("n2", func(n *Node) { n.Alive = false })
	plan = mustRun(t, h, s)
	if len(plan.Ends) != 2 {
		t.Fatalf("ends %+v, want both two-node jobs", plan.Ends)
	}
	for _, e := range plan.Ends {
		if e.State != StateNodeFail || e.Requeue != (e.JobID == "requeue") {
			t.Errorf("end %+v", e)
		}
	}
	if h.Job("requeue").State != StatePending || h.Job("plain").State != StateNodeFail {
		t.Fatalf("states after node loss: requeue %s, plain %s", h.Job("requeue").State, h.Job("plain").State)
	}
}

func TestBackfill(t *testing.T) {
	// Two 4-cpu nodes. n1 is full until 2h from now; n2 has 2 cpus busy until 1h from now.
	// The top job needs 4 cpus: its reservation is n2 at +1h.
	setup := func(t *testing.T) (*Harness, *Scheduler) {
		h := NewHarness(t0, time.Hour)
		h.AddNode(node("n1", 4, 16))
		h.AddNode(node("n2", 4, 16))
		mustSubmit(t, h, job("r1", cpus(4), limit(2*time.Hour), prio(100)), job("r2", cpus(2), limit(time.Hour), prio(100)))
		s := newScheduler(t, Config{})
		mustRun(t, h, s)
		mustSubmit(t, h, job("top", cpus(4), limit(time.Hour), prio(10)))
		return h, s
	}
	tests := []struct {
		name      string
		j         Job
		wantStart bool
		reason    string
	}{
		{name: "short job fills the gap", j: job("b", cpus(2), limit(30*time.Minute)), wantStart: true},
		{name: "job ending exactly at the reservation", j: job("b", cpus(2), limit(time.Hour)), wantStart: true},
		{name: "long job would delay the top job", j: job("b", cpus(2), limit(3*time.Hour)),
			reason: "reserved for job top (backfill would delay it)"},
		{name: "job without a limit uses the 24h default", j: job("b", cpus(2)),
			reason: "reserved for job top (backfill would delay it)"},
		{name: "too big for the gap at all", j: job("b", cpus(3), limit(time.Minute)),
			reason: "waiting for resources: needs 3 cpus, largest free is 2 (n2)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, s := setup(t)
			mustSubmit(t, h, tt.j)
			plan := mustRun(t, h, s)
			if len(plan.Reservations) != 1 {
				t.Fatalf("reservations %+v, want one for top", plan.Reservations)
			}
			r := plan.Reservations[0]
			if r.JobID != "top" || !r.Start.Equal(t0.Add(time.Hour)) || r.Nodes[0].Node != "n2" {
				t.Fatalf("reservation %+v, want top on n2 at +1h", r)
			}
			if got := reasonOf(t, h, "top"); !strings.HasSuffix(got, "expected to start by 2026-03-02T10:00:00Z on n2") {
				t.Fatalf("top's reason %q does not give its start", got)
			}
			started := slices.Contains(startedIDs(plan), "b")
			if started != tt.wantStart {
				t.Fatalf("b started = %v, want %v (reason %q)", started, tt.wantStart, reasonOf(t, h, "b"))
			}
			if started && !plan.Starts[0].Backfilled {
				t.Errorf("start %+v not marked as backfill", plan.Starts[0])
			}
			if !started && reasonOf(t, h, "b") != tt.reason {
				t.Fatalf("reason %q, want %q", reasonOf(t, h, "b"), tt.reason)
			}
		})
	}
	t.Run("the top job starts on time", func(t *testing.T) {
		h, s := setup(t)
		mustSubmit(t, h, job("b", cpus(2), limit(30*time.Minute)))
		mustRun(t, h, s)
		h.Advance(30 * time.Minute)
		if err := h.Finish("b", StateCompleted); err != nil {
			t.Fatal(err)
		}
		h.Advance(30 * time.Minute)
		if err := h.Finish("r2", StateCompleted); err != nil {
			t.Fatal(err)
		}
		plan := mustRun(t, h, s)
		if got := startedIDs(plan); !slices.Equal(got, []string{"top"}) {
			t.Fatalf("at the reservation time started %v, want top", got)
		}
	})
	t.Run("long job may use what the reservation leaves over", func(t *testing.T) {
		h := NewHarness(t0, time.Hour)
		h.AddNode(node("n1", 8, 16))
		mustSubmit(t, h, job("r", cpus(6), limit(time.Hour)))
		s := newScheduler(t, Config{})
		mustRun(t, h, s)
		// top needs 7 of 8 cpus at +1h, leaving 1 cpu that a long job may hold through it.
		// Two cpus are free now, but the second long job would take top's seventh.
		mustSubmit(t, h, job("top", cpus(7), prio(5)), job("long", cpus(1), limit(5*time.Hour)),
			job("long2", cpus(1), limit(5*time.Hour)), job("short", cpus(1), limit(time.Hour)))
		plan := mustRun(t, h, s)
		if got := startedIDs(plan); !slices.Equal(got, []string{"long", "short"}) {
			t.Fatalf("started %v, want long and short", got)
		}
		if got := reasonOf(t, h, "long2"); got != "reserved for job top (backfill would delay it)" {
			t.Fatalf("long2 reason %q", got)
		}
	})
	t.Run("reservations per queue do not block other queues", func(t *testing.T) {
		h := NewHarness(t0, time.Hour)
		h.AddNode(node("a1", 4, 16))
		h.AddNode(node("b1", 4, 16))
		h.AddQueue(Queue{Name: "a", Nodes: []string{"a1"}})
		h.AddQueue(Queue{Name: "b", Nodes: []string{"b1"}})
		mustSubmit(t, h, job("ra", cpus(4), queue("a"), limit(time.Hour)), job("rb", cpus(2), queue("b"), limit(time.Hour)))
		s := newScheduler(t, Config{})
		mustRun(t, h, s)
		mustSubmit(t, h, job("topa", cpus(4), queue("a"), prio(9)), job("topb", cpus(4), queue("b"), prio(8)),
			job("smallb", cpus(2), queue("b"), limit(2*time.Hour)))
		plan := mustRun(t, h, s)
		if len(plan.Reservations) != 2 {
			t.Fatalf("reservations %+v, want one per queue", plan.Reservations)
		}
		if len(plan.Starts) != 0 || reasonOf(t, h, "smallb") != "reserved for job topb (backfill would delay it)" {
			t.Fatalf("starts %v, smallb reason %q", startedIDs(plan), reasonOf(t, h, "smallb"))
		}
	})
}

func TestBackfillDepthCap(t *testing.T) {
	h := NewHarness(t0, time.Hour)
	h.AddNode(node("n1", 2, 8))
	h.AddNode(node("n2", 2, 8))
	mustSubmit(t, h, job("big", cpus(2), limit(time.Hour)))
	s := newScheduler(t, Config{BackfillMaxJobTest: 2})
	mustRun(t, h, s)
	// Three jobs start on n2 before anything is blocked; they do not count against the cap.
	// The 5 after them have distinct shapes, so the failure cache cannot answer for them.
	mustSubmit(t, h, job("a", prio(1), memGiB(1)), job("b", prio(1), memGiB(1)), job("c", prio(1), cpus(2)))
	for i := 1; i <= 5; i++ {
		mustSubmit(t, h, job(fmt.Sprint(i), memGiB(int64(i))))
	}
	plan := mustRun(t, h, s)
	if got := startedIDs(plan); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("started %v, want a and b", got)
	}
	// c is the first blocked job, which starts backfill; backfill then examines 1 and 2.
	if plan.Stats.Examined != 5 || plan.Stats.NotExamined != 3 {
		t.Fatalf("stats %+v, want 5 examined and 3 not", plan.Stats)
	}
	if got := reasonOf(t, h, "5"); !strings.Contains(got, "examined its limit of 2 jobs") {
		t.Fatalf("reason %q", got)
	}
}

func TestReasonsAreOnlySentWhenChanged(t *testing.T) {
	h := NewHarness(t0, time.Hour)
	h.AddNode(node("n1", 1, 8))
	mustSubmit(t, h, job("1", limit(time.Hour)), job("2", limit(time.Hour)), job("3", held()))
	s := newScheduler(t, Config{})
	if plan := mustRun(t, h, s); len(plan.Reasons) != 2 {
		t.Fatalf("first pass reasons %+v, want two", plan.Reasons)
	}
	if plan := mustRun(t, h, s); len(plan.Reasons) != 0 {
		t.Fatalf("second pass resent unchanged reasons %+v", plan.Reasons)
	}
}

func TestInvalidJobWaitsWithReason(t *testing.T) {
	h := NewHarness(t0, time.Hour)
	h.AddNode(node("n1", 4, 8))
	bad := &Job{ID: "bad", State: StatePending, Tasks: 1}
	plan := newScheduler(t, Config{}).Pass(stateWithExtra{h, bad}, t0)
	if len(plan.Reasons) != 1 || !strings.HasPrefix(plan.Reasons[0].Reason, "invalid job: job bad asks for 0 cpus per task") {
		t.Fatalf("reasons %+v", plan.Reasons)
	}
}

// stateWithExtra adds a job the harness would refuse, to see how a pass treats it.
type stateWithExtra struct {
	*Harness
	extra *Job
}

func (s stateWithExtra) Jobs() []*Job { return append(slices.Clone(s.Harness.Jobs()), s.extra) }
