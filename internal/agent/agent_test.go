package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ssi-cluster/ssi/internal/api/ssipb"
	"github.com/ssi-cluster/ssi/internal/api/ssirpc"
)

// testNet hands out loopback addresses of a random 127.x.y.0/24, so tests never collide with
// each other or with a real agent on the default port.
type testNet struct {
	t      *testing.T
	prefix string
	next   int
}

func newTestNet(t *testing.T) *testNet {
	return &testNet{t: t, prefix: fmt.Sprintf("127.%d.%d.", 1+rand.IntN(250), 1+rand.IntN(250)), next: 1}
}

func (n *testNet) addr() string {
	n.next++
	return n.prefix + fmt.Sprint(n.next) + ":7700"
}

func testConfig(t *testing.T, name, bind string) Config {
	dir := t.TempDir()
	return Config{
		Name:    name,
		DataDir: filepath.Join(dir, "data"),
		Bind:    bind,
		Socket:  filepath.Join(dir, "ssi.sock"),
		NoMount: true, // several agents share this process and machine; the tree has its own test
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

func startAgent(t *testing.T, cfg Config) *Agent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, err := Start(ctx, cfg)
	if err != nil {
		t.Fatalf("starting %s: %v", cfg.Name, err)
	}
	t.Cleanup(func() { a.stop(false) })
	return a
}

func control(t *testing.T, a *Agent) ssirpc.ControlClient {
	t.Helper()
	cc, err := grpc.NewClient("unix://"+a.cfg.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return ssirpc.NewControlClient(cc)
}

func token(t *testing.T, a *Agent, ttl time.Duration) string {
	t.Helper()
	resp, err := control(t, a).CreateToken(context.Background(), &ssipb.CreateTokenRequest{TtlSeconds: int64(ttl / time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	return resp.Token
}

// waitStates polls a's view until every named node has the wanted state.
func waitStates(t *testing.T, a *Agent, want map[string]string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var last []*ssipb.NodeInfo
	for time.Now().Before(deadline) {
		last, _ = a.nodes(context.Background())
		ok := 0
		for _, n := range last {
			if want[n.Name] == n.State {
				ok++
			}
		}
		if ok == len(want) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	var got []string
	for _, n := range last {
		got = append(got, n.Name+"="+n.State)
	}
	t.Fatalf("%s sees %v, want %v", a.Name(), got, want)
}

func TestFormationAndJoinErrors(t *testing.T) {
	if testing.Short() {
		t.Skip("starts several etcd members")
	}
	tn := newTestNet(t)
	s1 := startAgent(t, func() Config { c := testConfig(t, "s1", tn.addr()); c.Server = true; return c }())
	tok := token(t, s1, time.Hour)

	s2cfg := testConfig(t, "s2", tn.addr())
	s2cfg.Server, s2cfg.Join, s2cfg.Token = true, s1.cfg.Bind, tok
	s2 := startAgent(t, s2cfg)

	c1cfg := testConfig(t, "c1", tn.addr())
	c1cfg.Join, c1cfg.Token = s2.cfg.Bind, tok // any node can admit
	c1 := startAgent(t, c1cfg)
	waitStates(t, c1, map[string]string{"s1": "alive", "s2": "alive", "c1": "alive"})
	if c1.state.Index != 3 || s2.state.Index != 2 || s1.state.Index != 1 {
		t.Fatalf("indexes %d %d %d", s1.state.Index, s2.state.Index, c1.state.Index)
	}
	st, err := control(t, c1).Status(context.Background(), &ssipb.StatusRequest{})
	if err != nil || !st.EtcdHealthy || len(st.Servers) != 2 || st.EtcdLeader == "" {
		t.Fatalf("status %+v %v", st, err)
	}

	expired := token(t, s1, time.Second)
	otherCluster := func() string {
		o := startAgent(t, func() Config { c := testConfig(t, "o1", tn.addr()); c.Server = true; return c }())
		return token(t, o, time.Hour)
	}()
	time.Sleep(1100 * time.Millisecond) // let the 1 s token expire
	badSecret := tok[:len(tok)-1] + map[bool]string{true: "b", false: "a"}[strings.HasSuffix(tok, "a")]
	unused := tn.addr()

	tests := []struct {
		name    string
		mutate  func(c *Config)
		wantErr string
	}{
		{"wrong secret", func(c *Config) { c.Token = badSecret }, "not valid for this cluster"},
		{"expired token", func(c *Config) { c.Token = expired }, "expired"},
		{"token of another cluster", func(c *Config) { c.Token = otherCluster }, "another cluster"},
		{"malformed token", func(c *Config) { c.Token = "hello" }, "malformed"},
		{"unreachable join address", func(c *Config) { c.Join = unused }, "cannot reach join address"},
		{"name of a live node", func(c *Config) { c.Name = "c1" }, "taken by a live node"},
		{"no token", func(c *Config) { c.Token = "" }, "needs --token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t, "x1", tn.addr())
			cfg.Join, cfg.Token = s1.cfg.Bind, tok
			tt.mutate(&cfg)
			_, err := Start(context.Background(), cfg)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
			entries, _ := os.ReadDir(cfg.DataDir)
			for _, e := range entries {
				if e.Name() != fileLock {
					t.Errorf("refused join left %s in the data dir", e.Name())
				}
			}
		})
	}
	nodes, _ := s1.nodes(context.Background())
	if len(nodes) != 3 {
		t.Fatalf("refused joins changed the registry: %d nodes", len(nodes))
	}
}

func TestRestartKeepsIdentityAndDataDirChecks(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd members")
	}
	tn := newTestNet(t)
	s1cfg := testConfig(t, "s1", tn.addr())
	s1cfg.Server = true
	s1 := startAgent(t, s1cfg)
	tok := token(t, s1, time.Hour)
	c1cfg := testConfig(t, "c1", tn.addr())
	c1cfg.Join, c1cfg.Token = s1.cfg.Bind, tok
	c1 := startAgent(t, c1cfg)
	waitStates(t, s1, map[string]string{"s1": "alive", "c1": "alive"})

	if _, err := Start(context.Background(), c1cfg); err == nil || !strings.Contains(err.Error(), "in use by another agent") {
		t.Fatalf("second agent on a data dir: %v", err)
	}

	// Graceful leave, then a restart without --join from the data dir.
	if err := c1.Close(); err != nil {
		t.Fatal(err)
	}
	waitStates(t, s1, map[string]string{"c1": "left"})
	restart := c1cfg
	restart.Join, restart.Token = "", ""
	c1b := startAgent(t, restart)
	if c1b.state.Index != c1.state.Index || c1b.state.NodeID != c1.state.NodeID {
		t.Fatalf("identity changed over restart: %+v vs %+v", c1b.state, c1.state)
	}
	waitStates(t, s1, map[string]string{"s1": "alive", "c1": "alive"})

	// Server restart: state written before the restart is still there.
	c1b.stop(false)
	s1.stop(false)
	s1b := startAgent(t, s1cfg)
	nodes, warn := s1b.nodes(context.Background())
	if warn != "" || len(nodes) != 2 {
		t.Fatalf("after server restart: %v %q", nodes, warn)
	}

	// The data dir of this cluster cannot join another cluster.
	other := startAgent(t, func() Config { c := testConfig(t, "o1", tn.addr()); c.Server = true; return c }())
	wrong := restart
	wrong.Join, wrong.Token = other.cfg.Bind, token(t, other, time.Hour)
	if _, err := Start(context.Background(), wrong); err == nil || !strings.Contains(err.Error(), "belongs to another cluster") {
		t.Fatalf("data dir of another cluster: %v", err)
	}
	// A data dir holding nothing, without --server or --join.
	if _, err := Start(context.Background(), testConfig(t, "z1", tn.addr())); err == nil || !strings.Contains(err.Error(), "holds no node") {
		t.Fatalf("empty data dir: %v", err)
	}
}

func TestExternalEtcd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	// A separately started etcd, as a site would run it.
	cfg := embed.NewConfig()
	cfg.Dir = t.TempDir()
	cfg.LogLevel = "error"
	lc, _ := url.Parse("http://127.0.0.1:0")
	lp, _ := url.Parse("http://127.0.0.1:0")
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*lc}, []url.URL{*lc}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*lp}, []url.URL{*lp}
	cfg.InitialCluster = cfg.Name + "=" + lp.String()
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	<-e.Server.ReadyNotify()
	endpoint := "http://" + e.Clients[0].Addr().(*net.TCPAddr).String()

	tn := newTestNet(t)
	s1cfg := testConfig(t, "s1", tn.addr())
	s1cfg.Server, s1cfg.EtcdEndpoints = true, []string{endpoint}
	s1 := startAgent(t, s1cfg)
	if s1.member != nil {
		t.Fatal("an embedded etcd member started despite --etcd-endpoints")
	}
	c1cfg := testConfig(t, "c1", tn.addr())
	c1cfg.Join, c1cfg.Token, c1cfg.EtcdEndpoints = s1.cfg.Bind, token(t, s1, time.Hour), []string{endpoint}
	c1 := startAgent(t, c1cfg)
	waitStates(t, c1, map[string]string{"s1": "alive", "c1": "alive"})
	st, err := control(t, c1).Status(context.Background(), &ssipb.StatusRequest{})
	if err != nil || !st.ExternalEtcd || !st.EtcdHealthy {
		t.Fatalf("status %+v %v", st, err)
	}
	// A second bootstrap against the same etcd is refused: it already holds a cluster.
	s2cfg := testConfig(t, "s2", tn.addr())
	s2cfg.Server, s2cfg.EtcdEndpoints = true, []string{endpoint}
	if _, err := Start(context.Background(), s2cfg); err == nil || !strings.Contains(err.Error(), "already holds ssi cluster") {
		t.Fatalf("second bootstrap: %v", err)
	}
}
