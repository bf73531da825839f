package daemoncli

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestClaimDevDir(t *testing.T) {
	for _, tc := range []struct {
		name     string
		setup    func(t *testing.T, dir string)
		wantErr  string
		wantLeft []string // entries left after a successful claim
	}{
		{
			name:     "missing directory is made and marked",
			setup:    func(t *testing.T, dir string) { os.Remove(dir) },
			wantLeft: []string{devMarker},
		},
		{
			name:     "empty directory is marked",
			setup:    func(t *testing.T, dir string) {},
			wantLeft: []string{devMarker},
		},
		{
			name: "a file is refused",
			setup: func(t *testing.T, dir string) {
				os.Remove(dir)
				writeFile(t, dir)
			},
			wantErr: "is not a directory: give a directory",
		},
		{
			name: "foreign non-empty directory is refused",
			setup: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "notes.txt"))
			},
			wantErr: "not made by ssi dev",
		},
		{
			name: "earlier run's node state is wiped, other files kept",
			setup: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, devMarker))
				writeFile(t, filepath.Join(dir, "n1", "data", "state"))
				writeFile(t, filepath.Join(dir, "n12", "agent.log"))
				writeFile(t, filepath.Join(dir, "notes.txt"))
				writeFile(t, filepath.Join(dir, "nodes", "keep"))
			},
			wantLeft: []string{devMarker, "nodes", "notes.txt"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "dev")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			tc.setup(t, dir)
			unlock, err := claimDevDir(dir)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer unlock()
			var left []string
			entries, _ := os.ReadDir(dir)
			for _, e := range entries {
				left = append(left, e.Name())
			}
			if !slices.Equal(left, tc.wantLeft) {
				t.Errorf("left %v, want %v", left, tc.wantLeft)
			}
		})
	}
}

func TestClaimDevDirLocksOutASecondRun(t *testing.T) {
	dir := t.TempDir()
	unlock, err := claimDevDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := claimDevDir(dir); err == nil || !strings.Contains(err.Error(), "another ssi dev") {
		t.Errorf("second claim while the first holds it: err = %v, want a refusal", err)
	}
	unlock()
	unlock2, err := claimDevDir(dir)
	if err != nil {
		t.Fatalf("claim after unlock: %v", err)
	}
	unlock2()
}

func writeFile(t *testing.T, path string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestChildrenOf(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if got := childrenOf(os.Getpid()); !slices.Contains(got, cmd.Process.Pid) {
		t.Fatalf("childrenOf(self) = %v, want it to hold %d", got, cmd.Process.Pid)
	}
	if got := childrenOf(cmd.Process.Pid); len(got) != 0 {
		t.Fatalf("childrenOf(sleep) = %v, want none", got)
	}
}

func TestCheckDevCounts(t *testing.T) {
	for _, tc := range []struct {
		nodes, servers int
		wantErr        string
	}{
		{3, 0, ""},
		{1, 1, ""},
		{253, 3, ""},
		{0, 0, "--nodes 0: give 1 to 253"},
		{-1, 0, "--nodes -1: give 1 to 253"},
		{1000, 0, "--nodes 1000: give 1 to 253"},
		{3, 5, "--servers 5: give 1 to 3 (--nodes)"},
		{3, -1, "--servers -1: give 1 to 3 (--nodes)"},
	} {
		err := checkDevCounts(tc.nodes, tc.servers)
		if (err == nil) != (tc.wantErr == "") || (err != nil && !strings.HasPrefix(err.Error(), tc.wantErr)) {
			t.Errorf("--nodes %d --servers %d: err %v, want %q", tc.nodes, tc.servers, err, tc.wantErr)
		}
	}
}

// The id of the running cluster is kept in the marker, through a later claim of the
// directory (whose lock tells that the recording run is gone), until it is cleared.
func TestRecordedCluster(t *testing.T) {
	dir := t.TempDir()
	if got := recordedCluster(dir); got != "" {
		t.Fatalf("no marker: recorded %q", got)
	}
	unlock, err := claimDevDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	recordCluster(dir, "ab12cd")
	unlock() // as a kill -9 would
	unlock, err = claimDevDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if got := recordedCluster(dir); got != "ab12cd" {
		t.Fatalf("after a new claim: recorded %q, want ab12cd", got)
	}
	recordCluster(dir, "")
	if got := recordedCluster(dir); got != "" {
		t.Fatalf("after clearing: recorded %q", got)
	}
}

func TestCheckDevDirLength(t *testing.T) {
	dir := func(n int) string { return "/" + strings.Repeat("d", n-1) }
	// "/nK/ssi.sock" adds 12 bytes for K < 10, 13 for K < 100.
	for _, tc := range []struct {
		dir     string
		nodes   int
		wantErr string
	}{
		{"/tmp/ssi-dev", 3, ""},
		{dir(95), 9, ""},
		{dir(96), 9, "is too long: node sockets such as " + dir(96) + "/n9/ssi.sock must fit in 107 bytes; pick a --dir of at most 95"},
		{dir(95), 10, "pick a --dir of at most 94"},
	} {
		err := checkDevDirLength(tc.dir, tc.nodes)
		if (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("checkDevDirLength(%d bytes, %d nodes) = %v, want %q", len(tc.dir), tc.nodes, err, tc.wantErr)
		}
	}
}
