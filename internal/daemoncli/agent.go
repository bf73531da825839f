package daemoncli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/ssi-cluster/ssi/internal/agent"
	"github.com/ssi-cluster/ssi/internal/cli"
	"github.com/ssi-cluster/ssi/internal/exetrim"
	"github.com/ssi-cluster/ssi/internal/idleprocs"
	"github.com/ssi-cluster/ssi/internal/monitorslack"
)

// monitorSlack is the timer slack of the agent's runtime monitor thread: it halves an idle
// agent's context switches (docs/PERFORMANCE.md, session 6) and delays nothing the monitor
// does by more than 2 ms. At 20 ms, file-tree calls right after an idle moment waited up to
// that long for the monitor to hand a processor over.
const monitorSlack = 2 * time.Millisecond

func newAgentCommand(g *cli.Globals) *cobra.Command {
	var (
		cfg        agent.Config
		configFile string
	)
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the node daemon (as root)",
		Long: `Run the ssi node daemon. Every node of the cluster runs one, as root.

The first server bootstraps a new cluster; every other node joins it with a token from
"ssi token create". A node restarted with the same --data-dir is the same node again (same
name, index and certificates); SIGTERM makes it leave gracefully.

Every agent mounts the cluster file tree at /ssi (--mount, --no-mount): /ssi/<node>/<path> is
<path> on that node, for every node. By default a node exports its whole tree, under Unix
permissions; --export, --export-read-only and --root-squash restrict that.

Ports (from --bind, default 7700): 7700 gRPC between agents (mTLS), 7701 TCP+UDP gossip
(encrypted), 7702 etcd clients and 7703 etcd peers (mTLS, servers only), 7704 node links
between agents: file-tree requests and bulk ssi run output (mTLS).

Flags can also come from --config FILE (YAML or JSON, the same keys as the flags, e.g.
"data-dir: /var/lib/ssi"); flags given on the command line win.`,
		Example: `  # first server of a new cluster
  sudo ssi agent --server --name n1 --bind 10.0.0.1:7700
  # on it: sudo ssi token create
  # another server and a client join through any node
  sudo ssi agent --server --name n2 --bind 10.0.0.2:7700 --join 10.0.0.1:7700 --token SSI1.…
  sudo ssi agent --name n4 --bind 10.0.0.4:7700 --join 10.0.0.1:7700 --token SSI1.…`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			asDaemon()
			if os.Geteuid() != 0 {
				return errors.New("ssi agent must run as root: it starts processes as other users and manages cgroups; run it with sudo (or as a systemd service)")
			}
			if configFile != "" {
				fileCfg, err := agent.LoadConfigFile(configFile)
				if err != nil {
					return err
				}
				cfg = mergeConfig(fileCfg, cfg, cmd)
			}
			// Only a joining node takes the token from the environment, so a stray
			// $SSI_TOKEN cannot make a bootstrap or restart fail.
			if cfg.Token == "" && cfg.Join != "" {
				cfg.Token = os.Getenv(agent.TokenEnv)
			}
			// The agent's children must not inherit it.
			os.Unsetenv(agent.TokenEnv)
			var level slog.Level
			if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
				return fmt.Errorf("--log-level %q: use debug, info, warn or error", cfg.LogLevel)
			}
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			cfg.Version = g.Build().Version
			if cfg.Socket == "" && g.SocketFlag() != "" {
				cfg.Socket = g.SocketFlag()
			}
			// A first server bootstraps its cluster before it serves its socket and --http:
			// one it cannot take must stop it before that, not after.
			sock := cfg.Socket
			if sock == "" {
				sock = agent.DefaultSocket
			}
			if c, err := net.DialTimeout("unix", sock, time.Second); err == nil {
				c.Close()
				return fmt.Errorf("socket %s is in use by another agent: stop it or set --socket", sock)
			}
			if cfg.HTTP != "" {
				l, err := net.Listen("tcp", cfg.HTTP)
				if err != nil {
					return fmt.Errorf("--http %s: %w: give a free address of this machine, e.g. 127.0.0.1:7780", cfg.HTTP, err)
				}
				l.Close()
			}
			return runAgent(cmd.Context(), cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "config file (YAML or JSON) with the same keys as these flags")
	f.StringVar(&cfg.Name, "name", "", "node name (default: the host name)")
	f.StringVar(&cfg.DataDir, "data-dir", agent.DefaultDataDir, "where the node keeps its identity and, on servers, etcd's data")
	f.StringVar(&cfg.Bind, "bind", "0.0.0.0:7700", "cluster address to listen on (gossip and etcd use the next three ports)")
	f.StringVar(&cfg.Advertise, "advertise", "", "address other nodes reach this one at (default: the bind address, or this host's primary IP)")
	f.StringVar(&cfg.Join, "join", "", "address of any node of the cluster to join (host:port)")
	f.StringVar(&cfg.Token, "token", "", "join token from \"ssi token create\" (or $"+agent.TokenEnv+", which other users cannot read as they can a command line)")
	f.BoolVar(&cfg.Server, "server", false, "keep a copy of the control-plane state (an etcd member) on this node")
	f.StringSliceVar(&cfg.EtcdEndpoints, "etcd-endpoints", nil, "use this existing etcd cluster instead of the embedded one (comma-separated URLs)")
	f.StringVar(&cfg.Socket, "socket", "", "Unix socket for local clients (default "+agent.DefaultSocket+")")
	f.StringVar(&cfg.HTTP, "http", "", "address for /healthz and /metrics (e.g. 127.0.0.1:7780; empty: off)")
	f.StringVar(&cfg.NodeCgroup, "node-cgroup", "", "cgroup v2 path whose processes are this node's, for load measurement when several nodes share a kernel")
	f.StringVar(&cfg.Mount, "mount", agent.DefaultMount, "where to mount the cluster file tree (/ssi/<node>/<path>)")
	f.BoolVar(&cfg.NoMount, "no-mount", false, "do not mount the cluster file tree here (this node still exports its files)")
	f.StringSliceVar(&cfg.Exports, "export", nil, "export only these directories of this node to the tree (repeatable; default: all, under Unix permissions)")
	f.BoolVar(&cfg.ExportRO, "export-read-only", false, "refuse changes to this node's files made through the tree")
	f.BoolVar(&cfg.RootSquash, "root-squash", false, "requests from root on other nodes act as nobody on this node's files")
	f.StringVar(&cfg.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	return cmd
}

// mergeConfig starts from the config file and applies the flags given on the command line.
func mergeConfig(file, flags agent.Config, cmd *cobra.Command) agent.Config {
	out := file
	set := func(name string, apply func()) {
		if cmd.Flags().Changed(name) {
			apply()
		}
	}
	set("name", func() { out.Name = flags.Name })
	set("data-dir", func() { out.DataDir = flags.DataDir })
	set("bind", func() { out.Bind = flags.Bind })
	set("advertise", func() { out.Advertise = flags.Advertise })
	set("join", func() { out.Join = flags.Join })
	set("token", func() { out.Token = flags.Token })
	set("server", func() { out.Server = flags.Server })
	set("etcd-endpoints", func() { out.EtcdEndpoints = flags.EtcdEndpoints })
	set("socket", func() { out.Socket = flags.Socket })
	set("http", func() { out.HTTP = flags.HTTP })
	set("node-cgroup", func() { out.NodeCgroup = flags.NodeCgroup })
	set("mount", func() { out.Mount = flags.Mount })
	set("no-mount", func() { out.NoMount = flags.NoMount })
	set("export", func() { out.Exports = flags.Exports })
	set("export-read-only", func() { out.ExportRO = flags.ExportRO })
	set("root-squash", func() { out.RootSquash = flags.RootSquash })
	set("log-level", func() { out.LogLevel = flags.LogLevel })
	if out.DataDir == "" {
		out.DataDir = agent.DefaultDataDir
	}
	if out.LogLevel == "" {
		out.LogLevel = flags.LogLevel // the flag's default
	}
	return out
}

// runAgent runs until SIGTERM/SIGINT (graceful leave) or a fatal error.
func runAgent(ctx context.Context, cfg agent.Config) error {
	if err := closeInheritedOnExec(); err != nil {
		return fmt.Errorf("marking inherited descriptors close-on-exec: %w", err)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	// Caught, not ignored: processes the agent starts inherit an ignored SIGHUP (an agent
	// started under nohup), and ending a tree begins with SIGHUP.
	hups := make(chan os.Signal, 1)
	signal.Notify(hups, syscall.SIGHUP)
	defer signal.Stop(hups)
	startCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-sigs:
			cancel()
		case <-startCtx.Done():
		}
	}()
	a, err := agent.Start(startCtx, cfg)
	if err != nil {
		return err
	}
	cancel()
	// The scheduler's width and the memory are the process's to govern, not one agent's (tests
	// run several agents in one process). While idle, the agent gives back its garbage and the
	// code pages it stopped running, so it stays small however long it idles.
	govCtx, stopGov := context.WithCancel(ctx)
	defer stopGov()
	if err := monitorslack.Set(monitorSlack); err != nil {
		cfg.Logger.Debug("relaxing the runtime's monitor thread", "err", err)
	}
	go idleprocs.Run(govCtx, func() {
		if _, err := exetrim.Release(); err != nil {
			cfg.Logger.Debug("releasing memory while idle", "err", err)
		}
	})
	select {
	case sig := <-sigs:
		cfg.Logger.Info("leaving the cluster", "signal", sig.String())
		return a.Close()
	case err := <-a.Err():
		a.Close()
		return fmt.Errorf("agent failed: %w", err)
	}
}

// asDaemon undoes the client's runtime tuning (cli's asShortLivedClient) for the commands that
// run for long: the agent and the simulated hosts.
func asDaemon() {
	debug.SetGCPercent(100)
	debug.SetMemoryLimit(math.MaxInt64)
}
