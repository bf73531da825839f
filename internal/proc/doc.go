// Package proc is a node's share of the single process space: it lists the node's
// processes like ps, and starts, signals, resizes and ends process trees on behalf of
// clients, with the client's identity. It does no networking; the agent streams the
// pipes and terminal of a Process over gRPC.
//
// Design choices the callers rely on:
//
//   - Every started tree gets its own cgroup v2 group, joined at clone time
//     (CLONE_INTO_CGROUP), so no descendant escapes tracking, not even a double-forked
//     daemon. KillTree uses cgroup.kill; Terminate is SIGHUP, then SIGKILL after a grace
//     period, as when a terminal hangs up. Pdeathsig is not used: it fires when the
//     starting thread exits and does not survive an agent restart, while the cgroup does
//     (see TerminateLeftovers).
//   - Signals to the command go through a pidfd, never kill(pid): after the command has
//     been reaped its pid may belong to someone else.
//   - The child runs with the caller's uid, gid, groups, umask, environment and working
//     directory. A umask other than the agent's own is set on a long-lived spawner thread
//     that has its own fs_struct (see startWithUmask), or the caller forks from such a
//     thread of its own (Spec.ForkHere), never process-wide.
//   - A command the shell would refuse is reported by Start as a *CommandError carrying
//     the shell's message and exit code (127, 126); exit codes of processes that ran are
//     the shell's too (128+N after death by signal N).
//   - The command's stops and continuations are seen as its parent sees them (wait4 with
//     WUNTRACED and WCONTINUED, in the same loop that collects its exit: Process.Job), so
//     that a client can stop when it stops, as a shell's job would. Its own process group
//     being orphaned, a terminal's Ctrl-Z would not stop it; TypeKeys stops it instead.
//   - The child's GPID is not in its environment: its pid is unknown until it is forked,
//     and an inherited value would be wrong for every descendant anyway. It gets SSI_NODE
//     instead, so any process computes its own GPID as gpid.Make(SSI_NODE, getpid()).
package proc
