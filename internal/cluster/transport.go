package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// maxPacket is the largest UDP datagram the transport receives.
const maxPacket = 65536

// transport carries memberlist's traffic: UDP for probes and gossip, TCP for joins and state
// exchange. It replaces memberlist's NetTransport, which reads every UDP packet into a freshly
// allocated 64 KiB buffer: with 300 ms probes that was half a megabyte of garbage a second on
// an idle node, and the collections it caused. This one reads into one buffer and hands
// memberlist a copy of the packet's own size. (memberlist adds the cluster label and the
// encryption on top of any transport.)
type transport struct {
	log      *slog.Logger
	udp      *net.UDPConn
	tcp      *net.TCPListener
	packetCh chan *memberlist.Packet
	streamCh chan net.Conn
	// closing ends with Shutdown: the readers stop, and so does a stream still being
	// dialled (a reconnect to a node that is gone waits for its SYNs to time out), which
	// would otherwise hold the agent's exit.
	closing  context.Context
	shutdown context.CancelFunc
	wg       sync.WaitGroup
	stopOnce sync.Once
}

var _ memberlist.NodeAwareTransport = (*transport)(nil)

// newTransport listens on addr:port, TCP and UDP.
func newTransport(addr string, port int, log *slog.Logger) (*transport, error) {
	ip := net.ParseIP(addr)
	if ip == nil {
		return nil, fmt.Errorf("gossip bind address %q is not an IP address", addr)
	}
	tcp, err := net.ListenTCP("tcp", &net.TCPAddr{IP: ip, Port: port})
	if err != nil {
		return nil, fmt.Errorf("gossip TCP listener: %w", err)
	}
	// Port 0 picks a free TCP port; UDP must use the same one, as peers know one port.
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip, Port: tcp.Addr().(*net.TCPAddr).Port})
	if err != nil {
		tcp.Close()
		return nil, fmt.Errorf("gossip UDP listener: %w", err)
	}
	t := &transport{
		log:      log,
		udp:      udp,
		tcp:      tcp,
		packetCh: make(chan *memberlist.Packet),
		streamCh: make(chan net.Conn),
	}
	t.closing, t.shutdown = context.WithCancel(context.Background())
	t.wg.Add(2)
	go t.readPackets()
	go t.acceptStreams()
	return t, nil
}

// FinalAdvertiseAddr is the address other nodes reach this one at: the configured advertise
// address, else the bound one.
func (t *transport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	if ip == "" {
		bound := t.tcp.Addr().(*net.TCPAddr)
		if bound.IP.IsUnspecified() {
			return nil, 0, errors.New("gossip listens on all addresses: give an advertise address")
		}
		return bound.IP, bound.Port, nil
	}
	adv := net.ParseIP(ip)
	if adv == nil {
		return nil, 0, fmt.Errorf("gossip advertise address %q is not an IP address", ip)
	}
	if v4 := adv.To4(); v4 != nil {
		adv = v4
	}
	if port == 0 {
		port = t.tcp.Addr().(*net.TCPAddr).Port
	}
	return adv, port, nil
}

// WriteTo sends one packet.
func (t *transport) WriteTo(b []byte, addr string) (time.Time, error) {
	// memberlist resolves names itself (join seeds) and hands transports only ip:port.
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return time.Time{}, fmt.Errorf("gossip address %q: %w", addr, err)
	}
	_, err = t.udp.WriteToUDPAddrPort(b, ap)
	return time.Now(), err
}

// WriteToAddress sends one packet to a node.
func (t *transport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	return t.WriteTo(b, a.Addr)
}

// PacketCh delivers the packets received.
func (t *transport) PacketCh() <-chan *memberlist.Packet { return t.packetCh }

// DialTimeout opens a stream to addr.
func (t *transport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	return d.DialContext(t.closing, "tcp", addr)
}

// DialAddressTimeout opens a stream to a node.
func (t *transport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	return t.DialTimeout(a.Addr, timeout)
}

// StreamCh delivers the streams accepted.
func (t *transport) StreamCh() <-chan net.Conn { return t.streamCh }

// Shutdown closes the listeners and waits for the readers to stop.
func (t *transport) Shutdown() error {
	t.stopOnce.Do(func() {
		t.shutdown()
		t.tcp.Close()
		t.udp.Close()
	})
	t.wg.Wait()
	return nil
}

// readPackets reads datagrams into one buffer and passes each on as a copy of its own size:
// memberlist may keep a packet's bytes after it returns.
func (t *transport) readPackets() {
	defer t.wg.Done()
	buf := make([]byte, maxPacket)
	for {
		n, from, err := t.udp.ReadFromUDP(buf)
		now := time.Now()
		if err != nil {
			if t.stopped() {
				return
			}
			t.log.Warn("gossip: reading a UDP packet", "err", err)
			continue
		}
		if n == 0 {
			continue
		}
		b := make([]byte, n)
		copy(b, buf)
		p := &memberlist.Packet{Buf: b, From: from, Timestamp: now}
		select {
		case t.packetCh <- p:
		case <-t.closing.Done():
			return
		}
	}
}

// acceptStreams accepts TCP connections, backing off while accepting fails (out of file
// descriptors, say) rather than spinning.
func (t *transport) acceptStreams() {
	defer t.wg.Done()
	backoff := 5 * time.Millisecond
	for {
		conn, err := t.tcp.AcceptTCP()
		if err != nil {
			if t.stopped() {
				return
			}
			t.log.Warn("gossip: accepting a TCP connection", "err", err)
			select {
			case <-time.After(backoff):
			case <-t.closing.Done():
				return
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		select {
		case t.streamCh <- conn:
		case <-t.closing.Done():
			conn.Close()
			return
		}
	}
}

func (t *transport) stopped() bool {
	select {
	case <-t.closing.Done():
		return true
	default:
		return false
	}
}
