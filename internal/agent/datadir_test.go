package agent

import (
	"os"
	"strings"
	"testing"
)

func TestDataDirLock(t *testing.T) {
	d := dataDir(t.TempDir())
	f, err := d.lock()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.lock(); err == nil || !strings.Contains(err.Error(), "in use by another agent") {
		t.Fatalf("second lock: %v", err)
	}
	f.Close()
	f2, err := d.lock()
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	f2.Close()
}

func TestStateRoundTrip(t *testing.T) {
	d := dataDir(t.TempDir())
	if _, ok, err := d.loadState(); ok || err != nil {
		t.Fatalf("empty dir: ok=%v err=%v", ok, err)
	}
	want := nodeState{ClusterID: "c", Name: "n1", Index: 3, Role: RoleServer, GossipKey: []byte{1, 2, 3}}
	if err := d.saveState(want); err != nil {
		t.Fatal(err)
	}
	got, ok, err := d.loadState()
	if err != nil || !ok || got.Name != "n1" || got.Index != 3 || string(got.GossipKey) != "\x01\x02\x03" {
		t.Fatalf("got %+v ok=%v err=%v", got, ok, err)
	}
	if fi, _ := os.Stat(d.path(fileState)); fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file mode %v, want 0600", fi.Mode().Perm())
	}
	os.WriteFile(d.path(fileState), []byte("{torn"), 0o600)
	if _, _, err := d.loadState(); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("corrupt state: %v", err)
	}
}

// TestDataDirModes checks that users can reach their checkpoint directories in the spool
// under the data dir (search, no listing), while etcd's log stays root's.
func TestDataDirModes(t *testing.T) {
	d := dataDir(t.TempDir() + "/data")
	f, err := d.lock()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// An etcd.log an older agent left readable by all.
	if err := os.WriteFile(d.path(fileEtcdLog), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := d.privateEtcdLog(); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]os.FileMode{string(d): 0o711, d.path(fileEtcdLog): 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s has mode %o, want %o", path, got, want)
		}
	}
}
