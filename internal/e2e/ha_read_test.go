package e2e

import (
	"context"
	"encoding/json"
	"syscall"
	"testing"
	"time"
)

// TestReadsWithAServerStopped freezes the etcd leader's agent (SIGSTOP: its connections stay
// open but nothing answers, the hardest case for a client) and checks that every other node,
// the client node included, still lists all nodes promptly, completely and without a registry
// warning, the frozen one turning suspect or dead, and that job and status queries answer too:
// two servers of three keep quorum.
func TestReadsWithAServerStopped(t *testing.T) {
	c := startCluster(t, 4)
	var leader string
	eventually(t, 15*time.Second, "an etcd leader", func() bool {
		leader = getStatus(t, c, "n4").EtcdLeader
		return leader != ""
	})
	pid, err := c.Node(leader).AgentPID()
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// Thawed before the cluster is closed, so it can stop.
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })

	var others []string
	for _, n := range []string{"n1", "n2", "n3", "n4"} {
		if n != leader {
			others = append(others, n)
		}
	}
	// A listing that waited out its registry read's 2 s budget says so on stderr, which fails
	// the test below; these bounds only catch a read stuck on the frozen server (it used to
	// take 10-11 s on a client node), with room for a loaded machine's slow start-ups.
	const prompt = 5 * time.Second
	// Linearizable job reads may wait out the election the frozen leader causes.
	const electionBound = 8 * time.Second
	start := time.Now()
	seenDown := map[string]bool{}
	for len(seenDown) < len(others) {
		if time.Since(start) > 20*time.Second {
			t.Fatalf("after 20s only %v see %s suspect or dead", seenDown, leader)
		}
		for _, from := range others {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			t0 := time.Now()
			r := runCmd(t, cliCmd(ctx, c, from, "nodes", "-o", "json"), "")
			took := time.Since(t0)
			cancel()
			if r.code != 0 || r.stderr != "" {
				t.Fatalf("ssi nodes on %s %v after %s was frozen: %v", from, time.Since(start).Round(time.Millisecond), leader, r)
			}
			if took > prompt {
				t.Fatalf("ssi nodes on %s took %v with %s frozen, want under %v", from, took, leader, prompt)
			}
			var list []nodeJSON
			if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
				t.Fatalf("ssi nodes -o json on %s: %v in %q", from, err, r.stdout)
			}
			if len(list) != 4 {
				t.Fatalf("%s lists %d nodes with %s frozen, want 4: %s", from, len(list), leader, r.stdout)
			}
			for _, n := range list {
				if n.Name == leader && (n.State == "suspect" || n.State == "dead") {
					seenDown[from] = true
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("%s seen down by all others after %v", leader, time.Since(start).Round(time.Millisecond))

	for _, from := range others {
		for _, args := range [][]string{{"jobs"}, {"status"}, {"ps"}} {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			t0 := time.Now()
			r := runCmd(t, cliCmd(ctx, c, from, args...), "")
			took := time.Since(t0)
			cancel()
			if r.code != 0 || took > electionBound {
				t.Fatalf("ssi %v on %s with %s frozen: %v after %v", args, from, leader, r, took)
			}
		}
	}
}
