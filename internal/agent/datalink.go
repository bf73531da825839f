package agent

import (
	"fmt"
	"net"
	"strconv"

	"github.com/ssi-cluster/ssi/internal/datalink"
	"github.com/ssi-cluster/ssi/internal/pki"
)

// dataLinkPortOffset places the data link listener (bulk output of `ssi run`, package
// datalink) after the agent API, gossip and etcd ports.
const dataLinkPortOffset = 4

// startDataLink listens for data links from other nodes, with the same CA and node
// certificates as the agent API, but requiring a node certificate: no call on it is open.
func (a *Agent) startDataLink() error {
	addr := net.JoinHostPort(a.cfg.bindHost(), strconv.Itoa(a.cfg.port()+dataLinkPortOffset))
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening for data links on %s: %w (is another agent running, or set --bind)", addr, err)
	}
	a.dataLis = lis
	a.link = datalink.New(datalink.Config{
		ServerTLS: pki.StrictServerTLS(a.caCert, a.keyPair),
		ClientTLS: pki.ClientTLS(a.caCert, a.keyPair),
		AddrOf:    a.dataLinkAddrOf,
		Logger:    a.log,
	})
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.link.Serve(lis)
	}()
	return nil
}

// dataLinkAddrOf is the data link address of a node: its cluster address's port plus the
// offset, as its agent listens.
func (a *Agent) dataLinkAddrOf(node string) (string, bool) {
	addr, ok := a.addrOf(node)
	if !ok {
		return "", false
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", false
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return "", false
	}
	return net.JoinHostPort(host, strconv.Itoa(p+dataLinkPortOffset)), true
}
