package agent

import (
	"fmt"
	"net"
	"sort"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/ssi-cluster/ssi/internal/api"
	"github.com/ssi-cluster/ssi/internal/api/ssirpc"
	"github.com/ssi-cluster/ssi/internal/cluster"
	"github.com/ssi-cluster/ssi/internal/pki"
	"github.com/ssi-cluster/ssi/internal/place"
)

// peerKeepalive notices a silently dead peer connection; gossip usually notices first.
var peerKeepalive = keepalive.ClientParameters{Time: 5 * time.Second, Timeout: 3 * time.Second, PermitWithoutStream: true}

// peerConn returns a (cached) mTLS connection to the agent at addr.
func (a *Agent) peerConn(addr string) (*grpc.ClientConn, error) {
	a.peerMu.Lock()
	defer a.peerMu.Unlock()
	if cc, ok := a.peerConns[addr]; ok {
		return cc, nil
	}
	cc, err := grpc.NewClient(addr, append(api.DialOptions(),
		grpc.WithTransportCredentials(credentials.NewTLS(pki.ClientTLS(a.caCert, a.keyPair))),
		grpc.WithKeepaliveParams(peerKeepalive),
	)...)
	if err != nil {
		return nil, fmt.Errorf("connecting to agent at %s: %w", addr, err)
	}
	a.peerConns[addr] = cc
	return cc, nil
}

func (a *Agent) closePeerConns() {
	a.peerMu.Lock()
	defer a.peerMu.Unlock()
	for addr, cc := range a.peerConns {
		cc.Close()
		delete(a.peerConns, addr)
	}
}

// clusterView adapts the agent to what the process space needs. It reads gossip only, so it
// costs no round trip.
type clusterView struct{ a *Agent }

func (v clusterView) Self() (string, uint32) { return v.a.state.Name, v.a.state.Index }

func (v clusterView) Candidates() []place.Candidate {
	members := v.a.gossip.Members()
	out := make([]place.Candidate, 0, len(members))
	seenSelf := false
	for _, m := range members {
		alive := m.State == cluster.StateAlive || m.State == cluster.StateSuspect
		meta := m.Meta
		if m.Name == v.a.state.Name {
			meta, alive, seenSelf = v.a.gossip.LocalMeta(), true, true
		}
		c := candidate(m.Name, alive, meta)
		c.Left = m.State == cluster.StateLeft && !alive
		out = append(out, c)
	}
	if !seenSelf {
		out = append(out, candidate(v.a.state.Name, true, v.a.gossip.LocalMeta()))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Index < out[j].Index })
	return out
}

func candidate(name string, alive bool, m cluster.Meta) place.Candidate {
	return place.Candidate{
		Name: name, Index: m.Index, Alive: alive, CPUs: m.Load.CPUs, Load1: m.Load.Load1,
		CPUUsed: m.Load.CPUUsed, MemFree: m.Load.MemFree,
	}
}

// Resolve accepts a node name, its cluster address, or its IP.
func (v clusterView) Resolve(s string) (string, bool) {
	for _, m := range v.a.gossip.Members() {
		if m.Name == s || m.Meta.Addr == s {
			return m.Name, true
		}
		if host, _, err := net.SplitHostPort(m.Meta.Addr); err == nil && host == s {
			return m.Name, true
		}
	}
	v.a.mu.Lock()
	defer v.a.mu.Unlock()
	for name, rec := range v.a.registry {
		host, _, _ := net.SplitHostPort(rec.Addr)
		if name == s || rec.Addr == s || host == s {
			return name, true
		}
	}
	return "", false
}

func (v clusterView) NameOf(index uint32) (string, bool) {
	if index == v.a.state.Index {
		return v.a.state.Name, true
	}
	for _, m := range v.a.gossip.Members() {
		if m.Meta.Index == index {
			return m.Name, true
		}
	}
	v.a.mu.Lock()
	defer v.a.mu.Unlock()
	for name, rec := range v.a.registry {
		if rec.Index == index {
			return name, true
		}
	}
	return "", false
}

func (v clusterView) Peer(name string) (ssirpc.PeerClient, error) {
	addr, ok := v.a.addrOf(name)
	if !ok {
		return nil, fmt.Errorf("no address known for node %s", name)
	}
	cc, err := v.a.peerConn(addr)
	if err != nil {
		return nil, err
	}
	return ssirpc.NewPeerClient(cc), nil
}
