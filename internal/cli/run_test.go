package cli

import (
	"errors"
	"os"
	"syscall"
	"testing"

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
