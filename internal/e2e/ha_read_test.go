package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strings"
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
	// A listing must never take more than this; the registry read has a 2 s budget, so a
	// listing that waited for the frozen server shows here.
	const prompt = 1500 * time.Millisecond
	// Linearizable job reads may wait out the election the frozen leader causes.
	const electionBound = 4 * time.Second
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

// TestRunStdoutFull runs `ssi run -- yes > /dev/full` on the same and on another node: like
// local yes, ssi reports the failed write in one line and exits 1, and the remote yes ends as
// it would for a closed reader.
func TestRunStdoutFull(t *testing.T) {
	c := startCluster(t, 2)
	for _, node := range []string{"n1", "n2"} {
		full, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd := cliCmd(ctx, c, "n1", "run", "-n", node, "--", "yes")
		var stderr strings.Builder
		cmd.Stdout, cmd.Stderr = full, &stderr
		err = cmd.Run()
		cancel()
		full.Close()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Fatalf("ssi run -n %s -- yes > /dev/full: %v, want exit 1; stderr %q", node, err, stderr.String())
		}
		if want := "ssi: writing standard output: no space left on device\n"; stderr.String() != want {
			t.Fatalf("ssi run -n %s -- yes > /dev/full printed %q, want %q", node, stderr.String(), want)
		}
		eventually(t, 10*time.Second, "yes on "+node+" to end", func() bool {
			r := ssi(t, c, "n1", "ps")
			return r.code == 0 && !strings.Contains(r.stdout, " yes")
		})
	}
}

// TestCheckpointDirInDataDir checks that a task's $SSI_CHECKPOINT_DIR is in its own agent's
// data dir (so two ssi dev clusters on one machine never share one), and that the task's
// user can use it there.
func TestCheckpointDirInDataDir(t *testing.T) {
	c := startCluster(t, 1)
	script := `echo "$SSI_CHECKPOINT_DIR"; touch "$SSI_CHECKPOINT_DIR/step" && echo written`
	r := inside(t, c, "n1", "setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
		"ssi", "submit", "--output", "/tmp/ckpt.out", "--", "sh", "-c", script)
	id := strings.TrimSpace(r.stdout)
	if r.code != 0 || id == "" {
		t.Fatalf("ssi submit as nobody: %v", r)
	}
	eventually(t, 20*time.Second, "job "+id+" completed", func() bool { return jobState(t, c, "n1", id).State == "completed" })
	out := inside(t, c, "n1", "cat", "/tmp/ckpt.out")
	lines := strings.Split(strings.TrimSpace(out.stdout), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "/run/ssi/data/spool/n1/ckpt/65534/") || lines[1] != "written" {
		t.Fatalf("the task's output %v, want its checkpoint directory under the agent's data dir /run/ssi/data and written", out)
	}
}
