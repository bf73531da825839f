package daemoncli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/ssi-cluster/ssi/internal/cli"

	"github.com/ssi-cluster/ssi/internal/devcluster"
)

const (
	defaultDevDir = "/tmp/ssi-dev"
	// devMarker marks a directory as made by ssi dev, so that a later run
	// may wipe it; it is also the lock that keeps two runs apart.
	devMarker = ".ssi-dev"
)

// nodeDirName matches the per-node directories ssi dev wipes between runs.
var nodeDirName = regexp.MustCompile(`^n[0-9]+$`)

func newDevCommand() *cobra.Command {
	var (
		nodes, servers int
		dir            string
	)
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a cluster of simulated hosts on this machine (needs root)",
		Long: `Run a real cluster of N simulated hosts on this one machine, for trying ssi out and for
tests. Each host n1..nN has its own network namespace on a private bridge, hostname, mount
namespace (private /tmp and /run), PID namespace with its own /proc, and cgroup, and runs a
real "ssi agent". Nodes n1..n3 (or --servers) are servers; n1 bootstraps, the others join.

Node K's socket, log and pid files are in DIR/nK (inside the host: /run/ssi). Each run starts a
fresh cluster: node state left in DIR by an earlier run is wiped. ssi dev stays in the
foreground; Ctrl-C (or SIGTERM) stops the agents and removes every host, link and cgroup it
made. Logs are kept in DIR. After an ssi dev killed with -9, the next run with the same --dir
removes the bridge and cgroup it left.`,
		Example: `  sudo ssi dev                                   # 3 nodes under /tmp/ssi-dev
  sudo ssi dev --nodes 5 --servers 3 --dir /var/tmp/ssi-dev
  # in another terminal:
  export SSI_SOCKET=/tmp/ssi-dev/n1/ssi.sock
  ssi nodes
  sudo ssi dev exec n2 -- sh`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			asDaemon()
			return runDev(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), devcluster.Options{
				Nodes: nodes, Servers: servers, Dir: dir,
			})
		},
	}
	cmd.Flags().IntVar(&nodes, "nodes", 3, "number of simulated hosts")
	cmd.Flags().IntVar(&servers, "servers", 0, "how many of the first nodes are servers (default min(3, nodes))")
	cmd.PersistentFlags().StringVar(&dir, "dir", defaultDevDir, "state directory: DIR/nK holds node K's socket, log and pid files")
	cmd.AddCommand(newDevExecCommand(&dir))
	return cmd
}

func runDev(ctx context.Context, stdout, stderr io.Writer, opts devcluster.Options) error {
	if err := checkDevCounts(opts.Nodes, opts.Servers); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("ssi dev needs root for network namespaces, veths and cgroups: run it with sudo (sudo ssi dev)")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return fmt.Errorf("--dir %q: %w", opts.Dir, err)
	}
	if err := checkDevDirLength(dir, opts.Nodes); err != nil {
		return err
	}
	unlock, err := claimDevDir(dir)
	if err != nil {
		return err
	}
	defer unlock()
	if id := recordedCluster(dir); id != "" {
		// The run that recorded it did not clean up (kill -9, or a process it could not
		// end): the lock says it is gone. Its bridge would hold a subnet, its cgroup stay, for
		// good. Bounded: a process stuck in the kernel (D state) cannot be removed, and must
		// not keep this run from starting.
		rctx, cancel := context.WithTimeout(ctx, leftoverTimeout)
		err := devcluster.RemoveLeftovers(rctx, id)
		cancel()
		if err != nil {
			fmt.Fprintf(stderr, "ssi dev: %v\n", err)
		} else {
			fmt.Fprintf(stderr, "ssi dev: removed the bridge and cgroup that dev cluster %s, an earlier run, left\n", id)
			recordCluster(dir, "")
		}
	}
	binary, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find the ssid binary to run on the nodes: %w", err)
	}
	// The lean client, built next to this binary, is "ssi" on the nodes; without it, this
	// binary stands in.
	if client, err := exec.LookPath(filepath.Join(filepath.Dir(binary), "ssi")); err == nil {
		opts.Client = client
	}

	// SIGHUP too: a closed terminal must not leave bridges and cgroups behind.
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	opts.Binary = binary
	opts.Dir = dir
	opts.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	began := time.Now()
	cluster, err := devcluster.Start(ctx, opts)
	if err != nil {
		if ctx.Err() != nil {
			return errors.New("ssi dev interrupted while starting: everything it made is removed")
		}
		return err
	}
	defer cluster.Close()
	recordCluster(dir, cluster.ID())
	printDevUsage(stdout, cluster, dir, time.Since(began))

	watchNodes(ctx, stderr, cluster)
	fmt.Fprintln(stdout, "\nssi dev: stopping the cluster…")
	if err := cluster.Close(); err != nil {
		return err
	}
	recordCluster(dir, "")
	fmt.Fprintf(stdout, "ssi dev: removed every host, link and cgroup; logs are kept in %s\n", dir)
	return nil
}

// checkDevCounts checks --nodes and --servers (0: the default) in the flags' words;
// devcluster's own checks speak of its Options.
func checkDevCounts(nodes, servers int) error {
	if nodes < 1 || nodes > devcluster.MaxNodes {
		return fmt.Errorf("--nodes %d: give 1 to %d (the simulated hosts share one /24 subnet)", nodes, devcluster.MaxNodes)
	}
	if servers < 0 || servers > nodes {
		return fmt.Errorf("--servers %d: give 1 to %d (--nodes), or leave it out for min(3, --nodes)", servers, nodes)
	}
	return nil
}

// leftoverTimeout bounds the removal of what an earlier run left: killing its processes and
// removing its cgroup take milliseconds, unless a process is stuck in the kernel.
const leftoverTimeout = 5 * time.Second

// maxSocketPath is the longest path a Unix socket address holds (sun_path's 108 bytes, one
// the terminating NUL).
const maxSocketPath = 107

// checkDevDirLength refuses a --dir so long that a node's socket, DIR/nK/ssi.sock, could not
// be connected to by its path: the cluster would start, and ssi dev wait in vain for it.
func checkDevDirLength(dir string, nodes int) error {
	longest := filepath.Join(dir, "n"+strconv.Itoa(nodes), "ssi.sock")
	if len(longest) <= maxSocketPath {
		return nil
	}
	return fmt.Errorf("--dir %s is too long: node sockets such as %s must fit in %d bytes; pick a --dir of at most %d",
		dir, longest, maxSocketPath, len(dir)-(len(longest)-maxSocketPath))
}

// claimDevDir makes sure dir is ours (new, empty, or marked by an earlier ssi
// dev), locks it against a concurrent ssi dev, and wipes earlier node state.
func claimDevDir(dir string) (unlock func(), err error) {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("make --dir %s: %w", dir, err)
		}
	case errors.Is(err, syscall.ENOTDIR):
		return nil, fmt.Errorf("--dir %s is not a directory: give a directory (made if missing) for the nodes' sockets and logs", dir)
	case err != nil:
		return nil, fmt.Errorf("read --dir %s: %w", dir, err)
	case len(entries) > 0 && !fileExists(filepath.Join(dir, devMarker)):
		return nil, fmt.Errorf("--dir %s is not empty and was not made by ssi dev: empty it or pick another --dir", dir)
	}
	marker, err := os.OpenFile(filepath.Join(dir, devMarker), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("mark %s as ssi dev's: %w", dir, err)
	}
	if err := syscall.Flock(int(marker.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		marker.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("another ssi dev is running with --dir %s: stop it or pick another --dir", dir)
		}
		return nil, fmt.Errorf("lock %s: %w", marker.Name(), err)
	}
	entries, err = os.ReadDir(dir)
	if err != nil {
		marker.Close()
		return nil, fmt.Errorf("read --dir %s: %w", dir, err)
	}
	for _, e := range entries {
		if e.IsDir() && nodeDirName.MatchString(e.Name()) {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				marker.Close()
				return nil, fmt.Errorf("wipe the earlier node state in %s: %w", dir, err)
			}
		}
	}
	return func() { marker.Close() }, nil
}

// recordCluster notes in dir's marker the id of the cluster running from it ("" once it is
// removed), so that a run after one killed with -9 can remove what that one left.
func recordCluster(dir, id string) {
	content := ""
	if id != "" {
		content = "cluster " + id + "\n"
	}
	// Best effort: without it, only a kill -9 leaves anything behind, as before.
	_ = os.WriteFile(filepath.Join(dir, devMarker), []byte(content), 0o644)
}

// recordedCluster is the id recordCluster noted in dir's marker, or "".
func recordedCluster(dir string) string {
	data, err := os.ReadFile(filepath.Join(dir, devMarker))
	if err != nil {
		return ""
	}
	id, ok := strings.CutPrefix(strings.TrimSpace(string(data)), "cluster ")
	if !ok {
		return ""
	}
	return id
}

func fileExists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

func printDevUsage(w io.Writer, cluster *devcluster.Cluster, dir string, took time.Duration) {
	nodes := cluster.Nodes()
	fmt.Fprintf(w, "ssi dev: %d nodes alive in %.2fs (subnet %s, bridge %s)\n",
		len(nodes), took.Seconds(), cluster.Subnet(), cluster.Bridge())
	for _, n := range nodes {
		role := "client"
		if n.Server {
			role = "server"
		}
		fmt.Fprintf(w, "  %-4s %-15s %s\n", n.Name, n.IP, role)
	}
	dirFlag := ""
	if dir != defaultDevDir {
		dirFlag = " --dir " + dir
	}
	fmt.Fprintf(w, `
Use it:
  export SSI_SOCKET=%[1]s
  ssi nodes
  ssi dev exec%[2]s n2 -- sh        # a shell inside node n2 (every node's files are under /ssi)
  ssi run -n %[4]s --cwd / -- hostname   # a command on node %[4]s, as if local
  ssi fs                         # the cluster file tree: exports and mounts
Node K's socket, log and pids: %[3]s/nK/{ssi.sock,agent.log,agent.pid,init.pid}
Ctrl-C stops the cluster and removes everything it made.
`, nodes[0].Socket(), dirFlag, dir, nodes[len(nodes)-1].Name)
}

// watchNodes waits for ctx to end, telling the user when a host stops on its
// own (an agent that crashed) so they know where to look.
func watchNodes(ctx context.Context, w io.Writer, cluster *devcluster.Cluster) {
	reported := map[string]bool{}
	ticker := time.NewTicker(time.Second)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		for _, n := range cluster.Nodes() {
			if !n.Running() && !reported[n.Name] {
				reported[n.Name] = true
				fmt.Fprintf(w, "ssi dev: node %s has stopped; see %s\n", n.Name, n.LogPath())
			}
		}
	}
}

func newDevExecCommand(dir *string) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "exec NODE -- COMMAND [ARG...]",
		Short: "Run a command inside a node of ssi dev (its network, hostname, mounts and processes)",
		Long: `Run a command inside simulated host NODE of a running "ssi dev": in its network, UTS, mount,
PID and IPC namespaces, with stdin, stdout and stderr passed through and its exit status
returned. Inside, SSI_SOCKET points at the node's agent and "ssi" is the cluster's binary.`,
		Example: `  sudo ssi dev exec n2 -- sh
  sudo ssi dev exec n3 -- ssi ps
  sudo ssi dev exec --dir /var/tmp/ssi-dev n1 -- ip -br addr`,
		Args: cli.NeedArgs(1, -1, "a node and a command, e.g. n2 -- sh"),
		RunE: func(cmd *cobra.Command, args []string) error {
			command := args[1:]
			// Flag parsing stops at NODE, so a "--" after it is still here.
			if len(command) > 0 && command[0] == "--" {
				command = command[1:]
			}
			if len(command) == 0 {
				return errors.New("no command to run: give one after the node, e.g. ssi dev exec n2 -- sh")
			}
			return runDevExec(*dir, args[0], command)
		},
	}
	// Everything after NODE is the command, flags included.
	cmd.Flags().SetInterspersed(false)
	return cmd
}

func runDevExec(dir, node string, command []string) error {
	if os.Geteuid() != 0 {
		return errors.New("ssi dev exec needs root to enter a node's namespaces: run it with sudo")
	}
	pidFile := filepath.Join(dir, node, "init.pid")
	data, err := os.ReadFile(pidFile)
	if err != nil {
		return fmt.Errorf("no running node %s under %s (%w): start ssi dev, or pass the --dir it uses", node, dir, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return fmt.Errorf("%s is corrupt (%q): restart ssi dev", pidFile, data)
	}
	// A pid left by a cluster that is gone may belong to anything by now.
	if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err != nil || !strings.Contains(string(cmdline), "dev-init") {
		return fmt.Errorf("node %s under %s is not running (init pid %d is gone): start ssi dev", node, dir, pid)
	}
	c := exec.Command("nsenter", devcluster.NsenterArgs(pid, command...)...)
	c.Env = devcluster.HostEnv(os.Environ())
	c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
	// Ctrl-C and Ctrl-\ are for the command, which gets them from the
	// terminal itself; ssi waits for it to finish to return its status.
	// (Notify rather than Ignore: ignored signals would stay ignored in it.)
	// Other signals (kill PID) are for the command too: ssi passes them on. Not to nsenter,
	// which would die of them and leave the command running in the node: to its child, the
	// command, which it forks to enter the node's PID namespace.
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGUSR2)
	defer signal.Stop(signals)
	if err := c.Start(); err != nil {
		return fmt.Errorf("enter node %s: %w (is nsenter from util-linux installed?)", node, err)
	}
	forwarded := make(chan struct{})
	go func() {
		defer close(forwarded)
		for sig := range signals {
			if sig == syscall.SIGINT || sig == syscall.SIGQUIT {
				continue
			}
			for _, child := range childrenOf(c.Process.Pid) {
				_ = syscall.Kill(child, sig.(syscall.Signal))
			}
		}
	}()
	err = c.Wait()
	signal.Stop(signals)
	close(signals)
	<-forwarded
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		code := exitErr.ExitCode()
		if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
		return cli.Exit(code, "")
	}
	if err != nil {
		return fmt.Errorf("enter node %s: %w (is nsenter from util-linux installed?)", node, err)
	}
	return nil
}

// childrenOf lists the children of pid, from /proc/PID/task/*/children (each thread lists
// those it forked).
func childrenOf(pid int) []int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var out []int
	for _, t := range tasks {
		data, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(data)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

func newDevInitCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:    "dev-init --name NAME --dir DIR --link LINK --addr CIDR -- AGENT-COMMAND...",
		Short:  "PID 1 of a simulated host of ssi dev (started by ssi dev, not by hand)",
		Hidden: true,
		Long: `The init of a simulated host: ssi dev starts it as PID 1 in new namespaces. It sets the
hostname, makes /tmp and /run private, mounts DIR at /run/ssi and a fresh /proc, configures eth0
from LINK and CIDR once the harness has moved LINK in, then starts the agent command, reaps
every process of the host, forwards SIGTERM and SIGINT to the agent and exits with its status.`,
		Example: `  # what ssi dev runs for node n2 (not useful by hand):
  ssi dev-init --name n2 --dir /tmp/ssi-dev/n2 --link ssipab12cd2 --addr 10.213.4.3/24 -- \
      /run/ssi-bin/ssi agent --name n2 --socket /run/ssi/ssi.sock ...`,
		// The agent's command line follows; its flags are not ours.
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			asDaemon()
			if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
				return cmd.Help()
			}
			err := devcluster.RunHostInit(args)
			if exit, ok := errors.AsType[*devcluster.AgentExitError](err); ok {
				return cli.Exit(exit.Code, "")
			}
			return err
		},
	}
	return cmd
}
