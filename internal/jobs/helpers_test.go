package jobs

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ssi-cluster/ssi/internal/api"
	"github.com/ssi-cluster/ssi/internal/api/jobspb"
	"github.com/ssi-cluster/ssi/internal/api/jobsrpc"
	"github.com/ssi-cluster/ssi/internal/api/ssipb"
	"github.com/ssi-cluster/ssi/internal/proc"
	"github.com/ssi-cluster/ssi/internal/proc/cgroup"
)

const testCgroupParent = "ssi-jobs-test"

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("running jobs as their users in their own cgroups needs root")
	}
}

// startTestEtcd runs a plain-text single-member etcd on loopback and returns its endpoint.
func startTestEtcd(t testing.TB) string {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Dir = t.TempDir()
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	lc, _ := url.Parse("http://127.0.0.1:0")
	lp, _ := url.Parse("http://127.0.0.1:0")
	cfg.ListenClientUrls = []url.URL{*lc}
	cfg.AdvertiseClientUrls = []url.URL{*lc}
	cfg.ListenPeerUrls = []url.URL{*lp}
	cfg.AdvertisePeerUrls = []url.URL{*lp}
	cfg.InitialCluster = cfg.Name + "=" + lp.String()
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		t.Fatal("etcd did not start")
	}
	return e.Clients[0].Addr().String()
}

func newClient(t testing.TB, endpoint string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	return cli
}

// cluster is a few job services in one process, each playing a node, over one etcd.
type cluster struct {
	t        testing.TB
	endpoint string
	dir      string
	tune     tuning
	cgroup   string // this cluster's share of the test cgroup, so parallel tests stay apart

	mu      sync.Mutex
	members map[string]Member
	changed chan struct{} // closed and replaced at every change of members
	nodes   map[string]*testNode
}

type testNode struct {
	name    string
	svc     *Service
	cli     *clientv3.Client
	client  jobsrpc.JobsClient
	socket  string
	srv     *grpc.Server
	crashed bool
}

func newCluster(t testing.TB) *cluster {
	t.Helper()
	requireRoot(t)
	dir := t.TempDir()
	// Jobs and clients of other users must be able to reach their files and the sockets.
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	tune := defaultTuning()
	tune.spoolDir = filepath.Join(dir, "spool")
	tune.killGrace = time.Second
	tune.nodeGrace = time.Second
	tune.backstop = 5 * time.Second
	tune.tick = 200 * time.Millisecond
	tune.usageSave = 100 * time.Millisecond
	tune.interactiveTTL = 2
	c := &cluster{t: t, endpoint: startTestEtcd(t), dir: dir, tune: tune, members: map[string]Member{}, changed: make(chan struct{}), nodes: map[string]*testNode{},
		cgroup: fmt.Sprintf("%s/c%d", testCgroupParent, clusterSeq.Add(1))}
	t.Cleanup(c.close)
	return c
}

func (c *cluster) membersView() []Member {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Member, 0, len(c.members))
	for _, m := range c.members {
		out = append(out, m)
	}
	return out
}

// membersChanged is the gossip layer's change notice (cluster.Membership.Changed).
func (c *cluster) membersChanged() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

// announce tells the job services the view changed. The caller holds c.mu.
func (c *cluster) announce() {
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *cluster) setAlive(name string, alive bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.members[name]
	m.Alive = alive
	c.members[name] = m
	c.announce()
}

// start runs a node's job service with cpus job slots (0: a server that runs no jobs).
func (c *cluster) start(name string, server bool, cpus uint32) *testNode {
	c.t.Helper()
	return c.startWith(name, server, cpus, nil)
}

// startWith is start with the node's dependencies changed by adjust, if not nil.
func (c *cluster) startWith(name string, server bool, cpus uint32, adjust func(*Deps)) *testNode {
	t := c.t
	t.Helper()
	c.mu.Lock()
	idx := uint32(len(c.members) + 1)
	if m, ok := c.members[name]; ok {
		idx = m.Index
	}
	c.members[name] = Member{Name: name, Index: idx, Alive: true, CPUs: cpus, MemTotal: 8 << 30}
	c.announce()
	c.mu.Unlock()
	cli := newClient(t, c.endpoint)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})).With("node", name)
	deps := Deps{
		Etcd: cli, Node: name, Server: server, Members: c.membersView, MembersChanged: c.membersChanged,
		CgroupParent: c.cgroup + "/" + name, Socket: "/nonexistent/ssi.sock", NodeIndex: idx, Logger: log,
	}
	if adjust != nil {
		adjust(&deps)
	}
	svc, err := start(ctx, deps, c.tune)
	if err != nil {
		t.Fatal(err)
	}
	n := &testNode{name: name, svc: svc, cli: cli, socket: filepath.Join(c.dir, name+".sock")}
	n.serve(t)
	c.mu.Lock()
	c.nodes[name] = n
	c.mu.Unlock()
	return n
}

// serve offers the node's Jobs service on a Unix socket, as the agent does.
func (n *testNode) serve(t testing.TB) {
	lis, err := net.Listen("unix", n.socket)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(n.socket, 0o666); err != nil {
		t.Fatal(err)
	}
	n.srv = grpc.NewServer(grpc.Creds(api.PeerCredentials()))
	n.svc.Register(n.srv)
	go func() { _ = n.srv.Serve(lis) }()
	cc, err := grpc.NewClient("passthrough:///agent", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", n.socket)
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	n.client = jobsrpc.NewJobsClient(cc)
}

// stop closes a node's service gracefully.
func (n *testNode) stop() {
	if n.crashed {
		return
	}
	n.crashed = true
	n.srv.Stop()
	n.svc.Close()
	n.cli.Close()
}

// crash stops a node as kill -9 would: no resignation, no reports, processes left running;
// its etcd lease expires on its own.
func (n *testNode) crash() {
	if n.crashed {
		return
	}
	n.crashed = true
	n.srv.Stop()
	s := n.svc
	s.exec.closed.Store(true)
	s.exec.stopWatch()
	s.exec.stopReporter()
	s.cancel()
	n.cli.Close()
	s.wg.Wait()
	s.exec.watchWG.Wait()
}

func (c *cluster) close() {
	c.mu.Lock()
	nodes := c.nodes
	c.mu.Unlock()
	for _, n := range nodes {
		n.stop()
	}
	// Crashed nodes leave their processes running, as after kill -9 of an agent.
	if mount, err := cgroup.Mount(); err == nil {
		for _, n := range nodes {
			parent := c.cgroup + "/" + n.name
			if groups, err := cgroup.Open(mount, parent).Children(); err == nil {
				for _, g := range groups {
					_, _ = proc.TerminateLeftovers(context.Background(), mount, g.Rel(), 100*time.Millisecond)
					_ = g.Remove()
				}
			}
			_ = cgroup.Open(mount, parent).Remove()
		}
		_ = cgroup.Open(mount, c.cgroup).Remove()
	}
}

var clusterSeq atomic.Int64

// leader waits for a scheduler leader and returns it.
func (c *cluster) leader() *testNode {
	c.t.Helper()
	var found *testNode
	waitFor(c.t, 15*time.Second, "a scheduler leader", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, n := range c.nodes {
			if !n.crashed && n.svc.leading.Load() {
				found = n
				return true
			}
		}
		return false
	})
	return found
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// submit queues a job from n and returns its id.
func (n *testNode) submit(t testing.TB, req *jobspb.SubmitRequest) string {
	t.Helper()
	resp, err := n.client.Submit(ctxT(t), req)
	if err != nil {
		t.Fatalf("submit %q: %v", req.Args, err)
	}
	return resp.JobId
}

// tasks lists every task (all states) of the named jobs.
func (n *testNode) tasks(t testing.TB, ids ...string) map[string]*jobspb.TaskInfo {
	t.Helper()
	resp, err := n.client.List(ctxT(t), &jobspb.ListRequest{All: true, Ids: ids})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*jobspb.TaskInfo{}
	for _, ti := range resp.Tasks {
		out[ti.Id] = ti
	}
	return out
}

// waitState waits until task id is in state (and returns it).
func (n *testNode) waitState(t testing.TB, id string, timeout time.Duration, states ...string) *jobspb.TaskInfo {
	t.Helper()
	var last *jobspb.TaskInfo
	deadline := time.Now().Add(timeout)
	for {
		base, _, _ := strings.Cut(id, "_")
		last = n.tasks(t, base)[id]
		if last != nil {
			for _, s := range states {
				if last.State == s {
					return last
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s: want state %v, have %s", id, states, describe(last))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func describe(ti *jobspb.TaskInfo) string {
	if ti == nil {
		return "no such task"
	}
	return fmt.Sprintf("%s (reason %q, nodes %v, exit %d)", ti.State, ti.Reason, ti.Nodes, ti.ExitCode)
}

// cmd builds a submission that runs a shell command in dir as the caller.
func cmd(dir, script string) *jobspb.SubmitRequest {
	return &jobspb.SubmitRequest{
		Args: ssipb.ByteWords([]string{"/bin/sh", "-c", script}), Cwd: []byte(dir),
		Env: ssipb.ByteWords([]string{"PATH=/usr/local/bin:/usr/bin:/bin", "LC_ALL=C"}),
	}
}

func readFile(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func contextWithCancel(t testing.TB) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return ctx, cancel
}

func clientv3CountOnly() []clientv3.OpOption { return []clientv3.OpOption{clientv3.WithCountOnly()} }
