// Package jobs is the single job-management system of ssi: it turns the pure scheduler core
// of package sched into a working, highly available batch system. Every agent runs a Service:
//
//   - The Jobs gRPC service (api/jobspb) on the agent's Unix socket: submit, interactive
//     sessions, list, show, history, cancel/signal, hold, release, queues and drains. The
//     caller is who the kernel says (SO_PEERCRED); users see every job but may change only
//     their own, root any.
//   - The executor of the node's allocations: it runs each task as its user in the submit
//     directory with its output files opened as the user, enforces time limits (TERM, grace,
//     KILL), delivers signals and cancels, restarts a task that exits 85 in place (keeping
//     $SSI_CHECKPOINT_DIR), and reports ends in batched etcd transactions.
//   - On servers, a candidate for scheduler leader (etcd election, 2 s session TTL). The
//     leader keeps a watch-fed model of the state, runs sched.Pass whenever something changes,
//     and writes its decisions in transactions guarded by its election key, so a deposed
//     leader can never write. It also ends tasks of lost nodes (node_fail, requeued where
//     allowed), combines the parts of multi-node tasks, ends a gang when a task fails (unless
//     --no-kill), forwards cancels and signals, keeps the fair-share table, and moves finished
//     jobs to history.
//
// Nothing runs twice unless requeued: the leader starts a task only from a model that has
// caught up with its own last write, a new leader loads the state after winning (so it sees
// every write of its predecessor, whose guarded writes fail once it is deposed), each executor
// acts on an allocation only while it exists, and an allocation's own cgroup marks it started
// across agent restarts (see executor).
//
// Arrays are stored as one record and expanded lazily: a pass sees only as many pending
// elements as could start now, plus one. While nothing else waits, each array start carries a
// chain of the next elements (claim reuse, as HTCondor does), up to 256 and at most half of
// each slot's share of what remains. The node runs a chain in a slot (see slot) without
// waiting for etcd or the leader between elements: while one element runs it claims the next
// ones as queued allocations (allocRecord.Queued: not charged, not running, shown pending),
// starts the next the moment one exits, and marks it running in the transaction that records
// the previous end, so the slot is charged to one element at every revision. The leader cuts
// the chains (signal record Truncate) as soon as another job waits, and the node then gives
// back the claimed elements that have not started; held ones are given back too, cancelled
// ones end without running, and queued allocations of a lost node end as node_fail.
//
// The server that leads etcd's raft group stays out of the scheduler election while another
// server is a candidate, so a single kill -9 never takes both leaders (etcd extends all leases
// after losing its raft leader, which would delay the scheduler's failover by seconds).
//
// # Keys
//
// Every key lives under /ssi/jobs/ (one watch feeds the leader). Records are JSON.
//
//	/ssi/jobs/next-id                      next job id (decimal)
//	/ssi/jobs/job/<id>                     active job: spec, hold, cancel and signal requests, user changes
//	/ssi/jobs/hist/<id>                    finished job: the same record plus its final state
//	/ssi/jobs/node/<node>/alloc/<task>     allocation of a task (or its share) to a node; written by
//	                                       the leader (or claimed ahead, queued, by the node running
//	                                       its chain), deleted by whoever records the end
//	/ssi/jobs/node/<node>/signal/<task>    cancel or signal request for that node's share (leader)
//	/ssi/jobs/node/<node>/boot             the node's boot id, to tell agent restarts from reboots
//	/ssi/jobs/part/<task>/<node>           one node's end of a multi-node task, until combined
//	/ssi/jobs/done/<task>                  accounting record of a finished task (ssi history)
//	/ssi/jobs/attempt/<task>/<n>           an earlier run that was requeued (lost node, exit 85)
//	/ssi/jobs/reason/<id>                  why the job's first waiting task waits
//	/ssi/jobs/grant/<task>                 allocation of an interactive task, for its client
//	/ssi/jobs/session/<task>               interactive client still attached (on its agent's lease)
//	/ssi/jobs/queue/<name>                 queue definition
//	/ssi/jobs/drain/<node>                 drained node and why
//	/ssi/jobs/usage                        fair-share table (decayed cpu-seconds per user)
//	/ssi/jobs/leader/                      scheduler election (concurrency.Election prefix)
//
// A task id is the job id ("42") or, for an array element, "<job>_<index>" ("42_7").
//
// # Files on each node
//
//	<spool>/<node>/ckpt/<uid>/<n>/         $SSI_CHECKPOINT_DIR, kept across exit-85 restarts
//	<spool>/<node>/script/<task>           a batch script while it runs
//
// The spool is the agent's <data-dir>/spool (Deps.SpoolDir), so agents sharing a machine
// never share checkpoint directories. Each task's processes live in the cgroup
// <CgroupParent>/<task>-<allocation revision>/.
package jobs
