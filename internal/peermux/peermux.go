// Package peermux shares one mutual-TLS port between the agents' own connection protocols —
// the file wire (internal/fs) and the bulk output links (internal/datalink) — told apart by
// the application protocol the client names in its TLS handshake (ALPN).
//
// One port instead of one per protocol keeps the firewall rules of a real install short. The
// handshake is the mux's: a connection reaches a protocol's listener only once the client has
// proven a node certificate of the cluster (the caller's tls.Config decides what is accepted)
// and asked for that protocol; anything else is closed unread.
package peermux

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"
)

// handshakeTimeout bounds a client's TLS handshake, so that a connection that never
// completes one costs the mux nothing but its goroutine for that long.
const handshakeTimeout = 10 * time.Second

// ClientConfig is base with proto as the one application protocol offered: the configuration
// a client dials a Mux's port with.
func ClientConfig(base *tls.Config, proto string) *tls.Config {
	c := base.Clone()
	c.NextProtos = []string{proto}
	return c
}

// Mux accepts connections on one listener and hands each, handshaken, to the listener of the
// protocol it asked for.
type Mux struct {
	lis  net.Listener
	conf *tls.Config
	log  *slog.Logger
	subs map[string]*listener

	ctx       context.Context // ends when the Mux is closed
	cancel    context.CancelFunc
	closeOnce sync.Once
	wg        sync.WaitGroup
}

// New makes a Mux for protos on lis. conf is the server's TLS configuration (certificates,
// client verification); the mux adds the protocols to it.
func New(lis net.Listener, conf *tls.Config, log *slog.Logger, protos ...string) *Mux {
	c := conf.Clone()
	c.NextProtos = slices.Clone(protos)
	m := &Mux{lis: lis, conf: c, log: log, subs: map[string]*listener{}}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	for _, p := range protos {
		m.subs[p] = &listener{mux: m, conns: make(chan net.Conn), closed: make(chan struct{})}
	}
	return m
}

// Listener is the listener of one protocol given to New; its connections are *tls.Conn with
// the handshake done. It returns nil for a protocol New was not given.
func (m *Mux) Listener(proto string) net.Listener {
	if l, ok := m.subs[proto]; ok {
		return l
	}
	return nil
}

// Serve accepts connections until the Mux is closed; it then returns net.ErrClosed.
func (m *Mux) Serve() error {
	backoff := 5 * time.Millisecond
	for {
		conn, err := m.lis.Accept()
		if err != nil {
			if m.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return net.ErrClosed
			}
			// Out of descriptors, say: wait rather than spin.
			m.log.Warn("accepting a node connection", "addr", m.lis.Addr(), "err", err)
			select {
			case <-time.After(backoff):
			case <-m.ctx.Done():
				return net.ErrClosed
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		m.wg.Add(1)
		go m.dispatch(conn)
	}
}

// dispatch completes the handshake of conn and passes it to its protocol's listener.
func (m *Mux) dispatch(raw net.Conn) {
	defer m.wg.Done()
	conn := tls.Server(raw, m.conf)
	ctx, cancel := context.WithTimeout(m.ctx, handshakeTimeout)
	err := conn.HandshakeContext(ctx)
	cancel()
	if err != nil {
		m.log.Debug("node connection refused", "from", raw.RemoteAddr(), "err", err)
		raw.Close()
		return
	}
	sub, ok := m.subs[conn.ConnectionState().NegotiatedProtocol]
	if !ok {
		m.log.Debug("node connection without a known protocol", "from", raw.RemoteAddr(),
			"protocol", conn.ConnectionState().NegotiatedProtocol)
		raw.Close()
		return
	}
	select {
	case sub.conns <- conn:
	case <-sub.closed:
		raw.Close()
	case <-m.ctx.Done():
		raw.Close()
	}
}

// Close stops accepting, closes the listener, and makes every protocol's Accept return
// net.ErrClosed. Connections already handed out stay open.
func (m *Mux) Close() error {
	var err error
	m.closeOnce.Do(func() {
		m.cancel()
		err = m.lis.Close()
	})
	m.wg.Wait()
	return err
}

// listener is one protocol's share of a Mux.
type listener struct {
	mux       *Mux
	conns     chan net.Conn
	closed    chan struct{}
	closeOnce sync.Once
}

func (l *listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	case <-l.mux.ctx.Done():
		return nil, net.ErrClosed
	}
}

// Close stops this protocol's connections (new ones for it are closed unread); the other
// protocols go on.
func (l *listener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return nil
}

func (l *listener) Addr() net.Addr { return l.mux.lis.Addr() }
