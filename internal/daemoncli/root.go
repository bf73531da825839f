// Package daemoncli builds the command tree of ssid: the commands that run the cluster (the
// agent, the simulated cluster of ssi dev) on top of every client command of package cli.
// The ssi binary hands these commands to ssid, so that it starts without linking the agent.
package daemoncli

import (
	"github.com/spf13/cobra"

	"github.com/ssi-cluster/ssi/internal/buildinfo"

	"github.com/ssi-cluster/ssi/internal/cli"
)

// Execute runs ssid's command tree and returns the process exit code.
func Execute(build buildinfo.Info, args []string) int {
	return cli.Execute(build, args, serverCommands)
}

func serverCommands(g *cli.Globals) []*cobra.Command {
	return []*cobra.Command{newAgentCommand(g), newDevCommand(), newDevInitCommand()}
}
