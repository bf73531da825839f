package devcluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/agent"
)

// hostCloneFlags are the namespaces every host gets; the cgroup comes from
// CLONE_INTO_CGROUP.
const hostCloneFlags = syscall.CLONE_NEWNET | syscall.CLONE_NEWUTS | syscall.CLONE_NEWNS |
	syscall.CLONE_NEWPID | syscall.CLONE_NEWIPC

// startHost starts a node's init in new namespaces inside the node's cgroup,
// moves the veth in and returns once the init has started the agent.
func (c *Cluster) startHost(ctx context.Context, n *Node, agentArgs []string) (err error) {
	c.mu.Lock()
	switch {
	case c.closed:
		c.mu.Unlock()
		return errClosed
	case n.host.running():
		c.mu.Unlock()
		return fmt.Errorf("node %s is already running: Stop or Kill it first", n.Name)
	}
	c.mu.Unlock()

	if err := os.MkdirAll(n.Dir, 0o755); err != nil {
		return fmt.Errorf("make node directory %s: %w", n.Dir, err)
	}
	// Stale files from an earlier run would make a dead host look alive.
	for _, name := range []string{"agent.pid", "init.pid", "ssi.sock"} {
		if err := os.Remove(filepath.Join(n.Dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove stale %s of %s: %w", name, n.Name, err)
		}
	}
	if err := os.Mkdir(n.cgroupDir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("make cgroup %s: %w", n.cgroupDir, err)
	}
	// The previous incarnation's veth disappears with its network namespace,
	// which the kernel tears down asynchronously.
	if err := deleteLink(n.hostVeth); err != nil {
		return err
	}
	if err := createVeth(n.hostVeth, n.peerVeth, c.bridge); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = deleteLink(n.hostVeth)
		}
	}()

	cgroupFD, err := unix.Open(n.cgroupDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open cgroup %s: %w", n.cgroupDir, err)
	}
	defer unix.Close(cgroupFD)
	goAheadR, goAheadW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("make a pipe for host %s: %w", n.Name, err)
	}
	defer goAheadW.Close()
	statusR, statusW, err := os.Pipe()
	if err != nil {
		goAheadR.Close()
		return fmt.Errorf("make a pipe for host %s: %w", n.Name, err)
	}
	defer statusR.Close()
	logFile, err := os.OpenFile(n.LogPath(), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		goAheadR.Close()
		statusW.Close()
		return fmt.Errorf("open %s: %w", n.LogPath(), err)
	}

	// The join token goes to the agent through its environment, not its command line,
	// which every user of the machine can read (ps, ssi ps) for as long as the node runs.
	agentArgs, token := splitTokenArg(agentArgs)
	cfg := hostInitConfig{
		name:      n.Name,
		dir:       n.Dir,
		link:      n.peerVeth,
		addr:      (&net.IPNet{IP: n.IP, Mask: c.subnet.Mask}).String(),
		agentArgs: agentArgs,
	}
	if c.opts.Client != c.opts.Binary {
		cfg.client = c.opts.Client
	}
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, agent.TokenEnv+"=") })
	if token != "" {
		env = append(env, agent.TokenEnv+"="+token)
	}
	cmd := &exec.Cmd{
		Path:       c.opts.Binary,
		Args:       append([]string{c.opts.Binary, "dev-init"}, cfg.args()...),
		Env:        env,
		Stdout:     logFile,
		Stderr:     logFile,
		ExtraFiles: []*os.File{goAheadR, statusW}, // fds 3 and 4
		SysProcAttr: &syscall.SysProcAttr{
			Cloneflags:  hostCloneFlags,
			UseCgroupFD: true,
			CgroupFD:    cgroupFD,
			// A terminal's Ctrl-C must reach the harness only: it decides
			// how hosts stop.
			Setpgid: true,
			// Hosts must not outlive a harness that is killed. The signal
			// fires when the forking OS thread exits, which the Go runtime
			// only does for goroutines that exit locked to their thread.
			Pdeathsig: syscall.SIGKILL,
		},
	}
	startErr := cmd.Start()
	goAheadR.Close()
	statusW.Close()
	logFile.Close()
	if startErr != nil {
		return fmt.Errorf("start the init of host %s (%s): %w", n.Name, c.opts.Binary, startErr)
	}
	h := &host{process: cmd.Process, done: make(chan struct{})}
	go func() {
		h.err = cmd.Wait()
		if err := deleteLink(n.hostVeth); err != nil {
			c.log.Warn("remove the veth of an ended host", "node", n.Name, "err", err)
		}
		close(h.done)
	}()
	c.mu.Lock()
	n.host = h
	c.mu.Unlock()
	c.log.Debug("host started", "node", n.Name, "init_pid", h.process.Pid, "ip", n.IP)
	defer func() {
		if err != nil {
			_ = h.process.Signal(syscall.SIGKILL)
			<-h.done
		}
	}()

	pidFile := filepath.Join(n.Dir, "init.pid")
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(h.process.Pid)+"\n"), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", pidFile, err)
	}
	if err := moveLinkToHost(n.peerVeth, h.process.Pid); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			// The init died before it could take its link.
			_ = waitHostEnd(h, n.Name, reapTimeout)
			return n.failure(fmt.Errorf("host %s exited during setup (%v)", n.Name, h.exitErr()))
		}
		return fmt.Errorf("host %s: %w", n.Name, err)
	}
	if _, err := goAheadW.Write([]byte{1}); err != nil {
		return n.failure(fmt.Errorf("host %s exited during setup (%w)", n.Name, err))
	}
	statusErr := make(chan error, 1)
	go func() { statusErr <- readStatusLine(statusR) }()
	select {
	case err := <-statusErr:
		if err != nil {
			return n.failure(fmt.Errorf("host %s failed to start: %w", n.Name, err))
		}
		return nil
	case <-ctx.Done():
		return n.failure(fmt.Errorf("host %s did not start its agent in time: %w", n.Name, ctx.Err()))
	}
}

// failure adds the tail of the node's log to err.
func (n *Node) failure(err error) error {
	tail := logTail(n.LogPath(), 15)
	if tail == "" {
		return fmt.Errorf("%w (%s is empty)", err, n.LogPath())
	}
	return fmt.Errorf("%w; last lines of %s:\n%s", err, n.LogPath(), tail)
}

// logTail returns up to the last lines of a file.
func logTail(path string, lines int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	const window = 8 << 10
	if info, err := f.Stat(); err == nil && info.Size() > window {
		if _, err := f.Seek(-window, io.SeekEnd); err != nil {
			return ""
		}
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return ""
	}
	all := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// waitAnswering polls the node's socket until `ssi nodes` answers on it,
// failing fast with the log's tail if the host ends first.
func (c *Cluster) waitAnswering(ctx context.Context, n *Node) error {
	c.mu.Lock()
	h := n.host
	c.mu.Unlock()
	ticker := time.NewTicker(pollInterval)
	defer ticker.Stop()
	for {
		if !h.running() {
			return n.failure(fmt.Errorf("node %s exited before its agent answered on %s (%v)", n.Name, n.Socket(), h.exitErr()))
		}
		if _, err := c.listNodes(ctx, n); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return n.failure(fmt.Errorf("node %s did not answer on %s in time (%w)", n.Name, n.Socket(), ctx.Err()))
		case <-h.done:
		case <-ticker.C:
		}
	}
}

// NodeStatus is one entry of `ssi nodes -o json` as far as the harness
// reads it.
type NodeStatus struct {
	Name  string `json:"name"`
	State string `json:"state"`
}

// listNodes asks a node's agent for the cluster's members. It first dials the
// socket itself, which is much cheaper than starting the CLI while the agent
// is not listening yet.
func (c *Cluster) listNodes(ctx context.Context, n *Node) ([]NodeStatus, error) {
	conn, err := net.DialTimeout("unix", n.Socket(), time.Second)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", n.Socket(), err)
	}
	conn.Close()
	cmd := exec.CommandContext(ctx, c.opts.Client, "nodes", "-o", "json", "--socket", n.Socket())
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("ssi nodes on %s: %w: %s", n.Name, err, strings.TrimSpace(stderr.String()))
	}
	return parseNodeList(stdout.Bytes())
}

func parseNodeList(data []byte) ([]NodeStatus, error) {
	var nodes []NodeStatus
	if err := json.Unmarshal(data, &nodes); err != nil {
		return nil, fmt.Errorf("parse `ssi nodes -o json` output %q: %w", truncate(string(data), 200), err)
	}
	return nodes, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// notAlive returns the wanted names that the listing does not show alive,
// each with the state it has ("absent" if unlisted).
func notAlive(listing []NodeStatus, want []string) []string {
	var missing []string
	for _, name := range want {
		i := slices.IndexFunc(listing, func(s NodeStatus) bool { return s.Name == name })
		switch {
		case i < 0:
			missing = append(missing, name+"=absent")
		case listing[i].State != "alive":
			missing = append(missing, name+"="+listing[i].State)
		}
	}
	return missing
}

// WaitAlive polls `ssi nodes -o json` on the running nodes until the listing
// of one of them shows every named node alive; with no names, every running
// node. It gives up when ctx or ReadyTimeout ends.
func (c *Cluster) WaitAlive(ctx context.Context, names ...string) error {
	ctx, cancel := context.WithTimeout(ctx, c.opts.ReadyTimeout)
	defer cancel()
	if len(names) == 0 {
		for _, n := range c.Nodes() {
			if n.Running() {
				names = append(names, n.Name)
			}
		}
	}
	ticker := time.NewTicker(pollInterval)
	defer ticker.Stop()
	lastSeen := "no running node answered"
	for {
		for _, n := range c.Nodes() {
			if !n.Running() {
				continue
			}
			listing, err := c.listNodes(ctx, n)
			if err != nil {
				continue
			}
			missing := notAlive(listing, names)
			if len(missing) == 0 {
				return nil
			}
			lastSeen = n.Name + " saw " + strings.Join(missing, " ")
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("nodes %s not all alive in time (%s): see their agent.log under %s",
				strings.Join(names, ","), lastSeen, c.opts.Dir)
		case <-ticker.C:
		}
	}
}

// Token creates a fresh join token on n1, or on another running server if
// n1 is down.
func (c *Cluster) Token(ctx context.Context) (string, error) {
	var errs []error
	for _, n := range c.Nodes() {
		if !n.Server || !n.Running() {
			continue
		}
		cmd := exec.CommandContext(ctx, c.opts.Client, "token", "create", "--socket", n.Socket())
		var stdout, stderr bytes.Buffer
		cmd.Stdout = &stdout
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			errs = append(errs, fmt.Errorf("ssi token create on %s: %w: %s", n.Name, err, strings.TrimSpace(stderr.String())))
			continue
		}
		if token := strings.TrimSpace(stdout.String()); token != "" {
			return token, nil
		}
		errs = append(errs, fmt.Errorf("ssi token create on %s printed no token", n.Name))
	}
	if len(errs) == 0 {
		return "", errors.New("no server node is running to create a join token: Restart one")
	}
	return "", errors.Join(errs...)
}

// hostPath is PATH inside hosts: the cluster's ssi and ssid binaries come first.
func hostPath() string {
	path := os.Getenv("PATH")
	if path == "" {
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	return filepath.Dir(HostBinary) + ":" + path
}

// Exec returns a command that runs inside a node's namespaces (through
// nsenter), with SSI_SOCKET set to the host's socket and the cluster's ssi
// binary first on PATH, so Exec(ctx, "n2", "ssi", "ps") works. The command is
// not put in the node's cgroup. If the node is down, the command's Start
// fails.
func (c *Cluster) Exec(ctx context.Context, name string, args ...string) *exec.Cmd {
	n, err := c.node(name)
	var pid int
	if err == nil {
		if pid = n.InitPID(); pid == 0 {
			err = fmt.Errorf("node %s is not running: Restart it first", name)
		}
	}
	cmd := exec.CommandContext(ctx, "nsenter", NsenterArgs(pid, args...)...)
	cmd.Env = HostEnv(os.Environ())
	if err != nil {
		cmd.Err = err
	}
	return cmd
}

// NsenterArgs are the nsenter arguments that run args in every namespace of
// the host whose init has the given machine pid.
func NsenterArgs(initPid int, args ...string) []string {
	return append([]string{"-t", strconv.Itoa(initPid), "--net", "--uts", "--mount", "--pid", "--ipc", "--"}, args...)
}

// HostEnv returns env with what commands run inside a host expect: SSI_SOCKET
// set to the host's socket and the cluster's ssi binary first on PATH.
func HostEnv(env []string) []string {
	return append(slices.Clone(env), "SSI_SOCKET="+HostSocket, "PATH="+hostPath())
}

// CLI returns `<binary> args... --socket DIR/nK/ssi.sock`, run from the
// machine against a node's agent (the --socket flag goes before a "--" in
// args, and SSI_SOCKET is set too).
func (c *Cluster) CLI(ctx context.Context, name string, args ...string) *exec.Cmd {
	n, err := c.node(name)
	socket := ""
	if err == nil {
		socket = n.Socket()
	}
	cmd := exec.CommandContext(ctx, c.opts.Client, withSocketFlag(args, socket)...)
	cmd.Env = append(os.Environ(), "SSI_SOCKET="+socket)
	if err != nil {
		cmd.Err = err
	}
	return cmd
}

func withSocketFlag(args []string, socket string) []string {
	flag := "--socket=" + socket
	if i := slices.Index(args, "--"); i >= 0 {
		return slices.Concat(args[:i], []string{flag}, args[i:])
	}
	return append(slices.Clone(args), flag)
}

// splitTokenArg takes --token (and its value) out of an agent command line and returns the
// token apart; the last one wins, as with the flag.
func splitTokenArg(args []string) (rest []string, token string) {
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case a == "--token" && i+1 < len(args):
			token = args[i+1]
			i++
		case strings.HasPrefix(a, "--token="):
			token = strings.TrimPrefix(a, "--token=")
		default:
			rest = append(rest, a)
		}
	}
	return rest, token
}
