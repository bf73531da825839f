package cli

import (
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// Every runnable command explains itself with a short line and an example.
func TestEveryCommandHasHelpAndExample(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if sub.Hidden || sub.Name() == "help" || sub.Name() == "completion" {
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
	walk(NewRoot(BuildInfo{Version: "test"}))
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
