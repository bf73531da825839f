package proc

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/proc/cgroup"
)

const testCgroupParent = "ssi-proc-test"

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("starting processes as other users in their own cgroups needs root")
	}
}

// rootSpec runs argv as root with a conventional environment.
func rootSpec(argv ...string) Spec {
	return Spec{
		Args:         argv,
		Env:          []string{"PATH=/usr/local/bin:/usr/bin:/bin", "LC_ALL=C"},
		Dir:          "/",
		Umask:        0o022,
		CgroupParent: testCgroupParent,
		NodeIndex:    3,
	}
}

// outcome is everything a finished run produced.
type outcome struct {
	code           int
	stdout, stderr string
	result         Result
}

// run starts spec, collects its output, waits and closes, checking the cgroup is gone.
func run(t *testing.T, spec Spec) outcome {
	t.Helper()
	p, err := Start(context.Background(), spec)
	if err != nil {
		t.Fatalf("Start(%q): %v", spec.Args, err)
	}
	var stdout, stderr bytes.Buffer
	var wg sync.WaitGroup
	wg.Go(func() { _, _ = io.Copy(&stdout, p.Stdout()) })
	wg.Go(func() { _, _ = io.Copy(&stderr, p.Stderr()) })
	p.Stdin().Close()
	wg.Wait()
	code, err := p.Wait()
	if err != nil {
		t.Fatal(err)
	}
	dir := p.CgroupDir()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("cgroup %s still exists after Close (stat: %v)", dir, err)
	}
	return outcome{code: code, stdout: stdout.String(), stderr: stderr.String(), result: p.Result()}
}

func TestExitCodes(t *testing.T) {
	requireRoot(t)
	tests := []struct {
		script string
		want   int
		signal syscall.Signal
	}{
		{script: "exit 0", want: 0},
		{script: "exit 3", want: 3},
		{script: "kill -9 $$", want: 137, signal: syscall.SIGKILL},
		{script: "kill -TERM $$", want: 143, signal: syscall.SIGTERM},
	}
	for _, tt := range tests {
		t.Run(tt.script, func(t *testing.T) {
			out := run(t, rootSpec("sh", "-c", tt.script))
			if out.code != tt.want || out.result.ExitCode != tt.want || out.result.Signal != tt.signal {
				t.Errorf("exit code %d (result %+v), want %d by signal %v", out.code, out.result, tt.want, tt.signal)
			}
			if !out.result.TreeGone {
				t.Error("Result.TreeGone is false although the tree has ended")
			}
		})
	}
}

func TestCommandErrors(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	notExecutable := filepath.Join(dir, "notexec")
	if err := os.WriteFile(notExecutable, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	rootOnly := filepath.Join(dir, "rootonly")
	if err := os.WriteFile(rootOnly, []byte("#!/bin/sh\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	badInterpreter := filepath.Join(dir, "badinterp")
	if err := os.WriteFile(badInterpreter, []byte("#!/nonexistent/interpreter\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		command string
		asUser  uint32
		path    string
		wantMsg string
		wantErr error
	}{
		{name: "not in PATH", command: "ssi-no-such-command", wantMsg: "ssi-no-such-command: command not found", wantErr: ErrNotFound},
		{name: "missing path", command: "/nonexistent/cmd", wantMsg: "/nonexistent/cmd: No such file or directory", wantErr: ErrNotFound},
		{name: "not executable", command: notExecutable, wantMsg: notExecutable + ": Permission denied", wantErr: ErrNotExecutable},
		{name: "directory", command: dir, wantMsg: dir + ": Is a directory", wantErr: ErrNotExecutable},
		{name: "other user's file", command: rootOnly, asUser: 65534, wantMsg: rootOnly + ": Permission denied", wantErr: ErrNotExecutable},
		{name: "only non-executable in PATH", command: "notexec", path: dir, wantMsg: "notexec: Permission denied", wantErr: ErrNotExecutable},
		{name: "bad interpreter", command: badInterpreter, wantMsg: badInterpreter + ": No such file or directory", wantErr: ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := rootSpec(tt.command)
			spec.UID, spec.GID = tt.asUser, tt.asUser
			if tt.path != "" {
				spec.Env = append(spec.Env, "PATH="+tt.path)
			}
			p, err := Start(context.Background(), spec)
			if err == nil {
				p.Close()
				t.Fatalf("Start(%q) succeeded, want %q", tt.command, tt.wantMsg)
			}
			var cmdErr *CommandError
			if !errors.As(err, &cmdErr) || err.Error() != tt.wantMsg || !errors.Is(err, tt.wantErr) {
				t.Fatalf("Start(%q) error = %v, want CommandError %q", tt.command, err, tt.wantMsg)
			}
			wantCode := map[error]int{ErrNotFound: 127, ErrNotExecutable: 126}[tt.wantErr]
			if cmdErr.Code != wantCode {
				t.Errorf("Code = %d, want %d", cmdErr.Code, wantCode)
			}
		})
	}
	// No cgroup may be left behind by a failed start.
	leftovers, err := cgroupChildren()
	if err != nil {
		t.Fatal(err)
	}
	if len(leftovers) != 0 {
		t.Errorf("failed starts left cgroups behind: %v", leftovers)
	}
}

func cgroupChildren() ([]string, error) {
	mount, err := cgroup.Mount()
	if err != nil {
		return nil, err
	}
	children, err := cgroup.Open(mount, testCgroupParent).Children()
	var names []string
	for _, c := range children {
		names = append(names, c.Rel())
	}
	return names, err
}

func TestWorkDirErrors(t *testing.T) {
	requireRoot(t)
	private := t.TempDir() // in a 0700 directory owned by root
	if err := os.Mkdir(filepath.Join(private, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, dir string
		uid       uint32
		want      string
	}{
		{name: "missing", dir: "/nonexistent/dir", want: "does not exist on this node"},
		{name: "file", dir: "/etc/passwd", want: "is not a directory"},
		{name: "no permission", dir: private, uid: 65534, want: "may not enter"},
		{name: "no permission above", dir: filepath.Join(private, "sub"), uid: 65534, want: "may not enter"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := rootSpec("true")
			spec.Dir, spec.UID, spec.GID = tt.dir, tt.uid, tt.uid
			p, err := Start(context.Background(), spec)
			if err == nil {
				p.Close()
				t.Fatal("Start succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %q, want one line containing %q", err, tt.want)
			}
		})
	}
}

func TestRunsAsCaller(t *testing.T) {
	requireRoot(t)
	// A directory nobody can reach and write: /tmp itself is world-searchable.
	dir, err := os.MkdirTemp("", "ssi-proc-caller-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	agentUmaskBefore, err := UmaskOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}

	spec := rootSpec("sh", "-c", `id -u; id -g; id -G; pwd; touch f; stat -c %a f; echo "$SSI_NODE $SSI_PARENT_GPID $SSI_SOCKET $HOME"`)
	spec.UID, spec.GID, spec.Groups = 65534, 65534, []uint32{65534, 100}
	spec.Umask = 0o027
	spec.Dir = dir
	spec.ParentGPID = 20001234
	spec.SocketPath = "/run/ssi/agent.sock"
	spec.Env = append(spec.Env, "HOME=/nonexistent", "SSI_NODE=99")
	out := run(t, spec)

	want := strings.Join([]string{"65534", "65534", "65534 100", dir, "640", "3 20001234 /run/ssi/agent.sock /nonexistent"}, "\n") + "\n"
	if out.code != 0 || out.stdout != want {
		t.Errorf("exit %d, stdout:\n%s\nstderr:\n%s\nwant stdout:\n%s", out.code, out.stdout, out.stderr, want)
	}
	fi, err := os.Stat(filepath.Join(dir, "f"))
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 65534 || st.Gid != 65534 {
		t.Errorf("file created by the child is owned by %d:%d, want 65534:65534", st.Uid, st.Gid)
	}
	agentUmaskAfter, err := UmaskOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if agentUmaskAfter != agentUmaskBefore {
		t.Errorf("the agent's umask changed from %#o to %#o", agentUmaskBefore, agentUmaskAfter)
	}
}

// TestForkHereUsesTheThreadsUmask starts a process from a caller's locked thread whose own
// fs_struct has umask 077: the child gets it, and the agent's stays. (Spec.Umask says 022 here,
// against ForkHere's contract, to show that the fork happened on that thread.)
func TestForkHereUsesTheThreadsUmask(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	before, err := UmaskOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	spec := rootSpec("/bin/sh", "-c", "touch f; stat -c %a f")
	spec.Dir, spec.Umask, spec.ForkHere = dir, 0o022, true
	var p *Process
	var startErr error
	var forkOnOwnThread func()
	forkOnOwnThread = func() {
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			// The main thread must keep the shared fs_struct (/proc reports the agent's umask
			// from it): hold it while another thread does the work.
			inner := make(chan struct{})
			go func() {
				defer close(inner)
				forkOnOwnThread()
			}()
			<-inner
			runtime.UnlockOSThread()
			return
		}
		// Never unlocked: once its fs_struct is its own, the runtime must discard the thread.
		if startErr = unix.Unshare(unix.CLONE_FS); startErr != nil {
			return
		}
		unix.Umask(0o077)
		p, startErr = Start(context.Background(), spec)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		forkOnOwnThread()
	}()
	<-done
	if startErr != nil {
		t.Fatal(startErr)
	}
	p.Stdin().Close()
	var stderr bytes.Buffer
	var wg sync.WaitGroup
	wg.Go(func() { _, _ = io.Copy(&stderr, p.Stderr()) })
	stdout, _ := io.ReadAll(p.Stdout())
	wg.Wait()
	code, err := p.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if code != 0 || string(stdout) != "600\n" {
		t.Errorf("exit %d, stdout %q, stderr %q; want the file made with mode 600", code, stdout, stderr.String())
	}
	if after, err := UmaskOf(os.Getpid()); err != nil || after != before {
		t.Errorf("the agent's umask changed from %#o to %#o (%v)", before, after, err)
	}
}

func TestSignalReachesCommand(t *testing.T) {
	requireRoot(t)
	p, err := Start(context.Background(), rootSpec("sh", "-c", "trap 'exit 42' USR1; sleep 1000 & echo ready; wait"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	line := make([]byte, len("ready\n"))
	if _, err := io.ReadFull(p.Stdout(), line); err != nil || string(line) != "ready\n" {
		t.Fatalf("read %q, %v, want ready", line, err)
	}
	if err := p.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	if code, err := p.Wait(); code != 42 || err != nil {
		t.Fatalf("Wait = %d, %v, want 42 (the USR1 trap)", code, err)
	}
	if err := p.Signal(syscall.SIGUSR1); !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("Signal after exit = %v, want os.ErrProcessDone", err)
	}
	// The background sleep still runs, so the cgroup must still exist until Close.
	if p.Result().TreeGone {
		t.Error("Result.TreeGone is true while the background sleep still runs")
	}
	dir := p.CgroupDir()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("cgroup %s still exists after Close", dir)
	}
}

// waitForMembers polls the cgroup until it holds at least n processes.
func waitForMembers(t *testing.T, p *Process, n int) []int {
	t.Helper()
	mount, err := cgroup.Mount()
	if err != nil {
		t.Fatal(err)
	}
	g := cgroup.Open(mount, p.Cgroup())
	deadline := time.Now().Add(5 * time.Second)
	for {
		pids, err := g.Procs()
		if err != nil {
			t.Fatal(err)
		}
		if len(pids) >= n {
			return pids
		}
		if time.Now().After(deadline) {
			t.Fatalf("cgroup holds %v, want %d processes", pids, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestTerminateEndsWholeTree(t *testing.T) {
	requireRoot(t)
	// The subshell double-forks a sleep into a new session that ignores SIGHUP: it is no
	// longer the shell's child nor in its group, and only the cgroup still finds it.
	script := `sleep 1000 & (trap "" HUP; setsid sleep 1000 &); sleep 1000`
	// Children inherit an ignored SIGHUP (a test run under nohup); a caught one they do not.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGHUP)
	defer signal.Reset(syscall.SIGHUP)
	p, err := Start(context.Background(), rootSpec("sh", "-c", script))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	pids := waitForMembers(t, p, 4)

	// The grace is long enough for a busy machine to schedule the shell on SIGHUP.
	if err := p.Terminate(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	if code, err := p.Wait(); code != 128+int(syscall.SIGHUP) || err != nil {
		t.Errorf("Wait = %d, %v, want 129 (SIGHUP)", code, err)
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("pid %d of the tree still runs after Terminate", pid)
		}
	}
	if !p.Result().TreeGone {
		t.Error("cgroup not removed after Terminate and Wait")
	}
}

// ptyOutput collects what a terminal master prints.
type ptyOutput struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	done chan error
}

func readPTY(master *os.File) *ptyOutput {
	o := &ptyOutput{done: make(chan error, 1)}
	go func() {
		chunk := make([]byte, 4096)
		for {
			n, err := master.Read(chunk)
			o.mu.Lock()
			o.buf.Write(chunk[:n])
			o.mu.Unlock()
			if err != nil {
				o.done <- err
				return
			}
		}
	}()
	return o
}

func (o *ptyOutput) waitFor(t *testing.T, re *regexp.Regexp) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		o.mu.Lock()
		s := o.buf.String()
		o.mu.Unlock()
		if m := re.FindString(s); m != "" {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("terminal output %q never matched %v", s, re)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestTerminal(t *testing.T) {
	requireRoot(t)
	spec := rootSpec("sh", "-c", "tty; stty size; read line; stty size")
	spec.TTY, spec.Rows, spec.Cols = true, 30, 100
	spec.UID, spec.GID = 65534, 65534
	p, err := Start(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.Stdin() != nil || p.Stdout() != nil || p.TTY() == nil {
		t.Fatal("with TTY, Stdin and Stdout must be nil and TTY set")
	}
	out := readPTY(p.TTY())
	ttyName := strings.TrimSpace(out.waitFor(t, regexp.MustCompile(`/dev/pts/\d+\r?\n`)))
	out.waitFor(t, regexp.MustCompile(`30 100\r?\n`))
	if fi, err := os.Stat(ttyName); err != nil || fi.Sys().(*syscall.Stat_t).Uid != 65534 {
		t.Errorf("terminal %s is not owned by the caller (stat: %v)", ttyName, err)
	}

	if err := p.Resize(40, 120); err != nil {
		t.Fatal(err)
	}
	if _, err := p.TTY().Write([]byte("\n")); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, regexp.MustCompile(`40 120\r?\n`))
	if code, err := p.Wait(); code != 0 || err != nil {
		t.Fatalf("Wait = %d, %v", code, err)
	}
	select {
	case err := <-out.done:
		if !errors.Is(err, syscall.EIO) {
			t.Errorf("terminal read ended with %v, want EIO", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("terminal read did not end after the process exited")
	}
}

func TestResizeWithoutTerminal(t *testing.T) {
	requireRoot(t)
	p, err := Start(context.Background(), rootSpec("true"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Resize(10, 10); err == nil {
		t.Error("Resize without a terminal succeeded")
	}
}

func TestBinaryStdioRoundTrip(t *testing.T) {
	requireRoot(t)
	data := make([]byte, 10<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	p, err := Start(context.Background(), rootSpec("cat"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	writeErr := make(chan error, 1)
	go func() {
		_, err := p.Stdin().Write(data)
		if cerr := p.Stdin().Close(); err == nil {
			err = cerr
		}
		writeErr <- err
	}()
	got, err := io.ReadAll(p.Stdout())
	if err != nil {
		t.Fatal(err)
	}
	if err := <-writeErr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes that differ from the %d written", len(got), len(data))
	}
	if code, err := p.Wait(); code != 0 || err != nil {
		t.Fatalf("Wait = %d, %v", code, err)
	}
}

func TestGivenFilesAreUsed(t *testing.T) {
	requireRoot(t)
	outFile, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer outFile.Close()
	spec := rootSpec("sh", "-c", "echo to-file; echo to-pipe >&2")
	spec.Stdout = outFile
	p, err := Start(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.Stdout() != nil || p.Stderr() == nil {
		t.Fatal("a given Stdout must not get a pipe, a nil Stderr must")
	}
	errOut, err := io.ReadAll(p.Stderr())
	if err != nil || string(errOut) != "to-pipe\n" {
		t.Errorf("stderr = %q, %v", errOut, err)
	}
	if _, err := p.Wait(); err != nil {
		t.Fatal(err)
	}
	if data, err := os.ReadFile(outFile.Name()); err != nil || string(data) != "to-file\n" {
		t.Errorf("file got %q, %v", data, err)
	}
}

func TestTerminateLeftovers(t *testing.T) {
	requireRoot(t)
	parent := testCgroupParent + "/leftovers"
	var pids []int
	for range 2 {
		spec := rootSpec("sh", "-c", "sleep 1000 & sleep 1000")
		spec.CgroupParent = parent
		p, err := Start(context.Background(), spec)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		pids = append(pids, waitForMembers(t, p, 2)...)
	}
	n, err := TerminateLeftovers(context.Background(), "", parent, 50*time.Millisecond)
	if err != nil || n != 2 {
		t.Fatalf("TerminateLeftovers = %d, %v, want 2 trees", n, err)
	}
	left, err := cgroup.Open(mustMount(t), parent).Children()
	if err != nil || len(left) != 0 {
		t.Errorf("cgroups left under %s: %v, %v", parent, left, err)
	}
	_ = cgroup.Open(mustMount(t), parent).Remove()
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("pid %d of a leftover tree still runs", pid)
		}
	}
}

// alive reports whether pid exists and is not a zombie. Orphans killed with their tree are
// reaped by init in its own time, so they may linger as zombies for a moment.
func alive(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(data)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(fields) > 0 && fields[0] != "Z"
}

func mustMount(t *testing.T) string {
	t.Helper()
	mount, err := cgroup.Mount()
	if err != nil {
		t.Fatal(err)
	}
	return mount
}

func TestStartAsNonRootAgentRefusesOtherUsers(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("checks the non-root agent path")
	}
	spec := rootSpec("true")
	spec.UID = uint32(os.Geteuid()) + 1
	if _, err := Start(context.Background(), spec); err == nil || !strings.Contains(err.Error(), "run the agent as root") {
		t.Errorf("Start as another uid = %v, want a refusal naming the fix", err)
	}
}

func BenchmarkStartWait(b *testing.B) {
	requireRoot(b)
	spec := rootSpec("/bin/true")
	spec.Stdin, spec.Stdout, spec.Stderr = devNull(b), devNull(b), devNull(b)
	for b.Loop() {
		startWaitClose(b, spec)
	}
}

// BenchmarkStartTrue starts /bin/true in its own cgroup, waits and closes, one at a time
// and from many goroutines at once (as the job executor does), and reports the agent's
// own CPU time per start (agent-µs/op: the test process's threads only, not the child's).
func BenchmarkStartTrue(b *testing.B) {
	requireRoot(b)
	spec := rootSpec("/bin/true")
	b.Run("serial", func(b *testing.B) {
		spec.Stdin, spec.Stdout, spec.Stderr = devNull(b), devNull(b), devNull(b)
		cpu := agentCPU()
		for b.Loop() {
			startWaitClose(b, spec)
		}
		reportAgentCPU(b, cpu)
	})
	b.Run("with-limits", func(b *testing.B) {
		// Limits other than inherited ones: each start stops at its exec to set them.
		spec := spec
		spec.Stdin, spec.Stdout, spec.Stderr = devNull(b), devNull(b), devNull(b)
		spec.Rlimits = []Rlimit{{Resource: unix.RLIMIT_CORE, Cur: 0, Max: 0}, {Resource: unix.RLIMIT_NOFILE, Cur: 100, Max: 200}}
		cpu := agentCPU()
		for b.Loop() {
			startWaitClose(b, spec)
		}
		reportAgentCPU(b, cpu)
	})
	b.Run("parallel", func(b *testing.B) {
		spec.Stdin, spec.Stdout, spec.Stderr = devNull(b), devNull(b), devNull(b)
		b.SetParallelism(8)
		cpu := agentCPU()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				startWaitClose(b, spec)
			}
		})
		reportAgentCPU(b, cpu)
	})
}

// startWaitClose runs spec to its end; it may be called from RunParallel's goroutines.
func startWaitClose(b *testing.B, spec Spec) {
	p, err := Start(context.Background(), spec)
	if err != nil {
		b.Error(err)
		return
	}
	if code, err := p.Wait(); code != 0 || err != nil {
		b.Errorf("Wait = %d, %v", code, err)
	}
	if err := p.Close(); err != nil {
		b.Error(err)
	}
}

// agentCPU is the user+system CPU time this process (every thread, none of its children)
// has used so far.
func agentCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func reportAgentCPU(b *testing.B, since time.Duration) {
	b.ReportMetric(float64((agentCPU()-since).Microseconds())/float64(b.N), "agent-µs/op")
}

func devNull(b *testing.B) *os.File {
	f, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	return f
}

func TestMain(m *testing.M) {
	code := m.Run()
	// Remove the shared test parent cgroup once every test's own group is gone.
	if os.Geteuid() == 0 {
		if mount, err := cgroup.Mount(); err == nil {
			_ = cgroup.Open(mount, testCgroupParent).Remove()
		}
	}
	os.Exit(code)
}

func BenchmarkStdoutThroughput(b *testing.B) {
	requireRoot(b)
	const size = 64 << 20
	b.SetBytes(size)
	spec := rootSpec("head", "-c", strconv.Itoa(size), "/dev/zero")
	spec.Stdin, spec.Stderr = devNull(b), devNull(b)
	for b.Loop() {
		p, err := Start(context.Background(), spec)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, p.Stdout())
		if err != nil || n != size {
			b.Fatalf("read %d bytes, %v, want %d", n, err, size)
		}
		if _, err := p.Wait(); err != nil {
			b.Fatal(err)
		}
		if err := p.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCloseWithLeftover times Close of a tree whose command has exited but left a
// background process behind: Close kills it and waits for the cgroup to empty.
func BenchmarkCloseWithLeftover(b *testing.B) {
	requireRoot(b)
	spec := rootSpec("sh", "-c", "sleep 1000 &")
	spec.Stdin, spec.Stdout, spec.Stderr = devNull(b), devNull(b), devNull(b)
	var closing time.Duration
	for b.Loop() {
		p, err := Start(context.Background(), spec)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := p.Wait(); err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		if err := p.Close(); err != nil {
			b.Fatal(err)
		}
		closing += time.Since(t0)
		if !p.Result().TreeGone {
			b.Fatal("the tree is not gone after Close")
		}
	}
	b.ReportMetric(float64(closing.Microseconds())/float64(b.N), "close-µs/op")
}

// TestPeakMemoryIsTheCommands checks that the peak memory reported for a command is its own,
// never memory of the starting process that wait4 counts for the child (here `true` was
// reported at 6 MiB, the agent's `true` at ~50 MiB): a small command reports a small figure
// (or none where only wait4 knows, as it cannot tell the two apart), and one that touches
// 64 MiB more than the test binary ever held reports at least that much.
func TestPeakMemoryIsTheCommands(t *testing.T) {
	requireRoot(t)
	peak := func(r Result) uint64 {
		if r.TreeMemPeak > 0 {
			return r.TreeMemPeak
		}
		return r.MaxRSSBytes
	}
	own := ownHighWater()
	if small := peak(run(t, rootSpec("true")).result); small >= 4<<20 {
		t.Errorf("true reported a peak of %d bytes", small)
	}
	want := own + 64<<20
	// dd reads one block of that size into a buffer of that size.
	block := "bs=" + strconv.FormatUint(want, 10)
	if big := peak(run(t, rootSpec("dd", "if=/dev/zero", "of=/dev/null", block, "count=1")).result); big < want {
		t.Errorf("a command holding %d bytes reported a peak of %d", want, big)
	}
}
