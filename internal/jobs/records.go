package jobs

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/ssi-cluster/ssi/internal/sched"
)

// The records below are stored as JSON so that etcdctl shows them readably. Field names are
// part of the on-disk format: rename with care.

// jobSpec is what the user submitted. It never changes after submit.
type jobSpec struct {
	Name        string    `json:"name"`
	User        string    `json:"user"`
	UID         uint32    `json:"uid"`
	GID         uint32    `json:"gid"`
	Groups      []uint32  `json:"groups,omitempty"`
	Umask       int       `json:"umask"`
	SubmitNode  string    `json:"submit_node"`
	Submit      time.Time `json:"submit"`
	Args        []string  `json:"args,omitempty"`
	Script      []byte    `json:"script,omitempty"`
	ScriptName  string    `json:"script_name,omitempty"`
	Cwd         string    `json:"cwd"`
	Env         []string  `json:"env,omitempty"`
	CPUs        int64     `json:"cpus_milli"` // per task
	Memory      int64     `json:"mem_bytes"`  // per task
	Nodes       int       `json:"nodes"`
	Tasks       int       `json:"tasks"`
	TimeLimit   int64     `json:"time_limit_s,omitempty"`
	Queue       string    `json:"queue"`
	Priority    int       `json:"priority,omitempty"`
	Array       string    `json:"array,omitempty"` // canonical sched.ArraySpec text
	After       []string  `json:"after,omitempty"`
	AfterAny    []string  `json:"after_any,omitempty"`
	Output      string    `json:"output"` // absolute path pattern
	Error       string    `json:"error,omitempty"`
	Requeue     bool      `json:"requeue"`
	NoKill      bool      `json:"no_kill,omitempty"`
	Interactive bool      `json:"interactive,omitempty"`
	// Rlimits are the submitter's resource limits, which the job's processes start with.
	Rlimits []rlimitRecord `json:"rlimits,omitempty"`
}

// rlimitRecord is one resource limit of a job (see proc.Rlimit).
type rlimitRecord struct {
	Resource   int    `json:"resource"`
	Cur        uint64 `json:"cur"`
	Max        uint64 `json:"max"`
	CurUnknown bool   `json:"cur_unknown,omitempty"`
}

// stamp says who did something when.
type stamp struct {
	At  time.Time `json:"at"`
	UID uint32    `json:"uid"`
}

// signalRequest is a user's ssi cancel -s, to be delivered to the running tasks it names.
type signalRequest struct {
	Seq    int   `json:"seq"`
	Signal int   `json:"signal"`
	Index  int   `json:"index"` // array element, or -1 for every running task of the job
	At     stamp `json:"stamp"`
}

// jobRecord is an active job: its spec plus what users changed since (hold, cancel, signals).
// It lives at job/<id> while any of its tasks may still run, then moves to hist/<id>.
type jobRecord struct {
	ID            string          `json:"id"`
	Spec          jobSpec         `json:"spec"`
	Hold          bool            `json:"hold,omitempty"`
	HeldIndices   []int           `json:"held_indices,omitempty"`
	Cancel        *stamp          `json:"cancel,omitempty"`
	CancelIndices map[int]stamp   `json:"cancel_indices,omitempty"`
	Signals       []signalRequest `json:"signals,omitempty"`
	Events        []string        `json:"events,omitempty"` // accounting trail of user changes
	// Final is set once the job moved to hist/: its combined end state.
	Final *finalState `json:"final,omitempty"`
	// ReleasedIndices are elements of a wholly held array (Hold) released one by one, as
	// scontrol release 42_7 does: stored as exceptions, so that releasing one element of a
	// 100,000-element array does not list the other 99,999.
	ReleasedIndices []int `json:"released_indices,omitempty"`
}

type finalState struct {
	State sched.JobState `json:"state"`
	End   time.Time      `json:"end"`
	// CancelledPending lists the array elements (as an array spec) cancelled before they ran,
	// which have no done record.
	CancelledPending string `json:"cancelled_pending,omitempty"`
}

// nodeTasks is how many tasks of a job run on one node.
type nodeTasks struct {
	Node  string `json:"node"`
	Tasks int    `json:"tasks"`
}

// allocRecord tells a node to run (its share of) a task. The leader creates it; the node's
// executor deletes it when it reports the end (and rewrites it when the task restarts in
// place after exit 85).
type allocRecord struct {
	Task        string      `json:"task"`
	Job         string      `json:"job"`
	Index       int         `json:"index"` // array element, -1 for a plain job
	Nodes       []nodeTasks `json:"nodes"` // the whole allocation, by node name
	Start       time.Time   `json:"start"`
	TimeLimit   int64       `json:"time_limit_s"`
	Attempt     int         `json:"attempt"` // earlier runs that were requeued
	Interactive bool        `json:"interactive,omitempty"`
	// Chain lists array elements reserved to run after this one on the same resources, in
	// order (HTCondor's claim reuse): the node hands the allocation to the next one itself, in
	// the transaction that records this one's end. It is empty unless nothing else waited.
	Chain []int `json:"chain,omitempty"`
	// Queued marks an element its node claimed ahead from a chain, to start the moment the
	// element before it in the slot exits: it holds no resources (the slot's running element
	// does) and is not running yet. The node clears it in the transaction that records the
	// end of the element before it, so the slot is charged to exactly one element at a time.
	// A queued allocation is given back (deleted) when the chain is cut, the element held or
	// the agent restarts before starting it, and ends as node_fail with its node.
	Queued bool `json:"queued,omitempty"`
}

// signalRecord asks a node to signal or end its share of a task. Only the leader writes it.
type signalRecord struct {
	Seq    int            `json:"seq"`              // the last signal request delivered
	Signal int            `json:"signal,omitempty"` // with Seq: send it
	End    sched.JobState `json:"end,omitempty"`    // set: end the task (TERM, grace, KILL) in this state
	Reason string         `json:"reason,omitempty"`
	// Truncate asks the node not to hand the allocation on to its chain: other work waits.
	Truncate bool `json:"truncate,omitempty"`
}

// result is how a run (one node's share, or the whole task) ended.
type result struct {
	State    sched.JobState `json:"state"`
	ExitCode int            `json:"exit_code"`
	HasExit  bool           `json:"has_exit"`
	Reason   string         `json:"reason,omitempty"`
	Start    time.Time      `json:"start"`
	End      time.Time      `json:"end"`
	CPUTime  time.Duration  `json:"cpu_ns"`
	MaxRSS   uint64         `json:"max_rss"`
}

// partRecord is one node's share of a multi-node task, ended.
type partRecord struct {
	Node string `json:"node"`
	result
	modRev int64 // of its key, for conditional deletes
}

// doneRecord is the accounting record of a finished task, self-contained for history.
type doneRecord struct {
	Task        string      `json:"task"`
	Job         string      `json:"job"`
	Index       int         `json:"index"`
	Name        string      `json:"name"`
	User        string      `json:"user"`
	UID         uint32      `json:"uid"`
	Queue       string      `json:"queue"`
	Submit      time.Time   `json:"submit"`
	Nodes       []nodeTasks `json:"nodes,omitempty"`
	CPUs        int64       `json:"cpus_milli"`
	Memory      int64       `json:"mem_bytes"`
	Tasks       int         `json:"tasks"`
	TimeLimit   int64       `json:"time_limit_s"`
	Attempts    int         `json:"attempts"`
	Interactive bool        `json:"interactive,omitempty"`
	result
}

// attemptRecord is an earlier run of a task that ended in a requeue (lost node, exit 85).
type attemptRecord struct {
	Task   string      `json:"task"`
	Number int         `json:"number"`
	User   string      `json:"user"`
	Nodes  []nodeTasks `json:"nodes"`
	CPUs   int64       `json:"cpus_milli"` // all tasks together, for fair-share
	result
}

type reasonRecord struct {
	Reason string `json:"reason"`
	Never  bool   `json:"never,omitempty"`
}

type queueRecord struct {
	Name           string   `json:"name"`
	Nodes          []string `json:"nodes,omitempty"`
	MaxRunningJobs int      `json:"max_running_jobs,omitempty"`
	MaxCPUsPerUser int64    `json:"max_cpus_per_user_milli,omitempty"`
	MaxTime        int64    `json:"max_time_s,omitempty"`
	Oversubscribe  float64  `json:"oversubscribe,omitempty"`
}

func (q queueRecord) sched() sched.Queue {
	return sched.Queue{Name: q.Name, Nodes: q.Nodes, MaxRunningJobs: q.MaxRunningJobs,
		MaxCPUsPerUser: q.MaxCPUsPerUser, MaxTime: time.Duration(q.MaxTime) * time.Second, Oversubscribe: q.Oversubscribe}
}

type drainRecord struct {
	Reason string `json:"reason"`
	By     stamp  `json:"by"`
}

// usageRecord is the fair-share table, persisted by the leader. Rev is the etcd revision up to
// which done and attempt records have been charged, so a new leader charges only later ones.
type usageRecord struct {
	Users map[string]float64 `json:"users"`
	At    time.Time          `json:"at"`
	Rev   int64              `json:"rev"`
}

// sessionRecord marks an interactive job whose client is still connected; it is attached to
// the holding agent's lease, so it vanishes when that agent does.
type sessionRecord struct {
	Node string `json:"node"`
}

func encode(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		// Every record is plain data; failing to encode one is a programming error.
		panic(fmt.Sprintf("jobs: encoding %T: %v", v, err))
	}
	return string(b)
}

func decode[T any](data []byte) (*T, error) {
	v := new(T)
	if err := json.Unmarshal(data, v); err != nil {
		return nil, fmt.Errorf("decoding %T: %w", v, err)
	}
	return v, nil
}

func toSchedNodes(n []nodeTasks) []sched.NodeTasks {
	out := make([]sched.NodeTasks, len(n))
	for i, x := range n {
		out[i] = sched.NodeTasks{Node: x.Node, Tasks: x.Tasks}
	}
	return out
}

func fromSchedNodes(n []sched.NodeTasks) []nodeTasks {
	out := make([]nodeTasks, len(n))
	for i, x := range n {
		out[i] = nodeTasks{Node: x.Node, Tasks: x.Tasks}
	}
	return out
}

func nodeNames(n []nodeTasks) []string {
	out := make([]string, len(n))
	for i, x := range n {
		out[i] = x.Node
	}
	return out
}

// taskID is the id of element index of job (or the job's own id when index < 0).
func taskID(job string, index int) string {
	if index < 0 {
		return job
	}
	return job + "_" + itoa(index)
}
