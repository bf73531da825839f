package cgroup

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseMountinfo(t *testing.T) {
	tests := []struct {
		name, in, want string
		wantErr        bool
	}{
		{
			name: "hybrid",
			in: "40 31 0:37 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,name=systemd\n" +
				"41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n",
			want: "/sys/fs/cgroup/unified",
		},
		{
			name: "pure v2 with optional fields",
			in:   "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev shared:9 master:2 - cgroup2 cgroup2 rw,nsdelegate\n",
			want: "/sys/fs/cgroup",
		},
		{
			name: "escaped space",
			in:   "35 24 0:30 / /mnt/my\\040cg rw - cgroup2 none rw\n",
			want: "/mnt/my cg",
		},
		{
			name: "sub-group bind first",
			in: "50 23 0:27 /user.slice /mnt/cg rw - cgroup2 cgroup2 rw\n" +
				"51 23 0:27 / /mnt/root rw - cgroup2 cgroup2 rw\n",
			want: "/mnt/root",
		},
		{
			name:    "v1 only",
			in:      "40 31 0:37 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n",
			wantErr: true,
		},
		{
			name:    "garbage",
			in:      "not a mountinfo line\n-\n",
			wantErr: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseMountinfo(strings.NewReader(tt.in))
			if tt.wantErr {
				if err == nil {
					t.Fatalf("parseMountinfo = %q, want an error", got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("parseMountinfo = %q, %v, want %q", got, err, tt.want)
			}
		})
	}
}

func TestParseProcCgroup(t *testing.T) {
	tests := []struct {
		in, want string
		wantErr  bool
	}{
		{in: "0::/\n", want: ""},
		{in: "9:name=systemd:/\n4:memory:/x\n0::/ssi/run-1234\n", want: "ssi/run-1234"},
		{in: "4:memory:/x\n", wantErr: true},
	}
	for _, tt := range tests {
		got, err := parseProcCgroup(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("parseProcCgroup(%q) = %q, %v, want %q (error %v)", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestSanitize(t *testing.T) {
	tests := []struct{ in, want string }{
		{"sleep", "sleep"},
		{"/usr/bin/my prog", "_usr_bin_my_prog"},
		{"..", "_."},
		{"a.b", "a.b"},
		{"", "proc"},
		{strings.Repeat("x", 100), strings.Repeat("x", 48)},
		{"café", "caf_"},
	}
	for _, tt := range tests {
		if got := sanitize(tt.in); got != tt.want {
			t.Errorf("sanitize(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// newTestGroup creates a real group under a test-only parent and removes both afterwards.
func newTestGroup(t *testing.T) *Group {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("creating cgroups needs root")
	}
	mount, err := Mount()
	if err != nil {
		t.Fatal(err)
	}
	g, err := Create(mount, "ssi-cgroup-test", t.Name())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := g.Kill(ctx); err != nil {
			t.Error(err)
		}
		if err := g.WaitEmpty(ctx); err != nil {
			t.Error(err)
		}
		if err := g.Remove(); err != nil {
			t.Error(err)
		}
		_ = Open(mount, "ssi-cgroup-test").Remove() // fails harmlessly while another test uses it
	})
	return g
}

// startIn starts argv inside g via CLONE_INTO_CGROUP.
func startIn(t *testing.T, g *Group, argv ...string) *exec.Cmd {
	t.Helper()
	dir, err := g.OpenDir()
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd())}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd
}

func TestGroupLifecycle(t *testing.T) {
	g := newTestGroup(t)
	if !strings.HasPrefix(filepath.Base(g.Path()), "TestGroupLifecycle-") {
		t.Errorf("group name %q does not start with the test name", filepath.Base(g.Path()))
	}
	if populated, err := g.Populated(); err != nil || populated {
		t.Fatalf("fresh group: populated = %v, %v, want false", populated, err)
	}
	cmd := startIn(t, g, "sh", "-c", "sleep 1000 & sleep 1000")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// The background sleep appears asynchronously; poll for three members.
	var pids []int
	for len(pids) < 3 {
		var err error
		if pids, err = g.Procs(); err != nil {
			t.Fatal(err)
		}
		if ctx.Err() != nil {
			t.Fatalf("cgroup members = %v, want sh and two sleeps", pids)
		}
		time.Sleep(time.Millisecond)
	}
	if !slices.Contains(pids, cmd.Process.Pid) {
		t.Errorf("cgroup members %v lack the started shell %d", pids, cmd.Process.Pid)
	}
	if got, err := Of("/proc", cmd.Process.Pid); err != nil || got != g.Rel() {
		t.Errorf("Of(shell) = %q, %v, want %q", got, err, g.Rel())
	}
	if err := g.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	if err := g.WaitEmpty(ctx); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Errorf("shell ended with %v, want SIGKILL", err)
	}
	if _, err := g.CPUUsage(); err != nil {
		t.Error(err)
	}
	if err := g.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(g.Path()); !os.IsNotExist(err) {
		t.Errorf("group directory still exists after Remove: %v", err)
	}
	if err := g.Remove(); err != nil {
		t.Errorf("second Remove: %v, want nil", err)
	}
}

func TestSignalReachesNestedGroups(t *testing.T) {
	g := newTestGroup(t)
	if err := os.Mkdir(filepath.Join(g.Path(), "nested"), 0o755); err != nil {
		t.Fatal(err)
	}
	nested := Open(g.mount, filepath.Join(g.Rel(), "nested"))
	cmd := startIn(t, nested, "sleep", "1000")
	if err := g.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGTERM {
		t.Fatalf("sleep in nested group ended with %v, want SIGTERM", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := g.WaitEmpty(ctx); err != nil {
		t.Fatal(err)
	}
	if err := g.Remove(); err != nil {
		t.Fatal(err)
	}
}

func TestRemoveRefusesPopulatedGroup(t *testing.T) {
	g := newTestGroup(t)
	cmd := startIn(t, g, "sleep", "1000")
	if err := g.Remove(); err == nil {
		t.Fatal("Remove of a group with a running process succeeded")
	}
	if _, err := os.Stat(g.Path()); err != nil {
		t.Fatalf("the populated group is gone after a refused Remove: %v", err)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
}

func TestCreateRecreatesMissingParent(t *testing.T) {
	g := newTestGroup(t)
	// A parent two levels deep that does not exist yet.
	parent := filepath.Join(g.Rel(), "a", "b")
	child, err := Create(g.mount, parent, "x")
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(child.Rel()) != parent {
		t.Errorf("created %s, want a group under %s", child.Rel(), parent)
	}
	if populated, err := child.Populated(); err != nil || populated {
		t.Errorf("new group populated = %v, %v", populated, err)
	}
	// newTestGroup's cleanup removes g with everything below it.
}

func TestReadControlReadsLargeFiles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "big")
	want := strings.Repeat("1234567\n", 1000)
	if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := readControl(path)
	if err != nil || string(got) != want {
		t.Errorf("readControl = %d bytes, %v; want %d bytes", len(got), err, len(want))
	}
	if _, err := readControl(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("readControl(missing) = %v, want an os.ErrNotExist", err)
	}
}

// TestWaitEmptyWakesWhenTheLastProcessLeaves checks that WaitEmpty learns of the group
// emptying from the kernel's notification, well before its next read of its own: by then
// it reads only every waitEmptyMaxDelay.
func TestWaitEmptyWakesWhenTheLastProcessLeaves(t *testing.T) {
	g := newTestGroup(t)
	cmd := startIn(t, g, "sh", "-c", "sleep 1.5 & wait")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	exited := make(chan time.Time, 1)
	go func() { _ = cmd.Wait(); exited <- time.Now() }()
	if err := g.WaitEmpty(ctx); err != nil {
		t.Fatal(err)
	}
	woke := time.Now()
	if populated, err := g.Populated(); err != nil || populated {
		t.Fatalf("WaitEmpty returned while populated = %v, %v", populated, err)
	}
	if late := woke.Sub(<-exited); late > waitEmptyMaxDelay/4 {
		t.Errorf("WaitEmpty returned %v after the group emptied: the notification was missed", late)
	}
}

func TestWaitEmptyHonoursContext(t *testing.T) {
	g := newTestGroup(t)
	startIn(t, g, "sleep", "1000")
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := g.WaitEmpty(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitEmpty on a busy group = %v, want context.DeadlineExceeded", err)
	}
	if took := time.Since(start); took > waitEmptyMaxDelay/4 {
		t.Errorf("WaitEmpty took %v to notice its context ended", took)
	}
	// An empty group is empty whatever the context says.
	if err := newTestGroup(t).WaitEmpty(ctx); err != nil {
		t.Errorf("WaitEmpty on an empty group with an ended context = %v, want nil", err)
	}
}
