package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/devcluster"
	"github.com/ssi-cluster/ssi/internal/proc"
)

type procJSON struct {
	GPID       int64  `json:"gpid"`
	Node       string `json:"node"`
	PID        int32  `json:"pid"`
	PPIDGPID   int64  `json:"ppid_gpid"`
	User       string `json:"user"`
	UID        uint32 `json:"uid"`
	State      string `json:"state"`
	Command    string `json:"command"`
	SSIStarted bool   `json:"ssi_started"`
}

func ps(t *testing.T, c *devcluster.Cluster, from string, args ...string) []procJSON {
	t.Helper()
	r := ssi(t, c, from, append([]string{"ps", "-o", "json"}, args...)...)
	if r.code != 0 {
		t.Fatalf("ssi ps: %v", r)
	}
	var out []procJSON
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("ssi ps -o json: %v", err)
	}
	return out
}

func findProcs(list []procJSON, node, cmdPrefix string) []procJSON {
	var out []procJSON
	for _, p := range list {
		if p.Node == node && strings.HasPrefix(p.Command, cmdPrefix) {
			out = append(out, p)
		}
	}
	return out
}

// TestProcessSpace covers ssi run, rsh, ps, kill and wait on three simulated hosts.
func TestProcessSpace(t *testing.T) {
	c := startCluster(t, 3)

	t.Run("exit status and stdio", func(t *testing.T) {
		tests := []struct {
			args       []string
			code       int
			out, inErr string
		}{
			{[]string{"run", "-n", "n2", "--", "hostname"}, 0, "n2\n", ""},
			{[]string{"run", "-n", "n3", "--", "sh", "-c", "echo out; echo err >&2; exit 3"}, 3, "out\n", "err"},
			{[]string{"run", "-n", "n2", "--", "sh", "-c", "kill -9 $$"}, 137, "", ""},
			// ssi dies of the command's signal, as a shell sees a local child die; never of
			// the Go runtime's stack dump for QUIT.
			{[]string{"run", "-n", "n2", "--", "sh", "-c", "kill -TERM $$"}, 143, "", ""},
			{[]string{"run", "-n", "n3", "--", "sh", "-c", "kill -QUIT $$"}, 131, "", ""},
			{[]string{"run", "-n", "n2", "--", "no-such-command"}, 127, "", "no-such-command: command not found"},
			{[]string{"run", "-n", "n2", "--cwd", "/no/such/dir", "--", "true"}, 1, "", "does not exist on node n2"},
			{[]string{"run", "-n", "n9", "--", "true"}, 1, "", `unknown node "n9"`},
			{[]string{"run", "-n", "n3", "--env", "GREETING=hi", "--", "sh", "-c", "echo $GREETING $SSI_NODE"}, 0, "hi 3\n", ""},
		}
		for _, tt := range tests {
			r := ssi(t, c, "n1", tt.args...)
			if r.code != tt.code || r.stdout != tt.out || !strings.Contains(r.stderr, tt.inErr) {
				t.Errorf("ssi %v: %v; want exit %d, stdout %q, stderr containing %q", tt.args, r, tt.code, tt.out, tt.inErr)
			}
			if wantSig := tt.code > 128 && tt.code < 128+65; (r.signal != 0) != wantSig || (wantSig && tt.inErr == "" && r.stderr != "") {
				t.Errorf("ssi %v: %v; want death by signal %d, as the command's, and no message", tt.args, r, tt.code-128)
			}
		}
	})

	t.Run("arguments, environment and directory that are not UTF-8", func(t *testing.T) {
		// Unix passes them as bytes (a Latin-1 file name, say); a local child gets them as they are.
		base, err := os.MkdirTemp("/var/tmp", "ssi-e2e-bytes") // /tmp is each host's own
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(base)
		dir := base + "/caf\xe9"
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		r := ssi(t, c, "n1", "run", "-n", "n2", "--cwd", dir, "--env", "X=\xfe\xff", "--",
			"sh", "-c", `printf '%s|%s|%s' "$1" "$X" "$(pwd -P)"`, "sh", "a\x80b")
		if want := "a\x80b|\xfe\xff|" + dir; r.code != 0 || r.stdout != want {
			t.Fatalf("%v; want stdout %q", r, want)
		}
		// ssi ps lists such a command line, with '?' for what is not printable, as ps(1) does.
		r = ssi(t, c, "n1", "run", "--detach", "-n", "n2", "--cwd", dir, "--", "sh", "-c", "sleep 301", "a\xffb\tc")
		g := strings.TrimSpace(r.stdout)
		if r.code != 0 {
			t.Fatalf("ssi run --detach: %v", r)
		}
		// Once: the shell may show twice for a moment, its child not yet sleep (it forks first).
		var list []procJSON
		deadline := time.Now().Add(10 * time.Second)
		for {
			list = ps(t, c, "n1", "-n", "n2")
			if len(findProcs(list, "n2", "sh -c sleep 301 a?b?c")) == 1 || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if found := findProcs(list, "n2", "sh -c sleep 301 a?b?c"); len(found) != 1 {
			t.Errorf("ssi ps does not show the command line as ps(1) would: %+v", list)
		}
		ssi(t, c, "n1", "kill", "-9", g)
		// A message quoting such bytes still arrives, with its status.
		if r := ssi(t, c, "n1", "run", "-n", "n2", "--", "no-such-\xff"); r.code != 127 || !strings.Contains(r.stderr, "no-such-") {
			t.Fatalf("a command not found whose name is not UTF-8: %v", r)
		}
	})

	t.Run("nice value and PWD", func(t *testing.T) {
		// As a local child: the caller's nice value, and PWD naming where it runs.
		r := inside(t, c, "n1", "nice", "-n", "7", "ssi", "run", "-n", "n2", "--", "cut", "-d ", "-f19", "/proc/self/stat")
		if r.code != 0 || r.stdout != "7\n" {
			t.Fatalf("nice -n 7 ssi run: %v; want nice 7", r)
		}
		r = inside(t, c, "n1", "env", "PWD=/", "ssi", "run", "-n", "n2", "--cwd", "/etc", "--", "printenv", "PWD")
		if r.code != 0 || r.stdout != "/etc\n" {
			t.Fatalf("ssi run --cwd /etc: %v; want PWD /etc", r)
		}
	})

	t.Run("resource limits", func(t *testing.T) {
		// As a local child: the caller's ulimits, set before the command's first instruction.
		r := inside(t, c, "n1", "sh", "-c", `ulimit -c 12345 && ulimit -s 4321 && ulimit -n 300 && exec ssi run -n n2 -- sh -c 'echo $(ulimit -c) $(ulimit -s) $(ulimit -Sn) $(ulimit -Hn)'`)
		if r.code != 0 || r.stdout != "12345 4321 300 300\n" {
			t.Fatalf("ssi run under ulimit -c 12345 -s 4321 -n 300: %v; want those limits", r)
		}
		// As another user, whose limits an agent without CAP_SYS_RESOURCE may not read or set with prlimit(2).
		r = inside(t, c, "n1", "su", "nobody", "-s", "/bin/sh", "-c", `ulimit -c 777 && cd / && exec ssi run -n n2 -- sh -c 'ulimit -c'`)
		if r.code != 0 || r.stdout != "777\n" {
			t.Fatalf("ssi run as nobody under ulimit -c 777: %v; want 777", r)
		}
	})

	t.Run("2>&1 keeps the order of stdout and stderr", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := cliCmd(ctx, c, "n1", "run", "-n", "n2", "--", "sh", "-c",
			`i=0; while [ $i -lt 300 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done`)
		var both bytes.Buffer
		cmd.Stdout, cmd.Stderr = &both, &both // one pipe for both, as 2>&1
		if err := cmd.Run(); err != nil {
			t.Fatal(err)
		}
		var want strings.Builder
		for i := range 300 {
			fmt.Fprintf(&want, "out%d\nerr%d\n", i, i)
		}
		if both.String() != want.String() {
			t.Fatalf("stdout and stderr into one pipe came out of order:\n%s", both.String())
		}
	})

	t.Run("rsh", func(t *testing.T) {
		r := inside(t, c, "n1", "ssi", "rsh", "n2", "echo", "$HOME;", "hostname;", "exit", "5")
		if r.code != 5 || r.stdout != "/root\nn2\n" {
			t.Fatalf("rsh: %v", r)
		}
		if r := inside(t, c, "n1", "ssi", "rsh", c.Node("n3").IP.String(), "hostname"); r.stdout != "n3\n" {
			t.Fatalf("rsh by address: %v", r)
		}
	})

	t.Run("binary stdin round trip", func(t *testing.T) {
		data := make([]byte, 8<<20)
		rand.Read(data)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := cliCmd(ctx, c, "n1", "run", "-n", "n3", "--", "cat")
		cmd.Stdin = bytes.NewReader(data)
		out, err := cmd.Output()
		if err != nil || sha256.Sum256(out) != sha256.Sum256(data) {
			t.Fatalf("8 MiB through remote cat: %d bytes back, err %v", len(out), err)
		}
	})

	t.Run("pipeline across two nodes", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		producer := cliCmd(ctx, c, "n1", "run", "-n", "n2", "--", "seq", "1", "200000")
		consumer := cliCmd(ctx, c, "n1", "run", "-n", "n3", "--", "sh", "-c", "wc -l; hostname")
		pipe, err := producer.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		consumer.Stdin = pipe
		var out bytes.Buffer
		consumer.Stdout = &out
		if err := producer.Start(); err != nil {
			t.Fatal(err)
		}
		if err := consumer.Run(); err != nil {
			t.Fatal(err)
		}
		if err := producer.Wait(); err != nil {
			t.Fatal(err)
		}
		if got := strings.Fields(out.String()); len(got) != 2 || got[0] != "200000" || got[1] != "n3" {
			t.Fatalf("pipeline output %q", out.String())
		}
	})

	t.Run("signals reach the remote process", func(t *testing.T) {
		// Every signal a shell passes on, one session: each trap reports its signal, TERM
		// last ends the command with the trap's status.
		// The client stops itself after passing TSTP on (see the next test), so CONT follows it.
		// INT and QUIT, as a terminal's keys, reach the whole job: the trap's sleep is
		// restarted by the loop.
		// ALRM and a real-time signal, as any other kill(1) may send to the command ssi
		// stands in for, once it has run a while (lateSignalsAfter in the CLI).
		sigs := []syscall.Signal{syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2,
			syscall.SIGWINCH, syscall.SIGTSTP, syscall.SIGCONT, syscall.SIGALRM, syscall.Signal(37), syscall.SIGTERM}
		script := ""
		for _, sig := range sigs[:len(sigs)-1] {
			script += fmt.Sprintf("trap 'echo got %d' %d; ", sig, sig)
		}
		script += fmt.Sprintf("trap 'echo got %d; exit 42' %d; echo ready; while :; do sleep 0.05; done", syscall.SIGTERM, syscall.SIGTERM)
		cmd, out := startRemoteScript(t, c, script)
		for _, sig := range sigs {
			cmd.Process.Signal(sig)
			if sig == syscall.SIGTSTP {
				// As at a terminal, TSTP also stops the shell's foreground sleep, which does
				// not catch it, so the shell runs its trap once CONT has let the sleep end.
				// CONT goes once the client has stopped, as a shell's fg would.
				eventually(t, 10*time.Second, "the client stopped", func() bool { return stopped(cmd.Process.Pid) })
				continue
			}
			for _, got := range []syscall.Signal{syscall.SIGTSTP, sig} {
				if got == syscall.SIGTSTP && sig != syscall.SIGCONT {
					continue
				}
				want := fmt.Sprintf("got %d\n", got)
				eventually(t, 10*time.Second, fmt.Sprintf("%v reaches the remote process", got), func() bool {
					return strings.Contains(out.String(), want)
				})
			}
		}
		err := cmd.Wait()
		if cmd.ProcessState.ExitCode() != 42 {
			t.Errorf("exit %d (%v), output %q; want 42 from the TERM trap", cmd.ProcessState.ExitCode(), err, out.String())
		}
	})

	t.Run("signals pass stdin the command does not read", func(t *testing.T) {
		// Endless stdin fills every buffer on the way to a command that never reads it; a
		// signal must not wait behind it, as a local child's does not.
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := cliCmd(ctx, c, "n1", "run", "-T", "-n", "n2", "--", "sh", "-c",
			"trap 'echo got TERM; exit 42' TERM; echo ready; while :; do sleep 0.05; done")
		in := &countingZeros{}
		out := &syncBuffer{}
		cmd.Stdin, cmd.Stdout = in, out
		cmd.WaitDelay = 5 * time.Second // the endless copy into its stdin ends with it
		cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGKILL) }
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "remote script ready", func() bool { return strings.Contains(out.String(), "ready") })
		last := int64(-1)
		eventually(t, 30*time.Second, "stdin backed up", func() bool {
			n := in.n.Load()
			stalled := n == last && n > 0
			last = n
			time.Sleep(200 * time.Millisecond)
			return stalled
		})
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if cmd.ProcessState.ExitCode() != 42 {
			t.Fatalf("%v after TERM, output %q; want 42 from the TERM trap", cmd.ProcessState, out.String())
		}
	})

	t.Run("client killed while stdin is backed up: no orphans", func(t *testing.T) {
		// The agent is then blocked writing stdin the command does not read; it must still
		// notice its client gone and end the tree.
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := cliCmd(ctx, c, "n1", "run", "-T", "-n", "n2", "--", "sleep", "1006")
		in := &countingZeros{}
		cmd.Stdin = in
		cmd.WaitDelay = 5 * time.Second
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		last := int64(-1)
		eventually(t, 30*time.Second, "stdin backed up", func() bool {
			n := in.n.Load()
			stalled := n == last && n > 0
			last = n
			time.Sleep(200 * time.Millisecond)
			return stalled
		})
		cmd.Process.Kill()
		cmd.Wait()
		eventually(t, 15*time.Second, "the remote sleep ended", func() bool {
			return len(findProcs(ps(t, c, "n1", "-n", "n2"), "n2", "sleep 1006")) == 0
		})
	})

	t.Run("signals the caller ignores stay ignored", func(t *testing.T) {
		// As under nohup, or for a script's background job: HUP and INT ignored. The remote
		// command inherits that, as a local one does through exec, and ssi does not catch
		// them and pass them on.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := cliCmd(ctx, c, "n1", "run", "-T", "-n", "n2", "--", "sh", "-c", `grep ^SigIgn: /proc/$$/status; read x; echo done`)
		cmd.Args = append([]string{"sh", "-c", `trap '' HUP INT; exec "$0" "$@"`, cmd.Path}, cmd.Args[1:]...)
		cmd.Path = "/bin/sh"
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		out := &syncBuffer{}
		cmd.Stdout = out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "the remote command's signal mask", func() bool { return strings.Contains(out.String(), "\n") })
		cmd.Process.Signal(syscall.SIGHUP)
		cmd.Process.Signal(syscall.SIGINT)
		io.WriteString(stdin, "go\n")
		stdin.Close()
		err = cmd.Wait()
		mask, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimPrefix(strings.Split(out.String(), "\n")[0], "SigIgn:")), 16, 64)
		if err != nil || mask&3 != 3 || !strings.HasSuffix(out.String(), "done\n") {
			t.Fatalf("%v, output %q; want HUP and INT (mask 3) ignored remotely, and the command to finish", err, out.String())
		}
	})

	t.Run("ctrl-z stops the remote job, fg continues it", func(t *testing.T) {
		cmd, out := startRemoteScript(t, c, "echo ready; sleep 3 | cat; echo done")
		cmd.Process.Signal(syscall.SIGTSTP)
		// Every process of the job stops, as with a local Ctrl-Z, and so does the client.
		eventually(t, 10*time.Second, "the remote job stopped", func() bool {
			list := ps(t, c, "n1", "-n", "n2")
			job := findProcs(list, "n2", "sh -c echo ready")
			job = append(job, findProcs(list, "n2", "sleep 3")...)
			job = append(job, findProcs(list, "n2", "cat")...)
			stopped := 0
			for _, p := range job {
				if strings.HasPrefix(p.State, "T") {
					stopped++
				}
			}
			return stopped == 3
		})
		eventually(t, 10*time.Second, "the client stopped", func() bool { return stopped(cmd.Process.Pid) })
		cmd.Process.Signal(syscall.SIGCONT)
		if err := cmd.Wait(); err != nil || !strings.Contains(out.String(), "done") {
			t.Fatalf("after SIGCONT: %v, output %q", err, out.String())
		}
	})

	t.Run("a command that stops itself stops ssi, fg continues it", func(t *testing.T) {
		// As a local job that stops itself: the shell's child, ssi, stops too, so that
		// the shell gets its prompt back and sees a stopped job.
		cmd, out := startRemoteScript(t, c, "echo ready; kill -STOP $$; echo done; exit 3")
		eventually(t, 10*time.Second, "the client stopped", func() bool { return stopped(cmd.Process.Pid) })
		cmd.Process.Signal(syscall.SIGCONT) // fg
		if err := waitUnstopped(t, cmd, 20*time.Second); cmd.ProcessState.ExitCode() != 3 || !strings.Contains(out.String(), "done") {
			t.Fatalf("after SIGCONT: %v, output %q; want the command to go on and exit 3", err, out.String())
		}
	})

	t.Run("ssi kill -STOP of the command stops ssi run too", func(t *testing.T) {
		cmd, out := startRemoteScript(t, c, `echo ready $((SSI_NODE*10000000+$$)); i=0; while [ $i -lt 20 ]; do sleep 0.05; i=$((i+1)); done; echo done`)
		gpid := strings.Fields(out.String())[1]
		if r := ssi(t, c, "n3", "kill", "-s", "STOP", gpid); r.code != 0 {
			t.Fatalf("ssi kill -s STOP %s: %v", gpid, r)
		}
		eventually(t, 10*time.Second, "the client stopped", func() bool { return stopped(cmd.Process.Pid) })
		// It stays stopped, as does the command: nothing passed a SIGCONT on.
		time.Sleep(1500 * time.Millisecond)
		if !stopped(cmd.Process.Pid) || strings.Contains(out.String(), "done") {
			t.Fatalf("client stopped %v, output %q; want both stopped until SIGCONT", stopped(cmd.Process.Pid), out.String())
		}
		cmd.Process.Signal(syscall.SIGCONT)
		if err := waitUnstopped(t, cmd, 20*time.Second); err != nil || !strings.Contains(out.String(), "done") {
			t.Fatalf("after SIGCONT: %v, output %q; want the command to finish", err, out.String())
		}
	})

	t.Run("with a terminal, a stop gives the terminal back", func(t *testing.T) {
		// All three stdio a terminal, the command gets one, and ssi sets ours raw; when the
		// command stops, ssi restores the terminal's modes before stopping, and sets it raw
		// again once continued in the foreground.
		ptm, pts, err := pty.Open()
		if err != nil {
			t.Fatal(err)
		}
		defer ptm.Close()
		defer pts.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := cliCmd(ctx, c, "n1", "run", "-n", "n2", "--", "sh", "-c", "echo ready; read x; kill -STOP $$; echo done $x")
		cmd.Stdin, cmd.Stdout, cmd.Stderr = pts, pts, pts
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		screen := &syncBuffer{}
		go io.Copy(screen, ptm)
		canonical := func() bool {
			tio, err := unix.IoctlGetTermios(int(pts.Fd()), unix.TCGETS)
			return err == nil && tio.Lflag&unix.ICANON != 0
		}
		eventually(t, 10*time.Second, "remote command ready", func() bool { return strings.Contains(screen.String(), "ready") })
		if canonical() {
			t.Fatal("the terminal is not raw while the remote command runs")
		}
		io.WriteString(ptm, "go\r")
		eventually(t, 10*time.Second, "the client stopped", func() bool { return stopped(cmd.Process.Pid) })
		if !canonical() {
			t.Fatal("the terminal is still raw while ssi is stopped")
		}
		cmd.Process.Signal(syscall.SIGCONT)
		if err := waitUnstopped(t, cmd, 20*time.Second); err != nil {
			t.Fatalf("after SIGCONT: %v, terminal %q; want the command to finish", err, screen.String())
		}
		// The copy from the terminal may lag behind ssi's exit.
		eventually(t, 10*time.Second, "the rest of the output", func() bool { return strings.Contains(screen.String(), "done go") })
		if !canonical() {
			t.Fatal("the terminal is left raw")
		}
	})

	t.Run("an interactive shell sees ssi run stop as a local job", func(t *testing.T) {
		// bash with job control on a terminal: a remote command that stops itself, Ctrl-Z
		// of one run without a terminal (ssi gets TSTP), and Ctrl-Z of one run with a
		// terminal (a key for the remote terminal) each give the prompt back with the job
		// reported stopped, and fg brings it back to finish with its status. (Markers are
		// arithmetic, so that the echoed command lines do not match them.)
		ptm, pts, err := pty.Open()
		if err != nil {
			t.Fatal(err)
		}
		defer ptm.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		client := cliCmd(ctx, c, "n1")
		shell := exec.CommandContext(ctx, "/bin/bash", "--norc", "--noprofile", "-i")
		shell.Env, shell.Dir = append(client.Env, "PS1=$ ", "TERM=dumb"), "/"
		shell.Stdin, shell.Stdout, shell.Stderr = pts, pts, pts
		shell.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
		if err := shell.Start(); err != nil {
			t.Fatal(err)
		}
		pts.Close()
		defer shell.Process.Kill()
		screen := &syncBuffer{}
		go io.Copy(screen, ptm)
		shows := func(what string, n int) {
			t.Helper()
			for deadline := time.Now().Add(15 * time.Second); strings.Count(screen.String(), what) < n; time.Sleep(20 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("%q not shown %d times after 15 s; terminal %q", what, n, screen.String())
				}
			}
		}
		shows("$ ", 1)
		fmt.Fprintf(ptm, "%s run -n n2 -- sh -c 'echo R$((1+1)); kill -STOP $$; echo D$((2+2)); exit 5'\r", client.Path)
		shows("R2", 1)
		shows("Stopped", 1)
		io.WriteString(ptm, "fg\r")
		shows("D4", 1)
		io.WriteString(ptm, "echo S$?\r")
		shows("S5", 1)
		fmt.Fprintf(ptm, "%s run -T -n n2 -- sh -c 'echo R$((3+3)); sleep 3; echo E$((4+4))'\r", client.Path)
		shows("R6", 1)
		io.WriteString(ptm, "\x1a") // Ctrl-Z
		shows("Stopped", 2)
		io.WriteString(ptm, "fg\r")
		shows("E8", 1)
		io.WriteString(ptm, "echo S$?\r")
		shows("S0", 1)
		fmt.Fprintf(ptm, "%s run -n n2 -- sh -c 'echo R$((5+5)); sleep 3; echo E$((6+6))'\r", client.Path)
		shows("R10", 1)
		io.WriteString(ptm, "\x1a") // Ctrl-Z
		shows("Stopped", 3)
		io.WriteString(ptm, "fg\r")
		shows("E12", 1)
		io.WriteString(ptm, "echo S$?\r")
		shows("S0", 2)
		if n := strings.Count(screen.String(), "Stopped"); n != 3 {
			t.Errorf("%d jobs reported stopped, want 3 (one stopped twice?); terminal %q", n, screen.String())
		}
		io.WriteString(ptm, "exit\r")
		if err := shell.Wait(); err != nil {
			t.Errorf("bash: %v; terminal %q", err, screen.String())
		}
	})

	t.Run("ctrl-c ends the whole remote job", func(t *testing.T) {
		// The shell waits for its pipeline; a terminal's Ctrl-C reaches all three, and the
		// shell, seeing its job die of it, dies of it too.
		cmd, out := startRemoteScript(t, c, "echo ready; sleep 1004 | cat; echo after")
		eventually(t, 10*time.Second, "the remote pipeline", func() bool {
			return len(findProcs(ps(t, c, "n1", "-n", "n2"), "n2", "sleep 1004")) == 1
		})
		cmd.Process.Signal(syscall.SIGINT)
		cmd.Wait()
		if ws := cmd.ProcessState.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGINT || strings.Contains(out.String(), "after") {
			t.Fatalf("%v, output %q; want death by SIGINT and no \"after\"", cmd.ProcessState, out.String())
		}
		if left := findProcs(ps(t, c, "n1", "-n", "n2"), "n2", "sleep 1004"); len(left) != 0 {
			t.Fatalf("left behind: %+v", left)
		}
	})

	t.Run("terminal", func(t *testing.T) {
		r := ssi(t, c, "n1", "run", "-t", "-n", "n2", "--", "sh", "-c", "tty; stty size")
		if r.code != 0 || !strings.HasPrefix(r.stdout, "/dev/pts/") {
			t.Fatalf("run -t: %v", r)
		}
		if r := ssi(t, c, "n1", "run", "-T", "-n", "n2", "--", "tty"); r.code == 0 {
			t.Fatalf("run -T gave a terminal: %v", r)
		}
		// At a terminal with the output redirected, the command sees its stdout as it is:
		// no terminal, and no CRLF in the output.
		ptm, pts, err := pty.Open()
		if err != nil {
			t.Fatal(err)
		}
		defer ptm.Close()
		defer pts.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := cliCmd(ctx, c, "n1", "run", "-n", "n2", "--", "sh", "-c", "test -t 1 && echo terminal || echo pipe")
		cmd.Stdin, cmd.Stderr = pts, pts
		if out, err := cmd.Output(); err != nil || string(out) != "pipe\n" {
			t.Fatalf("stdin and stderr a terminal, stdout a pipe: %q, %v; want \"pipe\\n\"", out, err)
		}

		// A background job of an interactive shell (its own process group, not the
		// terminal's) that does not read the terminal runs to its end, as a local one does,
		// instead of being stopped for touching the terminal.
		bgm, bgs, err := pty.Open()
		if err != nil {
			t.Fatal(err)
		}
		defer bgm.Close()
		job := cliCmd(ctx, c, "n1", "run", "-n", "n2", "--", "echo", "from-the-background")
		shell := exec.CommandContext(ctx, "/bin/sh", "-mc", `"$@" & wait $!; echo "status $?"`, "sh")
		shell.Args = append(shell.Args, job.Args...)
		shell.Args[len(shell.Args)-len(job.Args)] = job.Path
		shell.Env, shell.Dir = job.Env, "/"
		shell.Stdin, shell.Stdout, shell.Stderr = bgs, bgs, bgs
		shell.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
		if err := shell.Start(); err != nil {
			t.Fatal(err)
		}
		bgs.Close()
		screen := &syncBuffer{}
		copied := make(chan struct{})
		go func() { io.Copy(screen, bgm); close(copied) }()
		done := make(chan error, 1)
		go func() {
			err := shell.Wait()
			<-copied // all the terminal showed: it ends once no process holds the terminal
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil || !strings.Contains(screen.String(), "from-the-background") || !strings.Contains(screen.String(), "status 0") {
				t.Fatalf("ssi run in the background: %v, terminal %q", err, screen.String())
			}
		case <-time.After(20 * time.Second):
			shell.Process.Kill()
			t.Fatalf("ssi run in the background did not end (stopped?); terminal %q", screen.String())
		}
	})

	t.Run("detach and wait", func(t *testing.T) {
		r := inside(t, c, "n1", "ssi", "run", "--detach", "-n", "n2", "--cwd", "/tmp", "--", "sh", "-c", "echo hello; exit 7")
		g, err := strconv.ParseInt(strings.TrimSpace(r.stdout), 10, 64)
		if r.code != 0 || err != nil || g/10_000_000 != 2 {
			t.Fatalf("detach: %v", r)
		}
		w := inside(t, c, "n3", "ssi", "wait", strconv.FormatInt(g, 10))
		if w.code != 7 {
			t.Fatalf("wait: %v", w)
		}
		// A pid that is no child of ours: 127, as the shell's wait gives.
		if w := inside(t, c, "n3", "ssi", "wait", strconv.FormatInt(g+1_000_000, 10)); w.code != 127 || w.stderr == "" {
			t.Fatalf("wait for a process ssi did not start: %v; want 127 and a message", w)
		}
		// Several: all are waited for, and the status is the last one's, as the shell's.
		other := strings.TrimSpace(inside(t, c, "n1", "ssi", "run", "--detach", "-n", "n3", "--cwd", "/tmp", "--", "sh", "-c", "exit 9").stdout)
		if w := inside(t, c, "n2", "ssi", "wait", strconv.FormatInt(g, 10), other); w.code != 9 {
			t.Fatalf("wait for two: %v; want the second's 9", w)
		}
		out := inside(t, c, "n2", "cat", fmt.Sprintf("/tmp/ssi-%d.out", g))
		if out.stdout != "hello\n" {
			t.Fatalf("detached output: %v", out)
		}
		// Only its owner may read a detached command's output, as with nohup.out.
		if mode := inside(t, c, "n2", "stat", "-c", "%a", fmt.Sprintf("/tmp/ssi-%d.out", g)); mode.stdout != "600\n" {
			t.Fatalf("detached output file mode: %v; want 600", mode)
		}
	})

	t.Run("tree across nodes", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := c.Exec(ctx, "n1", "ssi", "run", "-n", "n2", "--", "sleep", "77")
		cmd.Dir = "/"
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cmd.Process.Kill(); cmd.Wait() }()
		var sleeper procJSON
		eventually(t, 10*time.Second, "remote sleep in ps", func() bool {
			// Between fork and bookkeeping the child briefly shows its local parent.
			found := findProcs(ps(t, c, "n3"), "n2", "sleep 77")
			if len(found) == 1 {
				sleeper = found[0]
			}
			return len(found) == 1 && sleeper.SSIStarted
		})
		// The JSON fields the issue names, each present.
		var raw []map[string]any
		if r := ssi(t, c, "n3", "ps", "-o", "json", "-n", "n2"); json.Unmarshal([]byte(r.stdout), &raw) != nil || len(raw) == 0 {
			t.Fatalf("ssi ps -o json -n n2: %v", r)
		}
		for _, key := range []string{"gpid", "node", "pid", "ppid_gpid", "user", "uid", "state", "cpu_percent", "rss_bytes", "start_time", "command"} {
			if _, ok := raw[0][key]; !ok {
				t.Errorf("ssi ps -o json: no %q in %v", key, raw[0])
			}
		}
		parent := sleeper.PPIDGPID
		if !sleeper.SSIStarted || parent/10_000_000 != 1 {
			t.Fatalf("remote child's parent is %d, want a GPID on n1: %+v", parent, sleeper)
		}
		var found bool
		for _, p := range ps(t, c, "n3", "-n", "n1") {
			if p.GPID == parent && strings.Contains(p.Command, "ssi run") {
				found = true
			}
		}
		if !found {
			t.Fatalf("parent GPID %d is not the ssi run client on n1", parent)
		}
		if r := ssi(t, c, "n1", "ps", "--tree"); !strings.Contains(r.stdout, "\\_ sleep 77") {
			t.Fatalf("ps --tree does not show the remote child under its client:\n%s", r.stdout)
		}
	})

	t.Run("client killed: no orphans", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := cliCmd(ctx, c, "n1", "run", "-n", "n3", "--", "sh", "-c", "sleep 1001 & setsid sleep 1002 & sleep 1003")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "the tree is running", func() bool {
			return len(findProcs(ps(t, c, "n3", "-n", "n3"), "n3", "sleep 100")) == 3
		})
		cmd.Process.Kill()
		cmd.Wait()
		eventually(t, 15*time.Second, "the whole tree ended", func() bool {
			return len(findProcs(ps(t, c, "n3", "-n", "n3"), "n3", "sleep 100")) == 0
		})
	})

	t.Run("kill across nodes and between users", func(t *testing.T) {
		r := inside(t, c, "n1", "ssi", "run", "--detach", "-n", "n2", "--cwd", "/tmp", "--", "sleep", "300")
		g := strings.TrimSpace(r.stdout)
		// nobody may neither signal nor wait for root's process.
		asNobody := func(args ...string) result {
			return inside(t, c, "n3", append([]string{"setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "ssi"}, args...)...)
		}
		if r := asNobody("run", "-n", "n2", "--", "id", "-u"); r.code != 0 || r.stdout != "65534\n" {
			t.Fatalf("run as nobody: %v", r)
		}
		if r := asNobody("kill", g); r.code == 0 || !strings.Contains(r.stderr, "Operation not permitted") {
			t.Fatalf("nobody killing root's process: %v", r)
		}
		if r := asNobody("wait", g); r.code == 0 || !strings.Contains(r.stderr, "another user") {
			t.Fatalf("nobody waiting for root's process: %v", r)
		}
		if r := asNobody("ps", "-u", "no-such-user"); r.code == 0 || !strings.Contains(r.stderr, "no such user") {
			t.Fatalf("ps -u of an unknown user: %v", r)
		}
		if r := asNobody("token", "create"); r.code == 0 || !strings.Contains(r.stderr, "only root") {
			t.Fatalf("nobody creating a token: %v", r)
		}
		if r := asNobody("agent", "--server", "--data-dir", "/tmp/nobody-agent"); r.code == 0 || !strings.Contains(r.stderr, "must run as root") {
			t.Fatalf("a non-root agent: %v", r)
		}
		// An output file nobody cannot create: ssi wait says so.
		r = asNobody("run", "--detach", "-n", "n2", "--cwd", "/", "--", "echo", "hi")
		if w := asNobody("wait", strings.TrimSpace(r.stdout)); w.code != 126 || !strings.Contains(w.stderr, "cannot write the output file /ssi-") {
			t.Fatalf("detached with an unwritable working directory: %v, then wait: %v", r, w)
		}
		// nobody's own process: nobody may signal it.
		r = asNobody("run", "--detach", "-n", "n2", "--cwd", "/tmp", "--", "sleep", "300")
		mine := strings.TrimSpace(r.stdout)
		if r := asNobody("kill", "-s", "KILL", mine); r.code != 0 {
			t.Fatalf("nobody killing its own process: %v", r)
		}
		if r := asNobody("wait", mine); r.code != 137 {
			t.Fatalf("wait after kill -9: %v", r)
		}
		if r := ssi(t, c, "n1", "kill", "-9", g); r.code != 0 {
			t.Fatalf("root killing: %v", r)
		}
		// -GPID is the process group it leads, as for kill(1): the whole detached job.
		r = inside(t, c, "n1", "ssi", "run", "--detach", "-n", "n2", "--cwd", "/tmp", "--", "sh", "-c", "sleep 1008 & sleep 1009; wait")
		job := strings.TrimSpace(r.stdout)
		eventually(t, 10*time.Second, "the job's sleeps", func() bool {
			list := ps(t, c, "n1", "-n", "n2")
			return len(findProcs(list, "n2", "sleep 1008")) == 1 && len(findProcs(list, "n2", "sleep 1009")) == 1
		})
		if r := asNobody("kill", "-TERM", "-"+job); r.code == 0 || !strings.Contains(r.stderr, "Operation not permitted") {
			t.Fatalf("nobody killing root's process group: %v", r)
		}
		if r := ssi(t, c, "n3", "kill", "-TERM", "--", "-"+job); r.code != 0 {
			t.Fatalf("ssi kill -TERM -- -%s: %v", job, r)
		}
		if w := ssi(t, c, "n1", "wait", job); w.code != 143 {
			t.Fatalf("wait after killing the group: %v; want 143", w)
		}
		eventually(t, 10*time.Second, "the whole group ended", func() bool {
			list := ps(t, c, "n1", "-n", "n2")
			return len(findProcs(list, "n2", "sleep 1008"))+len(findProcs(list, "n2", "sleep 1009")) == 0
		})
		for _, bad := range [][]string{{"kill", "-NOPE", g}, {"kill", "12x"}, {"kill", "90000001"}} {
			if r := ssi(t, c, "n1", bad...); r.code == 0 || strings.Count(strings.TrimSpace(r.stderr), "\n") > 0 {
				t.Errorf("ssi %v: %v; want one error line", bad, r)
			}
		}
	})

	// As many as the issue asks for: 1,000 CLI processes at once, all to one node.
	t.Run("many concurrent sessions", func(t *testing.T) {
		const n = 1000
		var wg sync.WaitGroup
		var mu sync.Mutex
		var failures []string
		for i := range n {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
				defer cancel()
				cmd := cliCmd(ctx, c, "n1", "run", "-n", "n2", "--", "echo", strconv.Itoa(i))
				var errb bytes.Buffer
				cmd.Stderr = &errb
				out, err := cmd.Output()
				if err != nil || strings.TrimSpace(string(out)) != strconv.Itoa(i) {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("%d: %q %v %q", i, out, err, errb.String()))
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if len(failures) > 0 {
			t.Fatalf("%d of %d sessions failed, e.g. %s", len(failures), n, failures[0])
		}
	})

	// Before the last: it stops n3's agent for a moment.
	t.Run("signals that come before the command starts", func(t *testing.T) {
		// With n3's agent stopped, starts there wait for it.
		pid, err := c.Node("n3").AgentPID()
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		defer syscall.Kill(pid, syscall.SIGCONT)
		start := func(args ...string) (*exec.Cmd, chan struct{}) {
			cmd := cliCmd(ctx, c, "n1", append([]string{"run", "-n", "n3", "--"}, args...)...)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan struct{})
			go func() { cmd.Wait(); close(exited) }()
			// Caught from the start: the runtime catches TSTP only once asked to.
			eventually(t, 10*time.Second, "ssi catching signals", func() bool {
				isDefault, err := proc.SignalDisposition("/proc", cmd.Process.Pid, syscall.SIGTSTP)
				return err == nil && !isDefault
			})
			return cmd, exited
		}
		deathBy := func(cmd *exec.Cmd, sig syscall.Signal) {
			t.Helper()
			if ws := cmd.ProcessState.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != sig {
				t.Fatalf("%v; want death by %v", cmd.ProcessState, sig)
			}
		}
		sleeper, sleeperExited := start("sleep", "1010")
		quitter, quitterExited := start("true")
		// One signal waits for the command, to reach it once it runs...
		sleeper.Process.Signal(syscall.SIGTERM)
		quitter.Process.Signal(syscall.SIGINT)
		select {
		case <-sleeperExited:
			t.Fatalf("a SIGTERM before the start ended ssi: %v", sleeper.ProcessState)
		case <-quitterExited:
			t.Fatalf("one SIGINT before the start ended ssi: %v", quitter.ProcessState)
		case <-time.After(300 * time.Millisecond):
		}
		// ...the same again gives the start up, and ssi dies of it.
		quitter.Process.Signal(syscall.SIGINT)
		select {
		case <-quitterExited:
		case <-time.After(10 * time.Second):
			t.Fatal("a second SIGINT did not give up the start")
		}
		deathBy(quitter, syscall.SIGINT)
		// Once n3 answers, the sleep starts and gets its TERM.
		syscall.Kill(pid, syscall.SIGCONT)
		select {
		case <-sleeperExited:
		case <-time.After(20 * time.Second):
			t.Fatal("the TERM that came before the start did not reach the command")
		}
		deathBy(sleeper, syscall.SIGTERM)
	})

	// Last: it takes n3 down.
	t.Run("node lost mid-run", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		detached := strings.TrimSpace(ssi(t, c, "n1", "run", "--detach", "-n", "n3", "--cwd", "/tmp", "--", "sleep", "1000").stdout)
		var waitOut, waitErr bytes.Buffer
		waiter := cliCmd(ctx, c, "n2", "wait", detached)
		waiter.Stdout, waiter.Stderr = &waitOut, &waitErr
		if err := waiter.Start(); err != nil {
			t.Fatal(err)
		}
		cmd := cliCmd(ctx, c, "n1", "run", "-n", "n3", "--", "sh", "-c", "echo started; sleep 1000")
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "remote command started", func() bool { return strings.Contains(out.String(), "started") })
		start := time.Now()
		if err := c.Kill("n3"); err != nil {
			t.Fatal(err)
		}
		cmd.Wait()
		t.Logf("client noticed the lost node after %v", time.Since(start).Round(time.Millisecond))
		if cmd.ProcessState.ExitCode() != 255 || !strings.Contains(errb.String(), "n3") {
			t.Fatalf("exit %d, stderr %q; want 255 and a message naming n3", cmd.ProcessState.ExitCode(), errb.String())
		}
		// ssi wait on a process of the lost node ends as ssi run does.
		waiter.Wait()
		if waiter.ProcessState.ExitCode() != 255 || !strings.Contains(waitErr.String(), "node n3") {
			t.Fatalf("ssi wait %s: exit %d, stderr %q; want 255 and a message naming n3", detached, waiter.ProcessState.ExitCode(), waitErr.String())
		}
		waitState(t, c, "n1", "n3", "dead", 10*time.Second)
		begin := time.Now()
		r := ssi(t, c, "n1", "kill", detached)
		if r.code != 1 || !strings.Contains(r.stderr, "node n3 did not answer (it is down") || time.Since(begin) > 10*time.Second { // it took 15 s before: well under that, with room for a loaded machine
			t.Fatalf("ssi kill %s on a dead node: %v after %v; want one line saying n3 is down, in under 5 s", detached, r, time.Since(begin))
		}
		if r := ssi(t, c, "n1", "wait", detached); r.code != 255 || !strings.Contains(r.stderr, "node n3 is down") {
			t.Fatalf("ssi wait %s on a dead node: %v", detached, r)
		}
	})
}

// stopped reports whether local process pid is stopped (state T in /proc/PID/stat).
func stopped(pid int) bool {
	st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	_, rest, _ := strings.Cut(string(st), ") ")
	return strings.HasPrefix(rest, "T")
}

// waitUnstopped waits for cmd to end, failing the test if it is stopped again or still runs
// after timeout.
func waitUnstopped(t *testing.T, cmd *exec.Cmd, timeout time.Duration) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.After(timeout)
	for {
		select {
		case err := <-done:
			return err
		case <-deadline:
			cmd.Process.Kill()
			<-done
			t.Fatalf("ssi run did not end within %v", timeout)
		case <-time.After(100 * time.Millisecond):
			if stopped(cmd.Process.Pid) {
				// Stopped again after the SIGCONT: give it a moment, a stop seen at
				// the very start may be the old one being left.
				time.Sleep(500 * time.Millisecond)
				if stopped(cmd.Process.Pid) {
					cmd.Process.Kill()
					<-done
					t.Fatal("ssi run stopped again after SIGCONT")
				}
			}
		}
	}
}

// syncBuffer is a bytes.Buffer that a command writes while the test reads it.
// startRemoteScript starts `ssi run -T -n n2 -- sh -c script` from n1, its stdout in the
// returned buffer, and waits until the script has printed "ready". The command is killed when
// the test ends if it still runs.
func startRemoteScript(t *testing.T, c *devcluster.Cluster, script string) (*exec.Cmd, *syncBuffer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	cmd := cliCmd(ctx, c, "n1", "run", "-T", "-n", "n2", "--", "sh", "-c", script)
	out := &syncBuffer{}
	cmd.Stdout = out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "remote script ready", func() bool { return strings.Contains(out.String(), "ready") })
	return cmd, out
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// countingZeros is an endless stdin of zeros that counts what was read from it.
type countingZeros struct{ n atomic.Int64 }

func (z *countingZeros) Read(p []byte) (int, error) {
	clear(p)
	z.n.Add(int64(len(p)))
	return len(p), nil
}
