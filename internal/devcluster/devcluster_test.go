package devcluster

import (
	"context"
	"errors"
	"fmt"
	"github.com/ssi-cluster/ssi/internal/proc/cgroup"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	gofs "github.com/hanwen/go-fuse/v2/fs"
)

// The cluster tests need root and run the test binary itself as the fake ssi
// (see fakessi_test.go); the unit tests at the end do not.

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("simulated hosts need root for namespaces, veths and cgroups: run go test as root")
	}
}

func testOptions(t *testing.T, nodes int) Options {
	t.Helper()
	requireRoot(t)
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return Options{
		Binary:       bin,
		Nodes:        nodes,
		Dir:          t.TempDir(), // under /tmp, which hosts hide: the harness must cope
		Logger:       slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
		ReadyTimeout: 20 * time.Second,
	}
}

func startCluster(t *testing.T, opts Options) *Cluster {
	t.Helper()
	c, err := Start(t.Context(), opts)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return c
}

// output runs cmd and returns its trimmed stdout, failing the test on error.
func output(t *testing.T, cmd *exec.Cmd) string {
	t.Helper()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(cmd.Args, " "), err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s (last: %s)", what, state)
		}
		time.Sleep(pollInterval)
	}
}

// processesInPidNS lists the machine pids of every process in the PID
// namespace of the given process.
func processesInPidNS(t *testing.T, pid int) []int {
	t.Helper()
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid))
	if err != nil {
		t.Fatalf("read pid namespace of %d: %v", pid, err)
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if link, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", p)); err == nil && link == ns {
			pids = append(pids, p)
		}
	}
	return pids
}

func processExists(pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return err == nil
}

func agentAddr(n *Node) string {
	return net.JoinHostPort(n.IP.String(), strconv.Itoa(AgentPort))
}

func nodeState(c *Cluster, from, name string) (string, error) {
	listing, err := c.listNodes(context.Background(), c.Node(from))
	if err != nil {
		return "", err
	}
	for _, s := range listing {
		if s.Name == name {
			return s.State, nil
		}
	}
	return "absent", nil
}

func TestHostsHaveTheirOwnNamespaces(t *testing.T) {
	c := startCluster(t, testOptions(t, 3))
	ctx := t.Context()
	machinePids := len(processesInPidNS(t, os.Getpid()))

	for _, n := range c.Nodes() {
		t.Run(n.Name, func(t *testing.T) {
			if got := output(t, c.Exec(ctx, n.Name, "hostname")); got != n.Name {
				t.Errorf("hostname = %q, want %q", got, n.Name)
			}
			if got := output(t, c.Exec(ctx, n.Name, "cat", "/proc/1/cmdline")); !strings.Contains(got, "dev-init") {
				t.Errorf("/proc/1/cmdline inside = %q, want the host init", got)
			}
			// The host's /proc shows its init, its agent and this shell and
			// ls, not the machine's processes.
			var hostPids []string
			for _, f := range strings.Fields(output(t, c.Exec(ctx, n.Name, "ls", "/proc"))) {
				if _, err := strconv.Atoi(f); err == nil {
					hostPids = append(hostPids, f)
				}
			}
			if !slices.Contains(hostPids, "1") || len(hostPids) > 4 || len(hostPids) >= machinePids {
				t.Errorf("host /proc lists pids %v; want 1, the agent and ls only (the machine has %d)", hostPids, machinePids)
			}
			if got := output(t, c.Exec(ctx, n.Name, "ip", "-o", "-4", "addr", "show", "dev", "eth0")); !strings.Contains(got, n.IP.String()+"/24") {
				t.Errorf("eth0 inside = %q, want address %s/24", got, n.IP)
			}
			if got := output(t, c.Exec(ctx, n.Name, "sh", "-c", "echo $SSI_SOCKET; test -S $SSI_SOCKET && echo socket")); got != HostSocket+"\nsocket" {
				t.Errorf("SSI_SOCKET inside = %q, want %s, a socket", got, HostSocket)
			}
			// /run/ssi inside is the node directory outside.
			initPid, err := os.ReadFile(filepath.Join(n.Dir, "init.pid"))
			if err != nil {
				t.Fatal(err)
			}
			if got := output(t, c.Exec(ctx, n.Name, "cat", HostRunDir+"/init.pid")); got != strings.TrimSpace(string(initPid)) {
				t.Errorf("%s/init.pid inside = %q, want %q from %s", HostRunDir, got, initPid, n.Dir)
			}
			agentPid, err := n.AgentPID()
			if err != nil {
				t.Fatal(err)
			}
			for _, pid := range []int{n.InitPID(), agentPid} {
				cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
				if err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(string(cg), "0::"+n.Cgroup+"\n") {
					t.Errorf("pid %d is in cgroups %q, want %s", pid, cg, n.Cgroup)
				}
			}
		})
	}

	marker := "/tmp/devcluster-marker-" + c.id
	output(t, c.Exec(ctx, "n1", "sh", "-c", "echo secret > "+marker))
	output(t, c.Exec(ctx, "n1", "test", "-e", marker))
	if err := c.Exec(ctx, "n2", "test", "-e", marker).Run(); err == nil {
		t.Errorf("%s written in n1 is visible in n2: /tmp is not private", marker)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Errorf("%s written in n1 is visible on the machine: /tmp is not private", marker)
	}
}

func TestPartitionCutsAHostOffAndHealRestoresIt(t *testing.T) {
	c := startCluster(t, testOptions(t, 3))
	ctx := t.Context()
	n1, n3 := c.Node("n1"), c.Node("n3")

	if got := output(t, c.Exec(ctx, "n2", "ssi", "dial", agentAddr(n1))); got != "PONG n1" {
		t.Fatalf("n2 dialing n1 got %q, want PONG n1", got)
	}
	// The machine reaches the hosts over the bridge.
	if reply, err := request("tcp", agentAddr(n3), "PING"); err != nil || reply != "PONG n3" {
		t.Fatalf("machine dialing n3: %q, %v", reply, err)
	}

	if err := c.Partition("n3"); err != nil {
		t.Fatal(err)
	}
	if err := c.Exec(ctx, "n2", "ssi", "dial", agentAddr(n3)).Run(); err == nil {
		t.Error("n2 still reaches n3 after Partition(n3)")
	}
	waitFor(t, "n1 to see n3 dead", func() (bool, string) {
		state, err := nodeState(c, "n1", "n3")
		return state == "dead", fmt.Sprint(state, err)
	})

	if err := c.Heal("n3"); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitAlive(ctx, "n3"); err != nil {
		t.Fatal(err)
	}
	if got := output(t, c.Exec(ctx, "n2", "ssi", "dial", agentAddr(n3))); got != "PONG n3" {
		t.Errorf("n2 dialing n3 after Heal got %q, want PONG n3", got)
	}
}

func TestKillEndsEveryProcessOfTheHostAndRestartRejoins(t *testing.T) {
	c := startCluster(t, testOptions(t, 3))
	ctx := t.Context()
	n3 := c.Node("n3")
	ipBefore := n3.IP.String()

	// An orphan in the host, reparented to its init.
	output(t, c.Exec(ctx, "n3", "sh", "-c", "sleep 1000 >/dev/null 2>&1 &"))
	before := processesInPidNS(t, n3.InitPID())
	if len(before) < 3 {
		t.Fatalf("host n3 has processes %v; want at least init, agent and sleep", before)
	}

	if err := c.Kill("n3"); err != nil {
		t.Fatal(err)
	}
	if n3.Running() {
		t.Error("n3 still running after Kill")
	}
	for _, pid := range before {
		if processExists(pid) {
			t.Errorf("process %d of n3 survived Kill", pid)
		}
	}
	waitFor(t, "n3's cgroup to empty", func() (bool, string) {
		populated, err := cgroupPopulated(n3.CgroupDir())
		return !populated && err == nil, fmt.Sprint(populated, err)
	})
	if err := c.Exec(ctx, "n3", "true").Run(); err == nil {
		t.Error("Exec on a killed node succeeded")
	}

	if err := c.Restart(ctx, "n3"); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitAlive(ctx, "n1", "n2", "n3"); err != nil {
		t.Fatal(err)
	}
	if got := output(t, c.Exec(ctx, "n1", "ssi", "dial", agentAddr(n3))); got != "PONG n3" || n3.IP.String() != ipBefore {
		t.Errorf("restarted n3 at %s answered %q, want PONG n3 at %s", n3.IP, got, ipBefore)
	}
}

func TestKillAgentEndsTheHost(t *testing.T) {
	c := startCluster(t, testOptions(t, 2))
	n2 := c.Node("n2")
	initPid := n2.InitPID()

	if err := c.KillAgent("n2"); err != nil {
		t.Fatal(err)
	}
	if n2.Running() || processExists(initPid) {
		t.Errorf("host n2 (init %d) still up after its agent was killed", initPid)
	}
	if err := c.Restart(t.Context(), "n2"); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitAlive(t.Context(), "n2"); err != nil {
		t.Fatal(err)
	}
}

func TestStopForwardsSIGTERMToTheAgent(t *testing.T) {
	c := startCluster(t, testOptions(t, 2))
	if err := c.Stop(t.Context(), "n2"); err != nil {
		t.Fatal(err)
	}
	log, err := os.ReadFile(c.Node("n2").LogPath())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(log), "fake agent n2 stopping on terminated") {
		t.Errorf("the agent did not get SIGTERM; its log:\n%s", log)
	}
	if err := c.Stop(t.Context(), "n2"); err == nil {
		t.Error("Stop of a stopped node succeeded")
	}
}

func TestAddNode(t *testing.T) {
	c := startCluster(t, testOptions(t, 1))
	ctx := t.Context()
	join := agentAddr(c.Node("n1"))

	bad, err := c.AddNode(ctx, "--join", join, "--token", "not-the-token")
	if err == nil || !strings.Contains(err.Error(), "bad token") {
		t.Fatalf("AddNode with a bad token: err = %v, want one quoting the agent's log about the bad token", err)
	}
	if bad == nil || bad.Name != "n2" || bad.Running() {
		t.Fatalf("AddNode with a bad token returned node %+v; want n2, not running", bad)
	}

	token, err := c.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n3, err := c.AddNode(ctx, "--join", join, "--token", token)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WaitAlive(ctx, "n1", "n3"); err != nil {
		t.Fatal(err)
	}
	// A restart rejoins from saved state, without the join arguments.
	if err := c.Restart(ctx, "n3"); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitAlive(ctx, "n3"); err != nil {
		t.Fatal(err)
	}
	if got := c.Node("n3"); got != n3 || n3.IP.String() != hostIP(c.subnet, 3).String() {
		t.Errorf("Node(n3) = %+v, want the added node at .4", got)
	}
}

func TestCloseRemovesEverything(t *testing.T) {
	opts := testOptions(t, 2)
	c, err := Start(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	var links []string
	for _, n := range c.Nodes() {
		pids = append(pids, processesInPidNS(t, n.InitPID())...)
		links = append(links, n.hostVeth)
	}
	links = append(links, c.Bridge())
	for _, l := range links {
		if !linkExists(l) {
			t.Fatalf("link %s missing while the cluster runs", l)
		}
	}

	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if processExists(pid) {
			t.Errorf("process %d survived Close", pid)
		}
	}
	for _, l := range links {
		if linkExists(l) {
			t.Errorf("link %s survived Close", l)
		}
	}
	if _, err := os.Stat(c.CgroupDir()); err == nil {
		t.Errorf("cgroup %s survived Close", c.CgroupDir())
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := c.AddNode(t.Context()); !errors.Is(err, errClosed) {
		t.Errorf("AddNode after Close: err = %v, want errClosed", err)
	}
}

// leftovers lists the bridges, veths and cgroups that look like a dev
// cluster's.
func leftovers(t *testing.T) []string {
	t.Helper()
	var found []string
	ifaces, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range ifaces {
		if strings.HasPrefix(i.Name, "ssib") || strings.HasPrefix(i.Name, "ssiv") || strings.HasPrefix(i.Name, "ssip") {
			found = append(found, i.Name)
		}
	}
	mount, err := cgroup.Mount()
	if err != nil {
		t.Fatal(err)
	}
	groups, _ := filepath.Glob(filepath.Join(mount, "ssi-dev-*"))
	return append(found, groups...)
}

func TestFailedStartCleansUp(t *testing.T) {
	opts := testOptions(t, 3)
	before := leftovers(t)
	for _, tc := range []struct {
		name    string
		modify  func(*Options)
		wantErr string
	}{
		{"agent exits at once", func(o *Options) { o.AgentArgs = []string{"--fail-at-start"} }, "failing at start as asked"},
		{"init binary fails", func(o *Options) { o.Binary = "/bin/false" }, "exited"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := opts
			o.Dir = t.TempDir()
			tc.modify(&o)
			c, err := Start(t.Context(), o)
			if err == nil {
				c.Close()
				t.Fatal("Start succeeded")
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Start error = %v, want it to mention %q", err, tc.wantErr)
			}
			if after := leftovers(t); !slices.Equal(after, before) {
				t.Errorf("after a failed Start: %v, before: %v", after, before)
			}
		})
	}
}

func TestStartValidatesOptions(t *testing.T) {
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		opts    Options
		wantErr string
	}{
		{"no binary", Options{Nodes: 1}, "Binary is empty"},
		{"binary is a directory", Options{Binary: "/", Nodes: 1}, "not an executable"},
		{"no nodes", Options{Binary: bin}, "Nodes is 0"},
		{"too many nodes", Options{Binary: bin, Nodes: 254}, "Nodes is 254"},
		{"more servers than nodes", Options{Binary: bin, Nodes: 2, Servers: 3}, "Servers is 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Start(t.Context(), tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Start: err = %v, want it to mention %q", err, tc.wantErr)
			}
		})
	}
}

func TestOptionsDefaults(t *testing.T) {
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		nodes, servers, wantServers int
	}{
		{1, 0, 1}, {2, 0, 2}, {3, 0, 3}, {7, 0, 3}, {7, 5, 5},
	} {
		o, err := Options{Binary: bin, Nodes: tc.nodes, Servers: tc.servers, Dir: t.TempDir()}.withDefaults()
		if err != nil {
			t.Fatal(err)
		}
		if o.Servers != tc.wantServers || o.ReadyTimeout != defaultReadyTimeout || o.Logger == nil {
			t.Errorf("Nodes %d Servers %d: got Servers %d, ReadyTimeout %v; want Servers %d, %v",
				tc.nodes, tc.servers, o.Servers, o.ReadyTimeout, tc.wantServers, defaultReadyTimeout)
		}
	}
}

func mustCIDR(t *testing.T, s string) *net.IPNet {
	t.Helper()
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestPickSubnet(t *testing.T) {
	for _, tc := range []struct {
		name    string
		taken   []string
		wantErr bool
	}{
		{"nothing taken", nil, false},
		{"unrelated networks", []string{"192.0.2.0/24", "127.0.0.0/8", "10.0.0.0/16"}, false},
		{"most of the range taken", []string{"10.200.0.0/15", "10.202.0.0/15", "10.204.0.0/14", "10.208.0.0/12", "10.224.0.0/12", "10.240.0.0/13", "10.248.0.0/15"}, false},
		{"whole range inside a taken /8", []string{"10.0.0.0/8"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var taken []*net.IPNet
			for _, s := range tc.taken {
				taken = append(taken, mustCIDR(t, s))
			}
			for seed := range uint64(50) {
				got, err := pickSubnet(taken, rand.New(rand.NewPCG(seed, seed)))
				if tc.wantErr {
					if err == nil {
						t.Fatalf("picked %s inside a taken network", got)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if ones, _ := got.Mask.Size(); ones != 24 || got.IP[0] != 10 || got.IP[1] < 200 || got.IP[1] > 250 {
					t.Fatalf("picked %s, want a /24 in 10.200-250.x.0", got)
				}
				if overlapsAny(got, taken) {
					t.Fatalf("picked %s overlapping %v", got, tc.taken)
				}
			}
		})
	}
}

func TestHostIP(t *testing.T) {
	subnet := mustCIDR(t, "10.213.7.0/24")
	for index, want := range map[int]string{0: "10.213.7.1", 1: "10.213.7.2", 253: "10.213.7.254"} {
		if got := hostIP(subnet, index).String(); got != want {
			t.Errorf("hostIP(%d) = %s, want %s", index, got, want)
		}
	}
}

func TestWithoutJoinArgs(t *testing.T) {
	for _, tc := range []struct{ in, want []string }{
		{nil, nil},
		{[]string{"--join", "10.1.1.2:7700", "--token", "T"}, nil},
		{[]string{"--server", "--join=10.1.1.2:7700", "--token=T", "--x", "y"}, []string{"--server", "--x", "y"}},
		{[]string{"--log-level", "debug", "--token", "T"}, []string{"--log-level", "debug"}},
	} {
		if got := withoutJoinArgs(tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("withoutJoinArgs(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestSplitTokenArg(t *testing.T) {
	for _, tc := range []struct {
		in, rest []string
		token    string
	}{
		{[]string{"ssi", "agent", "--join", "a:7700", "--token", "T1", "--server"}, []string{"ssi", "agent", "--join", "a:7700", "--server"}, "T1"},
		{[]string{"ssi", "agent", "--token=T2"}, []string{"ssi", "agent"}, "T2"},
		{[]string{"ssi", "agent", "--token", "T1", "--token", "T3"}, []string{"ssi", "agent"}, "T3"},
		{[]string{"ssi", "agent", "--server"}, []string{"ssi", "agent", "--server"}, ""},
	} {
		rest, token := splitTokenArg(tc.in)
		if !slices.Equal(rest, tc.rest) || token != tc.token {
			t.Errorf("splitTokenArg(%q) = %q, %q; want %q, %q", tc.in, rest, token, tc.rest, tc.token)
		}
	}
}

func TestWithSocketFlag(t *testing.T) {
	for _, tc := range []struct{ in, want []string }{
		{[]string{"nodes"}, []string{"nodes", "--socket=/d/n1/ssi.sock"}},
		{[]string{"run", "-n", "n2", "--", "ls", "-l"}, []string{"run", "-n", "n2", "--socket=/d/n1/ssi.sock", "--", "ls", "-l"}},
	} {
		if got := withSocketFlag(tc.in, "/d/n1/ssi.sock"); !slices.Equal(got, tc.want) {
			t.Errorf("withSocketFlag(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestNotAlive(t *testing.T) {
	listing := []NodeStatus{{"n1", "alive"}, {"n2", "suspect"}, {"n3", "alive"}}
	for _, tc := range []struct{ want, missing []string }{
		{[]string{"n1", "n3"}, nil},
		{[]string{"n1", "n2", "n4"}, []string{"n2=suspect", "n4=absent"}},
	} {
		if got := notAlive(listing, tc.want); !slices.Equal(got, tc.missing) {
			t.Errorf("notAlive(%v) = %v, want %v", tc.want, got, tc.missing)
		}
	}
}

func TestParseNodeList(t *testing.T) {
	got, err := parseNodeList([]byte(`[{"name":"n1","state":"alive","addr":"10.200.1.2:7700"},{"name":"n2","state":"dead"}]`))
	if err != nil || !slices.Equal(got, []NodeStatus{{"n1", "alive"}, {"n2", "dead"}}) {
		t.Errorf("got %v, %v", got, err)
	}
	if _, err := parseNodeList([]byte("NAME STATE\nn1 alive\n")); err == nil {
		t.Error("a table parsed as JSON")
	}
}

func TestNsPids(t *testing.T) {
	for _, tc := range []struct {
		status string
		want   []int
	}{
		{"Name:\tssi\nPid:\t4242\nNSpid:\t4242\t2\nPPid:\t1\n", []int{4242, 2}},
		{"Name:\tbash\nNSpid:\t17\n", []int{17}},
		{"Name:\told kernel\n", nil},
	} {
		if got := nsPids([]byte(tc.status)); !slices.Equal(got, tc.want) {
			t.Errorf("nsPids(%q) = %v, want %v", tc.status, got, tc.want)
		}
	}
}

func TestParseHostInitArgs(t *testing.T) {
	good := hostInitConfig{name: "n2", dir: "/d/n2", link: "ssipab12cd2", addr: "10.200.1.3/24",
		agentArgs: []string{HostBinary, "agent", "--name", "n2"}}
	got, err := parseHostInitArgs(good.args())
	if err != nil || got.name != good.name || got.dir != good.dir || got.link != good.link || got.addr != good.addr ||
		!slices.Equal(got.agentArgs, good.agentArgs) {
		t.Errorf("round trip: got %+v, %v; want %+v", got, err, good)
	}
	for _, args := range [][]string{
		{"--name", "n2", "--dir", "/d", "--link", "l", "--addr", "10.0.0.2/24"},
		{"--name", "n2", "--", "agent"},
		{"--bogus"},
	} {
		if _, err := parseHostInitArgs(args); err == nil || !strings.Contains(err.Error(), "not by hand") {
			t.Errorf("parseHostInitArgs(%q): err = %v, want a refusal", args, err)
		}
	}
}

func TestRunHostInitRefusesToRunOutsideAHost(t *testing.T) {
	err := RunHostInit([]string{"--name", "n1", "--dir", t.TempDir(), "--link", "x", "--addr", "10.200.0.2/24", "--", "true"})
	if err == nil || !strings.Contains(err.Error(), "not by hand") {
		t.Errorf("RunHostInit outside a host: err = %v, want a refusal", err)
	}
}

// What a cluster whose process was killed -9 leaves (its bridge, its cgroup) is removed by
// RemoveLeftovers, which refuses anything but a cluster id.
func TestRemoveLeftovers(t *testing.T) {
	requireRoot(t)
	id := fmt.Sprintf("%06x", rand.IntN(1<<24))
	// A bridge without an address: nothing else on the machine sees it.
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "ssib" + id}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = deleteLink("ssib" + id) })
	mount, err := cgroup.Mount()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(mount, "ssi-dev-"+id)
	if err := os.MkdirAll(filepath.Join(dir, "n1", "ssi-jobs"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = removeCgroupTreeOnce(dir) })
	if err := RemoveLeftovers(t.Context(), id); err != nil {
		t.Fatal(err)
	}
	if linkExists("ssib"+id) || exists(dir) {
		t.Fatalf("after RemoveLeftovers: bridge left %v, cgroup left %v", linkExists("ssib"+id), exists(dir))
	}
	if err := RemoveLeftovers(t.Context(), id); err != nil {
		t.Fatalf("a second time, with nothing left: %v", err)
	}
	for _, bad := range []string{"", "../x", "ABCDEF", "abc", "abcdefg"} {
		if err := RemoveLeftovers(t.Context(), bad); err == nil {
			t.Errorf("RemoveLeftovers(%q) did not refuse it", bad)
		}
	}
}

// A FUSE file system mounted on the machine is not held by the hosts: once the machine
// unmounts it, its connection ends and its daemon can stop, while the cluster runs.
func TestHostsHoldNoCopyOfTheMachinesFUSEMounts(t *testing.T) {
	mnt, err := os.MkdirTemp("/var/tmp", "devcluster-fuse")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(mnt)
	server, err := gofs.Mount(mnt, &emptyDir{}, &gofs.Options{})
	if err != nil {
		t.Fatalf("mount a FUSE file system: %v", err)
	}
	c := startCluster(t, testOptions(t, 1))
	if got := output(t, c.Exec(t.Context(), "n1", "cat", "/proc/self/mountinfo")); strings.Contains(got, mnt) {
		t.Errorf("the host's mounts include the machine's FUSE mount %s:\n%s", mnt, got)
	}
	// go-fuse's Unmount returns once the connection has ended.
	ended := make(chan error, 1)
	go func() { ended <- server.Unmount() }()
	select {
	case err := <-ended:
		if err != nil {
			t.Fatalf("unmount: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("the FUSE connection did not end after its unmount: a host holds it")
		if err := c.Close(); err != nil {
			t.Error(err)
		}
		<-ended
	}
}

type emptyDir struct{ gofs.Inode }

func TestUnescapeMountPath(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"/var/tmp/x", "/var/tmp/x"},
		{`/mnt/a\040b`, "/mnt/a b"},
		{`/mnt/tab\011and\012newline`, "/mnt/tab\tand\nnewline"},
		{`/mnt/back\134slash`, `/mnt/back\slash`},
		{`/mnt/short\04`, `/mnt/short\04`},
		{`/mnt/notoctal\999`, `/mnt/notoctal\999`},
	} {
		if got := unescapeMountPath(tt.in); got != tt.want {
			t.Errorf("unescapeMountPath(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
