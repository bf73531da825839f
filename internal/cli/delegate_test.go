package cli

import (
	"os"
	"path/filepath"
	"testing"
)

func TestTrustedTree(t *testing.T) {
	make := func(t *testing.T, module string, modes map[string]os.FileMode) string {
		root := t.TempDir()
		if err := os.MkdirAll(filepath.Join(root, "cmd", "ssid"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, "go.mod"), []byte("module "+module+"\n\ngo 1.26\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		os.Chmod(root, 0o755)
		for p, m := range modes {
			if err := os.Chmod(filepath.Join(root, p), m); err != nil {
				t.Fatal(err)
			}
		}
		return root
	}
	euid := os.Geteuid()
	for _, tc := range []struct {
		name   string
		module string
		modes  map[string]os.FileMode
		euid   int
		want   bool
	}{
		{"ours", modulePath, nil, euid, true},
		{"another module", "example.com/other", nil, euid, false},
		{"a longer module path", modulePath + "/v2", nil, euid, false},
		{"group-writable root", modulePath, map[string]os.FileMode{".": 0o775}, euid, false},
		{"world-writable go.mod", modulePath, map[string]os.FileMode{"go.mod": 0o666}, euid, false},
		{"writable cmd/ssid", modulePath, map[string]os.FileMode{"cmd/ssid": 0o777}, euid, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := trustedTree(make(t, tc.module, tc.modes), tc.euid); got != tc.want {
				t.Errorf("trustedTree = %v, want %v", got, tc.want)
			}
		})
	}
	t.Run("another user's tree", func(t *testing.T) {
		root, other := make(t, modulePath, nil), euid+1
		if euid == 0 { // a tree of root's is trusted by everyone: give it to someone else
			if err := os.Chown(root, 65534, 65534); err != nil {
				t.Fatal(err)
			}
			other = 1000
		}
		if trustedTree(root, other) {
			t.Errorf("uid %d trusts another user's tree", other)
		}
	})
	t.Run("missing", func(t *testing.T) {
		if trustedTree(filepath.Join(t.TempDir(), "none"), euid) {
			t.Error("a missing tree is trusted")
		}
	})
}
