package cli

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSignalRanges checks that ssi kill (0-64, as kill(1)) and ssi cancel -s (1-64) accept
// what they say and name their own range when they refuse.
func TestSignalRanges(t *testing.T) {
	tests := []struct {
		arg     string
		lo      int
		cmd     string
		want    unix.Signal
		wantErr string
	}{
		{"0", 0, "ssi kill", 0, ""},
		{"64", 0, "ssi kill", 64, ""},
		{"usr1", 0, "ssi kill", unix.SIGUSR1, ""},
		{"65", 0, "ssi kill", 0, "signal 65 is out of range for ssi kill: use 0-64"},
		{"-1", 0, "ssi kill", 0, "signal -1 is out of range for ssi kill: use 0-64"},
		{"BOGUS", 0, "ssi kill", 0, `unknown signal "BOGUS" for ssi kill: use a name such as TERM, KILL or HUP, or a number 0-64`},
		{"0", 1, "ssi cancel -s", 0, "ssi cancel -s cannot use signal 0 (it only tests that a process exists): use 1-64"},
		{"65", 1, "ssi cancel -s", 0, "signal 65 is out of range for ssi cancel -s: use 1-64"},
		{"BOGUS", 1, "ssi cancel -s", 0, "or a number 1-64"},
		{"SIGTERM", 1, "ssi cancel -s", unix.SIGTERM, ""},
		{"1", 1, "ssi cancel -s", 1, ""},
	}
	for _, tt := range tests {
		t.Run(tt.cmd+" "+tt.arg, func(t *testing.T) {
			got, err := parseSignalFrom(tt.arg, tt.lo, tt.cmd)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v, %v; want an error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func TestRealTimeSignalNames(t *testing.T) {
	for _, tt := range []struct {
		n    int
		name string
	}{{34, "RTMIN"}, {35, "RTMIN+1"}, {49, "RTMIN+15"}, {50, "RTMAX-14"}, {63, "RTMAX-1"}, {64, "RTMAX"}, {9, "KILL"}, {33, ""}, {32, ""}} {
		if got := signalName(unix.Signal(tt.n)); got != tt.name {
			t.Errorf("signalName(%d) = %q, want %q", tt.n, got, tt.name)
		}
		if tt.name == "" {
			continue
		}
		for _, spelled := range []string{tt.name, "SIG" + tt.name, strings.ToLower(tt.name)} {
			if got := signalByName(spelled); int(got) != tt.n {
				t.Errorf("signalByName(%q) = %d, want %d", spelled, got, tt.n)
			}
		}
	}
	for _, bad := range []string{"RTMIN+31", "RTMAX-31", "RTMIN-1", "RTMAX+1", "RTMIN+", "RTMIN++1", "RTMIN+-1", "RT"} {
		if got := signalByName(bad); got != 0 {
			t.Errorf("signalByName(%q) = %d, want none", bad, got)
		}
	}
}

// TestKillArgs checks the forms of kill(1) and its order of errors: a bad signal first.
func TestKillArgs(t *testing.T) {
	for _, tt := range []struct {
		args    []string
		sig     unix.Signal
		wantErr string
	}{
		{[]string{"20000001"}, unix.SIGTERM, ""},
		{[]string{"-9", "20000001"}, unix.SIGKILL, ""},
		{[]string{"-KILL", "20000001"}, unix.SIGKILL, ""},
		{[]string{"-s", "HUP", "20000001"}, unix.SIGHUP, ""},
		{[]string{"-sHUP", "20000001"}, unix.SIGHUP, ""},
		{[]string{"-s9", "20000001"}, unix.SIGKILL, ""},
		{[]string{"-n", "9", "20000001"}, unix.SIGKILL, ""},
		{[]string{"-n9", "20000001"}, unix.SIGKILL, ""},
		{[]string{"--signal", "USR1", "20000001"}, unix.SIGUSR1, ""},
		{[]string{"--signal=USR1", "20000001"}, unix.SIGUSR1, ""},
		{[]string{"-stop", "20000001"}, unix.SIGSTOP, ""},
		{[]string{"-SYS", "20000001"}, unix.SIGSYS, ""},
		{[]string{"--", "20000001"}, unix.SIGTERM, ""},
		{[]string{"12x", "-BOGUS"}, 0, "unknown signal"},
		{[]string{"12x", "-s", "BOGUS"}, 0, "unknown signal"},
		{[]string{"12x", "-9"}, 0, "is not a GPID"},
		{[]string{"-sBOGUS", "20000001"}, 0, "unknown signal"},
		{[]string{"-TERM", "-20000001"}, unix.SIGTERM, ""},
		{[]string{"--", "-20000001"}, unix.SIGTERM, ""},
		{[]string{"-20000001"}, 0, "out of range"},
	} {
		sig, gpids, _, err := parseKillArgs(tt.args)
		if err == nil && strings.HasPrefix(tt.args[len(tt.args)-1], "-") && (len(gpids) != 1 || gpids[0] != -20000001) {
			t.Errorf("%q: GPIDs %v; want the process group -20000001", tt.args, gpids)
		}
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%q: %v, %v; want an error containing %q", tt.args, sig, err, tt.wantErr)
			}
			continue
		}
		if err != nil || sig != tt.sig {
			t.Errorf("%q: %v, %v; want %v", tt.args, sig, err, tt.sig)
		}
	}
}
