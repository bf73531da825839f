package proc

import (
	"context"
	"regexp"
	"syscall"
	"testing"
	"time"
)

// Ctrl-Z typed on the command's terminal stops it, as at a local terminal, although its
// process group is orphaned; other keys reach it as typed, and with the terminal raw
// (no ISIG) Ctrl-Z is a byte like any other.
func TestTypeKeysSuspend(t *testing.T) {
	requireRoot(t)
	spec := rootSpec("sh", "-c", `echo ready; read a; echo "got $a"; stty raw -echo; echo raw; dd bs=1 count=1 2>/dev/null | od -An -c`)
	spec.TTY = true
	p, err := Start(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	exited := make(chan int, 1)
	go func() { code, _ := p.Wait(); exited <- code }()
	out := readPTY(p.TTY())
	out.waitFor(t, regexp.MustCompile(`ready`))
	if err := p.TypeKeys([]byte("\x1a"), "/proc"); err != nil {
		t.Fatal(err)
	}
	st := jobStateAfter(t, p, "Ctrl-Z", func(s JobState) bool { return s.Stopped })
	if st.Signal != syscall.SIGSTOP {
		t.Errorf("stopped by %v, want SIGSTOP (SignalJob's stop for a TSTP left at its default)", st.Signal)
	}
	if err := p.SignalJob(syscall.SIGCONT, "/proc"); err != nil {
		t.Fatal(err)
	}
	if err := p.TypeKeys([]byte("cd\n"), "/proc"); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, regexp.MustCompile(`got cd`))
	out.waitFor(t, regexp.MustCompile(`raw`))
	if err := p.TypeKeys([]byte("\x1a"), "/proc"); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, regexp.MustCompile(`032`))
	select {
	case code := <-exited:
		if code != 0 {
			t.Fatalf("exit %d", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the command did not end")
	}
	if st := p.Job(); st.Stops != 1 {
		t.Errorf("%+v: Ctrl-Z on a raw terminal stopped the command", st)
	}
}
