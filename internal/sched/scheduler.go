package sched

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// State is the read-only snapshot a pass decides on. The pass never modifies what it returns.
type State interface {
	// Nodes is every known node, alive or not.
	Nodes() []Node
	// Queues is the configured queues; empty means one unlimited DefaultQueueName queue.
	Queues() []Queue
	// Jobs must hold every pending and running job; jobs in other states are ignored.
	Jobs() []*Job
	// Lookup is the state of any job a dependency names, finished ones included, and false
	// when the id is unknown. For an array's own id it must return the combined state of its
	// elements (CombineArrayStates).
	Lookup(id string) (JobState, bool)
	// Usage is a user's decayed cpu-seconds as of at (see Usage.Get).
	Usage(user string, at time.Time) float64
}

// Placement chooses among the nodes a job fits on.
type Placement int

const (
	// BestFit puts work on the node it fills most: the fewest cpus left over, then the least
	// memory. It keeps whole nodes free for wide jobs, which suits batch work.
	BestFit Placement = iota
	// LeastLoaded puts work on the node with the largest share of its cpus free, which spreads
	// load and suits interactive work.
	LeastLoaded
)

// Config tunes the scheduler. The zero value means the documented defaults.
type Config struct {
	// DefaultTimeLimit applies to jobs that set no limit in a queue without MaxTime. It is
	// enforced like any limit, and gives backfill an end time to plan with. Default 24h.
	DefaultTimeLimit time.Duration
	// BackfillMaxJobTest caps how many jobs a pass examines once a job has been blocked for
	// resources, like Slurm's bf_max_job_test; later jobs keep waiting with a reason that says
	// so. Jobs answered from the per-pass cache of failed shapes do not count. Default 10,000.
	BackfillMaxJobTest int
	// MaxReservations caps EASY reservations per pass. Each queue's first blocked job gets one
	// while this allows; reservations never share nodes. Default 16.
	MaxReservations int
	// Placement is the node choice policy; the zero value is BestFit.
	Placement Placement
}

// DefaultTimeLimit is Config.DefaultTimeLimit when the config leaves it 0.
const DefaultTimeLimit = 24 * time.Hour

const (
	defaultBackfillMaxJobTest = 10_000
	defaultMaxReservations    = 16
	maxNodeCPUs               = int64(1) << 40 // node sizes beyond these are clamped
	maxNodeMemory             = int64(1) << 62
)

// Scheduler makes placement decisions. It holds only its configuration, so one value may be
// used from several goroutines.
type Scheduler struct {
	cfg Config
}

// New checks cfg and fills in defaults.
func New(cfg Config) (*Scheduler, error) {
	switch {
	case cfg.DefaultTimeLimit < 0:
		return nil, fmt.Errorf("scheduler default time limit is negative: use 0 (24h) or a positive duration")
	case cfg.BackfillMaxJobTest < 0:
		return nil, fmt.Errorf("scheduler backfill max job test is negative: use 0 (%d) or more", defaultBackfillMaxJobTest)
	case cfg.MaxReservations < 0:
		return nil, fmt.Errorf("scheduler max reservations is negative: use 0 (%d) or more", defaultMaxReservations)
	case cfg.Placement != BestFit && cfg.Placement != LeastLoaded:
		return nil, fmt.Errorf("scheduler placement %d is unknown: use BestFit or LeastLoaded", cfg.Placement)
	}
	if cfg.DefaultTimeLimit == 0 {
		cfg.DefaultTimeLimit = DefaultTimeLimit
	}
	if cfg.BackfillMaxJobTest == 0 {
		cfg.BackfillMaxJobTest = defaultBackfillMaxJobTest
	}
	if cfg.MaxReservations == 0 {
		cfg.MaxReservations = defaultMaxReservations
	}
	return &Scheduler{cfg: cfg}, nil
}

// Config is the configuration in force, defaults filled in.
func (s *Scheduler) Config() Config { return s.cfg }

// Pass decides, at time now, which pending jobs start where, which running jobs must end, and
// why every other pending job waits. It reads st and returns a plan; it changes nothing.
func (s *Scheduler) Pass(st State, now time.Time) Plan {
	p := &pass{
		cfg:          s.cfg,
		state:        st,
		now:          now,
		nowNs:        now.UnixNano(),
		arrayRunning: make(map[string]int),
		userCPU:      make(map[userQueue]int64),
		memo:         make(map[shapeKey]*shapeMemo),
		usage:        make(map[string]float64),
	}
	p.plan.Now = now
	p.buildNodes(st.Nodes())
	p.buildQueues(st.Queues())
	pending := p.accountJobs(st.Jobs())
	p.deps = newDepResolver(st, pending)
	entries := p.order(pending)
	for i := range entries {
		p.consider(entries[i].job)
	}
	return p.plan
}

// nodeView is a node during a pass: capacity, what is in use, and the reservation if any.
type nodeView struct {
	name             string
	capCPU, capMem   int64
	usedCPU, usedMem int64
	alive, draining  bool
	drainReason      string
	// resv indexes pass.resv, or is -1. A job that would still run at resvAt may take on this
	// node no more than spareCPU/spareMem, which is what the reservation leaves over then.
	resv               int
	resvAt             int64
	spareCPU, spareMem int64
}

type queueView struct {
	name       string
	over       int64 // oversubscription in thousandths
	maxRunning int
	maxUserCPU int64
	maxTime    time.Duration
	all        []int // every known node of the queue, by name
	usable     []int // alive and not draining
	// maxCapCPU/maxCapMem are the largest node (in this queue's terms), for "never fits".
	maxCapCPU, maxCapMem int64
	// boundCPU/boundMem are at least the largest free amounts on a usable node. Each failed
	// search makes them exact; allocations only lower the truth, so they stay valid bounds.
	boundCPU, boundMem int64
	running            int
	resvTried          bool
}

// cpuCap is n's cpu capacity as jobs of q see it.
func (q *queueView) cpuCap(n *nodeView) int64 { return n.capCPU * q.over / 1000 }

// allocation is a running job's hold on one node until end, for finding reservation times.
type allocation struct {
	node     int
	cpu, mem int64
	end      int64
}

type userQueue struct {
	user  string
	queue int
}

// shape is what a placement search depends on besides capacity.
type shape struct {
	cpu, mem     int64 // per task
	tasks, nodes int
}

type shapeKey struct {
	queue    int
	cpu, mem int64
	tasks    int
	nodes    int
}

// shapeMemo remembers why a shape failed in this pass. Capacity only shrinks and reservations
// only add limits during a pass, so a failure stays a failure for the rest of it.
type shapeMemo struct {
	noFit      string // set: it cannot be placed now at all
	blockedEnd int64  // jobs of this shape ending at or after this would delay a reservation
	blocked    string
}

type reservation struct {
	job *Job
	at  int64
}

type pass struct {
	cfg          Config
	state        State
	now          time.Time
	nowNs        int64
	nodes        []nodeView
	nodeByName   map[string]int
	queues       []queueView
	queueByName  map[string]int
	allocs       []allocation
	arrayRunning map[string]int
	userCPU      map[userQueue]int64
	memo         map[shapeKey]*shapeMemo
	usage        map[string]float64
	resv         []reservation
	deps         *depResolver
	backfilling  bool // a job has been blocked for resources: later starts are backfill
	// examinedBeforeBackfill is Stats.Examined when backfilling began; the depth cap counts
	// only what backfill examined.
	examinedBeforeBackfill int
	plan                   Plan
	cands                  []candidate // search buffers, reused across jobs
	picked                 []candidate
}

func (p *pass) buildNodes(nodes []Node) {
	sorted := slices.Clone(nodes)
	slices.SortStableFunc(sorted, func(a, b Node) int { return strings.Compare(a.Name, b.Name) })
	sorted = slices.CompactFunc(sorted, func(a, b Node) bool { return a.Name == b.Name })
	p.nodes = make([]nodeView, len(sorted))
	p.nodeByName = make(map[string]int, len(sorted))
	for i, n := range sorted {
		p.nodes[i] = nodeView{
			name:        n.Name,
			capCPU:      min(max(n.CPUs, 0), maxNodeCPUs),
			capMem:      min(max(n.Memory, 0), maxNodeMemory),
			alive:       n.Alive,
			draining:    n.Draining,
			drainReason: n.DrainReason,
			resv:        -1,
		}
		p.nodeByName[n.Name] = i
	}
}

func (p *pass) buildQueues(queues []Queue) {
	if len(queues) == 0 {
		queues = []Queue{{Name: DefaultQueueName}}
	}
	p.queueByName = make(map[string]int, len(queues))
	for _, q := range queues {
		if _, dup := p.queueByName[q.Name]; dup {
			continue
		}
		qv := queueView{
			name:       q.Name,
			over:       q.oversubscribeMilli(),
			maxRunning: max(q.MaxRunningJobs, 0),
			maxUserCPU: max(q.MaxCPUsPerUser, 0),
			maxTime:    max(q.MaxTime, 0),
			boundCPU:   math.MaxInt64,
			boundMem:   math.MaxInt64,
		}
		if len(q.Nodes) == 0 {
			for i := range p.nodes {
				qv.all = append(qv.all, i)
			}
		} else {
			// Names of nodes that have not joined yet are skipped: they may join later.
			for _, name := range q.Nodes {
				if i, ok := p.nodeByName[name]; ok {
					qv.all = append(qv.all, i)
				}
			}
			slices.Sort(qv.all)
			qv.all = slices.Compact(qv.all)
		}
		for _, i := range qv.all {
			n := &p.nodes[i]
			qv.maxCapCPU = max(qv.maxCapCPU, qv.cpuCap(n))
			qv.maxCapMem = max(qv.maxCapMem, n.capMem)
			if n.alive && !n.draining {
				qv.usable = append(qv.usable, i)
			}
		}
		p.queueByName[q.Name] = len(p.queues)
		p.queues = append(p.queues, qv)
	}
}

// effectiveLimit is the time limit a job runs under: its own, its queue's max, or the default.
func (p *pass) effectiveLimit(j *Job, queue int) time.Duration {
	var queueMax time.Duration
	if queue >= 0 {
		queueMax = p.queues[queue].maxTime
	}
	return EffectiveTimeLimit(j.TimeLimit, queueMax, p.cfg.DefaultTimeLimit)
}

// EffectiveTimeLimit is the limit a job runs under: its own (own > 0), else its queue's
// maximum (queueMax > 0), else the default. Exported so that a pending job can show the limit
// it will get before a pass fixes it.
func EffectiveTimeLimit(own, queueMax, def time.Duration) time.Duration {
	switch {
	case own > 0:
		return own
	case queueMax > 0:
		return queueMax
	}
	return def
}

func (p *pass) queueIndex(j *Job) int {
	if i, ok := p.queueByName[j.QueueName()]; ok {
		return i
	}
	return -1
}

// accountJobs charges running jobs to their nodes, queues, users and arrays, flags the ones to
// end, and returns the pending jobs.
func (p *pass) accountJobs(jobs []*Job) []*Job {
	var pending []*Job
	for _, j := range jobs {
		switch j.State {
		case StatePending:
			pending = append(pending, j)
		case StateRunning:
			p.accountRunning(j)
		}
	}
	p.plan.Stats.Pending = len(pending)
	return pending
}

func (p *pass) accountRunning(j *Job) {
	p.plan.Stats.Running++
	qi := p.queueIndex(j)
	limit := p.effectiveLimit(j, qi)
	start := j.StartTime
	if start.IsZero() {
		start = p.now
	}
	end := start.Add(limit)
	lost := ""
	for _, a := range j.Allocation {
		ni, ok := p.nodeByName[a.Node]
		if !ok || !p.nodes[ni].alive {
			if lost == "" {
				lost = a.Node
			}
			continue
		}
		n := &p.nodes[ni]
		cpu, mem := j.CPUsPerTask*int64(a.Tasks), j.MemoryPerTask*int64(a.Tasks)
		n.usedCPU += cpu
		n.usedMem += mem
		// An overdue job still holds its resources until it is gone; plan as if that is now.
		p.allocs = append(p.allocs, allocation{node: ni, cpu: cpu, mem: mem, end: max(end.UnixNano(), p.nowNs)})
	}
	switch {
	case lost != "":
		p.plan.Ends = append(p.plan.Ends, End{JobID: j.ID, State: StateNodeFail, Requeue: j.Requeue,
			Reason: fmt.Sprintf("node %s is down or gone", lost)})
	case p.now.After(end):
		p.plan.Ends = append(p.plan.Ends, End{JobID: j.ID, State: StateTimeout,
			Reason: "reached its time limit of " + FormatTimeLimit(limit)})
	}
	if qi >= 0 {
		p.queues[qi].running++
		p.userCPU[userQueue{j.User, qi}] += j.TotalCPUs()
	}
	if j.ArrayJobID != "" {
		p.arrayRunning[j.ArrayJobID]++
	}
}

type pendingEntry struct {
	job    *Job
	usage  float64
	submit int64
	id     jobIDKey
}

// order sorts pending jobs: priority (higher first), then the user's decayed usage (lower
// first, which is fair-share), then submit time, then id.
func (p *pass) order(pending []*Job) []pendingEntry {
	entries := make([]pendingEntry, len(pending))
	for i, j := range pending {
		u, ok := p.usage[j.User]
		if !ok {
			u = p.state.Usage(j.User, p.now)
			if math.IsNaN(u) {
				u = 0
			}
			p.usage[j.User] = u
		}
		entries[i] = pendingEntry{job: j, usage: u, submit: j.SubmitTime.UnixNano(), id: parseJobIDKey(j.ID)}
	}
	slices.SortFunc(entries, comparePending)
	return entries
}

func comparePending(a, b pendingEntry) int {
	if c := cmp.Compare(b.job.Priority, a.job.Priority); c != 0 {
		return c
	}
	if c := cmp.Compare(a.usage, b.usage); c != 0 {
		return c
	}
	if c := cmp.Compare(a.submit, b.submit); c != 0 {
		return c
	}
	if a.id.numeric != b.id.numeric {
		if a.id.numeric {
			return -1
		}
		return 1
	}
	if a.id.numeric {
		if c := cmp.Compare(a.id.num, b.id.num); c != 0 {
			return c
		}
		if c := cmp.Compare(a.id.index, b.id.index); c != 0 {
			return c
		}
	}
	return strings.Compare(a.job.ID, b.job.ID)
}

// wait records why j stays pending, if that changed.
func (p *pass) wait(j *Job, reason string, never bool) {
	if reason != j.Reason {
		p.plan.Reasons = append(p.plan.Reasons, ReasonUpdate{JobID: j.ID, Reason: reason, NeverRunnable: never})
	}
}

// consider runs one pending job through the filters (validity, hold, dependencies, queue
// limits), then the fit search, and either starts it or records why it waits.
func (p *pass) consider(j *Job) {
	if err := j.Validate(); err != nil {
		p.wait(j, "invalid job: "+err.Error(), false)
		return
	}
	if j.Hold {
		p.wait(j, "held by user", false)
		return
	}
	if dep := p.deps.resolve(j); dep.reason != "" {
		p.wait(j, dep.reason, dep.never)
		return
	}
	qi := p.queueIndex(j)
	if qi < 0 {
		p.wait(j, fmt.Sprintf("queue %s does not exist: resubmit to an existing queue such as %s", j.QueueName(), p.queues[0].name), false)
		return
	}
	q := &p.queues[qi]
	if q.maxTime > 0 && j.TimeLimit > q.maxTime {
		p.wait(j, fmt.Sprintf("time limit %s is over queue %s's max time %s: lower --time",
			FormatTimeLimit(j.TimeLimit), q.name, FormatTimeLimit(q.maxTime)), false)
		return
	}
	if j.ArrayJobID != "" && j.ArrayMaxRunning > 0 && p.arrayRunning[j.ArrayJobID] >= j.ArrayMaxRunning {
		p.wait(j, fmt.Sprintf("array limit %%%d reached", j.ArrayMaxRunning), false)
		return
	}
	if q.maxRunning > 0 && q.running >= q.maxRunning {
		p.wait(j, fmt.Sprintf("queue %s at its running-job limit (%d)", q.name, q.maxRunning), false)
		return
	}
	if q.maxUserCPU > 0 {
		if j.TotalCPUs() > q.maxUserCPU {
			p.wait(j, fmt.Sprintf("needs %s cpus, over queue %s's per-user limit of %s: ask for fewer",
				FormatCPUs(j.TotalCPUs()), q.name, FormatCPUs(q.maxUserCPU)), false)
			return
		}
		if p.userCPU[userQueue{j.User, qi}]+j.TotalCPUs() > q.maxUserCPU {
			p.wait(j, fmt.Sprintf("user %s at queue %s's cpu limit (%s cpus)", j.User, q.name, FormatCPUs(q.maxUserCPU)), false)
			return
		}
	}

	limit := p.effectiveLimit(j, qi)
	end := p.nowNs + int64(limit)
	s := shape{cpu: j.CPUsPerTask, mem: j.MemoryPerTask, tasks: j.Tasks, nodes: j.Nodes}
	key := shapeKey{queue: qi, cpu: s.cpu, mem: s.mem, tasks: s.tasks, nodes: s.nodes}
	memo := p.memo[key]
	if memo != nil {
		if memo.noFit != "" {
			p.wait(j, memo.noFit, false)
			return
		}
		if end >= memo.blockedEnd {
			p.wait(j, memo.blocked, false)
			return
		}
	} else {
		memo = &shapeMemo{blockedEnd: math.MaxInt64}
		p.memo[key] = memo
	}
	if p.backfilling && p.plan.Stats.Examined-p.examinedBeforeBackfill >= p.cfg.BackfillMaxJobTest {
		p.plan.Stats.NotExamined++
		p.wait(j, fmt.Sprintf("waiting behind higher-priority jobs: this pass examined its limit of %d jobs", p.cfg.BackfillMaxJobTest), false)
		return
	}
	p.plan.Stats.Examined++

	if reason := p.neverFits(qi, s); reason != "" {
		memo.noFit = reason
		p.wait(j, reason, false)
		return
	}
	// The bound check answers most misses on a full cluster without a search.
	withinBound := s.cpu <= q.boundCPU && s.mem <= q.boundMem
	if withinBound {
		if placed, ok := p.place(q.usable, s, p.capacity(qi, end)); ok {
			p.start(j, qi, placed, limit, end)
			return
		}
	}
	// Without reservations the search above was already the unconstrained one.
	rawFits := false
	if withinBound && len(p.resv) > 0 {
		_, rawFits = p.place(q.usable, s, p.capacity(qi, -1))
	}
	var reason string
	if rawFits {
		reason = p.blockedReason(qi, s, end)
		memo.blockedEnd = min(memo.blockedEnd, end)
		memo.blocked = reason
	} else {
		reason = p.resourceReason(qi, s)
		memo.noFit = reason
	}
	if !p.backfilling {
		p.backfilling = true
		p.examinedBeforeBackfill = p.plan.Stats.Examined
	}
	if !q.resvTried && len(p.resv) < p.cfg.MaxReservations {
		q.resvTried = true
		if r, ok := p.reserve(j, qi, s); ok {
			reason += fmt.Sprintf("; expected to start by %s on %s",
				r.Start.UTC().Format(time.RFC3339), nodeList(r.Nodes))
			p.plan.Reservations = append(p.plan.Reservations, r)
		}
	}
	p.wait(j, reason, false)
}

// capacity returns what node n has free for a job of queue qi ending at end. When end is
// after a reservation on n, the job may also take no more than the reservation leaves over:
// that is the EASY backfill rule. An end of -1 ignores reservations.
func (p *pass) capacity(qi int, end int64) func(n int) (int64, int64) {
	q := &p.queues[qi]
	return func(i int) (int64, int64) {
		n := &p.nodes[i]
		cpu, mem := q.cpuCap(n)-n.usedCPU, n.capMem-n.usedMem
		if end >= 0 && n.resv >= 0 && end > n.resvAt {
			cpu, mem = min(cpu, n.spareCPU), min(mem, n.spareMem)
		}
		return cpu, mem
	}
}

func (p *pass) start(j *Job, qi int, placed []candidate, limit time.Duration, end int64) {
	st := Start{JobID: j.ID, TimeLimit: limit, Backfilled: p.backfilling, Nodes: make([]NodeTasks, len(placed))}
	for i, c := range placed {
		n := &p.nodes[c.node]
		cpu, mem := j.CPUsPerTask*int64(c.fit), j.MemoryPerTask*int64(c.fit)
		n.usedCPU += cpu
		n.usedMem += mem
		if n.resv >= 0 && end > n.resvAt {
			n.spareCPU -= cpu
			n.spareMem -= mem
		}
		p.allocs = append(p.allocs, allocation{node: c.node, cpu: cpu, mem: mem, end: end})
		st.Nodes[i] = NodeTasks{Node: n.name, Tasks: c.fit}
	}
	p.plan.Starts = append(p.plan.Starts, st)
	p.plan.Stats.Started++
	if p.backfilling {
		p.plan.Stats.Backfilled++
	}
	p.queues[qi].running++
	p.userCPU[userQueue{j.User, qi}] += j.TotalCPUs()
	if j.ArrayJobID != "" {
		p.arrayRunning[j.ArrayJobID]++
	}
}

func nodeList(nodes []NodeTasks) string {
	const shown = 3
	names := make([]string, 0, shown)
	for i, n := range nodes {
		if i == shown {
			return strings.Join(names, ",") + fmt.Sprintf(" and %d more", len(nodes)-shown)
		}
		names = append(names, n.Node)
	}
	return strings.Join(names, ",")
}
