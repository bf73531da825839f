package proc

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

func TestMergeEnv(t *testing.T) {
	tests := []struct {
		env, extra, want []string
	}{
		{env: nil, extra: []string{"SSI_NODE=1"}, want: []string{"SSI_NODE=1"}},
		{env: []string{"A=1", "B=2", "A=3"}, want: []string{"A=3", "B=2"}},
		{env: []string{"SSI_NODE=9", "HOME=/h"}, extra: []string{"SSI_NODE=1"}, want: []string{"SSI_NODE=1", "HOME=/h"}},
		{env: []string{"NOVALUE", "X="}, extra: []string{"NOVALUE=v"}, want: []string{"NOVALUE=v", "X="}},
	}
	for _, tt := range tests {
		if got := mergeEnv(tt.env, tt.extra...); !slices.Equal(got, tt.want) {
			t.Errorf("mergeEnv(%q, %q) = %q, want %q", tt.env, tt.extra, got, tt.want)
		}
	}
	env := []string{"PATH=/a", "PATH=/b"}
	if v, ok := lookupEnv(env, "PATH"); !ok || v != "/b" {
		t.Errorf("lookupEnv = %q, %v, want the last PATH", v, ok)
	}
}

func TestResolveCommand(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, mode os.FileMode) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, nil, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		return path
	}
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	write("bin/tool", 0o755)
	write("bin/ownerOnly", 0o700)
	write("bin/plain", 0o644)
	write("local", 0o755)
	owner := uint32(os.Geteuid())
	st, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	group := st.Sys().(*syscall.Stat_t).Gid
	write("bin/groupOnly", 0o710)

	stranger := caller{uid: owner + 1000, gids: []uint32{group + 1000}}
	groupMember := caller{uid: owner + 1000, gids: []uint32{group + 1000, group}}
	fileOwner := caller{uid: owner, gids: []uint32{group + 1000}}
	root := caller{uid: 0, gids: []uint32{0}, isRoot: true}

	tests := []struct {
		name, cmd, path string
		who             caller
		want            string
		wantCode        int
	}{
		{name: "found in PATH", cmd: "tool", path: "/nonexistent:" + bin, who: stranger, want: filepath.Join(bin, "tool")},
		{name: "empty PATH element is the working directory", cmd: "local", path: ":/nonexistent", who: stranger, want: filepath.Join(dir, "local")},
		{name: "relative PATH element is under the working directory", cmd: "tool", path: "bin", who: stranger, want: filepath.Join(dir, "bin/tool")},
		{name: "relative path with slash", cmd: "./local", who: stranger, want: filepath.Join(dir, "local")},
		{name: "not found", cmd: "nope", path: bin, who: stranger, wantCode: 127},
		{name: "owner-only file, stranger", cmd: "ownerOnly", path: bin, who: stranger, wantCode: 126},
		{name: "owner-only file, owner", cmd: "ownerOnly", path: bin, who: fileOwner, want: filepath.Join(bin, "ownerOnly")},
		{name: "owner-only file, root", cmd: "ownerOnly", path: bin, who: root, want: filepath.Join(bin, "ownerOnly")},
		{name: "group file, member", cmd: "groupOnly", path: bin, who: groupMember, want: filepath.Join(bin, "groupOnly")},
		{name: "group file, stranger", cmd: "groupOnly", path: bin, who: stranger, wantCode: 126},
		{name: "no execute bit even for root", cmd: filepath.Join(bin, "plain"), who: root, wantCode: 126},
		{name: "path through a file", cmd: filepath.Join(bin, "plain", "x"), who: root, wantCode: 126},
		{name: "directory", cmd: bin, who: root, wantCode: 126},
		{name: "empty name", cmd: "", who: root, wantCode: 127},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := resolveCommand(tt.cmd, dir, tt.path, tt.who)
			if tt.wantCode != 0 {
				var cmdErr *CommandError
				if !errors.As(err, &cmdErr) || cmdErr.Code != tt.wantCode {
					t.Fatalf("resolveCommand = %q, %v, want exit code %d", got, err, tt.wantCode)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("resolveCommand = %q, %v, want %q", got, err, tt.want)
			}
		})
	}
}

// A caller who may not search a directory learns from ssi run what the shell would tell them
// of what is in it: "Permission denied", whether the file exists or not.
func TestResolveCommandInUnsearchableDirectory(t *testing.T) {
	base, err := os.MkdirTemp("", "ssi-resolve-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(base)
	locked := filepath.Join(base, "locked")
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(locked, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(locked, "secret"), nil, 0o700); err != nil {
		t.Fatal(err)
	}
	owner := uint32(os.Geteuid())
	stranger := caller{uid: owner + 1000, gids: []uint32{owner + 1000}}
	fileOwner := caller{uid: owner, gids: []uint32{owner + 1000}}
	for _, tt := range []struct {
		name, cmd string
		who       caller
		wantCode  int
	}{
		{"missing, stranger", filepath.Join(locked, "nothing"), stranger, 126},
		{"present, stranger", filepath.Join(locked, "secret"), stranger, 126},
		{"missing deeper, stranger", filepath.Join(locked, "a/b"), stranger, 126},
		{"missing, owner", filepath.Join(locked, "nothing"), fileOwner, 127},
		{"missing directory before the locked one", filepath.Join(base, "none/locked/x"), stranger, 127},
	} {
		_, err := resolveCommand(tt.cmd, "/", "", tt.who)
		var cmdErr *CommandError
		if !errors.As(err, &cmdErr) || cmdErr.Code != tt.wantCode {
			t.Errorf("%s: resolveCommand(%s) = %v, want exit code %d", tt.name, tt.cmd, err, tt.wantCode)
		}
	}
}

// A working directory under one the caller may not search is refused with the same words
// whether it exists or not, naming the first directory the kernel would stop at.
func TestCheckReach(t *testing.T) {
	base, err := os.MkdirTemp("", "ssi-reach-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(base)
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	locked := filepath.Join(base, "locked")
	if err := os.MkdirAll(filepath.Join(locked, "inner"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(locked, 0o700); err != nil {
		t.Fatal(err)
	}
	owner := uint32(os.Geteuid())
	stranger := Spec{UID: owner + 1000, GID: owner + 1000}
	want := func(dir string) string {
		return fmt.Sprintf("uid %d may not enter %q, so it cannot work in %q on this node; pass a directory that user may enter", owner+1000, locked, dir)
	}
	for _, tt := range []struct {
		dir  string
		spec Spec
		want string
	}{
		{filepath.Join(locked, "inner"), stranger, want(filepath.Join(locked, "inner"))},
		{filepath.Join(locked, "nothing"), stranger, want(filepath.Join(locked, "nothing"))},
		{locked, stranger, want(locked)},
		{base, stranger, ""},
		{filepath.Join(base, "none", "x"), stranger, ""}, // "does not exist" is then for the caller to learn
		{filepath.Join(locked, "nothing"), Spec{UID: 0}, ""},
	} {
		err := CheckReach(tt.spec, tt.dir)
		if got := fmt.Sprint(err); (tt.want == "" && err != nil) || (tt.want != "" && got != tt.want) {
			t.Errorf("CheckReach(uid %d, %s) = %v, want %q", tt.spec.UID, tt.dir, err, tt.want)
		}
	}
	// Once the directory is known to exist, Start's own check names the same directory.
	who := caller{uid: owner + 1000, gids: []uint32{owner + 1000}}
	if err := checkWorkDir(filepath.Join(locked, "inner"), who); fmt.Sprint(err) != want(filepath.Join(locked, "inner")) {
		t.Errorf("checkWorkDir = %v, want %q", err, want(filepath.Join(locked, "inner")))
	}
}

func TestExecFailure(t *testing.T) {
	tests := []struct {
		errno    syscall.Errno
		wantCode int
	}{
		{syscall.ENOENT, 127},
		{syscall.EACCES, 126},
		{syscall.ENOEXEC, 126},
		{syscall.ETXTBSY, 126},
		{syscall.ENOMEM, 0},
	}
	for _, tt := range tests {
		got := execFailure("cmd", tt.errno)
		if tt.wantCode == 0 {
			if got != nil {
				t.Errorf("%v: %v, want nil (not a command problem)", tt.errno, got)
			}
			continue
		}
		if got == nil || got.Code != tt.wantCode {
			t.Errorf("%v: %v, want code %d", tt.errno, got, tt.wantCode)
		}
	}
}

// The shell Start runs a command through (for a directory on FUSE, or signals to ignore)
// changes to the directory, however it is named, ignores the signals and keeps argv.
func TestTrampoline(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "-n a dir 'with' $quotes")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	argv := []string{"sh", "-c", `echo "$(pwd -P)|$0|$1"; grep SigIgn /proc/self/status`, "zero", "one"}
	for _, tc := range []struct {
		dir     string
		sigs    []syscall.Signal
		wantDir string
		ignored uint64
	}{
		{dir, nil, dir, 0},
		{dir, []syscall.Signal{syscall.SIGUSR1, syscall.SIGHUP}, dir, 1<<(syscall.SIGUSR1-1) | 1<<(syscall.SIGHUP-1)},
		{"", []syscall.Signal{syscall.SIGUSR2}, "/", 1 << (syscall.SIGUSR2 - 1)},
	} {
		path, args := trampoline(tc.dir, tc.sigs, argv)
		cmd := exec.Command(path)
		cmd.Args, cmd.Dir = args, "/"
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
		first, rest, _ := strings.Cut(string(out), "\n")
		mask, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimPrefix(rest, "SigIgn:")), 16, 64)
		if first != tc.wantDir+"|zero|one" || mask&tc.ignored != tc.ignored {
			t.Errorf("trampoline(%q, %v): %q; want %q and signals %#x ignored", tc.dir, tc.sigs, out, tc.wantDir+"|zero|one", tc.ignored)
		}
	}
	if onFUSE("/") || onFUSE("") {
		t.Error("onFUSE: / or \"\" is on FUSE")
	}
}
