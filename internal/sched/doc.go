// Package sched is the decision core of the single job-management system: given a read-only
// snapshot of nodes, queues and jobs (State) and the current time, Scheduler.Pass returns a Plan
// of jobs to start (with their nodes), jobs to end (time limit or lost node), and the plain-words
// reason every pending job is still waiting.
//
// The package does no I/O, keeps no goroutines and no clock: the etcd-backed controller owns the
// state, calls Pass on the elected server, and applies the Plan with transactions. That split
// keeps every scheduling rule testable with the in-memory Harness and measurable with a Go
// benchmark. The pipeline (filter → fit → score → plan) and the ordering rules are drawn in
// README.md next to this file.
//
// Units: CPUs are millicores (1000 = one whole cpu) so that fractional requests like 0.5 cpu are
// exact integers; memory is bytes. The parsers (ParseArray, ParseTimeLimit, ParseSize,
// ParseCPUs, ParseScriptDirectives) turn user input into these units with one-line errors.
package sched
