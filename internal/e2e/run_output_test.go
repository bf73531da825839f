package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRunStdoutFull runs `ssi run -- yes > /dev/full` on the same and on another node: like
// local yes, ssi reports the failed write in one line and exits 1, and the remote yes ends as
// it would for a closed reader. Then the same with a stderr whose reader is gone.
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

	// A stderr whose reader is gone: as a local writer would die of SIGPIPE rather than
	// write for ever, ssi dies of it, and the remote writer ends.
	for _, node := range []string{"n1", "n2"} {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		r.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd := cliCmd(ctx, c, "n1", "run", "-n", node, "--", "sh", "-c", "while :; do echo stderr-writer >&2; done")
		cmd.Stderr = w
		err = cmd.Run()
		cancel()
		w.Close()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGPIPE {
			t.Fatalf("ssi run -n %s with stderr's reader gone: %v (%v), want death by SIGPIPE", node, cmd.ProcessState, err)
		}
		eventually(t, 10*time.Second, "the stderr writer on "+node+" to end", func() bool {
			r := ssi(t, c, "n1", "ps")
			return r.code == 0 && !strings.Contains(r.stdout, "stderr-writer")
		})
	}
}
