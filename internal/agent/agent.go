// Package agent composes the services of one node — durable state (etcd), gossip membership,
// the node-to-node gRPC API and the local control socket — starts them in order, and stops them
// in reverse. Start validates first and cleans up after a partial start, so a failed start
// leaves nothing half-made.
package agent

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/ssi-cluster/ssi/internal/api"
	"github.com/ssi-cluster/ssi/internal/api/ssirpc"
	"github.com/ssi-cluster/ssi/internal/cluster"
	"github.com/ssi-cluster/ssi/internal/datalink"
	"github.com/ssi-cluster/ssi/internal/exetrim"
	"github.com/ssi-cluster/ssi/internal/jobs"
	"github.com/ssi-cluster/ssi/internal/peermux"
	"github.com/ssi-cluster/ssi/internal/pki"
	"github.com/ssi-cluster/ssi/internal/proc/cgroup"
	"github.com/ssi-cluster/ssi/internal/procspace"
	"github.com/ssi-cluster/ssi/internal/store"
)

// Roles of a node.
const (
	RoleServer = "server"
	RoleClient = "client"
)

// certTTL is how long node certificates are valid.
const certTTL = 5 * 365 * 24 * time.Hour

// Agent is a running node daemon.
type Agent struct {
	cfg  Config
	log  *slog.Logger
	dir  dataDir
	lock *os.File

	state   nodeState
	caCert  *x509.Certificate
	caPEM   []byte
	keyPair tls.Certificate

	member  *store.Member
	etcd    *clientv3.Client
	gossip  *cluster.Membership
	sampler *cluster.LoadSampler
	metrics *metrics

	peerSrv *grpc.Server
	ctlSrv  *grpc.Server
	// ctlLocal serves the control socket's lean protocol (localrpc) beside ctlSrv.
	ctlLocal *api.LocalServer
	httpSrv  *http.Server

	mu       sync.Mutex
	registry map[string]store.NodeRecord // last registry read, for when etcd is unreachable

	peerMu    sync.Mutex
	peerConns map[string]*grpc.ClientConn

	procs *procspace.Service
	link  *datalink.Link // bulk output of remote sessions
	links *peermux.Mux   // the link port: file wire and data links
	jobs  *jobs.Service
	files files

	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	ready     chan struct{}
	errc      chan error
	closeOnce sync.Once
	closeErr  error
	// leaving is set when the agent starts to stop, before it leaves the gossip group: from
	// then on, rejoining nodes that seem gone would only undo the departure.
	leaving atomic.Bool
}

// Start validates cfg, brings the node up (bootstrapping or joining a cluster the first time,
// or restarting as the node its data dir holds) and returns once it serves.
func Start(ctx context.Context, cfg Config) (_ *Agent, err error) {
	cfg, err = cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	a := &Agent{
		cfg:       cfg,
		log:       cfg.Logger,
		dir:       dataDir(cfg.DataDir),
		metrics:   newMetrics(cfg.Logger),
		registry:  map[string]store.NodeRecord{},
		peerConns: map[string]*grpc.ClientConn{},
		ready:     make(chan struct{}),
		errc:      make(chan error, 4),
	}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			a.stop(false)
		}
	}()
	if a.lock, err = a.dir.lock(); err != nil {
		return nil, err
	}
	st, found, err := a.dir.loadState()
	if err != nil {
		return nil, err
	}
	switch {
	case found:
		err = a.resume(ctx, st)
	case cfg.Join != "":
		err = a.join(ctx)
	case cfg.Server:
		err = a.bootstrap(ctx)
	default:
		err = fmt.Errorf("data dir %s holds no node: start the first server with --server, or join with --join ADDR --token TOKEN (from \"ssi token create\" on a server)", cfg.DataDir)
	}
	if err != nil {
		return nil, err
	}
	if err := a.serve(ctx); err != nil {
		return nil, err
	}
	close(a.ready)
	a.wg.Add(1)
	go a.trimStartupCode()
	a.log.Info("agent ready", "node", a.state.Name, "index", a.state.Index, "role", a.state.Role,
		"cluster", a.state.ClusterID, "addr", cfg.Advertise, "socket", cfg.Socket)
	return a, nil
}

// trimAfter is how long after it starts serving the agent drops the pages of code that only
// its start-up ran: by then joining, elections and the first registry writes are done.
const trimAfter = 10 * time.Second

// trimStartupCode unmaps the executable's pages once the agent has settled (see
// internal/exetrim) and returns the start-up's garbage to the system, so that an idle
// agent's resident memory is the code it runs and the data it holds. (An idle agent
// allocates so little that the next collection could be minutes away.)
func (a *Agent) trimStartupCode() {
	defer a.wg.Done()
	t := time.NewTimer(trimAfter)
	defer t.Stop()
	select {
	case <-a.ctx.Done():
		return
	case <-t.C:
	}
	n, err := exetrim.Release()
	if err != nil {
		a.log.Warn("could not drop the start-up code's pages", "err", err)
		return
	}
	a.log.Debug("dropped the mappings of the executable; the code in use faults back in", "bytes", n)
}

// Ready is closed once the agent serves.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// Err reports a failure that stops the agent after it started.
func (a *Agent) Err() <-chan error { return a.errc }

// Name is the node's name.
func (a *Agent) Name() string { return a.state.Name }

// Close leaves the cluster gracefully (peers show the node as "left") and stops every service.
func (a *Agent) Close() error {
	a.stop(true)
	return a.closeErr
}

func (a *Agent) fail(err error) {
	select {
	case a.errc <- err:
	default:
	}
}

// resume restarts the node its data dir holds.
func (a *Agent) resume(ctx context.Context, st nodeState) error {
	if st.Name != a.cfg.Name {
		return fmt.Errorf("data dir %s belongs to node %q, not %q: start with --name %s or use another --data-dir", a.cfg.DataDir, st.Name, a.cfg.Name, st.Name)
	}
	if a.cfg.Token != "" {
		tok, err := pki.ParseToken(a.cfg.Token)
		if err != nil {
			return err
		}
		if tok.CAHash != st.CAHash {
			return fmt.Errorf("data dir %s belongs to another cluster (%s) than the join token: use a fresh --data-dir to join this cluster", a.cfg.DataDir, st.ClusterID)
		}
	}
	wantRole := RoleClient
	if a.cfg.Server {
		wantRole = RoleServer
	}
	if st.Role != wantRole && (a.cfg.Server || a.cfg.Join != "") {
		return fmt.Errorf("data dir %s holds a %s node; changing the role is not supported: start without/with --server to match, or use a fresh --data-dir", a.cfg.DataDir, st.Role)
	}
	a.state = st
	if err := a.loadCredentials(); err != nil {
		return err
	}
	if st.Role == RoleServer && !st.ExternalEtcd {
		if err := a.startMember(ctx, ""); err != nil {
			return err
		}
		if err := a.connectEtcd(); err != nil {
			return err
		}
		// A server that crashed between joining and its promotion is still a learner.
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			if err := a.promoteSelf(a.ctx); err != nil {
				a.log.Warn("etcd member is still a learner", "err", err)
			}
		}()
		return nil
	}
	return a.connectEtcd()
}

func (a *Agent) loadCredentials() error {
	caPEM, err := os.ReadFile(a.dir.path(fileCACert))
	if err != nil {
		return fmt.Errorf("reading cluster CA from the data dir: %w", err)
	}
	certPEM, err := os.ReadFile(a.dir.path(fileCert))
	if err != nil {
		return fmt.Errorf("reading node certificate from the data dir: %w", err)
	}
	keyPEM, err := os.ReadFile(a.dir.path(fileKey))
	if err != nil {
		return fmt.Errorf("reading node key from the data dir: %w", err)
	}
	return a.useCredentials(caPEM, certPEM, keyPEM)
}

func (a *Agent) useCredentials(caPEM, certPEM, keyPEM []byte) error {
	ca, err := pki.ParseCertPEM(caPEM)
	if err != nil {
		return fmt.Errorf("cluster CA: %w", err)
	}
	kp, err := pki.NodeKeyPair(certPEM, keyPEM, caPEM)
	if err != nil {
		return fmt.Errorf("node certificate: %w", err)
	}
	a.caCert, a.caPEM, a.keyPair = ca, caPEM, kp
	return nil
}

// writeCredentials stores the node's certificates; it returns a function that removes them again
// for when the rest of a first start fails.
func (a *Agent) writeCredentials(caPEM, certPEM, keyPEM []byte) (undo func(), err error) {
	undo = func() {
		for _, f := range []string{fileCACert, fileCert, fileKey} {
			os.Remove(a.dir.path(f))
		}
	}
	for _, f := range []struct {
		name string
		data []byte
		perm os.FileMode
	}{{fileCACert, caPEM, 0o644}, {fileCert, certPEM, 0o644}, {fileKey, keyPEM, 0o600}} {
		if err := writeFileAtomic(a.dir.path(f.name), f.data, f.perm); err != nil {
			undo()
			return nil, err
		}
	}
	return undo, a.useCredentials(caPEM, certPEM, keyPEM)
}

// bootstrap creates a new cluster with this node as its first server.
func (a *Agent) bootstrap(ctx context.Context) (err error) {
	clusterID, err := randomHex(8)
	if err != nil {
		return err
	}
	nodeID, err := randomHex(16)
	if err != nil {
		return err
	}
	ca, err := pki.NewCA(clusterID)
	if err != nil {
		return err
	}
	key, keyPEM, err := pki.NewKey()
	if err != nil {
		return err
	}
	csr, err := pki.NewCSR(key, a.cfg.Name)
	if err != nil {
		return err
	}
	certPEM, err := ca.SignNode(csr, a.cfg.Name, RoleServer, a.certIPs(), certTTL)
	if err != nil {
		return err
	}
	gossipKey := make([]byte, 32)
	if _, err := rand.Read(gossipKey); err != nil {
		return err
	}
	undo, err := a.writeCredentials(ca.CertPEM, certPEM, keyPEM)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			undo()
		}
	}()
	a.state = nodeState{
		ClusterID: clusterID, Name: a.cfg.Name, NodeID: nodeID, Role: RoleServer,
		CAHash: pki.CAHash(ca.Cert), GossipKey: gossipKey, Joined: time.Now().UTC(),
	}
	if len(a.cfg.EtcdEndpoints) > 0 {
		a.state.ExternalEtcd = true
		a.state.EtcdEndpoints = a.cfg.EtcdEndpoints
	} else {
		if err := a.startMember(ctx, ""); err != nil {
			os.RemoveAll(a.dir.path(dirEtcd))
			return err
		}
		a.state.EtcdEndpoints = []string{a.etcdClientURL().String()}
	}
	if err := a.connectEtcd(); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if existing, err := store.InitCluster(wctx, a.etcd, store.ClusterSecrets{
		ClusterID: clusterID, GossipKey: gossipKey, CACert: ca.CertPEM, CAKey: ca.KeyPEM,
	}); err != nil {
		if errors.Is(err, store.ErrClusterExists) {
			return fmt.Errorf("etcd at %v already holds ssi cluster %s: join it with --join ADDR --token TOKEN instead of bootstrapping", a.state.EtcdEndpoints, existing)
		}
		if a.state.ExternalEtcd && errors.Is(err, context.DeadlineExceeded) {
			// The usual cause is a wrong URL or an etcd that is down, not a slow write.
			return fmt.Errorf("no answer from etcd at %s (--etcd-endpoints) in 30s: check the URLs and that etcd runs and is reachable from here", strings.Join(a.state.EtcdEndpoints, ","))
		}
		return err
	}
	if a.state.Index, err = store.AllocateIndex(wctx, a.etcd, a.cfg.Name); err != nil {
		return err
	}
	if err := a.dir.saveState(a.state); err != nil {
		return err
	}
	a.log.Info("bootstrapped a new cluster", "cluster", clusterID)
	return nil
}

// certIPs are the addresses a node certificate names.
func (a *Agent) certIPs() []net.IP {
	ips := []net.IP{net.ParseIP(a.cfg.advertiseHost())}
	if b := net.ParseIP(a.cfg.bindHost()); !b.IsUnspecified() && !b.Equal(ips[0]) {
		ips = append(ips, b)
	}
	return ips
}

func (a *Agent) etcdClientURL() *url.URL {
	return &url.URL{Scheme: "https", Host: net.JoinHostPort(a.cfg.advertiseHost(), strconv.Itoa(a.cfg.advertisePort()+2))}
}

func (a *Agent) etcdPeerURL() *url.URL {
	return &url.URL{Scheme: "https", Host: net.JoinHostPort(a.cfg.advertiseHost(), strconv.Itoa(a.cfg.advertisePort()+3))}
}

func (a *Agent) gossipAddr() string {
	return net.JoinHostPort(a.cfg.advertiseHost(), strconv.Itoa(a.cfg.advertisePort()+1))
}

func (a *Agent) startMember(ctx context.Context, initialCluster string) error {
	if err := a.dir.privateEtcdLog(); err != nil {
		return err
	}
	m, err := store.StartMember(ctx, store.MemberConfig{
		Name:           a.state.Name,
		Dir:            a.dir.path(dirEtcd),
		ClientURL:      *a.etcdClientURL(),
		PeerURL:        *a.etcdPeerURL(),
		ListenHost:     a.cfg.bindHost(),
		InitialCluster: initialCluster,
		ClusterToken:   "ssi-" + a.state.ClusterID,
		CertFile:       a.dir.path(fileCert),
		KeyFile:        a.dir.path(fileKey),
		CAFile:         a.dir.path(fileCACert),
		LogFile:        a.dir.path(fileEtcdLog),
	})
	if err != nil {
		return err
	}
	a.member = m
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		select {
		case err, ok := <-m.Err():
			if ok && err != nil {
				a.fail(fmt.Errorf("embedded etcd stopped: %w", err))
			}
		case <-a.ctx.Done():
		}
	}()
	return nil
}

func (a *Agent) connectEtcd() error {
	var tlsConfig *tls.Config
	if !a.state.ExternalEtcd {
		tlsConfig = pki.ClientTLS(a.caCert, a.keyPair)
	}
	endpoints := a.state.EtcdEndpoints
	if a.member != nil {
		// A server's own member is up whenever its agent is, and forwards to the leader.
		endpoints = []string{a.etcdClientURL().String()}
	}
	cli, err := store.NewClient(endpoints, tlsConfig)
	if err != nil {
		return err
	}
	a.etcd = cli
	return nil
}

// serve starts the node's network services: registry entry, peer API, gossip, control socket,
// HTTP.
func (a *Agent) serve(ctx context.Context) error {
	a.sampler = cluster.NewLoadSampler(a.cfg.ProcRoot, a.nodeCgroupDir())
	load, err := a.sampler.Sample(time.Now())
	if err != nil {
		return fmt.Errorf("measuring node load: %w", err)
	}
	rec := store.NodeRecord{
		Name: a.state.Name, NodeID: a.state.NodeID, Index: a.state.Index, Role: a.state.Role,
		Addr: a.cfg.Advertise, GossipAddr: a.gossipAddr(), State: store.RecordUp,
	}
	if a.member != nil {
		rec.EtcdClient, rec.EtcdPeer = a.etcdClientURL().String(), a.etcdPeerURL().String()
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := store.PutNode(rctx, a.etcd, rec); err != nil {
		return fmt.Errorf("%w: is a quorum of the servers up?", err)
	}
	if err := a.startFileServer(); err != nil {
		return err
	}
	if err := a.startPeerServer(); err != nil {
		return err
	}
	if err := a.startLinks(); err != nil {
		return err
	}
	a.gossip, err = cluster.Start(cluster.Config{
		Name:          a.state.Name,
		BindAddr:      a.cfg.bindHost(),
		BindPort:      a.cfg.port() + 1,
		AdvertiseAddr: a.cfg.advertiseHost(),
		AdvertisePort: a.cfg.advertisePort() + 1,
		SecretKey:     a.state.GossipKey,
		ClusterID:     a.state.ClusterID,
		Meta: cluster.Meta{Index: a.state.Index, Role: a.state.Role, Addr: a.cfg.Advertise,
			Protocol: api.ProtocolVersion, Version: a.cfg.Version, Load: load},
		Logger: a.log,
	})
	if err != nil {
		return err
	}
	if err := a.refreshRegistry(rctx); err != nil {
		a.log.Warn("reading the node registry", "err", err)
	}
	a.joinGossip()
	a.mountTree(ctx)
	if a.procs, err = procspace.New(ctx, procspace.Config{
		Cluster: clusterView{a}, Socket: a.cfg.Socket, CgroupParent: a.procCgroupParent(),
		ProcRoot: a.cfg.ProcRoot, Tree: a.treePath, Logger: a.log, Link: a.link,
	}); err != nil {
		return err
	}
	if a.jobs, err = jobs.Start(ctx, jobs.Deps{
		Etcd: a.etcd, Node: a.state.Name, Server: a.state.Role == RoleServer, Members: a.jobMembers,
		MembersChanged: a.gossip.Changed,
		CgroupParent:   filepath.Dir(a.procCgroupParent()) + "/ssi-jobs", Socket: a.cfg.Socket,
		NodeIndex: a.state.Index, Logger: a.log, Tree: a.treePath, LeadsEtcd: a.leadsEtcd(),
		SpoolDir:          a.dir.path(dirSpool),
		EtcdLeaderChanged: a.etcdLeaderChanged(),
	}); err != nil {
		return err
	}
	if err := a.startControlServer(); err != nil {
		return err
	}
	if err := a.startHTTP(); err != nil {
		return err
	}
	a.wg.Add(2)
	go a.loadLoop()
	go a.reconnectLoop()
	return nil
}

func (a *Agent) nodeCgroupDir() string {
	if a.cfg.NodeCgroup == "" {
		return ""
	}
	mount, err := cgroup.Mount()
	if err != nil {
		a.log.Warn("no cgroup v2 hierarchy: node CPU use is the machine's", "err", err)
		return ""
	}
	return filepath.Join(mount, filepath.Clean("/"+a.cfg.NodeCgroup))
}

// leadsEtcd tells the job service whether this server's embedded member leads etcd; nil
// when the node has no member of its own.
func (a *Agent) leadsEtcd() func() bool {
	if a.member == nil {
		return nil
	}
	return a.member.IsLeader
}

// etcdLeaderChanged is the embedded member's signal of a new etcd leader, nil without one.
func (a *Agent) etcdLeaderChanged() func() <-chan struct{} {
	if a.member == nil {
		return nil
	}
	return a.member.LeaderChanged
}

// jobMembers is the gossip view in the terms the job service needs.
func (a *Agent) jobMembers() []jobs.Member {
	var out []jobs.Member
	for _, m := range a.gossip.Members() {
		meta, alive := m.Meta, m.State == cluster.StateAlive || m.State == cluster.StateSuspect
		if m.Name == a.state.Name {
			meta, alive = a.gossip.LocalMeta(), true
		}
		out = append(out, jobs.Member{Name: m.Name, Index: meta.Index, Alive: alive, CPUs: meta.Load.CPUs, MemTotal: meta.Load.MemTotal})
	}
	return out
}

// procCgroupParent is the cgroup under which started process trees get their own cgroups:
// beneath the node's cgroup, or the agent's own.
func (a *Agent) procCgroupParent() string {
	base := a.cfg.NodeCgroup
	if base == "" {
		if self, err := cgroup.Of(a.cfg.ProcRoot, os.Getpid()); err == nil {
			base = self
		}
	}
	return filepath.Clean("/"+base) + "/ssi-procs"
}

// joinGossip contacts every other registered node that has not said goodbye.
func (a *Agent) joinGossip() {
	var seeds []string
	a.mu.Lock()
	for name, rec := range a.registry {
		if name != a.state.Name && rec.GossipAddr != "" {
			seeds = append(seeds, rec.GossipAddr)
		}
	}
	a.mu.Unlock()
	if len(seeds) == 0 {
		return
	}
	if n, err := a.gossip.Join(seeds); err != nil {
		a.log.Warn("no other node answered yet; will keep trying", "err", err)
	} else {
		a.log.Debug("joined gossip", "answered", n)
	}
}

// refreshRegistry re-reads the node registry. opts are etcd read options (see store.ListNodes).
func (a *Agent) refreshRegistry(ctx context.Context, opts ...clientv3.OpOption) error {
	recs, err := store.ListNodes(ctx, a.etcd, opts...)
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.registry = make(map[string]store.NodeRecord, len(recs))
	for _, r := range recs {
		a.registry[r.Name] = r
	}
	return nil
}

// loadSampleInterval is how often the node measures its load. Counting a shared kernel's
// runnable tasks reads every task's stat file, the largest part of an idle agent's own work at
// one second; the 1-minute load average does not need more, and placement still sees a new
// burst of work within two seconds.
const loadSampleInterval = 2 * time.Second

// loadLoop measures the node's load and gossips it when it has changed enough to matter to
// placement, or every ten seconds at most, so an idle node stays quiet.
func (a *Agent) loadLoop() {
	defer a.wg.Done()
	t := time.NewTicker(loadSampleInterval)
	defer t.Stop()
	var sent cluster.Load
	var sentAt time.Time
	for {
		select {
		case <-a.ctx.Done():
			return
		case now := <-t.C:
			l, err := a.sampler.Sample(now)
			if err != nil {
				a.log.Warn("measuring load", "err", err)
				continue
			}
			if !loadChanged(sent, l) && now.Sub(sentAt) < 10*time.Second {
				continue
			}
			if err := a.gossip.SetLoad(l); err != nil {
				a.log.Debug("gossiping load", "err", err)
			}
			sent, sentAt = l, now
		}
	}
}

// loadChanged reports whether a new load vector differs enough from the last one sent.
func loadChanged(old, cur cluster.Load) bool {
	const loadStep, cpuStep, memStep = 0.1, 0.1, 0.02
	return math.Abs(old.Load1-cur.Load1) >= loadStep ||
		math.Abs(old.CPUUsed-cur.CPUUsed) >= cpuStep ||
		old.Runnable != cur.Runnable ||
		math.Abs(float64(old.MemFree)-float64(cur.MemFree)) >= memStep*float64(max(cur.MemTotal, 1))
}

// reconnectLoop re-contacts registered nodes that gossip considers gone, so that a healed
// partition or a restarted node is merged back: memberlist alone never probes dead nodes again.
func (a *Agent) reconnectLoop() {
	defer a.wg.Done()
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for round := 1; ; round++ {
		select {
		case <-a.ctx.Done():
			return
		case <-t.C:
		}
		if a.leaving.Load() {
			return
		}
		// New nodes announce themselves through gossip; the registry only needs an
		// occasional re-read for nodes that are down.
		if round%5 == 0 {
			ctx, cancel := context.WithTimeout(a.ctx, time.Second)
			if err := a.refreshRegistry(ctx, clientv3.WithSerializable()); err != nil {
				a.log.Debug("refreshing the node registry", "err", err)
			}
			cancel()
		}
		alive := map[string]bool{}
		for _, m := range a.gossip.Members() {
			if m.State == cluster.StateAlive || m.State == cluster.StateSuspect {
				alive[m.Name] = true
			}
		}
		a.steerEtcdClient(alive)
		var seeds []string
		a.mu.Lock()
		for name, rec := range a.registry {
			if name != a.state.Name && !alive[name] && rec.State != store.RecordLeft && rec.GossipAddr != "" {
				seeds = append(seeds, rec.GossipAddr)
			}
		}
		a.mu.Unlock()
		if len(seeds) > 0 {
			if n, err := a.gossip.Join(seeds); err == nil && n > 0 {
				a.log.Info("reconnected to nodes", "answered", n)
			}
		}
	}
}

// steerEtcdClient points a client node's etcd connection at the servers gossip shows alive,
// so requests are not balanced onto a dead server until their deadline.
func (a *Agent) steerEtcdClient(alive map[string]bool) {
	if a.member != nil || a.state.ExternalEtcd {
		return
	}
	var up []string
	a.mu.Lock()
	for name, rec := range a.registry {
		if rec.EtcdClient != "" && alive[name] {
			up = append(up, rec.EtcdClient)
		}
	}
	a.mu.Unlock()
	if len(up) == 0 {
		return
	}
	sort.Strings(up)
	if !slices.Equal(up, a.etcd.Endpoints()) {
		a.etcd.SetEndpoints(up...)
		a.log.Debug("etcd endpoints follow the live servers", "endpoints", up)
	}
}

// stop tears the agent down. graceful announces the departure first.
func (a *Agent) stop(graceful bool) {
	a.closeOnce.Do(func() {
		a.leaving.Store(true)
		if graceful && a.etcd != nil && a.state.Name != "" {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			if rec, ok, err := store.GetNode(ctx, a.etcd, a.state.Name); err == nil && ok && rec.NodeID == a.state.NodeID {
				rec.State = store.RecordLeft
				if err := store.PutNode(ctx, a.etcd, rec); err != nil {
					a.log.Warn("recording departure", "err", err)
				}
			}
			cancel()
		}
		if a.gossip != nil {
			if graceful {
				if err := a.gossip.Leave(2 * time.Second); err != nil {
					a.log.Warn("leaving gossip", "err", err)
				}
			} else {
				_ = a.gossip.Shutdown()
			}
		}
		a.cancel()
		if a.links != nil {
			a.links.Close()
		}
		a.closeFiles()
		if a.httpSrv != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = a.httpSrv.Shutdown(ctx)
			cancel()
		}
		// The control socket's lean calls get the same grace as its gRPC ones, at the same
		// time; the socket accepts nothing more from now on.
		var localStopped chan struct{}
		if a.ctlLocal != nil {
			localStopped = make(chan struct{})
			go func() { a.ctlLocal.GracefulStop(2 * time.Second); close(localStopped) }()
		}
		for _, s := range []*grpc.Server{a.ctlSrv, a.peerSrv} {
			if s != nil {
				stopGRPC(s, 2*time.Second)
			}
		}
		if localStopped != nil {
			<-localStopped
		}
		if a.ctlSrv != nil {
			os.Remove(a.cfg.Socket)
		}
		if a.jobs != nil {
			if err := a.jobs.Close(); err != nil {
				a.log.Warn("stopping the job service", "err", err)
			}
		}
		a.closePeerConns()
		if a.procs != nil {
			a.procs.Close()
		}
		if a.etcd != nil {
			a.etcd.Close()
		}
		if a.member != nil {
			a.member.Close()
		}
		a.wg.Wait()
		if a.lock != nil {
			a.lock.Close()
		}
		if isClosed(a.ready) {
			a.log.Info("agent stopped", "graceful", graceful)
		}
	})
}

// stopGRPC drains in-flight calls, then cuts what remains.
func stopGRPC(s *grpc.Server, grace time.Duration) {
	done := make(chan struct{})
	go func() { s.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		s.Stop()
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("reading random bytes: %w", err)
	}
	return hex.EncodeToString(b), nil
}

func (a *Agent) startPeerServer() error {
	lis, err := net.Listen("tcp", a.cfg.Bind)
	if err != nil {
		return fmt.Errorf("listening on %s: %w (is another agent running, or set --bind)", a.cfg.Bind, err)
	}
	unaryAuth, streamAuth := api.RequireNode(ssirpc.Peer_Join_FullMethodName)
	a.peerSrv = grpc.NewServer(append(api.ServerOptions(),
		grpc.Creds(credentials.NewTLS(pki.ServerTLS(a.caCert, a.keyPair))),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 2 * time.Second, PermitWithoutStream: true}),
		grpc.ChainUnaryInterceptor(a.metrics.unary("peer"), unaryAuth),
		grpc.ChainStreamInterceptor(a.metrics.stream("peer"), streamAuth),
	)...)
	ssirpc.RegisterPeerServer(a.peerSrv, &peerService{a: a})
	a.files.server.Register(a.peerSrv)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if err := a.peerSrv.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			a.fail(fmt.Errorf("peer API stopped: %w", err))
		}
	}()
	return nil
}
