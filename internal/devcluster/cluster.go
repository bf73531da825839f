package devcluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/ssi-cluster/ssi/internal/proc/cgroup"
	"log/slog"
	mathrand "math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	// pollInterval paces every readiness poll: short enough that three nodes
	// come up in a few seconds, long enough not to burn the machine's CPUs
	// spawning CLI processes.
	pollInterval = 25 * time.Millisecond

	defaultReadyTimeout = 30 * time.Second
	// stopGrace is how long Close lets agents shut down after SIGTERM. When
	// every server stops at once they take ~2 s (an etcd leader tries for
	// 1.5 s to hand its leadership to a peer that is stopping too), but the
	// last ones may wait for etcd writes that can no longer reach a quorum
	// (2 s) and, with a node already dead, for gossip to give up on it.
	stopGrace = 6 * time.Second
	// reapTimeout bounds the wait for a host that was sent SIGKILL: the
	// kernel ends the whole PID namespace, which is quick unless a process
	// is stuck in uninterruptible sleep.
	reapTimeout = 10 * time.Second

	// AgentPort is the port of every agent's gRPC listener (--bind).
	AgentPort = 7700
	// HTTPPort is the port of every agent's HTTP listener (--http).
	HTTPPort = 7780
)

// ErrNotRoot is returned by Start when the process is not root.
var ErrNotRoot = errors.New("simulated hosts need root for namespaces, veths and cgroups: run as root (e.g. sudo ssi dev)")

// Options configure a cluster.
type Options struct {
	// Binary is the path of the ssid binary (the server half of ssi, which
	// has every client command too); it runs as every host's init and agent.
	// Required.
	Binary string
	// Client is the path of the ssi binary, the lean client: inside hosts it
	// is "ssi" on PATH, and CLI and the readiness checks run it. Default:
	// Binary, which stands in for it.
	Client string
	// Nodes is the number of nodes Start brings up, at least 1.
	Nodes int
	// Servers is how many of the first nodes run with --server; default
	// min(3, Nodes).
	Servers int
	// Dir holds one directory per node; created if missing. Default: a new
	// directory under os.TempDir(). Close keeps it, with the logs.
	Dir string
	// Logger receives the harness's progress; default: discarded.
	Logger *slog.Logger
	// AgentArgs are appended to every agent command line.
	AgentArgs []string
	// ReadyTimeout bounds Start, and each Restart, AddNode, Stop and
	// WaitAlive; default 30s.
	ReadyTimeout time.Duration
}

func (o Options) withDefaults() (Options, error) {
	if o.Binary == "" {
		return o, errors.New("devcluster: Options.Binary is empty: set it to the path of the ssid binary")
	}
	bin, err := filepath.Abs(o.Binary)
	if err != nil {
		return o, fmt.Errorf("devcluster: resolve Options.Binary %q: %w", o.Binary, err)
	}
	if info, err := os.Stat(bin); err != nil || info.IsDir() || info.Mode()&0o111 == 0 {
		return o, fmt.Errorf("devcluster: Options.Binary %s is not an executable file: build ssid first (go build -o %s ./cmd/ssid)", bin, bin)
	}
	o.Binary = bin
	if o.Client == "" {
		o.Client = bin
	}
	client, err := filepath.Abs(o.Client)
	if err != nil {
		return o, fmt.Errorf("devcluster: resolve Options.Client %q: %w", o.Client, err)
	}
	if info, err := os.Stat(client); err != nil || info.IsDir() || info.Mode()&0o111 == 0 {
		return o, fmt.Errorf("devcluster: Options.Client %s is not an executable file: build ssi first (go build -o %s ./cmd/ssi)", client, client)
	}
	o.Client = client
	if o.Nodes < 1 || o.Nodes > maxNodes {
		return o, fmt.Errorf("devcluster: Options.Nodes is %d: it must be between 1 and %d", o.Nodes, maxNodes)
	}
	if o.Servers == 0 {
		o.Servers = min(3, o.Nodes)
	}
	if o.Servers < 1 || o.Servers > o.Nodes {
		return o, fmt.Errorf("devcluster: Options.Servers is %d: it must be between 1 and Nodes (%d)", o.Servers, o.Nodes)
	}
	if o.Dir == "" {
		if o.Dir, err = os.MkdirTemp("", "ssi-dev-"); err != nil {
			return o, fmt.Errorf("devcluster: make a state directory: %w", err)
		}
	}
	if o.Dir, err = filepath.Abs(o.Dir); err != nil {
		return o, fmt.Errorf("devcluster: resolve Options.Dir %q: %w", o.Dir, err)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.ReadyTimeout <= 0 {
		o.ReadyTimeout = defaultReadyTimeout
	}
	o.AgentArgs = slices.Clone(o.AgentArgs)
	return o, nil
}

// Cluster is a running set of simulated hosts. Its methods are safe for
// concurrent use, except that Start and AddNode must not race with Close.
type Cluster struct {
	opts Options
	log  *slog.Logger

	id          string
	bridge      string
	subnet      *net.IPNet
	cgroupMount string
	cgroupPath  string // relative to cgroupMount, e.g. /ssi-dev-ab12cd

	// What was made, so that Close after a partial Start removes only that.
	madeBridge bool
	madeCgroup bool

	mu     sync.Mutex
	nodes  []*Node
	closed bool

	closeOnce sync.Once
	closeErr  error
}

// Node is one simulated host.
type Node struct {
	Name   string // n1, n2, …; also the hostname
	Index  int    // 1-based
	IP     net.IP
	Dir    string // DIR/nK on the machine, /run/ssi inside the host
	Server bool
	// Cgroup is the node's cgroup relative to the cgroup2 mount, as given to
	// the agent with --node-cgroup (e.g. /ssi-dev-ab12cd/n2).
	Cgroup string

	cluster   *Cluster
	cgroupDir string
	hostVeth  string // the bridge port, in the machine's namespace
	peerVeth  string // the end that becomes eth0 inside the host
	extraArgs []string
	host      *host // current incarnation, guarded by cluster.mu
}

// host is one run of a node's init process.
type host struct {
	process *os.Process
	done    chan struct{}
	err     error // how the init exited; valid once done is closed
}

// exitErr is how the init exited, or nil while it runs.
func (h *host) exitErr() error {
	select {
	case <-h.done:
		return h.err
	default:
		return nil
	}
}

func (h *host) running() bool {
	if h == nil {
		return false
	}
	select {
	case <-h.done:
		return false
	default:
		return true
	}
}

// Socket is the agent's socket as seen from the machine: DIR/nK/ssi.sock.
func (n *Node) Socket() string { return filepath.Join(n.Dir, "ssi.sock") }

// LogPath is the file that collects the init's and agent's output.
func (n *Node) LogPath() string { return filepath.Join(n.Dir, "agent.log") }

// CgroupDir is the absolute path of the node's cgroup directory.
func (n *Node) CgroupDir() string { return n.cgroupDir }

// Running reports whether the node's host is up.
func (n *Node) Running() bool {
	n.cluster.mu.Lock()
	defer n.cluster.mu.Unlock()
	return n.host.running()
}

// InitPID is the machine pid of the host's init, or 0 if the host is down.
func (n *Node) InitPID() int {
	n.cluster.mu.Lock()
	defer n.cluster.mu.Unlock()
	if !n.host.running() {
		return 0
	}
	return n.host.process.Pid
}

// AgentPID is the machine pid of the host's agent.
func (n *Node) AgentPID() (int, error) {
	initPid := n.InitPID()
	if initPid == 0 {
		return 0, fmt.Errorf("node %s is not running: Restart it first", n.Name)
	}
	data, err := os.ReadFile(filepath.Join(n.Dir, "agent.pid"))
	if err != nil {
		return 0, fmt.Errorf("read the agent pid of %s: %w", n.Name, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return 0, fmt.Errorf("parse %s/agent.pid: %w", n.Dir, err)
	}
	// A stale pid could name an unrelated process by now.
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil || parentPid(status) != initPid {
		return 0, fmt.Errorf("the agent of %s (pid %d) is not running", n.Name, pid)
	}
	return pid, nil
}

func parentPid(status []byte) int {
	for line := range strings.Lines(string(status)) {
		if rest, ok := strings.CutPrefix(line, "PPid:"); ok {
			pid, _ := strconv.Atoi(strings.TrimSpace(rest))
			return pid
		}
	}
	return 0
}

// Start creates the bridge and cgroups and starts opts.Nodes hosts: n1
// bootstraps, the other servers join one at a time (each adds an etcd
// member), then the clients join together. It returns when every node is
// alive. If it fails it removes what it made.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	began := time.Now()
	c, err := newCluster(opts)
	if err != nil {
		return nil, errors.Join(err, c.Close())
	}
	ctx, cancel := context.WithTimeout(ctx, opts.ReadyTimeout)
	defer cancel()
	if err := c.bootstrap(ctx); err != nil {
		return nil, errors.Join(err, c.Close())
	}
	c.log.Info("cluster ready", "nodes", opts.Nodes, "subnet", c.subnet, "bridge", c.bridge,
		"took", time.Since(began).Round(time.Millisecond))
	return c, nil
}

// newCluster makes the bridge and the cluster's cgroup and describes the
// nodes. On error the returned cluster still knows what it made.
func newCluster(opts Options) (*Cluster, error) {
	var raw [3]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, fmt.Errorf("make a cluster id: %w", err)
	}
	id := hex.EncodeToString(raw[:])
	c := &Cluster{
		opts:       opts,
		log:        opts.Logger,
		id:         id,
		bridge:     "ssib" + id,
		cgroupPath: "/ssi-dev-" + id,
	}
	var err error
	if c.cgroupMount, err = cgroup.Mount(); err != nil {
		return c, err
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return c, fmt.Errorf("make the state directory %s: %w", opts.Dir, err)
	}
	taken, err := takenIPv4Nets()
	if err != nil {
		return c, err
	}
	if c.subnet, err = pickSubnet(taken, mathrand.New(mathrand.NewPCG(mathrand.Uint64(), mathrand.Uint64()))); err != nil {
		return c, err
	}
	c.madeBridge, err = createBridge(c.bridge, c.subnet)
	if err != nil {
		return c, err
	}
	if err := os.Mkdir(c.cgroupDir(), 0o755); err != nil {
		return c, fmt.Errorf("make cgroup %s: %w", c.cgroupDir(), err)
	}
	c.madeCgroup = true
	for k := 1; k <= opts.Nodes; k++ {
		c.nodes = append(c.nodes, c.newNode(k, k <= opts.Servers))
	}
	c.log.Debug("cluster resources made", "id", id, "bridge", c.bridge, "subnet", c.subnet, "cgroup", c.cgroupDir())
	return c, nil
}

func (c *Cluster) cgroupDir() string { return filepath.Join(c.cgroupMount, c.cgroupPath) }

// ID is the cluster's id, which names its bridge (ssib<id>) and cgroup (ssi-dev-<id>): what
// RemoveLeftovers needs should the process die without Close.
func (c *Cluster) ID() string { return c.id }

// RemoveLeftovers removes what Close would have removed of the cluster whose ID was id, once
// the process that ran it died without closing it (kill -9): its cgroup, with any process
// still in it, and its bridge (the hosts' links went with their namespaces). What is already
// gone is skipped. The caller must know that cluster's process is gone: ssi dev knows it from
// the lock on its directory.
func RemoveLeftovers(ctx context.Context, id string) error {
	if len(id) != 6 || strings.Trim(id, "0123456789abcdef") != "" {
		return fmt.Errorf("%q is not a dev cluster id (6 hex digits)", id)
	}
	mount, err := cgroup.Mount()
	if err != nil {
		return err
	}
	dir := filepath.Join(mount, "ssi-dev-"+id)
	var errs []error
	if err := killCgroupTree(dir); err != nil {
		errs = append(errs, err)
	}
	if err := removeCgroupTree(ctx, dir); err != nil {
		errs = append(errs, err)
	}
	if err := deleteLink("ssib" + id); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove what dev cluster %s left: %w", id, err)
	}
	return nil
}

func (c *Cluster) newNode(index int, server bool) *Node {
	name := "n" + strconv.Itoa(index)
	return &Node{
		Name:      name,
		Index:     index,
		IP:        hostIP(c.subnet, index),
		Dir:       filepath.Join(c.opts.Dir, name),
		Server:    server,
		Cgroup:    c.cgroupPath + "/" + name,
		cluster:   c,
		cgroupDir: filepath.Join(c.cgroupDir(), name),
		hostVeth:  "ssiv" + c.id + strconv.Itoa(index),
		peerVeth:  "ssip" + c.id + strconv.Itoa(index),
	}
}

func (c *Cluster) bootstrap(ctx context.Context) error {
	first := c.nodes[0]
	if err := c.startAndWait(ctx, first, c.agentArgs(first, "", "")); err != nil {
		return err
	}
	if len(c.nodes) > 1 {
		token, err := c.Token(ctx)
		if err != nil {
			return err
		}
		join := net.JoinHostPort(first.IP.String(), strconv.Itoa(AgentPort))
		// Each server adds an etcd member, and etcd refuses a member add
		// while the previous one is not yet started, so servers go one by one.
		for _, n := range c.nodes[1:c.opts.Servers] {
			if err := c.joinServer(ctx, n, join, token); err != nil {
				return err
			}
			if err := c.WaitAlive(ctx, n.Name); err != nil {
				return err
			}
		}
		clients := c.nodes[c.opts.Servers:]
		errs := make([]error, len(clients))
		var wg sync.WaitGroup
		for i, n := range clients {
			wg.Go(func() { errs[i] = c.startAndWait(ctx, n, c.agentArgs(n, join, token)) })
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return err
		}
	}
	return c.WaitAlive(ctx)
}

// joinServer starts a server that joins the cluster, starting it again when
// the cluster refused it for now: etcd only adds a member once its leader has
// been in touch with every voting member for a few seconds, which a server
// that has just joined is not yet.
func (c *Cluster) joinServer(ctx context.Context, n *Node, join, token string) error {
	backoff := 100 * time.Millisecond
	for {
		err := c.startAndWait(ctx, n, c.agentArgs(n, join, token))
		if err == nil || ctx.Err() != nil || n.Running() || !joinRefusedForNow(logTail(n.LogPath(), 3)) {
			return err
		}
		c.log.Info("the cluster is not ready to add a server yet; retrying", "node", n.Name, "in", backoff)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// joinRefusedForNow tells from the end of an agent's log whether its join was
// refused only until the cluster settles (etcd's ErrUnhealthy, which the
// agent reports with "then retry").
func joinRefusedForNow(logTail string) bool {
	return strings.Contains(logTail, "unhealthy cluster") || strings.Contains(logTail, "then retry")
}

// agentArgs is the agent command line of a node (without extra args given to
// AddNode). join and token are empty for the bootstrap node and for restarts.
func (c *Cluster) agentArgs(n *Node, join, token string) []string {
	ip := n.IP.String()
	args := []string{
		HostBinary, "agent",
		"--name", n.Name,
		"--data-dir", HostRunDir + "/data",
		"--socket", HostSocket,
		"--bind", net.JoinHostPort(ip, strconv.Itoa(AgentPort)),
		"--http", net.JoinHostPort(ip, strconv.Itoa(HTTPPort)),
		"--node-cgroup", n.Cgroup,
	}
	if n.Server {
		args = append(args, "--server")
	}
	if join != "" {
		args = append(args, "--join", join, "--token", token)
	}
	return append(args, c.opts.AgentArgs...)
}

// withoutJoinArgs drops --join and --token (and their values) from args: a
// restarted node rejoins from its saved state.
func withoutJoinArgs(args []string) []string {
	var kept []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--join" || a == "--token":
			i++ // skip the value too
		case strings.HasPrefix(a, "--join=") || strings.HasPrefix(a, "--token="):
		default:
			kept = append(kept, a)
		}
	}
	return kept
}

// startAndWait starts a node's host and waits until its agent answers.
func (c *Cluster) startAndWait(ctx context.Context, n *Node, agentArgs []string) error {
	if err := c.startHost(ctx, n, agentArgs); err != nil {
		return err
	}
	return c.waitAnswering(ctx, n)
}

// Nodes returns every node, in index order.
func (c *Cluster) Nodes() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.nodes)
}

// Node returns the node of that name, or nil.
func (c *Cluster) Node(name string) *Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Dir is the cluster's state directory.
func (c *Cluster) Dir() string { return c.opts.Dir }

// Bridge is the name of the cluster's bridge in the machine's namespace.
func (c *Cluster) Bridge() string { return c.bridge }

// Subnet is the hosts' /24; the bridge (the machine) has its .1.
func (c *Cluster) Subnet() *net.IPNet { return c.subnet }

// CgroupDir is the absolute path of the cgroup that holds every node's.
func (c *Cluster) CgroupDir() string { return c.cgroupDir() }

func (c *Cluster) node(name string) (*Node, error) {
	if n := c.Node(name); n != nil {
		return n, nil
	}
	return nil, fmt.Errorf("no node %q in this cluster: use one of %s", name, strings.Join(c.names(), ", "))
}

func (c *Cluster) names() []string {
	var names []string
	for _, n := range c.Nodes() {
		names = append(names, n.Name)
	}
	return names
}

// runningHost returns the node's current host, or an error if it is down.
func (c *Cluster) runningHost(n *Node) (*host, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !n.host.running() {
		return nil, fmt.Errorf("node %s is not running: Restart it first", n.Name)
	}
	return n.host, nil
}

// Kill sends SIGKILL to a host's init; the kernel then kills every process
// of the host. It returns once they are all gone.
func (c *Cluster) Kill(name string) error {
	n, err := c.node(name)
	if err != nil {
		return err
	}
	h, err := c.runningHost(n)
	if err != nil {
		return err
	}
	if err := h.process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill the init of %s: %w", name, err)
	}
	return waitHostEnd(h, name, reapTimeout)
}

// KillAgent sends SIGKILL to a node's agent only. The host's init then exits
// with the agent's status, which ends the host; KillAgent returns once it has.
func (c *Cluster) KillAgent(name string) error {
	n, err := c.node(name)
	if err != nil {
		return err
	}
	h, err := c.runningHost(n)
	if err != nil {
		return err
	}
	pid, err := n.AgentPID()
	if err != nil {
		return err
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill the agent of %s (pid %d): %w", name, pid, err)
	}
	return waitHostEnd(h, name, reapTimeout)
}

// Stop asks a node's agent to shut down (SIGTERM through the init) and waits
// for the host to end. If ctx or ReadyTimeout ends first, the host is killed
// and an error returned.
func (c *Cluster) Stop(ctx context.Context, name string) error {
	n, err := c.node(name)
	if err != nil {
		return err
	}
	h, err := c.runningHost(n)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, c.opts.ReadyTimeout)
	defer cancel()
	if err := h.process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop %s: %w", name, err)
	}
	select {
	case <-h.done:
		return nil
	case <-ctx.Done():
		_ = h.process.Signal(syscall.SIGKILL)
		return errors.Join(
			fmt.Errorf("node %s did not stop after SIGTERM (%w): killed it; see %s", name, ctx.Err(), n.LogPath()),
			waitHostEnd(h, name, reapTimeout))
	}
}

// Restart starts a node's host again with the same directory and address and
// without --join or --token (the agent rejoins from its saved state). A
// running node is stopped first. It returns when the agent answers.
func (c *Cluster) Restart(ctx context.Context, name string) error {
	n, err := c.node(name)
	if err != nil {
		return err
	}
	if n.Running() {
		if err := c.Stop(ctx, name); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, c.opts.ReadyTimeout)
	defer cancel()
	args := append(c.agentArgs(n, "", ""), withoutJoinArgs(n.extraArgs)...)
	return c.startAndWait(ctx, n, args)
}

// Partition cuts a node off the others (and off the machine's network, not
// its Unix socket) by setting its bridge port down. A node that is restarted
// comes back connected.
func (c *Cluster) Partition(name string) error {
	n, err := c.node(name)
	if err != nil {
		return err
	}
	return setLinkUp(n.hostVeth, false)
}

// Heal undoes Partition.
func (c *Cluster) Heal(name string) error {
	n, err := c.node(name)
	if err != nil {
		return err
	}
	return setLinkUp(n.hostVeth, true)
}

// AddNode starts node N+1 as a client (a server if extraArgs has --server)
// with the agent's usual arguments plus extraArgs, without --join or
// --token unless extraArgs has them. It returns when the new agent answers,
// or an error holding the tail of its log if the agent exits first. The node
// is returned even with an error, so that its log can be read; it stays in
// the cluster and can be Restarted.
func (c *Cluster) AddNode(ctx context.Context, extraArgs ...string) (*Node, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, errClosed
	}
	index := len(c.nodes) + 1
	if index > maxNodes {
		c.mu.Unlock()
		return nil, fmt.Errorf("a cluster holds at most %d nodes: Close it and start a new one", maxNodes)
	}
	n := c.newNode(index, slices.Contains(extraArgs, "--server"))
	n.extraArgs = slices.Clone(extraArgs)
	c.nodes = append(c.nodes, n)
	c.mu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, c.opts.ReadyTimeout)
	defer cancel()
	args := c.agentArgs(n, "", "")
	if n.Server {
		// --server is already in extraArgs.
		args = slices.DeleteFunc(args, func(a string) bool { return a == "--server" })
	}
	return n, c.startAndWait(ctx, n, append(args, extraArgs...))
}

var errClosed = errors.New("the dev cluster is closed: start a new one")

// Close stops every host (SIGTERM, then SIGKILL after a short grace), kills
// and removes the cgroups and deletes the bridge and veths. It can be called
// more than once and after a failed Start; the node directories (with their
// logs) are kept.
func (c *Cluster) Close() error {
	if c == nil {
		return nil
	}
	c.closeOnce.Do(func() { c.closeErr = c.close() })
	return c.closeErr
}

func (c *Cluster) close() error {
	c.mu.Lock()
	c.closed = true
	var hosts []*host
	var names []string
	for _, n := range c.nodes {
		if n.host.running() {
			hosts = append(hosts, n.host)
			names = append(names, n.Name)
		}
	}
	nodes := slices.Clone(c.nodes)
	c.mu.Unlock()

	var errs []error
	for _, h := range hosts {
		_ = h.process.Signal(syscall.SIGTERM)
	}
	grace := time.After(stopGrace)
	for i, h := range hosts {
		select {
		case <-h.done:
		case <-grace:
			c.log.Warn("host did not stop after SIGTERM; killing it", "node", names[i])
			_ = h.process.Signal(syscall.SIGKILL)
		}
	}
	for i, h := range hosts {
		if err := waitHostEnd(h, names[i], reapTimeout); err != nil {
			errs = append(errs, err)
		}
	}
	if c.madeCgroup {
		ctx, cancel := context.WithTimeout(context.Background(), reapTimeout)
		if err := killCgroupTree(c.cgroupDir()); err != nil {
			errs = append(errs, err)
		}
		if err := removeCgroupTree(ctx, c.cgroupDir()); err != nil {
			errs = append(errs, err)
		}
		cancel()
	}
	for _, n := range nodes {
		if err := deleteLink(n.hostVeth); err != nil {
			errs = append(errs, err)
		}
		// The peer is still here if its host never took it.
		if err := deleteLink(n.peerVeth); err != nil {
			errs = append(errs, err)
		}
	}
	if c.madeBridge {
		if err := deleteLink(c.bridge); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("clean up dev cluster %s: %w", c.id, err)
	}
	c.log.Debug("cluster removed", "id", c.id)
	return nil
}

// waitHostEnd waits for a host that was signalled to exit.
func waitHostEnd(h *host, name string, timeout time.Duration) error {
	select {
	case <-h.done:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("host %s (init pid %d) did not exit %s after being signalled: look for processes stuck in D state (ps -eo pid,stat,cmd)",
			name, h.process.Pid, timeout)
	}
}
