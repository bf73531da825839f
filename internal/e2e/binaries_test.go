package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// ssi hands the server commands to ssid next to it; a client built alone builds ssid from its
// own source tree when it needs it, or says how to.
func TestClientHandsServerCommandsToSsid(t *testing.T) {
	t.Run("next to it", func(t *testing.T) {
		out, err := exec.Command(binary, "agent", "--help").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Run the ssi node daemon") {
			t.Fatalf("ssi agent --help: %v\n%s", err, out)
		}
	})
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the tests build with go, which is not on PATH: %v", err)
	}
	alone := func(t *testing.T) string {
		dir := t.TempDir()
		client := filepath.Join(dir, "ssi")
		data, err := os.ReadFile(binary)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(client, data, 0o755); err != nil {
			t.Fatal(err)
		}
		return client
	}
	t.Run("alone, without Go", func(t *testing.T) {
		cmd := exec.Command(alone(t), "dev", "--help")
		cmd.Env = append(os.Environ(), "PATH=/nonexistent")
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "build it there (go build -o") {
			t.Fatalf("ssi dev --help without ssid or Go: %v\n%s", err, out)
		}
	})
	t.Run("alone, with Go", func(t *testing.T) {
		client := alone(t)
		cmd := exec.Command(client, "dev", "--help")
		cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(goTool)+":/usr/bin:/bin")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "building "+filepath.Join(filepath.Dir(client), "ssid")) ||
			!strings.Contains(string(out), "simulated hosts") {
			t.Fatalf("ssi dev --help, ssid to build: %v\n%s", err, out)
		}
		if _, err := os.Stat(filepath.Join(filepath.Dir(client), "ssid")); err != nil {
			t.Fatalf("ssid was not left next to ssi: %v", err)
		}
	})
}
