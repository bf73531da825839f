package proc

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestScanFindsItself(t *testing.T) {
	infos, err := Scan("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var self *Info
	for i := range infos {
		if infos[i].PID == os.Getpid() {
			self = &infos[i]
		}
	}
	if self == nil {
		t.Fatalf("Scan did not list the test process %d among %d processes", os.Getpid(), len(infos))
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if self.UID != uint32(os.Geteuid()) || self.PPID != os.Getppid() {
		t.Errorf("uid %d ppid %d, want %d %d", self.UID, self.PPID, os.Geteuid(), os.Getppid())
	}
	if want := strings.Join(os.Args, " "); self.Command != want {
		t.Errorf("command %q, want %q", self.Command, want)
	}
	if !strings.HasPrefix(filepath.Base(exe), self.Comm) || self.Comm == "" {
		t.Errorf("comm %q is not a prefix of the executable name %q", self.Comm, filepath.Base(exe))
	}
	if self.User == "" || self.RSSBytes == 0 || !strings.ContainsAny(self.State[:1], "RS") || !strings.Contains(self.State, "l") {
		t.Errorf("implausible self entry %+v (want a user, RSS, running or sleeping, multi-threaded)", *self)
	}
	if age := time.Since(self.StartTime); age < 0 || age > time.Hour {
		t.Errorf("start time %v is %v ago, want within the last hour", self.StartTime, age)
	}
}

// writeFakeProc lays out a proc tree in dir with one complete process (pid 42) and one
// directory whose files are missing, as when a process exits mid-scan.
func writeFakeProc(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	files := map[string]string{
		"uptime": "1000.00 1800.00\n",
		// pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
		// utime stime cutime cstime priority nice num_threads itrealvalue starttime vsize rss …
		"42/stat": "42 (my daemon) S 1 42 42 34816 42 4194560 100 0 0 0 " +
			"2000 500 0 0 20 5 3 0 50000 1000000 256 18446744073709551615 " +
			"1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n",
		"42/status":  "Name:\tmy daemon\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t1000\t1001\t1001\t1001\nGid:\t100\t100\t100\t100\n",
		"42/cmdline": "/usr/bin/my-daemon\x00--flag\x00value with space\x00",
		"42/cgroup":  "4:memory:/x\n0::/ssi/run-1\n",
		"43/.keep":   "",
	}
	writeFiles(t, root, files)
	return root
}

// writeFiles writes each file of files (path relative to root: content) under root.
func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		path := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestScanFakeProc(t *testing.T) {
	root := writeFakeProc(t)
	before := time.Now()
	infos, err := Scan(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 1 {
		t.Fatalf("Scan listed %d processes, want only pid 42 (43 has vanished): %+v", len(infos), infos)
	}
	got := infos[0]
	want := Info{
		PID: 42, PPID: 1, UID: 1001,
		State:    "SNsl+", // nice 5, session leader, 3 threads, tpgid == pgrp on a tty
		RSSBytes: 256 * uint64(os.Getpagesize()),
		CPUTime:  25 * time.Second,
		Command:  "/usr/bin/my-daemon --flag value with space",
		Comm:     "my daemon",
		Cgroup:   "ssi/run-1",
	}
	// Started 500 s after a boot 1000 s ago, having used 25 s of CPU: 5 %.
	if math.Abs(got.CPUPercent-5) > 1e-9 {
		t.Errorf("CPUPercent = %v, want 5", got.CPUPercent)
	}
	if age := before.Sub(got.StartTime); age < 499*time.Second || age > 501*time.Second {
		t.Errorf("StartTime is %v before the scan, want 500s", age)
	}
	if got.User == "" {
		t.Error("User is empty; want a name or the uid in decimal")
	}
	got.CPUPercent, got.StartTime, got.User = 0, time.Time{}, ""
	if got != want {
		t.Errorf("Scan = %+v\nwant   %+v", got, want)
	}
}

func TestScanKernelThreadAndZombieCommands(t *testing.T) {
	tests := []struct {
		state, cmdline, want string
	}{
		{state: "I", cmdline: "", want: "[kworker/0:1]"},
		{state: "Z", cmdline: "", want: "[kworker/0:1] <defunct>"},
		{state: "S", cmdline: "a\x00b\x00", want: "a b"},
	}
	for _, tt := range tests {
		root := writeFakeProc(t)
		stat := "42 (kworker/0:1) " + tt.state + " 2 0 0 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0 " +
			"18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
		if err := os.WriteFile(filepath.Join(root, "42/stat"), []byte(stat), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, "42/cmdline"), []byte(tt.cmdline), 0o644); err != nil {
			t.Fatal(err)
		}
		infos, err := Scan(root)
		if err != nil || len(infos) != 1 {
			t.Fatalf("Scan = %+v, %v", infos, err)
		}
		if infos[0].Command != tt.want {
			t.Errorf("state %s cmdline %q: Command = %q, want %q", tt.state, tt.cmdline, infos[0].Command, tt.want)
		}
	}
}

func TestScanToleratesChurn(t *testing.T) {
	requireRoot(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for ctx.Err() == nil {
			p, err := Start(ctx, rootSpec("/bin/true"))
			if err != nil {
				return
			}
			_, _ = p.Wait()
			_ = p.Close()
		}
	})
	for range 30 {
		if _, err := Scan("/proc"); err != nil {
			t.Error(err)
			break
		}
	}
	cancel()
	wg.Wait()
}

func BenchmarkScan(b *testing.B) {
	for b.Loop() {
		if _, err := Scan("/proc"); err != nil {
			b.Fatal(err)
		}
	}
}
