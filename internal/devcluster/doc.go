// Package devcluster runs a cluster of simulated hosts on one machine, for
// `ssi dev` and for end-to-end tests.
//
// Each host is a real-looking Linux host built from namespaces: its own
// network namespace joined to a per-cluster bridge through a veth pair (at
// loopback's MTU, as programs on one machine talk), its own hostname (n1, n2, …), a mount namespace with private /tmp, /run and
// /dev/shm, a PID namespace with its own /proc, an IPC namespace and its own
// cgroup v2 group. All hosts share the machine's kernel and disk. The host's
// PID 1 is a small init (RunHostInit, the hidden `ssid dev-init` command) that
// sets the host up, starts `ssid agent`, reaps orphans and ends the host when
// the agent exits.
//
// Every node has a directory DIR/nK on the machine that the host sees as
// /run/ssi, so the agent's socket, pid file and log are reachable from both
// sides:
//
//	DIR/nK/ssi.sock    the agent's socket (/run/ssi/ssi.sock inside)
//	DIR/nK/agent.log   init and agent stdout+stderr, appended across restarts
//	DIR/nK/agent.pid   the agent's pid in the machine's PID namespace
//	DIR/nK/init.pid    the host init's pid in the machine's PID namespace
//	DIR/nK/data        the agent's data directory
//
// Inside each host the ssid and ssi binaries the cluster runs are at
// HostBinary and HostClient, whatever their paths on the machine (which may be
// under /tmp, hidden inside hosts).
//
// Faults are real: Kill sends SIGKILL to a host's init (the kernel then kills
// every process of the host), KillAgent kills only the agent, Partition sets
// the host's link down. Nothing is routed or NATed: traffic only goes between
// the hosts' own addresses on the bridge.
//
// Starting a cluster needs root (namespaces, veths, cgroups).
package devcluster
