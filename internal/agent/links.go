package agent

import (
	"errors"
	"fmt"
	"net"
	"strconv"

	"github.com/ssi-cluster/ssi/internal/datalink"
	"github.com/ssi-cluster/ssi/internal/peermux"
	"github.com/ssi-cluster/ssi/internal/pki"
)

// linkPortOffset places the port of the agents' own connections after the agent API, gossip
// and etcd ports. Two protocols share it, told apart by the one each client names in its TLS
// handshake (internal/peermux): the file wire (small file requests, internal/fs) and the data
// links (bulk output of remote sessions, internal/datalink).
const linkPortOffset = 4

const (
	protoFiles  = "ssi-files/1"
	protoOutput = "ssi-output/1"
)

// startLinks listens on the link port, with the same CA and node certificates as the agent
// API but a node certificate required of every client (no call on it is open to others), and
// serves the file wire and the data links there.
func (a *Agent) startLinks() error {
	addr := net.JoinHostPort(a.cfg.bindHost(), strconv.Itoa(a.cfg.port()+linkPortOffset))
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening for node links on %s: %w (is another agent running, or set --bind)", addr, err)
	}
	a.links = peermux.New(lis, pki.StrictServerTLS(a.caCert, a.keyPair), a.log, protoFiles, protoOutput)
	a.link = datalink.New(datalink.Config{
		ClientTLS: peermux.ClientConfig(pki.ClientTLS(a.caCert, a.keyPair), protoOutput),
		AddrOf:    a.linkAddrOf,
		Logger:    a.log,
	})
	a.wg.Add(3)
	go func() {
		defer a.wg.Done()
		if err := a.links.Serve(); !errors.Is(err, net.ErrClosed) {
			a.fail(fmt.Errorf("node link listener stopped: %w", err))
		}
	}()
	go func() {
		defer a.wg.Done()
		a.link.Serve(a.links.Listener(protoOutput))
	}()
	go func() {
		defer a.wg.Done()
		err := a.files.server.ServeWire(a.links.Listener(protoFiles))
		if !errors.Is(err, net.ErrClosed) {
			a.log.Warn("the file wire stopped; other nodes' requests for this node's files go over gRPC", "err", err)
		}
	}()
	return nil
}

// linkAddrOf is the link address of a node: its cluster address's port plus the offset, as
// its agent listens.
func (a *Agent) linkAddrOf(node string) (string, bool) {
	addr, ok := a.addrOf(node)
	if !ok {
		return "", false
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", false
	}
	p, err := strconv.Atoi(port)
	if err != nil || p <= 0 || p+linkPortOffset > 65535 {
		return "", false
	}
	return net.JoinHostPort(host, strconv.Itoa(p+linkPortOffset)), true
}
