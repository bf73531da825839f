package proc

import (
	"os"
	"slices"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

func TestWithRlimits(t *testing.T) {
	if prlimitPath() == "" {
		t.Skip("no prlimit(1) here")
	}
	own, err := RlimitsOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	argv := []string{"sleep", "1"}
	// The agent's own limits: nothing to set, no wrapper.
	if path, got, err := withRlimits(own, "/bin/sleep", argv); err != nil || path != "/bin/sleep" || !slices.Equal(got, argv) {
		t.Fatalf("same limits: %q %q %v; want the command as it was", path, got, err)
	}
	var core unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_CORE, &core); err != nil {
		t.Fatal(err)
	}
	if core.Max == 0 {
		t.Skip("core limit 0 here: nothing lower to ask for")
	}
	lower := core.Max / 2
	path, got, err := withRlimits([]Rlimit{{Resource: unix.RLIMIT_CORE, Cur: lower, Max: unix.RLIM_INFINITY}}, "/bin/sleep", argv)
	want := []string{"prlimit", "--core=" + strconv.FormatUint(lower, 10) + ":" + rlimitValue(core.Max), "--", "sleep", "1"}
	if err != nil || path != prlimitPath() || !slices.Equal(got, want) {
		t.Fatalf("a lower core limit: %q %q %v; want %q (a hard limit above the agent's lowered to it)", path, got, err, want)
	}
}

func TestRlimitsOfMatchesGetrlimit(t *testing.T) {
	got, err := RlimitsOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range got {
		var want unix.Rlimit
		if err := unix.Getrlimit(l.Resource, &want); err != nil {
			t.Fatal(err)
		}
		if l.Cur != want.Cur || l.Max != want.Max {
			t.Errorf("limit %d: %d:%d from /proc, %d:%d from getrlimit", l.Resource, l.Cur, l.Max, want.Cur, want.Max)
		}
	}
}
