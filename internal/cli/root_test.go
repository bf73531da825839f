package cli

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/spf13/cobra"

	"github.com/ssi-cluster/ssi/internal/buildinfo"
)

// Every runnable command explains itself with a short line and an example.
func TestEveryCommandHasHelpAndExample(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if sub.Hidden || sub.Name() == "help" {
				continue
			}
			if sub.Short == "" {
				t.Errorf("%q has no Short description", sub.CommandPath())
			}
			if sub.Runnable() && strings.TrimSpace(sub.Example) == "" {
				t.Errorf("%q has no Example", sub.CommandPath())
			}
			walk(sub)
		}
	}
	walk(NewRoot(buildinfo.Info{Version: "test"}, nil, nil))
}

func TestParseKillArgs(t *testing.T) {
	tests := []struct {
		args    []string
		sig     int
		gpids   int
		list    bool
		wantErr string
	}{
		{[]string{"20001234"}, 15, 1, false, ""},
		{[]string{"-9", "20001234", "30000001"}, 9, 2, false, ""},
		{[]string{"-KILL", "20001234"}, 9, 1, false, ""},
		{[]string{"-s", "sigusr1", "20001234"}, 10, 1, false, ""},
		{[]string{"-s", "HUP", "--", "20001234"}, 1, 1, false, ""},
		{[]string{"-l"}, 0, 0, true, ""},
		{[]string{"-NOPE", "1"}, 0, 0, false, "unknown signal"},
		{[]string{"-s"}, 0, 0, false, "-s needs"},
		{[]string{"abc"}, 0, 0, false, "is not a GPID"},
		{[]string{"-99", "1"}, 0, 0, false, "out of range"},
		{[]string{}, 0, 0, false, "no GPID given"},
	}
	for _, tt := range tests {
		sig, gpids, list, err := parseKillArgs(tt.args)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%v: err %v, want %q", tt.args, err, tt.wantErr)
			}
			continue
		}
		if err != nil || int(sig) != tt.sig || len(gpids) != tt.gpids || list != tt.list {
			t.Errorf("%v: got %d %v %v %v", tt.args, sig, gpids, list, err)
		}
	}
}

func TestTranslateSignals(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		want    string
		wantErr string
	}{
		{[]string{"9"}, "KILL", ""},
		{[]string{"137"}, "KILL", ""}, // an exit status, as bash's kill -l takes
		{[]string{"TERM", "sigusr1", "SIGHUP"}, "15 10 1", ""},
		{[]string{"0"}, "", "0 is not a signal number"},
		{[]string{"99"}, "", "99 is not a signal number"},
		{[]string{"NOPE"}, "", "unknown signal"},
	} {
		got, err := translateSignals(tc.args)
		if strings.Join(got, " ") != tc.want || (tc.wantErr == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("kill -l %v = %q, %v; want %q, %q", tc.args, got, err, tc.want, tc.wantErr)
		}
	}
}

// cobra's own argument and flag errors name the fix: the command's --help.
func TestUsageErrorsPointToHelp(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"wait"}, "ssi wait needs the GPID of a process started with ssi run, e.g. ssi wait 20004321: see ssi wait --help"},
		{[]string{"ps", "extra"}, `unknown command "extra" for "ssi ps": see ssi ps --help`},
		{[]string{"nodes", "--nod"}, "unknown flag: --nod: see ssi nodes --help"},
		{[]string{"token", "create", "--ttl", "soon"}, "see ssi token create --help"},
		{[]string{"submit"}, "ssi submit needs a command after -- or a script: see ssi submit --help"},
		{[]string{"submit", "--priority", "x", "--", "true"}, `--priority "x" is not a whole number: see ssi submit --help`},
		{[]string{"submit", "-N", "99999999999999999999", "--", "true"}, "--nodes 99999999999999999999 is out of range: see ssi submit --help"},
		{[]string{"submit", "--hold=maybe", "--", "true"}, "--hold=maybe: give true or false, or just --hold: see ssi submit --help"},
		{[]string{"submit", "-p", "debug", "--", "true"}, "unknown shorthand flag: 'p' in -p (Slurm's option: ssi's is --queue (-q)): see ssi submit --help"},
		{[]string{"alloc", "--ntasks=2"}, "unknown flag: --ntasks (Slurm's option: ssi's is --tasks (-n)): see ssi alloc --help"},
		{[]string{"jobs", "--partition", "x"}, "unknown flag: --partition: see ssi jobs --help"},
	} {
		root := NewRoot(buildinfo.Info{Version: "test"}, nil, nil)
		root.SetArgs(tc.args)
		root.SetOut(io.Discard)
		root.SetErr(io.Discard)
		err := root.Execute()
		if err == nil || err.Error() != tc.want && !strings.HasSuffix(err.Error(), tc.want) {
			t.Errorf("ssi %v: %v, want %q", tc.args, err, tc.want)
		}
		if err != nil && strings.Count(err.Error(), "--help") != 1 {
			t.Errorf("ssi %v: %q points to --help more than once", tc.args, err)
		}
	}
}

// fullWriter fails every write as a full disk (or /dev/full) does.
type fullWriter struct{}

func (fullWriter) Write([]byte) (int, error) {
	return 0, &fs.PathError{Op: "write", Path: "/dev/stdout", Err: syscall.ENOSPC}
}

// Output that cannot be written is a failure, whichever way a command prints it: a script's
// "ssi token create > token" on a full disk must not exit 0 with an empty file.
func TestOutputWriteErrorFails(t *testing.T) {
	for _, args := range [][]string{
		{"version"},
		{"kill", "-l"},
		{"kill", "-l", "9"},
		{"nodes", "--help"},
	} {
		var stderr strings.Builder
		code := execute(NewRoot(buildinfo.Info{Version: "test"}, args, nil), args, fullWriter{}, &stderr)
		if want := "ssi: writing standard output: no space left on device\n"; code != 1 || stderr.String() != want {
			t.Errorf("ssi %v > /dev/full: exit %d, stderr %q; want 1 and %q", args, code, stderr.String(), want)
		}
		var stdout bytes.Buffer
		stderr.Reset()
		if code := execute(NewRoot(buildinfo.Info{Version: "test"}, args, nil), args, &stdout, &stderr); code != 0 || stdout.Len() == 0 || stderr.Len() != 0 {
			t.Errorf("ssi %v: exit %d, stdout %q, stderr %q; want 0 and output", args, code, stdout.String(), stderr.String())
		}
	}
}

// A word that names no command is an error with one line naming the fix, at every level and
// for help; a group alone shows its help.
func TestUnknownCommandsFail(t *testing.T) {
	for _, tt := range []struct {
		args      []string
		code      int
		stderr    string // the whole of it
		stdoutHas string
	}{
		{[]string{"token", "crate"}, 1, "ssi: unknown command \"crate\" for \"ssi token\": see ssi token --help\n", ""},
		{[]string{"completion", "tcsh"}, 1, "ssi: unknown command \"tcsh\" for \"ssi completion\": see ssi completion --help\n", ""},
		{[]string{"help", "nosuch"}, 1, "ssi: no command \"nosuch\" to help with: see ssi --help for the commands\n", ""},
		{[]string{"help", "token", "crate"}, 1, "ssi: no command \"token crate\" to help with: see ssi --help for the commands\n", ""},
		{[]string{"kil", "1"}, 1, "ssi: unknown command \"kil\" for \"ssi\" (did you mean kill?): see ssi --help\n", ""},
		{[]string{"token"}, 0, "", "ssi token [command]"},
		{[]string{"help", "token", "create"}, 0, "", "ssi token create [flags]"},
		{[]string{"help"}, 0, "", "ssi [command]"},
	} {
		var stdout, stderr strings.Builder
		code := execute(NewRoot(buildinfo.Info{Version: "test"}, tt.args, nil), tt.args, &stdout, &stderr)
		if code != tt.code || stderr.String() != tt.stderr || !strings.Contains(stdout.String(), tt.stdoutHas) {
			t.Errorf("ssi %v: exit %d, stderr %q, stdout %.80q; want exit %d, stderr %q, stdout with %q",
				tt.args, code, stderr.String(), stdout.String(), tt.code, tt.stderr, tt.stdoutHas)
		}
	}
}

// Wrong arguments are refused before any agent is asked, in one line that says what to give.
func TestArgumentErrors(t *testing.T) {
	for _, tt := range []struct {
		args   []string
		stderr string
	}{
		{[]string{"token", "create", "--ttl", "1x"}, "ssi: --ttl \"1x\" is not a duration: give a number with a unit, e.g. 90s, 30m or 24h: see ssi token create --help\n"},
		{[]string{"token", "create", "--ttl", "5"}, "ssi: --ttl \"5\" is not a duration: give a number with a unit, e.g. 90s, 30m or 24h: see ssi token create --help\n"},
		{[]string{"wait"}, "ssi: ssi wait needs the GPID of a process started with ssi run, e.g. ssi wait 20004321: see ssi wait --help\n"},
		{[]string{"run", "-n", "", "--", "true"}, "ssi: -n/--node is empty: give a node name or address (see ssi nodes), or leave -n out\n"},
		{[]string{"run", "--node=", "--detach", "--", "true"}, "ssi: -n/--node is empty: give a node name or address (see ssi nodes), or leave -n out\n"},
		{[]string{"ps", "-n", ""}, "ssi: -n/--node is empty: give a node name or address (see ssi nodes), or leave -n out\n"},
		{[]string{"ps", "-u", ""}, "ssi: -u/--user is empty: give a user name or uid, or leave -u out\n"},
		{[]string{"rsh", "", "true"}, "ssi: ssi rsh needs a host: give a node name or address (see ssi nodes)\n"},
		{[]string{"submit", "--nodes", "x", "--", "true"}, ""}, // checked below: still worded by flagValueError
	} {
		var stdout, stderr strings.Builder
		code := execute(NewRoot(buildinfo.Info{Version: "test"}, tt.args, nil), tt.args, &stdout, &stderr)
		if tt.stderr == "" {
			if code != 1 || !strings.Contains(stderr.String(), "is not a whole number") {
				t.Errorf("ssi %v: exit %d, stderr %q; want 1 and \"is not a whole number\"", tt.args, code, stderr.String())
			}
			continue
		}
		if code != 1 || stderr.String() != tt.stderr {
			t.Errorf("ssi %v: exit %d, stderr %q; want 1 and %q", tt.args, code, stderr.String(), tt.stderr)
		}
	}
}

// A --socket that is not a socket is named as such, not as an agent that is down.
func TestSocketThatIsNotASocket(t *testing.T) {
	dir := t.TempDir()
	file := dir + "/file"
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ path, kind string }{{dir, "directory"}, {file, "regular file"}} {
		for _, cmd := range [][]string{{"nodes"}, {"run", "--", "true"}, {"kill", "10000001"}} {
			args := append([]string{"--socket", tt.path}, cmd...)
			var stdout, stderr strings.Builder
			code := execute(NewRoot(buildinfo.Info{Version: "test"}, args, nil), args, &stdout, &stderr)
			want := "ssi: " + tt.path + " is not a socket but a " + tt.kind + ": point --socket / SSI_SOCKET at the agent's socket (e.g. /run/ssi/ssi.sock)\n"
			if code != 1 || stderr.String() != want {
				t.Errorf("ssi %v: exit %d, stderr %q; want 1 and %q", args, code, stderr.String(), want)
			}
		}
	}
}

// A socket whose path is longer than a socket address holds (ssi dev under a deep --dir) is
// still reached.
func TestDialLongSocketPath(t *testing.T) {
	dir := t.TempDir()
	for len(dir) < 120 {
		dir = filepath.Join(dir, "a-rather-long-directory-name")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	l, err := net.Listen("unix", fmt.Sprintf("/proc/self/fd/%d/ssi.sock", d.Fd())) // bind has the same limit
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Close()
		}
	}()
	g := &Globals{socket: filepath.Join(dir, "ssi.sock")}
	conn, err := g.dialAgent(t.Context(), nil, nil)
	if err != nil {
		t.Fatalf("dialing a %d-byte socket path: %v", len(g.socket), err)
	}
	conn.Close()
}
