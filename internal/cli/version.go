package cli

import (
	"fmt"
	"runtime"

	"github.com/spf13/cobra"

	"github.com/ssi-cluster/ssi/internal/api/ssipb"
)

func newVersionCommand(g *Globals) *cobra.Command {
	return &cobra.Command{
		Use:     "version",
		Short:   "Print the version and commit of this binary",
		Example: `  ssi version`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(cmd.OutOrStdout(), "ssi %s (commit %s, protocol %d, %s)\n", g.build.Version, g.build.Commit, ssipb.ProtocolVersion, runtime.Version())
			return nil
		},
	}
}
