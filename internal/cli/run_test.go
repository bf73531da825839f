package cli

import (
	"errors"
	"os"
	"os/user"
	"strings"
	"syscall"
	"testing"

	"github.com/ssi-cluster/ssi/internal/buildinfo"
	"github.com/ssi-cluster/ssi/internal/procspace"
)

// TestStdoutWriteError checks how ssi run ends when its own write to stdout fails.
func TestStdoutWriteError(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want exitError
	}{
		{"reader gone", &os.PathError{Op: "write", Path: "/dev/stdout", Err: syscall.EPIPE}, exitError{code: procspace.ExitOutputFailed}},
		{"device full", &os.PathError{Op: "write", Path: "/dev/stdout", Err: syscall.ENOSPC},
			exitError{code: 1, msg: "writing standard output: no space left on device"}},
		{"quota", &os.PathError{Op: "write", Path: "/dev/stdout", Err: syscall.EDQUOT},
			exitError{code: 1, msg: "writing standard output: disk quota exceeded"}},
		{"not an errno", errors.New("odd"), exitError{code: procspace.ExitOutputFailed}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := stdoutWriteError(tt.err); got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestRshTarget(t *testing.T) {
	me := func() (*user.User, error) { return &user.User{Username: "alice", Uid: "1000"}, nil }
	for _, tt := range []struct {
		host, login, want, wantErr string
	}{
		{"n2", "", "n2", ""},
		{"alice@n2", "", "n2", ""},
		{"n2", "alice", "n2", ""},
		{"n2", " alice", "n2", ""}, // clush's "-l alice", one word
		{"n2", "1000", "n2", ""},
		{"alice@n2", "alice", "n2", ""},
		{"bob@n2", "", "", "-l bob: ssi rsh runs commands as you (alice), never as another user"},
		{"n2", "root", "", "-l root: ssi rsh runs commands as you (alice)"},
		{"bob@n2", "alice", "", "-l alice and bob@n2 name two users"},
		{"", "", "", "ssi rsh needs a host"},
		{"alice@", "", "", "ssi rsh needs a host"},
	} {
		got, err := rshTarget(tt.host, tt.login, me)
		if got != tt.want || (err == nil) != (tt.wantErr == "") || (err != nil && !strings.HasPrefix(err.Error(), tt.wantErr)) {
			t.Errorf("rshTarget(%q, %q) = %q, %v; want %q, %q", tt.host, tt.login, got, err, tt.want, tt.wantErr)
		}
	}
}

// The options launchers give ssh are accepted: ssi rsh gets as far as asking its agent.
func TestRshTakesSSHOptions(t *testing.T) {
	for _, args := range [][]string{
		{"rsh", "-a", "-x", "-l " + currentName(t), "-oConnectTimeout=10", "-oBatchMode=yes", "n2", "uptime"}, // clush
		{"rsh", "-x", "n2", "hostname"}, // MPICH's hydra
		{"rsh", "-T", "-n", "-q", "-p", "22", "-o", "StrictHostKeyChecking=no", "-46C", "n2", "true"},
		{"rsh", "--", "n2", "true"},
	} {
		args = append([]string{"--socket", "/nonexistent/ssi.sock"}, args...)
		var stdout, stderr strings.Builder
		code := execute(NewRoot(buildinfo.Info{Version: "test"}, args, nil), args, &stdout, &stderr)
		if code != 1 || !strings.HasPrefix(stderr.String(), "ssi: no ssi agent at /nonexistent/ssi.sock") {
			t.Errorf("ssi %v: exit %d, stderr %q; want it to reach the agent", args, code, stderr.String())
		}
	}
}

func currentName(t *testing.T) string {
	u, err := user.Current()
	if err != nil {
		t.Skip(err)
	}
	return u.Username
}
