package sched

import (
	"fmt"
	"slices"
	"time"
)

// Harness is an in-memory cluster that implements State and applies plans the way the
// controller will, so tests (here and in the controller's package) can drive the scheduler
// through many passes without etcd. It is not safe for concurrent use.
type Harness struct {
	now    time.Time
	nodes  []Node
	queues []Queue
	jobs   []*Job // in submission order
	byID   map[string]*Job
	arrays map[string][]*Job
	usage  *Usage
	plans  []Plan
}

// NewHarness starts an empty cluster at now whose fair-share usage halves every halfLife.
func NewHarness(now time.Time, halfLife time.Duration) *Harness {
	return &Harness{now: now, byID: make(map[string]*Job), arrays: make(map[string][]*Job), usage: NewUsage(halfLife)}
}

// Now is the harness clock.
func (h *Harness) Now() time.Time { return h.now }

// Advance moves the clock forward.
func (h *Harness) Advance(d time.Duration) { h.now = h.now.Add(d) }

// AddNode adds n, or replaces the node of the same name.
func (h *Harness) AddNode(n Node) {
	for i := range h.nodes {
		if h.nodes[i].Name == n.Name {
			h.nodes[i] = n
			return
		}
	}
	h.nodes = append(h.nodes, n)
}

// SetNode changes the named node in place.
func (h *Harness) SetNode(name string, change func(*Node)) error {
	for i := range h.nodes {
		if h.nodes[i].Name == name {
			change(&h.nodes[i])
			return nil
		}
	}
	return fmt.Errorf("harness has no node %s: add it with AddNode first", name)
}

// AddQueue adds q, or replaces the queue of the same name.
func (h *Harness) AddQueue(q Queue) {
	for i := range h.queues {
		if h.queues[i].Name == q.Name {
			h.queues[i] = q
			return
		}
	}
	h.queues = append(h.queues, q)
}

// Submit adds pending jobs. A zero SubmitTime becomes the harness clock.
func (h *Harness) Submit(jobs ...Job) error {
	for _, j := range jobs {
		if err := j.Validate(); err != nil {
			return fmt.Errorf("harness submit: %w", err)
		}
		if _, dup := h.byID[j.ID]; dup {
			return fmt.Errorf("harness submit: job %s already exists: give each job its own id", j.ID)
		}
		j.State = StatePending
		if j.SubmitTime.IsZero() {
			j.SubmitTime = h.now
		}
		stored := j
		h.jobs = append(h.jobs, &stored)
		h.byID[j.ID] = &stored
		if j.ArrayJobID != "" {
			h.arrays[j.ArrayJobID] = append(h.arrays[j.ArrayJobID], &stored)
		}
	}
	return nil
}

// Job returns the stored job, or nil.
func (h *Harness) Job(id string) *Job { return h.byID[id] }

// UsageTable is the fair-share table, for tests that preload usage.
func (h *Harness) UsageTable() *Usage { return h.usage }

// Plans is every plan Run applied, oldest first.
func (h *Harness) Plans() []Plan { return h.plans }

// Finish ends a running job in state (completed, failed, cancelled…) at the harness clock and
// charges its cpu-seconds to its user. A pending job may only be cancelled.
func (h *Harness) Finish(id string, state JobState) error {
	j := h.byID[id]
	switch {
	case j == nil:
		return fmt.Errorf("harness finish: no job %s", id)
	case !state.Terminal():
		return fmt.Errorf("harness finish: %s is not an end state: use completed, failed, cancelled, timeout or node_fail", state)
	case j.State == StatePending && state != StateCancelled:
		return fmt.Errorf("harness finish: job %s never ran, so it can only be cancelled", id)
	case j.State.Terminal():
		return fmt.Errorf("harness finish: job %s already ended as %s", id, j.State)
	}
	if j.State == StateRunning {
		h.usage.Add(j.User, float64(j.TotalCPUs())/millicoresPerCPU*h.now.Sub(j.StartTime).Seconds(), h.now)
	}
	j.State = state
	j.Reason = ""
	j.Allocation = nil
	return nil
}

// Run makes one pass at the harness clock, applies the plan and returns it.
func (h *Harness) Run(s *Scheduler) (Plan, error) {
	plan := s.Pass(h, h.now)
	if err := h.Apply(plan); err != nil {
		return plan, err
	}
	return plan, nil
}

// Apply carries out a plan as the controller would: ends first, then starts, then reasons.
// It refuses a plan that starts a job twice, starts a non-pending job, or names unknown nodes.
func (h *Harness) Apply(plan Plan) error {
	for _, e := range plan.Ends {
		j := h.byID[e.JobID]
		if j == nil || j.State != StateRunning {
			return fmt.Errorf("harness apply: plan ends job %s, which is not running", e.JobID)
		}
		if e.Requeue {
			j.State, j.Allocation, j.StartTime = StatePending, nil, time.Time{}
			j.Reason = "requeued: " + e.Reason
			continue
		}
		if err := h.Finish(e.JobID, e.State); err != nil {
			return fmt.Errorf("harness apply: %w", err)
		}
	}
	for _, st := range plan.Starts {
		j := h.byID[st.JobID]
		if j == nil || j.State != StatePending {
			return fmt.Errorf("harness apply: plan starts job %s, which is not pending", st.JobID)
		}
		for _, nt := range st.Nodes {
			if !slices.ContainsFunc(h.nodes, func(n Node) bool { return n.Name == nt.Node }) {
				return fmt.Errorf("harness apply: plan puts job %s on unknown node %s", st.JobID, nt.Node)
			}
		}
		j.State, j.StartTime, j.TimeLimit, j.Reason = StateRunning, plan.Now, st.TimeLimit, ""
		j.Allocation = slices.Clone(st.Nodes)
	}
	for _, r := range plan.Reasons {
		if j := h.byID[r.JobID]; j != nil && j.State == StatePending {
			j.Reason = r.Reason
		}
	}
	h.plans = append(h.plans, plan)
	return nil
}

// Nodes implements State.
func (h *Harness) Nodes() []Node { return h.nodes }

// Queues implements State.
func (h *Harness) Queues() []Queue { return h.queues }

// Jobs implements State.
func (h *Harness) Jobs() []*Job { return h.jobs }

// Lookup implements State, combining array elements for an array's own id.
func (h *Harness) Lookup(id string) (JobState, bool) {
	if j, ok := h.byID[id]; ok {
		return j.State, true
	}
	if elems, ok := h.arrays[id]; ok {
		states := make([]JobState, len(elems))
		for i, e := range elems {
			states[i] = e.State
		}
		return CombineArrayStates(states), true
	}
	return "", false
}

// Usage implements State.
func (h *Harness) Usage(user string, at time.Time) float64 { return h.usage.Get(user, at) }

// NodeLoad is what runs on a node: the sum of its running jobs' allocations.
type NodeLoad struct {
	CPUs, Memory int64
	Jobs         int
}

// Load sums the running jobs' allocations per node, which is how a pass sees "allocated".
func (h *Harness) Load() map[string]NodeLoad {
	out := make(map[string]NodeLoad)
	for _, j := range h.jobs {
		if j.State != StateRunning {
			continue
		}
		for _, a := range j.Allocation {
			l := out[a.Node]
			l.CPUs += j.CPUsPerTask * int64(a.Tasks)
			l.Memory += j.MemoryPerTask * int64(a.Tasks)
			l.Jobs++
			out[a.Node] = l
		}
	}
	return out
}
