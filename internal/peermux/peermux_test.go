package peermux

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/ssi-cluster/ssi/internal/pki"
	"github.com/ssi-cluster/ssi/internal/pki/pkitest"
)

// TestMuxDispatchesByProtocol serves two protocols on one port and dials each: every
// connection must reach its own protocol's listener, handshaken, with the client's node
// identity; a client naming no protocol or another one, a client without a certificate and a
// client of another cluster must reach neither.
func TestMuxDispatchesByProtocol(t *testing.T) {
	ca := pkitest.CA(t, "c1")
	server, client := pkitest.Node(t, ca, "n1"), pkitest.Node(t, ca, "n2")
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := New(lis, pki.StrictServerTLS(ca.Cert, server), slog.New(slog.DiscardHandler), "a/1", "b/1")
	served := make(chan error, 1)
	go func() { served <- m.Serve() }()
	defer m.Close()
	if m.Listener("c/1") != nil {
		t.Error("a listener for a protocol the mux was not given")
	}

	base := pki.ClientTLS(ca.Cert, client)
	for _, proto := range []string{"a/1", "b/1", "a/1"} {
		c, err := tls.Dial("tcp", lis.Addr().String(), ClientConfig(base, proto))
		if err != nil {
			t.Fatalf("dial %s: %v", proto, err)
		}
		if _, err := c.Write([]byte(proto)); err != nil {
			t.Fatal(err)
		}
		sc, err := m.Listener(proto).Accept()
		if err != nil {
			t.Fatal(err)
		}
		state := sc.(*tls.Conn).ConnectionState()
		if name, _, err := pki.PeerNode(state); err != nil || name != "n2" || state.NegotiatedProtocol != proto {
			t.Errorf("%s: server side sees node %q (%v), protocol %q", proto, name, err, state.NegotiatedProtocol)
		}
		buf := make([]byte, len(proto))
		if _, err := io.ReadFull(sc, buf); err != nil || string(buf) != proto {
			t.Errorf("%s: read %q, %v", proto, buf, err)
		}
		c.Close()
		sc.Close()
	}

	other := pkitest.CA(t, "c2")
	refused := map[string]*tls.Config{
		"no protocol":       base,
		"unknown protocol":  ClientConfig(base, "c/1"),
		"no certificate":    ClientConfig(pki.ClientTLS(ca.Cert, tls.Certificate{}), "a/1"),
		"another cluster's": ClientConfig(pki.ClientTLS(other.Cert, pkitest.Node(t, other, "n9")), "a/1"),
	}
	for what, conf := range refused {
		c, err := tls.Dial("tcp", lis.Addr().String(), conf)
		if err == nil {
			// TLS 1.3 clients finish before the server has checked them: the refusal shows
			// as the connection closing.
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = c.Read(make([]byte, 1))
			c.Close()
		}
		if err == nil {
			t.Errorf("%s: connection served", what)
		}
	}
	for _, proto := range []string{"a/1", "b/1"} {
		got := make(chan net.Conn, 1)
		go func() {
			if c, err := m.Listener(proto).Accept(); err == nil {
				got <- c
			}
		}()
		select {
		case c := <-got:
			t.Errorf("%s: a refused client's connection reached the listener from %s", proto, c.RemoteAddr())
		case <-time.After(200 * time.Millisecond):
		}
	}

	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-served:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Serve returned %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after Close")
	}
	if _, err := m.Listener("a/1").Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
	}
}

// TestClosingOneProtocolLeavesTheOther closes one protocol's listener: its connections are
// refused, the other protocol is still served.
func TestClosingOneProtocolLeavesTheOther(t *testing.T) {
	ca := pkitest.CA(t, "c1")
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := New(lis, pki.StrictServerTLS(ca.Cert, pkitest.Node(t, ca, "n1")), slog.New(slog.DiscardHandler), "a/1", "b/1")
	go m.Serve()
	defer m.Close()
	m.Listener("a/1").Close()
	if _, err := m.Listener("a/1").Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept on a closed protocol: %v", err)
	}
	base := pki.ClientTLS(ca.Cert, pkitest.Node(t, ca, "n2"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d := tls.Dialer{Config: ClientConfig(base, "b/1")}
	c, err := d.DialContext(ctx, "tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, err := m.Listener("b/1").Accept()
	if err != nil {
		t.Fatal(err)
	}
	sc.Close()
}
