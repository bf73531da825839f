package procspace

import (
	"slices"
	"testing"

	"github.com/ssi-cluster/ssi/internal/proc"
)

// TestLoginShellKeepsTerminalAndLocale checks that ssi rsh passes on what ssh does of the
// caller's environment: TERM with a terminal, LANG and LC_*, and nothing else.
func TestLoginShellKeepsTerminalAndLocale(t *testing.T) {
	caller := []string{"TERM=xterm-256color", "LANG=fr_FR.UTF-8", "LC_TIME=de_DE.UTF-8", "SECRET=x", "PATH=/opt/bin"}
	for _, tty := range []bool{true, false} {
		spec := proc.Spec{UID: 0, TTY: tty}
		if err := asLoginShell(&spec, []string{"echo", "hi"}, caller); err != nil {
			t.Fatal(err)
		}
		for _, kv := range []string{"LANG=fr_FR.UTF-8", "LC_TIME=de_DE.UTF-8"} {
			if !slices.Contains(spec.Env, kv) {
				t.Errorf("tty %v: %s not passed on: %q", tty, kv, spec.Env)
			}
		}
		if got := slices.Contains(spec.Env, "TERM=xterm-256color"); got != tty {
			t.Errorf("tty %v: TERM passed on: %v, want %v (%q)", tty, got, tty, spec.Env)
		}
		if slices.Contains(spec.Env, "SECRET=x") || slices.Contains(spec.Env, "PATH=/opt/bin") {
			t.Errorf("tty %v: the caller's other variables passed on: %q", tty, spec.Env)
		}
	}
}

// TestRlimitsTravelWhole checks that a caller's limits reach the command as read, the
// unknown soft limit on open files included (which the command would otherwise get as the
// hard one, raised by the Go client).
func TestRlimitsTravelWhole(t *testing.T) {
	limits := []proc.Rlimit{
		{Resource: 4, Cur: 0, Max: 1 << 20},
		{Resource: 7, Cur: 1 << 20, Max: 1 << 20, CurUnknown: true},
		{Resource: 3, Cur: 8 << 20, Max: 1<<64 - 1},
	}
	if got := rlimitsOfPB(rlimitsPB(limits)); !slices.Equal(got, limits) {
		t.Errorf("limits %+v arrive as %+v", limits, got)
	}
}
