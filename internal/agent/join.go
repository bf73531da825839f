package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/ssi-cluster/ssi/internal/api"
	"github.com/ssi-cluster/ssi/internal/api/ssipb"
	"github.com/ssi-cluster/ssi/internal/api/ssirpc"
	"github.com/ssi-cluster/ssi/internal/cluster"
	"github.com/ssi-cluster/ssi/internal/pki"
	"github.com/ssi-cluster/ssi/internal/store"
)

// joinTimeout bounds the whole join exchange, including an etcd membership change.
const joinTimeout = 30 * time.Second

// join makes this node a member of the cluster the token belongs to. Nothing is written to the
// data dir until the cluster has accepted the node.
func (a *Agent) join(ctx context.Context) (err error) {
	if a.cfg.Token == "" {
		return fmt.Errorf("--join %s needs --token TOKEN: create one with \"ssi token create\" on a server", a.cfg.Join)
	}
	tok, err := pki.ParseToken(a.cfg.Token)
	if err != nil {
		return err
	}
	nodeID, err := randomHex(16)
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
	role := RoleClient
	if a.cfg.Server {
		role = RoleServer
	}
	external := len(a.cfg.EtcdEndpoints) > 0
	resp, err := requestJoin(ctx, a.cfg.Join, tok, &ssipb.JoinRequest{
		Protocol: api.ProtocolVersion, TokenId: tok.ID, TokenSecret: tok.Secret,
		Name: a.cfg.Name, NodeId: nodeID, CsrPem: csr, Role: role,
		Advertise: a.cfg.Advertise, ExternalEtcd: external,
	})
	if err != nil {
		return err
	}
	undo, err := a.writeCredentials(resp.CaCertPem, resp.NodeCertPem, keyPEM)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			undo()
		}
	}()
	if got := pki.CAHash(a.caCert); got != tok.CAHash {
		return fmt.Errorf("the cluster answered with CA %s but the token pins %s: refusing to join", got, tok.CAHash)
	}
	a.state = nodeState{
		ClusterID: resp.ClusterId, Name: a.cfg.Name, NodeID: nodeID, Index: resp.Index, Role: role,
		CAHash: tok.CAHash, GossipKey: resp.GossipKey, EtcdEndpoints: resp.EtcdEndpoints,
		ExternalEtcd: external, Joined: time.Now().UTC(),
	}
	if external {
		a.state.EtcdEndpoints = a.cfg.EtcdEndpoints
	}
	if role == RoleServer && !external {
		if err := a.startMember(ctx, resp.EtcdInitialCluster); err != nil {
			os.RemoveAll(a.dir.path(dirEtcd))
			return err
		}
		a.state.EtcdEndpoints = append([]string{a.etcdClientURL().String()}, without(resp.EtcdEndpoints, a.etcdClientURL().String())...)
		if err := a.promoteSelf(ctx); err != nil {
			return err
		}
	}
	if a.etcd == nil {
		if err := a.connectEtcd(); err != nil {
			return err
		}
	}
	if err := a.dir.saveState(a.state); err != nil {
		return err
	}
	a.log.Info("joined cluster", "cluster", resp.ClusterId, "via", a.cfg.Join, "index", resp.Index)
	return nil
}

// promoteSelf turns this node's etcd learner into a voting member once it has caught up with
// the leader; until then etcd refuses, so it retries.
func (a *Agent) promoteSelf(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, joinTimeout)
	defer cancel()
	// A learner serves no requests: ask the other members.
	others := without(a.state.EtcdEndpoints, a.etcdClientURL().String())
	if len(others) == 0 {
		return nil
	}
	cli, err := store.NewClient(others, pki.ClientTLS(a.caCert, a.keyPair))
	if err != nil {
		return err
	}
	defer cli.Close()
	id := a.member.ID()
	for {
		_, err := cli.MemberPromote(ctx, id)
		// The promotion is done once this member has applied it too: until then it still
		// refuses client requests as a learner.
		if (err == nil || strings.Contains(err.Error(), "not a learner") || strings.Contains(err.Error(), "can only promote a learner")) && !a.member.IsLearner() {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("promoting this server's etcd member to a voter: %w (last error: %v)", ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func without(list []string, s string) []string {
	var out []string
	for _, v := range list {
		if v != s {
			out = append(out, v)
		}
	}
	return out
}

// requestJoin performs the Join call, trusting the server only if it proves the CA the token pins.
func requestJoin(ctx context.Context, addr string, tok pki.Token, req *ssipb.JoinRequest) (*ssipb.JoinResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, joinTimeout)
	defer cancel()
	// Check reachability first: gRPC would otherwise retry quietly until the deadline.
	d := net.Dialer{Timeout: 5 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("cannot reach join address %s: %v: check the address and that TCP ports %s are open", addr, unwrapNetErr(err), portRange(addr))
	}
	conn.Close()
	tlsCfg := pki.PinnedTLS(tok.CAHash, func(*x509.Certificate) {})
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		return nil, fmt.Errorf("join address %s: %w", addr, err)
	}
	defer cc.Close()
	resp, err := ssirpc.NewPeerClient(cc).Join(ctx, req, grpc.WaitForReady(false))
	if err != nil {
		st, _ := status.FromError(err)
		if strings.Contains(st.Message(), pki.ErrCAMismatch.Error()) {
			return nil, fmt.Errorf("join address %s belongs to another cluster than the token (its CA does not match the token's pin): check --join and --token", addr)
		}
		switch st.Code() {
		case codes.PermissionDenied, codes.AlreadyExists, codes.InvalidArgument, codes.FailedPrecondition:
			return nil, errors.New(st.Message())
		}
		return nil, fmt.Errorf("joining through %s: %s", addr, st.Message())
	}
	return resp, nil
}

func unwrapNetErr(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}

func portRange(addr string) string {
	_, p, err := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(p)
	if err != nil || n == 0 {
		return "7700-7704"
	}
	return fmt.Sprintf("%d-%d", n, n+linkPortOffset)
}

// peerService serves other agents.
type peerService struct {
	ssirpc.UnimplementedPeerServer
	a *Agent
}

func (p *peerService) Exec(stream ssirpc.Peer_ExecServer) error { return p.a.procs.Exec(stream) }

func (p *peerService) Ps(ctx context.Context, req *ssipb.PsRequest) (*ssipb.PsResponse, error) {
	return p.a.procs.LocalPs(ctx, req)
}

func (p *peerService) Signal(ctx context.Context, req *ssipb.KillRequest) (*ssipb.KillResponse, error) {
	return p.a.procs.Signal(ctx, req)
}

func (p *peerService) Wait(ctx context.Context, req *ssipb.WaitRequest) (*ssipb.WaitResponse, error) {
	return p.a.procs.PeerWait(ctx, req)
}

func (p *peerService) Ping(ctx context.Context, _ *ssipb.PingRequest) (*ssipb.PingResponse, error) {
	return &ssipb.PingResponse{Name: p.a.state.Name, Protocol: api.ProtocolVersion}, nil
}

// Join admits a new node: it checks the token, refuses a name a live node holds, adds an etcd
// member for a new server, allocates the node's index and signs its certificate.
func (p *peerService) Join(ctx context.Context, req *ssipb.JoinRequest) (*ssipb.JoinResponse, error) {
	a := p.a
	ctx, cancel := context.WithTimeout(ctx, joinTimeout)
	defer cancel()
	if req.Protocol == 0 || req.Protocol > api.ProtocolVersion+16 {
		return nil, status.Errorf(codes.FailedPrecondition, "joining node speaks protocol %d, this cluster %d: upgrade the older side", req.Protocol, api.ProtocolVersion)
	}
	if err := p.checkToken(ctx, req.TokenId, req.TokenSecret); err != nil {
		a.log.Warn("join refused", "name", req.Name, "reason", err)
		return nil, err
	}
	if err := ValidNodeName(req.Name); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if req.Role != RoleServer && req.Role != RoleClient {
		return nil, status.Errorf(codes.InvalidArgument, "role %q is not server or client", req.Role)
	}
	advHost, advPortStr, err := net.SplitHostPort(req.Advertise)
	advIP := net.ParseIP(advHost)
	advPort, _ := strconv.Atoi(advPortStr)
	if err != nil || advIP == nil || advIP.IsUnspecified() || advPort <= 0 || advPort > 65532 {
		return nil, status.Errorf(codes.InvalidArgument, "advertised address %q is not ip:port: set --advertise on the joining node", req.Advertise)
	}
	if err := p.checkName(ctx, req); err != nil {
		return nil, err
	}
	secrets, err := store.ReadClusterSecrets(ctx, a.etcd)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	ca, err := pki.LoadCA(secrets.CACert, secrets.CAKey)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "cluster CA: %v", err)
	}
	certPEM, err := ca.SignNode(req.CsrPem, req.Name, req.Role, []net.IP{advIP}, certTTL)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "certificate request: %v", err)
	}
	index, err := store.AllocateIndex(ctx, a.etcd, req.Name)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	resp := &ssipb.JoinResponse{
		ClusterId: secrets.ClusterID, CaCertPem: secrets.CACert, NodeCertPem: certPEM,
		GossipKey: secrets.GossipKey, Index: index, Protocol: api.ProtocolVersion,
	}
	if !a.state.ExternalEtcd {
		peerURL := url.URL{Scheme: "https", Host: net.JoinHostPort(advHost, strconv.Itoa(advPort+3))}
		members, err := a.etcd.MemberList(ctx)
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "listing etcd members: %v", err)
		}
		for _, m := range members.Members {
			resp.EtcdEndpoints = append(resp.EtcdEndpoints, m.ClientURLs...)
		}
		if req.Role == RoleServer && !req.ExternalEtcd {
			if resp.EtcdInitialCluster, err = p.addMember(ctx, members.Members, req.Name, peerURL.String()); err != nil {
				return nil, err
			}
		}
	} else {
		resp.EtcdEndpoints = a.state.EtcdEndpoints
	}
	for _, m := range a.gossip.Members() {
		if m.State == cluster.StateAlive {
			resp.GossipSeeds = append(resp.GossipSeeds, m.GossipAddr)
		}
	}
	a.log.Info("admitted node", "name", req.Name, "role", req.Role, "index", index, "addr", req.Advertise)
	return resp, nil
}

func (p *peerService) checkToken(ctx context.Context, id, secret string) error {
	rec, ok, err := store.GetToken(ctx, p.a.etcd, id)
	if err != nil {
		return status.Errorf(codes.Unavailable, "%v", err)
	}
	if !ok || !pki.SecretMatches(rec.SecretHash, secret) {
		return status.Error(codes.PermissionDenied, "join token is not valid for this cluster: create one with \"ssi token create\" on a server of the cluster")
	}
	if time.Now().After(rec.Expires) {
		return status.Errorf(codes.PermissionDenied, "join token expired at %s: create a new one with \"ssi token create\"", rec.Expires.Format(time.RFC3339))
	}
	return nil
}

// checkName refuses a name held by another node that is alive. A node that restarts after
// losing its data dir, or replaces a dead node, may take the name over.
func (p *peerService) checkName(ctx context.Context, req *ssipb.JoinRequest) error {
	rec, ok, err := store.GetNode(ctx, p.a.etcd, req.Name)
	if err != nil {
		return status.Errorf(codes.Unavailable, "%v", err)
	}
	if !ok || rec.NodeID == req.NodeId {
		return nil
	}
	if req.Name == p.a.state.Name {
		return status.Errorf(codes.AlreadyExists, "node name %q is taken by a live node (%s): choose another --name", req.Name, rec.Addr)
	}
	for _, m := range p.a.gossip.Members() {
		if m.Name == req.Name && (m.State == cluster.StateAlive || m.State == cluster.StateSuspect) {
			return status.Errorf(codes.AlreadyExists, "node name %q is taken by a live node (%s): choose another --name, or stop that node first", req.Name, rec.Addr)
		}
	}
	return nil
}

// addMember adds the joining server to etcd as a learner and returns the initial-cluster
// string it must start with. A learner does not count towards quorum, so the cluster keeps
// working until the new member has caught up and promotes itself. A member already registered
// at the same peer URL (a retried join) is reused.
func (p *peerService) addMember(ctx context.Context, members []*etcdserverpb.Member, name, peerURL string) (string, error) {
	cli := p.a.etcd
	for _, m := range members {
		if slices.Contains(m.PeerURLs, peerURL) {
			return initialCluster(members, name, peerURL), nil
		}
	}
	for _, m := range members {
		if m.Name == name {
			// A server of that name was replaced: its old member must go, or quorum counts it.
			if _, err := cli.MemberRemove(ctx, m.ID); err != nil {
				return "", status.Errorf(codes.Unavailable, "removing the old etcd member of %s: %v", name, err)
			}
		}
	}
	added, err := cli.MemberAddAsLearner(ctx, []string{peerURL})
	if err != nil {
		return "", status.Errorf(codes.Unavailable, "adding %s as an etcd member: %v (wait until every server is up, then retry)", name, err)
	}
	return initialCluster(added.Members, name, peerURL), nil
}

// initialCluster renders etcd's name=peerURL list; the member being added has no name yet.
func initialCluster(members []*etcdserverpb.Member, newName, newPeerURL string) string {
	var parts []string
	for _, m := range members {
		name := m.Name
		for _, u := range m.PeerURLs {
			if u == newPeerURL {
				name = newName
			}
		}
		if name == "" {
			continue // another member that has not started yet; it cannot be named here
		}
		for _, u := range m.PeerURLs {
			parts = append(parts, name+"="+u)
		}
	}
	return strings.Join(parts, ",")
}
