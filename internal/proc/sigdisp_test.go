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
