package sched

import (
	"fmt"
	"time"
)

// Node is a machine jobs can run on, as the controller last saw it. What is allocated on it is
// not stored here: a pass derives it from the running jobs' allocations, so the two can never
// disagree.
type Node struct {
	Name        string
	CPUs        int64 // millicores
	Memory      int64 // bytes
	Alive       bool  // false once membership declares it dead; its running jobs end as node_fail
	Draining    bool  // running jobs finish, no new work starts here
	DrainReason string
}

// Queue is a partition of the cluster with its own limits. Jobs name a queue; a cluster with no
// queues configured behaves as if it had one unlimited DefaultQueueName over all nodes.
type Queue struct {
	Name  string
	Nodes []string // the node names this queue may use; empty means every node

	MaxRunningJobs int           // running jobs (array elements count singly); 0 is unlimited
	MaxCPUsPerUser int64         // millicores one user may have running in this queue; 0 is unlimited
	MaxTime        time.Duration // longest time limit accepted, and the limit of jobs that give none; 0 is none

	// Oversubscribe lets jobs of this queue count a node as having Oversubscribe times its cpus
	// (1.5 = 50% more). Memory is never oversubscribed: running out of it kills jobs. 0 or 1
	// means no oversubscription.
	Oversubscribe float64
}

// Validate checks a queue definition; the controller should call it when queues are configured.
// A pass treats a queue that fails it as having no oversubscription.
func (q *Queue) Validate() error {
	switch {
	case q.Name == "":
		return fmt.Errorf("queue has no name: give every queue a name")
	case q.MaxRunningJobs < 0:
		return fmt.Errorf("queue %s has max running jobs %d: use 0 (unlimited) or more", q.Name, q.MaxRunningJobs)
	case q.MaxCPUsPerUser < 0:
		return fmt.Errorf("queue %s has a negative per-user cpu limit: use 0 (unlimited) or more", q.Name)
	case q.MaxTime < 0:
		return fmt.Errorf("queue %s has a negative max time: use 0 (none) or more", q.Name)
	case !(q.Oversubscribe == 0 || (q.Oversubscribe >= 1 && q.Oversubscribe <= maxOversubscribe)):
		return fmt.Errorf("queue %s has oversubscribe factor %v: use 1 (none) to %v", q.Name, q.Oversubscribe, maxOversubscribe)
	}
	return nil
}

// oversubscribeMilli is the factor in thousandths, so capacity math stays in integers.
func (q *Queue) oversubscribeMilli() int64 {
	if q.Validate() != nil || q.Oversubscribe <= 1 {
		return 1000
	}
	return int64(q.Oversubscribe * 1000)
}
