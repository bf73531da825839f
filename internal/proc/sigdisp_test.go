package proc

import (
	"context"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseSignalDisposition(t *testing.T) {
	// SIGTSTP is 20: bit 19, 0x80000. SIGINT is 2: bit 1, 0x2.
	const status = "Name:\tsh\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000000004\nSigCgt:\t0000000000080002\n"
	for _, tc := range []struct {
		sig         syscall.Signal
		wantDefault bool
	}{
		{syscall.SIGTSTP, false}, // caught
		{syscall.SIGINT, false},  // caught
		{syscall.SIGQUIT, false}, // ignored (bit 2)
		{syscall.SIGTTIN, true},
		{syscall.SIGTERM, true},
	} {
		got, err := parseSignalDisposition(strings.NewReader(status), tc.sig)
		if err != nil || got != tc.wantDefault {
			t.Errorf("%v: default=%v, %v; want %v", tc.sig, got, err, tc.wantDefault)
		}
	}
	if _, err := parseSignalDisposition(strings.NewReader("SigCgt:\tzz\nSigIgn:\t0\n"), syscall.SIGTSTP); err == nil {
		t.Error("a malformed mask passed")
	}
	if _, err := parseSignalDisposition(strings.NewReader("Name:\tx\n"), syscall.SIGTSTP); err == nil {
		t.Error("a status without the masks passed")
	}
}

// The real file of this test process: a signal it catches is not at its default.
func TestSignalDispositionOfSelf(t *testing.T) {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGUSR2)
	defer signal.Stop(c)
	if def, err := SignalDisposition("/proc", os.Getpid(), syscall.SIGUSR2); err != nil || def {
		t.Fatalf("SIGUSR2 with a handler: default=%v, %v", def, err)
	}
	if def, err := SignalDisposition("/proc", os.Getpid(), syscall.SIGTTIN); err != nil || !def {
		t.Fatalf("SIGTTIN untouched: default=%v, %v", def, err)
	}
}

// procState is the state letter of pid in /proc/<pid>/stat ("S", "T", ...).
func procState(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "gone"
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return rest[:1]
}

// SignalJob reaches the command's process group as a terminal's keys reach a foreground
// job: the shell and the pipeline it waits for, not a process that left the group.
func TestSignalJob(t *testing.T) {
	requireRoot(t)
	// "sleep 1001 | sleep 1002" stays in the shell's group; setsid's sleep 1003 does not.
	p, err := Start(context.Background(), rootSpec("sh", "-c", "setsid sleep 1003 & sleep 1001 | sleep 1002; echo after"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var job, outside []int
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		// Until setsid has run, its process is still in the shell's group.
		job, outside = nil, nil
		for _, pid := range waitForMembers(t, p, 4) {
			if pgid, _ := syscall.Getpgid(pid); pgid == p.PID() {
				job = append(job, pid)
			} else {
				outside = append(outside, pid)
			}
		}
		if len(job) == 3 && len(outside) == 1 {
			break
		}
	}
	if len(job) != 3 || len(outside) != 1 {
		t.Fatalf("job %v, outside %v; want the shell and two sleeps in the job", job, outside)
	}
	// Ctrl-Z: every process of the job stops (none catches TSTP), the other does not.
	if err := p.SignalJob(syscall.SIGTSTP, "/proc"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range job {
		for procState(t, pid) != "T" && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if st := procState(t, pid); st != "T" {
			t.Errorf("pid %d of the job is %s after TSTP, want stopped", pid, st)
		}
	}
	if st := procState(t, outside[0]); st == "T" {
		t.Errorf("pid %d outside the job stopped too", outside[0])
	}
	if err := p.SignalJob(syscall.SIGCONT, "/proc"); err != nil {
		t.Fatal(err)
	}
	// Ctrl-C: the pipeline dies of it, and so does the shell waiting for it, as at a terminal.
	if err := p.SignalJob(syscall.SIGINT, "/proc"); err != nil {
		t.Fatal(err)
	}
	if code, err := p.Wait(); code != 128+int(syscall.SIGINT) || err != nil {
		t.Errorf("Wait = %d, %v, want 130", code, err)
	}
	if !alive(outside[0]) {
		t.Errorf("pid %d outside the job was ended by the job's INT", outside[0])
	}
}

// jobStateAfter waits, while Wait runs, until the job state satisfies ok.
func jobStateAfter(t *testing.T, p *Process, what string, ok func(JobState) bool) JobState {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		if st := p.Job(); ok(st) {
			return st
		}
		select {
		case <-p.JobChanged():
		case <-timeout:
			t.Fatalf("%s: job state %+v after 10 s", what, p.Job())
		}
	}
}

// The command's stops and continuations are seen while it is waited for, whoever caused
// them, and its exit is still collected with its status.
func TestJobStateFollowsStops(t *testing.T) {
	requireRoot(t)
	p, err := Start(context.Background(), rootSpec("sh", "-c", "kill -STOP $$; kill -STOP $$; exit 7"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	exited := make(chan int, 1)
	go func() { code, _ := p.Wait(); exited <- code }()

	st := jobStateAfter(t, p, "the command's own SIGSTOP", func(s JobState) bool { return s.Stopped })
	if st.Signal != syscall.SIGSTOP || st.Stops != 1 {
		t.Fatalf("after kill -STOP $$: %+v, want stopped by SIGSTOP, one stop", st)
	}
	// Continued by a SIGCONT from elsewhere: seen, but not counted as the session's.
	if err := p.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	st = jobStateAfter(t, p, "the second stop", func(s JobState) bool { return s.Stops == 2 && s.Stopped })
	if st.Continues != 0 {
		t.Fatalf("%+v: a SIGCONT from outside counted as passed on", st)
	}
	// Continued through SignalJob: counted, and the stop it ends is over at once.
	if err := p.SignalJob(syscall.SIGCONT, "/proc"); err != nil {
		t.Fatal(err)
	}
	if st := p.Job(); st.Stopped || st.Continues != 1 {
		t.Fatalf("after SignalJob(SIGCONT): %+v, want running, one SIGCONT counted", st)
	}
	select {
	case code := <-exited:
		if code != 7 {
			t.Fatalf("Wait = %d, want 7", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the command did not end after SIGCONT; state %s", procState(t, p.PID()))
	}
	if st := p.Job(); st.Stopped || st.Stops != 2 {
		t.Fatalf("after the exit: %+v", st)
	}
}
