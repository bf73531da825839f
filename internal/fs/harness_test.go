package fs

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/ssi-cluster/ssi/internal/api"
	"github.com/ssi-cluster/ssi/internal/fs/fspb"
)

// The test harness runs several "nodes" in this process: each has a Server on a loopback gRPC
// port and on a loopback file wire port serving its own directory, and may have a real FUSE
// mount of the cluster tree. The calling node's name travels in gRPC metadata, and as the
// first line on a wire connection, standing in for the mTLS certificate.

const testNodeHeader = "ssi-test-node"

func testIdentify(ctx context.Context) (string, error) {
	if node, ok := ctx.Value(callerNode{}).(string); ok {
		return node, nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(testNodeHeader); len(v) == 1 {
		return v[0], nil
	}
	return "", errors.New("test caller did not name its node")
}

// testIdentifyConn reads the node name a test client sends first on a wire connection.
func testIdentifyConn(conn net.Conn) (string, error) {
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer conn.SetReadDeadline(time.Time{})
	var name []byte
	b := make([]byte, 1)
	for {
		if _, err := io.ReadFull(conn, b); err != nil {
			return "", err
		}
		if b[0] == '\n' {
			return string(name), nil
		}
		name = append(name, b[0])
	}
}

type testCluster struct {
	t     testing.TB
	mu    sync.Mutex
	nodes map[string]*testNode
	order []string
	// tls, when set, secures the loopback connections as the agents' mTLS would (benchmarks).
	tls *testTLS
	// gone are the nodes the mounts are told have failed, as gossip would (Liveness).
	gone sync.Map
}

type testNode struct {
	c      *testCluster
	name   string
	root   string // the directory this node serves
	addr   string
	server *Server
	grpc   *grpc.Server
	// wireAddr is where the node serves the file wire, "" when it does not.
	wireAddr string
	wireLn   net.Listener
	mnt      string
	mount    *Mounted
	cfg      ServerConfig
	// hang makes the node's server stop answering, as if the network dropped its packets.
	hang atomic.Bool
	// noCalls makes the node's server one that does not know the Calls stream (an older agent).
	noCalls bool
	// noWire makes the node serve no file wire (an agent from before it).
	noWire bool
	// mute cuts the node's Watch streams to other nodes off both ways (its mount sends
	// nothing, the owners' sends to it block), as a node that died or was cut off while its
	// connections stayed open.
	mute atomic.Bool

	connsMu sync.Mutex
	conns   map[string]*grpc.ClientConn // to other nodes, dialled as this node
	wires   []*atomic.Bool              // the wedged flags of the wire connections it accepted
}

// needRoot skips a test that needs root and /dev/fuse when they are missing; CI runs as root,
// where these tests run.
func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (FUSE mounts, other users' credentials)")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("needs /dev/fuse")
	}
}

func newTestCluster(t testing.TB, names ...string) *testCluster {
	return newCluster(t, nil, names...)
}

// newTLSCluster is newTestCluster with TLS between the nodes, to measure what agents pay.
func newTLSCluster(t testing.TB, names ...string) *testCluster {
	return newCluster(t, newTestTLS(t), names...)
}

func newCluster(t testing.TB, tls *testTLS, names ...string) *testCluster {
	needRoot(t)
	c := &testCluster{t: t, nodes: map[string]*testNode{}, order: names, tls: tls}
	base := t.TempDir()
	for _, name := range names {
		n := &testNode{c: c, name: name, root: filepath.Join(base, name+"-disk"), mnt: filepath.Join(base, name+"-mnt"),
			conns: map[string]*grpc.ClientConn{}}
		for _, dir := range []string{n.root, n.mnt} {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		c.nodes[name] = n
		n.start(ServerConfig{})
	}
	t.Cleanup(func() {
		for _, n := range c.nodes {
			if n.mount != nil {
				n.mount.Close()
			}
		}
		for _, n := range c.nodes {
			n.stop()
			n.connsMu.Lock()
			for _, cc := range n.conns {
				cc.Close()
			}
			n.connsMu.Unlock()
		}
	})
	return c
}

func (c *testCluster) node(name string) *testNode {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[name]
}

// start runs the node's file server (again, after stop) on its address.
func (n *testNode) start(cfg ServerConfig) {
	t := n.c.t
	if cfg.Root == "" {
		cfg.Root = n.root
	}
	if cfg.reclaimGrace == 0 {
		// Most tests lock right after their servers start: those of the grace period ask for
		// one.
		cfg.reclaimGrace = -1
	}
	cfg.identify = testIdentify
	cfg.identifyConn = testIdentifyConn
	cfg.Logger = slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	addr := n.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var lis net.Listener
	deadline := time.Now().Add(5 * time.Second)
	for {
		lis, err = net.Listen("tcp", addr)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	opts := []grpc.ServerOption{grpc.MaxRecvMsgSize(8 << 20), grpc.ForceServerCodecV2(api.Codec{})}
	if n.c.tls != nil {
		opts = append(opts, grpc.Creds(n.c.tls.server))
	}
	g := grpc.NewServer(append(opts,
		grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			if n.hang.Load() {
				<-ctx.Done()
				return nil, ctx.Err()
			}
			return handler(ctx, req)
		}),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
			hs := hangingStream{ServerStream: ss, hang: &n.hang}
			if caller, err := testIdentify(ss.Context()); err == nil && info.FullMethod == fspb.Files_Watch_FullMethodName {
				if from := n.c.node(caller); from != nil {
					hs.mute = &from.mute
				}
			}
			return handler(srv, hs)
		}))...)
	if n.noCalls {
		fspb.RegisterFilesServer(g, serverWithoutCalls{srv})
	} else {
		srv.Register(g)
	}
	go g.Serve(lis)
	var wireLn net.Listener
	wireAddr := ""
	if !n.noCalls && !n.noWire {
		if wireLn, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		wireAddr = wireLn.Addr().String()
		ln := net.Listener(hangingListener{Listener: wireLn, hang: &n.hang, node: n})
		if n.c.tls != nil {
			ln = tls.NewListener(ln, n.c.tls.serverConfig)
		}
		go srv.ServeWire(ln)
	}
	n.c.mu.Lock()
	n.addr, n.server, n.grpc, n.cfg = lis.Addr().String(), srv, g, cfg
	n.wireAddr, n.wireLn = wireAddr, wireLn
	n.c.mu.Unlock()
}

func (n *testNode) stop() {
	n.c.mu.Lock()
	g, srv, wireLn := n.grpc, n.server, n.wireLn
	n.grpc, n.server, n.wireLn, n.wireAddr = nil, nil, nil, ""
	n.c.mu.Unlock()
	if g != nil {
		g.Stop()
	}
	if wireLn != nil {
		wireLn.Close()
	}
	if srv != nil {
		srv.Close()
	}
}

// restart replaces the node's file server with a new one with cfg (Root defaults to the
// node's directory).
func (n *testNode) restart(cfg ServerConfig) {
	n.stop()
	n.start(cfg)
}

// hangingStream stops sending while its node hangs, or while the node at the other end of a
// Watch stream is muted.
type hangingStream struct {
	grpc.ServerStream
	hang *atomic.Bool
	mute *atomic.Bool
}

func (s hangingStream) SendMsg(m any) error {
	for s.hang.Load() || s.mute != nil && s.mute.Load() {
		select {
		case <-s.Context().Done():
			return s.Context().Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	return s.ServerStream.SendMsg(m)
}

// hangingListener's connections stop sending while their node hangs, or for good once
// wedged (wedgeWires).
type hangingListener struct {
	net.Listener
	hang *atomic.Bool
	node *testNode
}

func (l hangingListener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	hc := hangingConn{Conn: conn, hang: l.hang, wedged: new(atomic.Bool)}
	if l.node != nil {
		l.node.connsMu.Lock()
		l.node.wires = append(l.node.wires, hc.wedged)
		l.node.connsMu.Unlock()
	}
	return hc, nil
}

type hangingConn struct {
	net.Conn
	hang, wedged *atomic.Bool
}

func (c hangingConn) Write(b []byte) (int, error) {
	for c.hang.Load() || c.wedged.Load() {
		time.Sleep(10 * time.Millisecond)
	}
	return c.Conn.Write(b)
}

// wedgeWires makes the node's file wire connections accepted so far stop sending for good,
// as a connection a middlebox lost does, while new ones work.
func (n *testNode) wedgeWires() {
	n.connsMu.Lock()
	defer n.connsMu.Unlock()
	for _, w := range n.wires {
		w.Store(true)
	}
}

// mutableStream drops what its node sends while the node is muted.
type mutableStream struct {
	grpc.ClientStream
	mute *atomic.Bool
}

func (s mutableStream) SendMsg(m any) error {
	if s.mute.Load() {
		return nil
	}
	return s.ClientStream.SendMsg(m)
}

func (s mutableStream) RecvMsg(m any) error {
	for s.mute.Load() {
		time.Sleep(10 * time.Millisecond)
	}
	return s.ClientStream.RecvMsg(m)
}

type testLogWriter struct{ t testing.TB }

func (w testLogWriter) Write(b []byte) (int, error) {
	w.t.Log(string(b))
	return len(b), nil
}

// testNodes is the cluster as node from sees it.
type testNodes struct{ from *testNode }

func (v testNodes) Names() []string { return v.from.c.order }

func (v testNodes) Gone(node string) bool {
	_, gone := v.from.c.gone.Load(node)
	return gone
}

func (v testNodes) Conn(node string) (grpc.ClientConnInterface, error) {
	to := v.from.c.node(node)
	if to == nil {
		return nil, fmt.Errorf("no node %q", node)
	}
	v.from.connsMu.Lock()
	defer v.from.connsMu.Unlock()
	if cc := v.from.conns[node]; cc != nil {
		return cc, nil
	}
	self := v.from.name
	creds := insecure.NewCredentials()
	if tls := v.from.c.tls; tls != nil {
		creds = tls.client
	}
	cc, err := grpc.NewClient(to.addr,
		grpc.WithTransportCredentials(creds),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, MaxDelay: 500 * time.Millisecond},
			MinConnectTimeout: time.Second,
		}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(8<<20)),
		grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return invoker(metadata.AppendToOutgoingContext(ctx, testNodeHeader, self), method, req, reply, cc, opts...)
		}),
		grpc.WithStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			ctx = metadata.AppendToOutgoingContext(ctx, testNodeHeader, self)
			if method != fspb.Files_Watch_FullMethodName {
				return streamer(ctx, desc, cc, method, opts...)
			}
			// While muted, the end of the stream does not reach the owner either.
			mute := &v.from.mute
			streamCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
			go func() {
				<-ctx.Done()
				for mute.Load() {
					time.Sleep(10 * time.Millisecond)
				}
				cancel()
			}()
			cs, err := streamer(streamCtx, desc, cc, method, opts...)
			if err != nil {
				cancel()
				return nil, err
			}
			return mutableStream{ClientStream: cs, mute: mute}, nil
		}),
	)
	if err != nil {
		return nil, err
	}
	v.from.conns[node] = cc
	return cc, nil
}

// DialFiles opens the file wire to node, naming the caller on its first line.
func (v testNodes) DialFiles(ctx context.Context, node string) (net.Conn, error) {
	to := v.from.c.node(node)
	if to == nil {
		return nil, fmt.Errorf("no node %q", node)
	}
	v.from.c.mu.Lock()
	addr := to.wireAddr
	v.from.c.mu.Unlock()
	if addr == "" {
		return nil, fmt.Errorf("node %q serves no file wire", node)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if tc := v.from.c.tls; tc != nil {
		conn = tls.Client(conn, tc.clientConfig)
	}
	if _, err := conn.Write([]byte(v.from.name + "\n")); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// mountTree mounts the cluster tree on node n, with its own server as the local shortcut.
func (n *testNode) mountTree(timeout time.Duration) *Mounted {
	t := n.c.t
	m, err := Mount(context.Background(), MountConfig{
		Path: n.mnt, LocalNode: n.name, Nodes: testNodes{n}, Local: n.server, Timeout: timeout,
		Logger: slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	n.mount = m
	return m
}

// path returns where node other's path p appears in n's mount.
func (n *testNode) path(other string, p ...string) string {
	return filepath.Join(append([]string{n.mnt, other}, p...)...)
}

// disk returns p on n's own disk, bypassing the file server.
func (n *testNode) disk(p ...string) string {
	return filepath.Join(append([]string{n.root}, p...)...)
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, within time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	var err error
	for {
		if err = cond(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %v: %v", what, within, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type testTLS struct {
	server, client             credentials.TransportCredentials
	serverConfig, clientConfig *tls.Config
}

// newTestTLS makes a throw-away certificate for 127.0.0.1.
func newTestTLS(t testing.TB) *testTLS {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "ssi-fs-test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	pair := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	server := &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS13}
	client := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13, ServerName: "127.0.0.1"}
	return &testTLS{
		server: credentials.NewTLS(server), client: credentials.NewTLS(client),
		serverConfig: server, clientConfig: client,
	}
}
