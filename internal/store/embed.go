package store

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// MemberConfig describes the embedded etcd member of a server node.
type MemberConfig struct {
	Name       string
	Dir        string  // etcd's data directory
	ClientURL  url.URL // https://ip:port clients dial
	PeerURL    url.URL // https://ip:port other members dial
	ListenHost string  // address to listen on (may be 0.0.0.0)
	// InitialCluster is "name=peerURL,..." when joining an existing cluster; empty to bootstrap
	// a new one-member cluster. Ignored when Dir already holds a member (a restart).
	InitialCluster string
	ClusterToken   string // unique per cluster, so members of different clusters never mix
	CertFile       string
	KeyFile        string
	CAFile         string
	LogFile        string // etcd's own log output; "" for stderr
	StartTimeout   time.Duration
}

// Member is a running embedded etcd member.
type Member struct {
	etcd *embed.Etcd
}

// HasMemberData reports whether dir already holds an etcd member's data, i.e. a restart.
func HasMemberData(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "member", "wal"))
	return err == nil
}

// maxSocketPath is the longest Unix socket path the kernel takes (sun_path less its NUL).
const maxSocketPath = 107

// StartMember starts the embedded etcd member and waits until it serves.
func StartMember(ctx context.Context, mc MemberConfig) (*Member, error) {
	cfg := embed.NewConfig()
	cfg.Name = mc.Name
	cfg.Dir = mc.Dir
	listenClient := mc.ClientURL
	listenPeer := mc.PeerURL
	if mc.ListenHost != "" {
		listenClient.Host = joinHostPortOf(mc.ListenHost, mc.ClientURL)
		listenPeer.Host = joinHostPortOf(mc.ListenHost, mc.PeerURL)
	}
	cfg.ListenClientUrls = []url.URL{listenClient}
	cfg.AdvertiseClientUrls = []url.URL{mc.ClientURL}
	// etcd's HTTP endpoints (health, version, its own metrics) go to a socket only root can
	// reach, so that the client port serves gRPC alone, on gRPC's own transport: otherwise
	// every request is served through net/http's HTTP/2 server, which costs each request and
	// each idle keepalive more CPU. Nothing in ssi uses those endpoints (the agent's --http
	// has health and metrics), nor the JSON gateway.
	if sock := filepath.Join(mc.Dir, "http.sock"); len(sock) < maxSocketPath {
		cfg.ListenClientHttpUrls = []url.URL{{Scheme: "unix", Path: sock}}
	}
	cfg.EnableGRPCGateway = false
	cfg.ListenPeerUrls = []url.URL{listenPeer}
	cfg.AdvertisePeerUrls = []url.URL{mc.PeerURL}
	tls := transport.TLSInfo{
		CertFile:       mc.CertFile,
		KeyFile:        mc.KeyFile,
		TrustedCAFile:  mc.CAFile,
		ClientCertAuth: true,
		// Node certificates name the advertised address, but a connection may come from another
		// of the node's addresses; the certificate's chain to the cluster CA is what counts.
		SkipClientSANVerify: true,
	}
	cfg.ClientTLSInfo = tls
	cfg.PeerTLSInfo = tls
	cfg.InitialClusterToken = mc.ClusterToken
	if mc.InitialCluster == "" {
		cfg.InitialCluster = fmt.Sprintf("%s=%s", mc.Name, mc.PeerURL.String())
		cfg.ClusterState = embed.ClusterStateFlagNew
	} else {
		cfg.InitialCluster = mc.InitialCluster
		cfg.ClusterState = embed.ClusterStateFlagExisting
	}
	cfg.Logger = "zap"
	cfg.LogLevel = "warn"
	if mc.LogFile != "" {
		cfg.LogOutputs = []string{mc.LogFile}
	} else {
		cfg.LogOutputs = []string{"stderr"}
	}
	// Keep a small footprint: ssi's state is small, and etcd's defaults are sized for
	// Kubernetes. Compaction keeps the history bounded.
	cfg.SnapshotCount = 5000
	cfg.AutoCompactionMode = "periodic"
	cfg.AutoCompactionRetention = "1h"
	cfg.QuotaBackendBytes = 2 << 30
	// New servers join as learners and are promoted only once caught up, which etcd checks
	// regardless; the strict check would only add a 5 s wait before each server can join.
	cfg.StrictReconfigCheck = false
	// Heartbeats every 250 ms keep an idle server cheap; a lost leader is replaced within
	// about two seconds.
	cfg.TickMs = 250
	cfg.ElectionMs = 1500
	// The WAL makes each write durable when it is acknowledged; the bolt backend only
	// batches the applied state. Committing it every 500 ms rather than 100 ms spares an idle
	// server eight wake-ups a second and a busy one most of its bolt commits.
	cfg.BackendBatchInterval = 500 * time.Millisecond

	// The HTTP socket lives in the data directory, which must exist before etcd listens.
	if err := os.MkdirAll(mc.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating etcd's data directory: %w", err)
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("starting embedded etcd in %s: %w", mc.Dir, err)
	}
	timeout := mc.StartTimeout
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	select {
	case <-e.Server.ReadyNotify():
		return &Member{etcd: e}, nil
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd failed while starting: %w", err)
	case <-ctx.Done():
		e.Close()
		return nil, fmt.Errorf("embedded etcd did not start: %w", ctx.Err())
	case <-time.After(timeout):
		e.Server.Stop()
		e.Close()
		return nil, errors.New("embedded etcd did not become ready in time: is a quorum of the other servers up?")
	}
}

// Err reports a fatal error of the running member.
func (m *Member) Err() <-chan error { return m.etcd.Err() }

// ID is the member's etcd id.
func (m *Member) ID() uint64 { return uint64(m.etcd.Server.MemberID()) }

// IsLearner reports whether this member is still a non-voting learner; a learner serves no
// client requests.
func (m *Member) IsLearner() bool { return m.etcd.Server.IsLearner() }

// IsLeader reports whether this member currently leads the etcd cluster.
func (m *Member) IsLeader() bool { return m.etcd.Server.Leader() == m.etcd.Server.MemberID() }

// LeaderChanged returns a channel that is closed when the member's etcd leader next changes.
func (m *Member) LeaderChanged() <-chan struct{} { return m.etcd.Server.LeaderChangedNotify() }

// leaderHandoff bounds how long a stopping leader tries to hand its leadership to a peer.
// A live peer takes it within a few heartbeats; etcd's own stop waits its request timeout
// (8 s with these ticks), which is what stopping a whole cluster at once cost: every peer is
// stopping too, and none takes it.
const leaderHandoff = 1500 * time.Millisecond

// Close stops the member; its data stays for a restart. A leader first hands its leadership
// to the peer it has been connected to longest, as etcd's own stop does, but gives up after
// leaderHandoff and stops anyway: the others then elect a leader among themselves.
func (m *Member) Close() {
	s := m.etcd.Server
	handed := make(chan struct{})
	go func() {
		defer close(handed)
		if err := s.TryTransferLeadershipOnShutdown(); err != nil {
			m.etcd.GetLogger().Warn("stopping without handing over the leadership", zap.Error(err))
		}
	}()
	select {
	case <-handed:
	case <-time.After(leaderHandoff):
	}
	// Stopping the server cancels the context the hand-off waits under, so it ends too; the
	// stop in Close then finds no peer to hand to and returns at once.
	s.HardStop()
	<-handed
	m.etcd.Close()
}

func joinHostPortOf(host string, u url.URL) string {
	return hostPort(host, u.Port())
}
