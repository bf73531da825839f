package sched

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// JobState is where a job is in its life. Only pending and running jobs matter to a pass; the
// rest are terminal and are seen through State.Lookup when other jobs depend on them.
type JobState string

// The job states. A job whose dependency can never be satisfied stays StatePending with a
// never-runnable reason, as Slurm does (DependencyNeverSatisfied), so that an administrator can
// still inspect or cancel it.
const (
	StatePending   JobState = "pending"
	StateRunning   JobState = "running"
	StateCompleted JobState = "completed"
	StateFailed    JobState = "failed"
	StateCancelled JobState = "cancelled"
	StateTimeout   JobState = "timeout"
	StateNodeFail  JobState = "node_fail"
)

// Terminal reports whether the job has ended for good.
func (s JobState) Terminal() bool {
	switch s {
	case StateCompleted, StateFailed, StateCancelled, StateTimeout, StateNodeFail:
		return true
	}
	return false
}

// Limits on a job's numbers. They keep every product the scheduler forms (cpus × tasks,
// memory × tasks) far from int64 overflow.
const (
	MaxTasks         = 1 << 16        // tasks in one job
	MaxCPUsPerTask   = 1 << 30        // millicores (about a million cpus)
	MaxMemoryPerTask = int64(1) << 46 // bytes (64 TiB)
	DefaultQueueName = "batch"        // the queue a job without --queue goes to
	millicoresPerCPU = 1000           // CPUs are counted in millicores
	maxOversubscribe = 64.0           // largest accepted Queue.Oversubscribe factor
)

// NodeTasks says how many of a job's tasks run on one node.
type NodeTasks struct {
	Node  string
	Tasks int
}

// Job is one schedulable unit. An array job is expanded into one Job per array element (see
// ExpandArray): element 7 of job 42 has ID "42_7", ArrayJobID "42" and ArrayTaskID 7.
type Job struct {
	ID              string
	ArrayJobID      string // the array's own id, "" when the job is not an array element
	ArrayTaskID     int
	ArrayMaxRunning int // the %N of the array spec; 0 means no limit

	Name  string
	User  string
	UID   uint32
	Queue string // "" means DefaultQueueName

	Priority   int // higher runs first
	SubmitTime time.Time

	CPUsPerTask   int64 // millicores
	MemoryPerTask int64 // bytes; 0 means the job asks for no memory and none is accounted
	// Nodes is the number of distinct nodes the tasks are spread over (--nodes). 0 lets the
	// scheduler pack the tasks onto as few nodes as fit; 1 keeps them all on one node.
	Nodes int
	Tasks int // all tasks start together or not at all (gang)

	// TimeLimit is the wall-clock limit. 0 means the queue's MaxTime, or Config.DefaultTimeLimit.
	// When the job starts the controller should store Start.TimeLimit here, so that later queue
	// changes do not move a running job's end.
	TimeLimit time.Duration

	After    []string // start only after all of these completed successfully
	AfterAny []string // start only after all of these ended, however they ended

	Hold    bool // held by its user or an administrator
	Requeue bool // put back to pending instead of node_fail when its node is lost

	State      JobState
	Reason     string      // why it is pending: written by the controller from Plan.Reasons
	StartTime  time.Time   // set while running
	Allocation []NodeTasks // set while running
}

// TotalCPUs is the job's whole cpu request in millicores.
func (j *Job) TotalCPUs() int64 { return j.CPUsPerTask * int64(j.Tasks) }

// QueueName is the job's queue, with the default filled in.
func (j *Job) QueueName() string {
	if j.Queue == "" {
		return DefaultQueueName
	}
	return j.Queue
}

// Validate checks the fields a pass relies on. The controller should call it at submit time;
// a pass that meets an invalid job leaves it pending with the error as its reason.
func (j *Job) Validate() error {
	switch {
	case j.ID == "":
		return fmt.Errorf("job has no id: the controller must assign one before scheduling")
	case j.CPUsPerTask <= 0:
		return fmt.Errorf("job %s asks for %s cpus per task: request more than zero (--cpus)", j.ID, FormatCPUs(j.CPUsPerTask))
	case j.CPUsPerTask > MaxCPUsPerTask:
		return fmt.Errorf("job %s asks for %s cpus per task: the most is %s", j.ID, FormatCPUs(j.CPUsPerTask), FormatCPUs(MaxCPUsPerTask))
	case j.MemoryPerTask < 0 || j.MemoryPerTask > MaxMemoryPerTask:
		return fmt.Errorf("job %s asks for %d bytes of memory per task: use 0 to %s (--mem)", j.ID, j.MemoryPerTask, FormatSize(MaxMemoryPerTask))
	case j.Tasks < 1 || j.Tasks > MaxTasks:
		return fmt.Errorf("job %s has %d tasks: use 1 to %d (--tasks)", j.ID, j.Tasks, MaxTasks)
	case j.Nodes < 0 || j.Nodes > j.Tasks:
		return fmt.Errorf("job %s asks for %d nodes for %d tasks: each node needs a task, so use --nodes of at most --tasks", j.ID, j.Nodes, j.Tasks)
	case j.TimeLimit < 0:
		return fmt.Errorf("job %s has a negative time limit: use a positive --time", j.ID)
	case j.ArrayMaxRunning < 0:
		return fmt.Errorf("job %s has array limit %%%d: use %%1 or more", j.ID, j.ArrayMaxRunning)
	}
	return nil
}

// ExpandArray makes one pending Job per index of spec from template, which carries the array's
// own id and every other field. Each element is scheduled on its own; ArrayMaxRunning bounds how
// many run at once.
func ExpandArray(template Job, spec ArraySpec) []Job {
	indices := spec.Indices()
	jobs := make([]Job, 0, len(indices))
	for _, idx := range indices {
		j := template
		j.ID = template.ID + "_" + strconv.Itoa(idx)
		j.ArrayJobID = template.ID
		j.ArrayTaskID = idx
		j.ArrayMaxRunning = spec.MaxRunning
		j.After = append([]string(nil), template.After...)
		j.AfterAny = append([]string(nil), template.AfterAny...)
		jobs = append(jobs, j)
	}
	return jobs
}

// CombineArrayStates is the state an array as a whole is in, for dependencies on the array's
// own id: completed only when every element completed; otherwise the first non-success ending
// once all ended; otherwise running if any element runs, else pending.
func CombineArrayStates(states []JobState) JobState {
	if len(states) == 0 {
		return StatePending
	}
	running, unfinished := false, false
	var failure JobState
	for _, s := range states {
		switch {
		case s == StateRunning:
			running = true
		case !s.Terminal():
			unfinished = true
		case s != StateCompleted && failure == "":
			failure = s
		}
	}
	switch {
	case running:
		return StateRunning
	case unfinished:
		return StatePending
	case failure != "":
		return failure
	}
	return StateCompleted
}

// jobIDKey orders ids numerically: "9" < "42" < "42_7" < "42_10" < "43". Ids that are not
// numbers sort after numeric ones, by text.
type jobIDKey struct {
	numeric bool
	num     uint64
	index   int64 // -1 for a plain job, the array index for an element
}

func parseJobIDKey(id string) jobIDKey {
	base, idx, isElem := strings.Cut(id, "_")
	num, err := strconv.ParseUint(base, 10, 64)
	if err != nil {
		return jobIDKey{}
	}
	k := jobIDKey{numeric: true, num: num, index: -1}
	if isElem {
		i, err := strconv.ParseInt(idx, 10, 64)
		if err != nil || i < 0 {
			return jobIDKey{}
		}
		k.index = i
	}
	return k
}
