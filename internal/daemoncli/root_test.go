package daemoncli

import (
	"io"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/ssi-cluster/ssi/internal/buildinfo"
	"github.com/ssi-cluster/ssi/internal/cli"
)

// ssid's own commands explain themselves as the client's do (cli's tests check those), and
// its tree is the client's with the stand-ins replaced.
func TestServerCommandsHaveHelpAndExample(t *testing.T) {
	root := cli.NewRoot(buildinfo.Info{Version: "test"}, nil, serverCommands)
	seen := map[string]bool{}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Hidden {
			return
		}
		if c.Short == "" || c.Runnable() && strings.TrimSpace(c.Example) == "" {
			t.Errorf("%q has no Short description or no Example", c.CommandPath())
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	for _, c := range root.Commands() {
		if c.Name() == "agent" || c.Name() == "dev" {
			seen[c.Name()] = true
			if c.DisableFlagParsing {
				t.Errorf("%s is the client's stand-in, not the command", c.Name())
			}
			walk(c)
		}
	}
	if !seen["agent"] || !seen["dev"] {
		t.Errorf("ssid's tree lacks agent or dev: %v", seen)
	}
}

func TestDevExecUsage(t *testing.T) {
	root := cli.NewRoot(buildinfo.Info{Version: "test"}, nil, serverCommands)
	root.SetArgs([]string{"dev", "exec"})
	root.SetOut(io.Discard)
	root.SetErr(io.Discard)
	want := "ssi dev exec needs a node and a command, e.g. n2 -- sh: see ssi dev exec --help"
	if err := root.Execute(); err == nil || err.Error() != want {
		t.Errorf("ssi dev exec: %v, want %q", err, want)
	}
}
