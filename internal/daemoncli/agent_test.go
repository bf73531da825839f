package daemoncli

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/ssi-cluster/ssi/internal/agent"
	"github.com/ssi-cluster/ssi/internal/cli"
)

// The config file takes every flag's name as a key, --log-level too; flags given win.
func TestConfigFileLogLevel(t *testing.T) {
	for _, tc := range []struct {
		file string
		args []string
		want string
	}{
		{"name: a\nlog-level: debug\n", nil, "debug"},
		{"name: a\nlog-level: debug\n", []string{"--log-level", "warn"}, "warn"},
		{"name: a\n", nil, "info"},
	} {
		path := filepath.Join(t.TempDir(), "agent.yaml")
		if err := os.WriteFile(path, []byte(tc.file), 0o600); err != nil {
			t.Fatal(err)
		}
		file, err := agent.LoadConfigFile(path)
		if err != nil {
			t.Fatalf("%q: %v", tc.file, err)
		}
		cmd := newAgentCommand(&cli.Globals{})
		if err := cmd.Flags().Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		level, _ := cmd.Flags().GetString("log-level")
		if got := mergeConfig(file, agent.Config{LogLevel: level}, cmd).LogLevel; got != tc.want {
			t.Errorf("config %q, flags %v: log level %q, want %q", tc.file, tc.args, got, tc.want)
		}
	}
}
