package sched

import "time"

// Plan is the whole output of one pass. The controller applies it in one go: Starts become
// running jobs on their nodes, Ends are carried out, Reasons are written to the pending jobs.
type Plan struct {
	Now          time.Time
	Starts       []Start        // in scheduling order
	Ends         []End          // running jobs to stop
	Reasons      []ReasonUpdate // only pending jobs whose reason differs from Job.Reason
	Reservations []Reservation  // where and when blocked jobs are expected to start
	Stats        PassStats
}

// Start puts a pending job on nodes. All of its tasks start together.
type Start struct {
	JobID string
	Nodes []NodeTasks // ordered by node name
	// TimeLimit is the limit the pass planned with (the job's own, else the queue's max time,
	// else Config.DefaultTimeLimit); store it in Job.TimeLimit.
	TimeLimit time.Duration
	// Backfilled is true when a higher-priority job was waiting for resources when this started.
	Backfilled bool
}

// End stops a running job.
type End struct {
	JobID string
	State JobState // StateTimeout or StateNodeFail
	// Requeue asks the controller to put the job back to pending (it lost a node and was
	// submitted with --requeue) instead of ending it as State.
	Requeue bool
	Reason  string
}

// ReasonUpdate is the new reason of a pending job.
type ReasonUpdate struct {
	JobID  string
	Reason string
	// NeverRunnable marks a job that cannot start unless someone changes it: a dependency
	// ended the wrong way, is missing, or is part of a cycle. The job stays pending, as in Slurm.
	NeverRunnable bool
}

// Reservation is the EASY-backfill promise to the first blocked job of a queue: the earliest
// time enough resources free up, judged by running jobs' time limits, and the nodes it will get.
type Reservation struct {
	JobID string
	Start time.Time
	Nodes []NodeTasks
}

// PassStats counts what a pass did, for metrics and for the benchmark.
type PassStats struct {
	Pending     int // pending jobs seen
	Running     int // running jobs seen
	Started     int
	Backfilled  int // starts that passed a blocked higher-priority job
	Examined    int // jobs that needed a search over nodes (cached answers do not count)
	NotExamined int // jobs left unexamined because of Config.BackfillMaxJobTest
}
