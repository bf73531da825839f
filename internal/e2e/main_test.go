// Package e2e runs the real ssi binary on clusters of simulated hosts (internal/devcluster):
// formation, joins, faults, and the cluster-wide process space, as users would see them.
// The tests need root (namespaces, veths, cgroups); CI runs as root.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ssi-cluster/ssi/internal/devcluster"
)

// binary and daemon are the ssi and ssid binaries, built once for all tests.
var binary, daemon string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Println("e2e: skipping: simulated hosts need root (namespaces, veths, cgroups); CI runs as root")
		return 0
	}
	dir, err := os.MkdirTemp("", "ssi-e2e-bin")
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	binary, daemon = filepath.Join(dir, "ssi"), filepath.Join(dir, "ssid")
	// As the README builds them: the client without cgo, which makes it a static binary
	// that starts ~0.8 ms sooner (no dynamic loader, no libc threads).
	for _, b := range []struct{ out, pkg, cgo string }{
		{binary, "github.com/ssi-cluster/ssi/cmd/ssi", "0"},
		{daemon, "github.com/ssi-cluster/ssi/cmd/ssid", ""},
	} {
		build := exec.Command("go", "build", "-o", b.out, b.pkg)
		build.Stdout, build.Stderr = os.Stdout, os.Stderr
		if b.cgo != "" {
			build.Env = append(os.Environ(), "CGO_ENABLED="+b.cgo)
		}
		if err := build.Run(); err != nil {
			fmt.Printf("e2e: building %s: %v\n", b.pkg, err)
			return 1
		}
	}
	return m.Run()
}

// startCluster starts n simulated hosts (the first min(3, n) servers) for one test.
func startCluster(t *testing.T, n int) *devcluster.Cluster {
	t.Helper()
	dir := t.TempDir()
	os.Chmod(dir, 0o755) // other users' CLIs reach the sockets in it
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start := time.Now()
	c, err := devcluster.Start(ctx, devcluster.Options{Binary: daemon, Client: binary, Nodes: n, Dir: dir, Logger: logger})
	if err != nil {
		t.Fatalf("starting %d hosts: %v", n, err)
	}
	t.Logf("%d hosts alive in %v", n, time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() {
		if t.Failed() {
			for _, node := range c.Nodes() {
				b, _ := os.ReadFile(node.LogPath())
				t.Logf("--- %s agent.log (tail)\n%s", node.Name, tail(string(b), 3000))
			}
		}
		c.Close()
	})
	return c
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}

// result is what a CLI invocation produced.
type result struct {
	stdout, stderr string
	code           int            // as a shell's $?: 128+N after death by signal N
	signal         syscall.Signal // the signal it died of, 0 if it exited
}

func (r result) String() string {
	return fmt.Sprintf("exit %d (signal %d), stdout %q, stderr %q", r.code, r.signal, r.stdout, r.stderr)
}

// runCmd runs cmd to completion with an optional stdin.
func runCmd(t *testing.T, cmd *exec.Cmd, stdin string) result {
	t.Helper()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	err := cmd.Run()
	code, sig := 0, syscall.Signal(0)
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			sig = ws.Signal()
			code = 128 + int(sig)
		}
	} else if err != nil {
		t.Fatalf("running %v: %v", cmd.Args, err)
	}
	return result{out.String(), errb.String(), code, sig}
}

// ssi runs the CLI from the machine against node's agent.
func ssi(t *testing.T, c *devcluster.Cluster, node string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return runCmd(t, cliCmd(ctx, c, node, args...), "")
}

// inside runs a command inside node's namespaces (its ssi is on PATH there).
func inside(t *testing.T, c *devcluster.Cluster, node string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := c.Exec(ctx, node, args...)
	cmd.Dir = "/"
	return runCmd(t, cmd, "")
}

type nodeJSON struct {
	Name          string  `json:"name"`
	Index         uint32  `json:"index"`
	Addr          string  `json:"addr"`
	State         string  `json:"state"`
	Role          string  `json:"role"`
	CPUs          uint32  `json:"cpus"`
	Load1         float64 `json:"load1"`
	MemTotalBytes uint64  `json:"mem_total_bytes"`
	MemFreeBytes  uint64  `json:"mem_free_bytes"`
}

func nodes(t *testing.T, c *devcluster.Cluster, from string) map[string]nodeJSON {
	t.Helper()
	r := ssi(t, c, from, "nodes", "-o", "json")
	if r.code != 0 {
		t.Fatalf("ssi nodes on %s: %v", from, r)
	}
	var list []nodeJSON
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
		t.Fatalf("ssi nodes -o json: %v in %q", err, r.stdout)
	}
	out := map[string]nodeJSON{}
	for _, n := range list {
		out[n.Name] = n
	}
	return out
}

// waitState polls from's view until node has state, and returns how long that took.
func waitState(t *testing.T, c *devcluster.Cluster, from, node, state string, timeout time.Duration) time.Duration {
	t.Helper()
	took, last := pollState(c, from, node, state, timeout)
	if last != state {
		t.Fatalf("%s still sees %s as %q after %v, want %q", from, node, last, timeout, state)
	}
	return took
}

// pollState asks from's agent every 20 ms how it sees node until it has state or the timeout
// passes; it returns the time taken and the last state seen.
func pollState(c *devcluster.Cluster, from, node, state string, timeout time.Duration) (time.Duration, string) {
	start := time.Now()
	var last string
	for time.Since(start) < timeout {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		out, err := cliCmd(ctx, c, from, "nodes", "-o", "json").Output()
		cancel()
		if err == nil {
			var list []nodeJSON
			if json.Unmarshal(out, &list) == nil {
				for _, n := range list {
					if n.Name == node {
						last = n.State
						if n.State == state {
							return time.Since(start), last
						}
					}
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return timeout, last
}

// eventually polls cond until it holds or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("timed out after %v waiting for %s", timeout, what)
}

// cliCmd is the CLI from the machine, run in "/": the test's own directory may be under /tmp,
// which each simulated host hides, and ssi runs commands in the caller's directory.
func cliCmd(ctx context.Context, c *devcluster.Cluster, node string, args ...string) *exec.Cmd {
	cmd := c.CLI(ctx, node, args...)
	cmd.Dir = "/"
	return cmd
}
