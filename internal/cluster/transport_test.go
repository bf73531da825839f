package cluster

import (
	"bytes"
	"log/slog"
	"net"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestGossipOverOwnTransport forms a three-member gossip group on loopback through the
// transport (UDP probes, TCP joins, encryption and the cluster label on top) and checks that
// every member sees the others alive and then one leave.
func TestGossipOverOwnTransport(t *testing.T) {
	ms := startGroup(t, "a", "b", "c")
	for _, m := range ms {
		waitFor(t, m.ml.LocalNode().Name+" sees three alive", alive(m, 3))
	}
	if err := ms[2].Leave(time.Second); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a sees two alive", alive(ms[0], 2))
}

// startGroup starts a gossip member per name on loopback and joins them into one group.
func startGroup(t *testing.T, names ...string) []*Membership {
	t.Helper()
	key := bytes.Repeat([]byte{7}, 32)
	var ms []*Membership
	for _, name := range names {
		m, err := Start(Config{
			Name: name, BindAddr: "127.0.0.1", AdvertiseAddr: "127.0.0.1",
			SecretKey: key, ClusterID: "test", Logger: slog.New(slog.DiscardHandler),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Shutdown() })
		ms = append(ms, m)
	}
	seed := ms[0].ml.LocalNode().Address()
	for _, m := range ms[1:] {
		if n, err := m.Join([]string{seed}); err != nil || n != 1 {
			t.Fatalf("join through %s: %d answered, %v", seed, n, err)
		}
	}
	return ms
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func alive(m *Membership, want int) func() bool {
	return func() bool {
		n := 0
		for _, mem := range m.Members() {
			if mem.State == StateAlive {
				n++
			}
		}
		return n == want
	}
}

// TestWholeGroupLeaves: when every member leaves at once, none waits for its departure
// messages to reach a node that stays, as there is none; they used to wait their whole
// timeout, which held a stopping cluster's agents past their grace.
func TestWholeGroupLeaves(t *testing.T) {
	ms := startGroup(t, "a", "b", "c")
	for _, m := range ms {
		waitFor(t, m.ml.LocalNode().Name+" sees three alive", alive(m, 3))
	}
	const timeout = time.Minute
	done := make(chan time.Duration, len(ms))
	for _, m := range ms {
		go func() {
			start := time.Now()
			_ = m.Leave(timeout)
			done <- time.Since(start)
		}()
	}
	for range ms {
		select {
		case took := <-done:
			t.Logf("left in %v", took)
		case <-time.After(timeout / 2):
			t.Fatal("a member waited for its departure to reach nodes that were all leaving")
		}
	}
}

// TestTransportPassesPacketsAtTheirSize checks that a received packet reaches memberlist as a
// copy of its own length (not the read buffer), with its sender, and that shutting down stops
// the readers.
func TestTransportPassesPacketsAtTheirSize(t *testing.T) {
	tr, err := newTransport("127.0.0.1", 0, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	addr := tr.udp.LocalAddr().String()
	sender, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close()
	for _, msg := range []string{"first", "the second, longer packet"} {
		if _, err := sender.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		select {
		case p := <-tr.PacketCh():
			if string(p.Buf) != msg || cap(p.Buf) != len(msg) {
				t.Errorf("packet %q (cap %d), want %q at its own size", p.Buf, cap(p.Buf), msg)
			}
			if p.From.String() != sender.LocalAddr().String() {
				t.Errorf("packet from %s, want %s", p.From, sender.LocalAddr())
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("packet %q never arrived", msg)
		}
	}
	if ip, port, err := tr.FinalAdvertiseAddr("", 0); err != nil || !ip.Equal(net.IPv4(127, 0, 0, 1)) || port == 0 {
		t.Errorf("FinalAdvertiseAddr = %v, %d, %v", ip, port, err)
	}
	if _, _, err := tr.FinalAdvertiseAddr("not-an-ip", 0); err == nil {
		t.Error("a name as advertise address was accepted")
	}
	if _, err := tr.WriteTo([]byte("x"), "host.example:7701"); err == nil {
		t.Error("WriteTo a host name: want an error, not a DNS lookup")
	}
	done := make(chan struct{})
	go func() { tr.Shutdown(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return")
	}
}

// TestShutdownEndsDials: a stream still being dialled when the transport shuts down (an agent
// reconnecting to a node that is gone, while it stops) ends at once, not at its timeout.
func TestShutdownEndsDials(t *testing.T) {
	// A listener that never accepts and whose backlog is full drops further SYNs, so a dial to
	// it waits, like one to a host that is gone.
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*unix.SockaddrInet4).Port))
	for filled := false; !filled; {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			filled = true
			continue
		}
		defer c.Close()
	}

	tr, err := newTransport("127.0.0.1", 0, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	dialed := make(chan error, 1)
	go func() {
		c, err := tr.DialTimeout(addr, time.Minute)
		if err == nil {
			c.Close()
		}
		dialed <- err
	}()
	select {
	case err := <-dialed:
		t.Fatalf("the dial ended before the shutdown (%v): the backlog was not full", err)
	case <-time.After(300 * time.Millisecond):
	}
	tr.Shutdown()
	select {
	case err := <-dialed:
		if err == nil {
			t.Fatal("the dial succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the dial outlived the transport's shutdown")
	}
}
