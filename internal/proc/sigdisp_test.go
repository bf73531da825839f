package proc

import (
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
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
