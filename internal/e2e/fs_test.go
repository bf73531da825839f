package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
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

// TestClusterFileLockSurvivesOwnerKill: a process on n1 holds a file of n2 open with a POSIX
// lock and an flock; n2's agent is killed with SIGKILL and started again. The file still reads
// and writes from n1, the locks still hold against n3, whose attempt right after the restart
// is held back by n2's grace period rather than winning over n1's reclaim, and once the holder
// unlocks, n3 gets both locks.
func TestClusterFileLockSurvivesOwnerKill(t *testing.T) {
	c := startCluster(t, 3)
	// On the machine's disk, which outlives n2's host, as does the helper built there.
	dir, err := os.MkdirTemp("/var/tmp", "ssi-e2e-lock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	locker := filepath.Join(dir, "locker")
	build := exec.Command("go", "build", "-o", locker, "./testdata/locker")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the lock helper: %v\n%s", err, out)
	}
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("before\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	path := "/ssi/n2" + dir + "/f"

	// attempt runs the helper on node with commands and returns its answers, once the owner
	// answers at all (not EIO or ENOTCONN, as while it is down or being noticed back).
	attempt := func(node string, commands ...string) []string {
		t.Helper()
		var answers []string
		eventually(t, 20*time.Second, "an answer from n2 to "+node, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			r := runCmd(t, c.Exec(ctx, node, locker, path), strings.Join(commands, "\n")+"\n")
			answers = strings.Fields(r.stdout)
			return !slices.ContainsFunc(answers, func(a string) bool { return a == "EIO" || a == "ENOTCONN" })
		})
		return answers
	}

	holder := startLocker(t, c, "n1", locker, path)
	for _, cmd := range []string{"lk w 0 1", "fl ex"} {
		if got := holder.do(cmd); got != "ok" {
			t.Fatalf("holder on n1: %s: %s", cmd, got)
		}
	}
	if got := attempt("n3", "lk w 0 1", "fl ex"); !slices.Equal(got, []string{"EAGAIN", "EAGAIN"}) {
		t.Fatalf("n3 locks the held file before the kill: %v, want EAGAIN twice", got)
	}

	if err := c.KillAgent("n2"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.Restart(ctx, "n2"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if got := attempt("n3", "lk w 0 1", "fl ex"); !slices.Equal(got, []string{"EAGAIN", "EAGAIN"}) {
		t.Fatalf("n3 locks the held file right after n2's restart: %v, want EAGAIN twice (the holder's locks reclaimed)", got)
	}
	t.Logf("n3's attempt after n2's restart answered in %v", time.Since(start).Round(time.Millisecond))

	if got := holder.do("read"); got != "before" {
		t.Fatalf("holder reads after n2's restart: %q", got)
	}
	if got := holder.do("write after"); got != "ok" {
		t.Fatalf("holder writes after n2's restart: %s", got)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "f")); err != nil || string(b) != "after\n" {
		t.Fatalf("the file on n2's disk after the holder's write: %q, %v", b, err)
	}
	// An unlock fails with EIO if the lock was lost in the reclaim.
	for _, cmd := range []string{"lk u 0 1", "fl un"} {
		if got := holder.do(cmd); got != "ok" {
			t.Fatalf("holder on n1 after n2's restart: %s: %s", cmd, got)
		}
	}
	if got := attempt("n3", "lk w 0 1", "fl ex"); !slices.Equal(got, []string{"ok", "ok"}) {
		t.Fatalf("n3 locks the file the holder unlocked: %v, want ok twice", got)
	}
}

// lockerProc is the lock helper running inside a host, told what to do line by line.
type lockerProc struct {
	t     *testing.T
	stdin io.WriteCloser
	out   *bufio.Scanner
}

func startLocker(t *testing.T, c *devcluster.Cluster, node, locker, path string) *lockerProc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := c.Exec(ctx, node, locker, path)
	stdin, out := startPiped(t, cmd)
	t.Cleanup(func() {
		stdin.Close()
		cancel()
		cmd.Wait()
	})
	return &lockerProc{t: t, stdin: stdin, out: out}
}

// startPiped starts cmd with a pipe to its stdin and lines from its stdout.
func startPiped(t *testing.T, cmd *exec.Cmd) (io.WriteCloser, *bufio.Scanner) {
	t.Helper()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return stdin, bufio.NewScanner(stdout)
}

// do runs one command and returns its answer.
func (p *lockerProc) do(command string) string {
	p.t.Helper()
	if _, err := io.WriteString(p.stdin, command+"\n"); err != nil {
		p.t.Fatalf("lock helper: %v", err)
	}
	if !p.out.Scan() {
		p.t.Fatalf("lock helper ended: %v", p.out.Err())
	}
	return p.out.Text()
}

// TestClusterFileOwnerFrozenOrCutOff: while n2's agent is frozen (SIGSTOP) or n2's link is
// down, n1's calls into /ssi/n2 fail with EIO or ENOTCONN within the request timeout (5 s,
// plus the 2 s a first call may wait for the Watch stream), a process holding a file of n2
// open gets errors rather than a hang, /ssi/n3 and n1's own /ssi/n1 keep working, and all of
// it works again once n2 is back.
func TestClusterFileOwnerFrozenOrCutOff(t *testing.T) {
	c := startCluster(t, 3)
	if r := inside(t, c, "n2", "sh", "-c", "echo data > /tmp/f"); r.code != 0 {
		t.Fatalf("writing n2's file: %v", r)
	}
	if r := inside(t, c, "n1", "cat", "/ssi/n2/tmp/f"); r.code != 0 || r.stdout != "data\n" {
		t.Fatalf("reading n2's file from n1: %v", r)
	}
	// Each check runs under a timeout of its own, far over the bound: a hang shows as 124.
	const script = `
t() { s=$(date +%s%N); timeout 60 "$@" >/dev/null 2>&1; rc=$?; echo "$rc $(( ($(date +%s%N) - s) / 1000000 )) $1"; }
exec 3<>/ssi/n2/tmp/f
echo ready; read go
t stat /ssi/n2/tmp/new
t cat /ssi/n2/tmp/f
t sh -c 'echo x >&3'
t ls /ssi/n2/tmp
t ls /ssi/n3/
t cat /ssi/n1/etc/hostname
`
	const bound = 2 * (5 + 2) * 1000 // ms: twice the timeout and the first call's wait
	check := func(what string, fault, heal func() error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := c.Exec(ctx, "n1", "sh", "-c", script)
		cmd.Dir = "/"
		stdin, out := startPiped(t, cmd)
		if !out.Scan() || out.Text() != "ready" {
			t.Fatalf("%s: the script did not start: %q", what, out.Text())
		}
		if err := fault(); err != nil {
			t.Fatal(err)
		}
		io.WriteString(stdin, "go\n")
		var lines []string
		for out.Scan() {
			lines = append(lines, out.Text())
		}
		cmd.Wait()
		if err := heal(); err != nil {
			t.Fatal(err)
		}
		if len(lines) != 6 {
			t.Fatalf("%s: %q", what, lines)
		}
		t.Logf("%s: %q", what, lines)
		for i, line := range lines {
			var rc, ms int
			var cmdName string
			fmt.Sscan(line, &rc, &ms, &cmdName)
			local := i >= 4 // /ssi/n3 and /ssi/n1
			if local && rc != 0 || !local && (rc == 0 || rc == 124) || ms > bound {
				t.Errorf("%s: %s (exit status, ms, command; want failures within %d ms into /ssi/n2, success elsewhere)", what, line, bound)
			}
		}
		eventually(t, 30*time.Second, "n2's files readable from n1 again after "+what, func() bool {
			r := inside(t, c, "n1", "cat", "/ssi/n2/tmp/f")
			return r.code == 0 && r.stdout == "data\n"
		})
	}

	pid, err := c.Node("n2").AgentPID()
	if err != nil {
		t.Fatal(err)
	}
	check("n2's agent frozen", func() error { return syscall.Kill(pid, syscall.SIGSTOP) },
		func() error { return syscall.Kill(pid, syscall.SIGCONT) })
	check("n2's link down", func() error { return c.Partition("n2") }, func() error { return c.Heal("n2") })
}
