package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ssi-cluster/ssi/internal/api"
	"github.com/ssi-cluster/ssi/internal/api/jobsrpc"
	"github.com/ssi-cluster/ssi/internal/api/ssipb"
	"github.com/ssi-cluster/ssi/internal/api/ssirpc"
	"github.com/ssi-cluster/ssi/internal/cluster"
	"github.com/ssi-cluster/ssi/internal/pki"
	"github.com/ssi-cluster/ssi/internal/store"
)

// Token lifetimes.
const (
	defaultTokenTTL = 24 * time.Hour
	maxTokenTTL     = 365 * 24 * time.Hour
)

func (a *Agent) startControlServer() error {
	path := a.cfg.Socket
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("creating socket directory: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("socket %s is in use by another agent: stop it or set --socket", path)
	}
	os.Remove(path) // a stale socket of a crashed agent
	lis, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", path, err)
	}
	// Any local user may talk to the agent; what each may do is decided per call from the
	// kernel-reported uid.
	if err := os.Chmod(path, 0o666); err != nil {
		lis.Close()
		return fmt.Errorf("opening %s to all users: %w", path, err)
	}
	a.ctlSrv = grpc.NewServer(append(api.ServerOptions(),
		grpc.Creds(api.PeerCredentials()),
		grpc.ChainUnaryInterceptor(a.metrics.unary("control")),
		grpc.ChainStreamInterceptor(a.metrics.stream("control")),
	)...)
	// The same services over the lean protocol, for CLI commands that do not link gRPC.
	a.ctlLocal = api.NewLocalServer(a.metrics.unary("control"), a.metrics.stream("control"))
	control := &controlService{a: a}
	ssirpc.RegisterControlServer(a.ctlSrv, control)
	ssirpc.RegisterControlServer(a.ctlLocal, control)
	a.jobs.Register(a.ctlSrv)
	jobsrpc.RegisterJobsServer(a.ctlLocal, a.jobs)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if err := api.ServeLocal(lis, a.ctlSrv, a.ctlLocal); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			a.fail(fmt.Errorf("control socket stopped: %w", err))
		}
	}()
	return nil
}

// controlService answers the local CLI.
type controlService struct {
	ssirpc.UnimplementedControlServer
	a *Agent
}

func (c *controlService) Run(stream ssirpc.Control_RunServer) error { return c.a.procs.Run(stream) }

func (c *controlService) Ps(ctx context.Context, req *ssipb.PsRequest) (*ssipb.PsResponse, error) {
	return c.a.procs.Ps(ctx, req)
}

func (c *controlService) Kill(ctx context.Context, req *ssipb.KillRequest) (*ssipb.KillResponse, error) {
	return c.a.procs.Kill(ctx, req)
}

func (c *controlService) Wait(ctx context.Context, req *ssipb.WaitRequest) (*ssipb.WaitResponse, error) {
	return c.a.procs.Wait(ctx, req)
}

func (c *controlService) Nodes(ctx context.Context, _ *ssipb.NodesRequest) (*ssipb.NodesResponse, error) {
	nodes, warning := c.a.nodes(ctx)
	return &ssipb.NodesResponse{Nodes: nodes, Warning: warning}, nil
}

// nodes merges the durable registry (every node that ever joined) with the live gossip view
// (state and load). When etcd cannot be read, the last registry read is used.
func (a *Agent) nodes(ctx context.Context) ([]*ssipb.NodeInfo, string) {
	var warning string
	if err := a.readRegistry(ctx); err != nil {
		warning = fmt.Sprintf("registry unavailable (%v); showing the last known registry and live gossip", err)
	}
	a.mu.Lock()
	registry := make(map[string]store.NodeRecord, len(a.registry))
	for k, v := range a.registry {
		registry[k] = v
	}
	a.mu.Unlock()

	byName := map[string]*ssipb.NodeInfo{}
	for _, rec := range registry {
		state := cluster.StateDead
		if rec.State == store.RecordLeft {
			state = cluster.StateLeft
		}
		byName[rec.Name] = &ssipb.NodeInfo{Name: rec.Name, Index: rec.Index, Addr: rec.Addr, Role: rec.Role, State: state}
	}
	for _, m := range a.gossip.Members() {
		n, ok := byName[m.Name]
		if !ok {
			n = &ssipb.NodeInfo{Name: m.Name, Index: m.Meta.Index, Addr: m.Meta.Addr, Role: m.Meta.Role}
			byName[m.Name] = n
		}
		// A node the registry says left but gossip shows alive has come back.
		if m.State != cluster.StateDead || n.State != cluster.StateLeft {
			n.State = m.State
		}
		fillLoad(n, m.Meta)
	}
	self := byName[a.state.Name]
	if self == nil {
		self = &ssipb.NodeInfo{Name: a.state.Name, Index: a.state.Index, Addr: a.cfg.Advertise, Role: a.state.Role}
		byName[a.state.Name] = self
	}
	self.State = cluster.StateAlive
	fillLoad(self, a.gossip.LocalMeta())

	out := make([]*ssipb.NodeInfo, 0, len(byName))
	for _, n := range byName {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Index != out[j].Index {
			return out[i].Index < out[j].Index
		}
		return out[i].Name < out[j].Name
	})
	return out, warning
}

// registryReadBudget bounds how long a node listing waits for the registry before it answers
// from the last registry read; registryTryTimeout bounds each try within it.
const (
	registryReadBudget = 2 * time.Second
	registryTryTimeout = 600 * time.Millisecond
)

// readRegistry refreshes the registry for a listing, which must answer within a second or two
// while a server is stopped or killed and the cluster still has quorum. The read is
// serializable: a linearizable one needs a leader, and waits out a whole election when the
// leader is the server that stopped, while the registry changes only on joins and leaves and
// node states come from gossip. A try balanced onto a stopped server (a client node's
// endpoints follow gossip, which takes seconds to notice) hangs until its own short deadline,
// and the client balances the next try onto another endpoint.
func (a *Agent) readRegistry(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, registryReadBudget)
	defer cancel()
	for {
		tctx, tcancel := context.WithTimeout(ctx, registryTryTimeout)
		err := a.refreshRegistry(tctx, clientv3.WithSerializable())
		timedOut := tctx.Err() != nil
		tcancel()
		// Only a try that hung is worth repeating; other errors would repeat at once.
		if err == nil || !timedOut || ctx.Err() != nil {
			return err
		}
	}
}

func fillLoad(n *ssipb.NodeInfo, m cluster.Meta) {
	l := m.Load
	n.Cpus, n.Load1, n.Load5, n.Load15, n.Runnable = l.CPUs, l.Load1, l.Load5, l.Load15, l.Runnable
	n.MemTotalBytes, n.MemFreeBytes, n.CpuUsed = l.MemTotal, l.MemFree, l.CPUUsed
	n.Protocol, n.Version = m.Protocol, m.Version
}

func (c *controlService) Status(ctx context.Context, _ *ssipb.StatusRequest) (*ssipb.StatusResponse, error) {
	a := c.a
	nodes, _ := a.nodes(ctx)
	resp := &ssipb.StatusResponse{
		ClusterId:     a.state.ClusterID,
		Members:       map[string]uint32{},
		EtcdEndpoints: a.state.EtcdEndpoints,
		ExternalEtcd:  a.state.ExternalEtcd,
	}
	if a.jobs != nil {
		resp.SchedulerLeader = a.jobs.Leader()
	}
	for _, n := range nodes {
		resp.Members[n.State]++
		if n.Name == a.state.Name {
			resp.ThisNode = n
		}
	}
	// A live member answers in milliseconds; one that is stopped but not yet seen down by
	// gossip costs this whole wait, so it is short enough for `ssi status` to stay prompt.
	sctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if a.state.ExternalEtcd {
		resp.Servers, resp.EtcdLeader, resp.EtcdHealthy, resp.EtcdError = a.endpointStatus(sctx, a.state.EtcdEndpoints, nil, nil)
		return resp, nil
	}
	// Serializable: the member list must be shown while an election runs, when a linearizable
	// read would wait for the new leader; the per-server health below shows the election.
	list, err := a.etcd.MemberList(sctx, clientv3.WithSerializable())
	if err != nil {
		resp.EtcdError = fmt.Sprintf("etcd unreachable: %v", err)
		return resp, nil
	}
	var endpoints []string
	names := map[string]string{}
	learners := map[string]bool{}
	down := map[string]string{}
	for _, m := range list.Members {
		if len(m.ClientURLs) == 0 {
			resp.Servers = append(resp.Servers, &ssipb.ServerStatus{Name: m.Name, Error: "member added but not started yet"})
			continue
		}
		ep := m.ClientURLs[0]
		endpoints = append(endpoints, ep)
		names[ep] = m.Name
		learners[ep] = m.IsLearner
		// Asking a server that is down costs the whole timeout: right after a server dies,
		// when its status matters most, every `ssi status` would take two seconds.
		if a.gossip.Gone(m.Name) {
			down[ep] = "not asked: gossip reports the node down"
		}
	}
	servers, leader, healthy, errText := a.endpointStatus(sctx, endpoints, names, down)
	for _, s := range servers {
		s.Learner = learners[s.EtcdEndpoint]
	}
	resp.Servers = append(servers, resp.Servers...)
	resp.EtcdLeader, resp.EtcdHealthy, resp.EtcdError = leader, healthy, errText
	return resp, nil
}

// endpointStatus asks every etcd endpoint in parallel for its view of the cluster, except the
// ones in down, which count as not answering for the reason given.
func (a *Agent) endpointStatus(ctx context.Context, endpoints []string, names, down map[string]string) (servers []*ssipb.ServerStatus, leader string, healthy bool, errText string) {
	type result struct {
		ep       string
		leaderID uint64
		memberID uint64
		err      error
	}
	results := make([]result, len(endpoints))
	var wg sync.WaitGroup
	for i, ep := range endpoints {
		if reason, ok := down[ep]; ok {
			results[i] = result{ep: ep, err: errors.New(reason)}
			continue
		}
		wg.Go(func() {
			st, err := a.etcd.Status(ctx, ep)
			r := result{ep: ep, err: err}
			if err == nil {
				r.leaderID, r.memberID = st.Leader, st.Header.MemberId
			}
			results[i] = r
		})
	}
	wg.Wait()
	var leaderID uint64
	up := 0
	for _, r := range results {
		s := &ssipb.ServerStatus{Name: names[r.ep], EtcdEndpoint: r.ep, Healthy: r.err == nil}
		if s.Name == "" {
			s.Name = r.ep
		}
		if r.err != nil {
			s.Error = r.err.Error()
		} else {
			up++
			if r.leaderID != 0 {
				leaderID = r.leaderID
			}
		}
		servers = append(servers, s)
	}
	for i, r := range results {
		if r.err == nil && r.memberID == leaderID && leaderID != 0 {
			servers[i].Leader = true
			leader = servers[i].Name
		}
	}
	healthy = leaderID != 0 && up > len(endpoints)/2
	if !healthy {
		errText = fmt.Sprintf("%d of %d etcd servers answer and no quorum leader is known", up, len(endpoints))
	}
	return servers, leader, healthy, errText
}

func (c *controlService) CreateToken(ctx context.Context, req *ssipb.CreateTokenRequest) (*ssipb.CreateTokenResponse, error) {
	caller, err := api.CallerFrom(ctx)
	if err != nil {
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	if !caller.IsRoot() {
		return nil, status.Error(codes.PermissionDenied, "only root may create join tokens, since a token lets a machine join the cluster: run it with sudo")
	}
	ttl := time.Duration(req.TtlSeconds) * time.Second
	if ttl == 0 {
		ttl = defaultTokenTTL
	}
	if ttl < time.Second || ttl > maxTokenTTL {
		return nil, status.Errorf(codes.InvalidArgument, "token lifetime %s is out of range: use 1s to %s", ttl, maxTokenTTL)
	}
	tok, err := pki.NewToken(pki.CAHash(c.a.caCert))
	if err != nil {
		return nil, status.Errorf(codes.Internal, "creating token: %v", err)
	}
	now := time.Now().UTC()
	rec := store.TokenRecord{SecretHash: pki.HashSecret(tok.Secret), Expires: now.Add(ttl), Created: now,
		CreatedBy: fmt.Sprintf("uid %d on %s", caller.UID, c.a.state.Name)}
	// Bounded below the CLI's own 15 s, so that the user gets the reason rather than a
	// deadline of the client's.
	putCtx, cancel := context.WithTimeout(ctx, tokenStoreTimeout)
	defer cancel()
	if err := store.PutToken(putCtx, c.a.etcd, tok.ID, rec); err != nil {
		return nil, storeUnavailable(err)
	}
	return &ssipb.CreateTokenResponse{Token: tok.String(), ExpiresUnix: rec.Expires.Unix()}, nil
}

// tokenStoreTimeout bounds storing a join token: etcd answers in milliseconds when a quorum
// of the servers is up, and never when it is not.
const tokenStoreTimeout = 5 * time.Second

// storeUnavailable is what a client is told when the control-plane state could not be
// written: without a quorum, etcd's own words ("context deadline exceeded") name no cause.
func storeUnavailable(err error) error {
	if errors.Is(err, context.DeadlineExceeded) || status.Code(err) == codes.DeadlineExceeded {
		return status.Errorf(codes.Unavailable, "%v: etcd did not answer within %v; is a quorum of the servers up? (see ssi status)", err, tokenStoreTimeout)
	}
	return status.Errorf(codes.Unavailable, "%v; is a quorum of the servers up? (see ssi status)", err)
}
