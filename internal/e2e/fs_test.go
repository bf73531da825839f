package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ssi-cluster/ssi/internal/devcluster"
)

// fsNodeJSON is the part of `ssi fs -o json` the tests read.
type fsNodeJSON struct {
	Node   string `json:"node"`
	Error  string `json:"error"`
	Export *struct {
		Root         string   `json:"root"`
		Exports      []string `json:"exports"`
		ReadOnly     bool     `json:"read_only"`
		Ops          uint64   `json:"ops"`
		CacheEntries uint64   `json:"cache_entries"`
	} `json:"export"`
	Mount *struct {
		Path      string   `json:"path"`
		Mounted   bool     `json:"mounted"`
		Error     string   `json:"error"`
		Ops       uint64   `json:"ops"`
		Connected []string `json:"connected"`
	} `json:"mount"`
}

func fsStatus(t *testing.T, c *devcluster.Cluster, from string) map[string]fsNodeJSON {
	t.Helper()
	r := ssi(t, c, from, "fs", "-o", "json")
	if r.code != 0 {
		t.Fatalf("ssi fs: %v", r)
	}
	var list []fsNodeJSON
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
		t.Fatalf("ssi fs -o json: %v in %q", err, r.stdout)
	}
	out := map[string]fsNodeJSON{}
	for _, n := range list {
		out[n.Node] = n
	}
	return out
}

// TestClusterFileTree runs the cluster tree on simulated hosts: every node mounts /ssi, sees
// every other node's files and devices coherently, processes started elsewhere find their
// caller's directory through it, users stay within Unix permissions, and an owner's death
// fails calls promptly until it is back.
func TestClusterFileTree(t *testing.T) {
	c := startCluster(t, 3)
	sh := func(node, script string) result {
		t.Helper()
		return inside(t, c, node, "timeout", "30", "sh", "-c", script)
	}
	must := func(node, script string) string {
		t.Helper()
		r := sh(node, script)
		if r.code != 0 {
			t.Fatalf("on %s: %s: %v", node, script, r)
		}
		return r.stdout
	}

	t.Run("every node mounts the tree", func(t *testing.T) {
		st := fsStatus(t, c, "n1")
		for _, n := range []string{"n1", "n2", "n3"} {
			s, ok := st[n]
			if !ok || s.Error != "" || s.Mount == nil || !s.Mount.Mounted || s.Mount.Path != "/ssi" {
				t.Fatalf("ssi fs for %s: %+v", n, s)
			}
			if s.Export == nil || s.Export.Root != "/" || s.Export.ReadOnly {
				t.Fatalf("export of %s: %+v", n, s.Export)
			}
		}
		if got := must("n2", "ls /ssi"); got != "n1\nn2\nn3\n" {
			t.Fatalf("ls /ssi on n2 = %q", got)
		}
		if r := ssi(t, c, "n1", "fs"); r.code != 0 || !strings.Contains(r.stdout, "MOUNT") {
			t.Fatalf("ssi fs table: %v", r)
		}
		// n1 caches what it listed of n3, and n3 tracks that, to invalidate it when it changes.
		must("n1", "ls /ssi/n3/etc >/dev/null")
		if e := fsStatus(t, c, "n2")["n3"].Export; e == nil || e.CacheEntries == 0 {
			t.Fatalf("n3 tracks no cached copies after n1 listed its /etc: %+v", e)
		}
	})

	t.Run("writes are seen everywhere at once", func(t *testing.T) {
		// /tmp is private to each host, so /ssi/n2/tmp is n2's alone.
		must("n1", "echo one > /ssi/n2/tmp/shared")
		if got := must("n2", "cat /tmp/shared"); got != "one\n" {
			t.Fatalf("n2 reads its own disk: %q", got)
		}
		if got := must("n3", "cat /ssi/n2/tmp/shared"); got != "one\n" {
			t.Fatalf("n3 reads through the tree: %q", got)
		}
		if got := must("n2", "cat /ssi/n2/tmp/shared"); got != "one\n" {
			t.Fatalf("n2 reads its own file through its own mount: %q", got)
		}
		must("n3", "echo two-longer > /ssi/n2/tmp/shared")
		if got := must("n1", "cat /ssi/n2/tmp/shared; stat -c %s /ssi/n2/tmp/shared"); got != "two-longer\n11\n" {
			t.Fatalf("n1 after n3's change: %q", got)
		}
		must("n1", "mkdir /ssi/n2/tmp/d && mv /ssi/n2/tmp/shared /ssi/n2/tmp/d/moved")
		if got := must("n3", "ls /ssi/n2/tmp/d; test -e /ssi/n2/tmp/shared || echo gone"); got != "moved\ngone\n" {
			t.Fatalf("n3 after n1's rename: %q", got)
		}
	})

	t.Run("direct changes on the owner are seen", func(t *testing.T) {
		must("n1", "cat /ssi/n2/tmp/d/moved >/dev/null") // cached on n1 now
		must("n2", "echo direct > /tmp/d/moved")
		eventually(t, 2*time.Second, "n1 to see n2's direct write", func() bool {
			return sh("n1", "cat /ssi/n2/tmp/d/moved").stdout == "direct\n"
		})
	})

	t.Run("devices of other nodes", func(t *testing.T) {
		if got := must("n1", "head -c 4096 /ssi/n3/dev/urandom | wc -c"); strings.TrimSpace(got) != "4096" {
			t.Fatalf("reading n3's /dev/urandom: %q", got)
		}
		must("n1", "echo discard > /ssi/n3/dev/null")
	})

	t.Run("unix permissions of the owner", func(t *testing.T) {
		must("n2", "echo secret > /tmp/secret && chmod 600 /tmp/secret")
		nobody := func(script string) result {
			return inside(t, c, "n1", "timeout", "30", "setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "sh", "-c", script)
		}
		if r := nobody("cat /ssi/n2/tmp/secret"); r.code == 0 || !strings.Contains(r.stderr, "Permission denied") {
			t.Fatalf("nobody reading root's 0600 file on n2: %v", r)
		}
		if r := nobody("echo x > /ssi/n2/etc/ssi-e2e-denied"); r.code == 0 || !strings.Contains(r.stderr, "Permission denied") {
			t.Fatalf("nobody writing n2's /etc: %v", r)
		}
		if r := nobody("echo mine > /ssi/n2/tmp/nobodys && stat -c %u /ssi/n2/tmp/nobodys"); r.code != 0 || r.stdout != "65534\n" {
			t.Fatalf("nobody creating a file in n2's /tmp: %v", r)
		}
		if got := must("n2", "stat -c %u:%g /tmp/nobodys"); got != "65534:65534\n" {
			t.Fatalf("owner of nobody's file on n2's disk: %q", got)
		}
	})

	t.Run("remote commands start in the caller's directory", func(t *testing.T) {
		must("n1", "mkdir -p /tmp/work && echo input > /tmp/work/in")
		out := must("n1", "cd /tmp/work && ssi run -n n2 -- sh -c 'pwd; cat in; echo result > out'")
		if out != "/ssi/n1/tmp/work\ninput\n" {
			t.Fatalf("ssi run -n n2 from n1's /tmp/work: %q", out)
		}
		if got := must("n1", "cat /tmp/work/out"); got != "result\n" {
			t.Fatalf("the remote command's file on n1: %q", got)
		}
		// As a normal user, and detached: the output file lands in the caller's directory.
		must("n1", "mkdir -p /tmp/nw && chown 65534:65534 /tmp/nw")
		r := inside(t, c, "n1", "timeout", "30", "setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
			"sh", "-c", "cd /tmp/nw && ssi run -n n3 --detach -- sh -c 'id -u; pwd'")
		if r.code != 0 {
			t.Fatalf("detached run as nobody: %v", r)
		}
		gp := strings.TrimSpace(r.stdout)
		eventually(t, 10*time.Second, "the detached output on n1", func() bool {
			return sh("n1", "cat /tmp/nw/ssi-"+gp+".out").stdout == "65534\n/ssi/n1/tmp/nw\n"
		})
		// A directory that exists nowhere is still an error that names it.
		if r := sh("n1", "ssi run -n n2 --cwd /nonexistent-dir -- true"); r.code == 0 || !strings.Contains(r.stderr, "/nonexistent-dir") {
			t.Fatalf("run in a directory that exists nowhere: %v", r)
		}
	})

	t.Run("jobs start in the submit directory and write their output there", func(t *testing.T) {
		if r := ssi(t, c, "n1", "queue", "create", "on-n2", "--nodes", "n2"); r.code != 0 {
			t.Fatalf("queue create: %v", r)
		}
		must("n1", "mkdir -p /tmp/jobdir && echo job-input > /tmp/jobdir/in")
		id := strings.TrimSpace(must("n1", "cd /tmp/jobdir && ssi submit --queue on-n2 --output out-%j.txt -- sh -c 'hostname; pwd; cat in'"))
		want := "n2\n/ssi/n1/tmp/jobdir\njob-input\n"
		eventually(t, 30*time.Second, "job "+id+"'s output on n1", func() bool {
			return sh("n1", "cat /tmp/jobdir/out-"+id+".txt").stdout == want
		})
		if st := jobState(t, c, "n1", id); st.State != "completed" {
			t.Fatalf("job %s: %+v", id, st)
		}
	})

	t.Run("an owner that dies fails calls promptly and comes back", func(t *testing.T) {
		// A directory on the machine's disk outlives n2's host (its /tmp does not).
		dir, err := os.MkdirTemp("/var/tmp", "ssi-e2e-fs")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		if err := os.WriteFile(filepath.Join(dir, "f"), []byte("kept\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		path := "/ssi/n2" + dir + "/f"
		if got := must("n1", "cat "+path); got != "kept\n" {
			t.Fatalf("before: %q", got)
		}
		if err := c.Kill("n2"); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		r := sh("n1", "cat "+path+"; ls /ssi/n2"+dir)
		took := time.Since(start)
		if r.code == 0 {
			t.Fatalf("reading a dead node's file succeeded: %v", r)
		}
		if !strings.Contains(r.stderr, "Input/output error") && !strings.Contains(r.stderr, "not connected") {
			t.Fatalf("reading a dead node's file: want EIO or ENOTCONN, got %v", r)
		}
		t.Logf("calls to a dead owner failed after %v: %s", took.Round(time.Millisecond), strings.TrimSpace(r.stderr))
		if took > 20*time.Second {
			t.Fatalf("calls to a dead owner took %v to fail", took)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := c.Restart(ctx, "n2"); err != nil {
			t.Fatal(err)
		}
		eventually(t, 20*time.Second, "n2's files through n1's tree after its restart", func() bool {
			return sh("n1", "cat "+path).stdout == "kept\n"
		})
	})
}
