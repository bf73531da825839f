package cli

import (
	"fmt"
	"runtime"

	"github.com/spf13/cobra"

	"github.com/ssi-cluster/ssi/internal/api/ssipb"
	"github.com/ssi-cluster/ssi/internal/buildinfo"
)

// versionJSON is the stable JSON shape of ssi version for scripts.
type versionJSON struct {
	Version  string `json:"version"`
	Commit   string `json:"commit"`
	Protocol int    `json:"protocol"`
	Go       string `json:"go"`
}

func newVersionCommand(g *Globals) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the version and commit of this binary",
		Example: `  ssi version
  ssi version -o json | jq -r .commit`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			v := versionJSON{Version: g.build.Version, Commit: g.build.Commit, Protocol: ssipb.ProtocolVersion, Go: runtime.Version()}
			if format == formatJSON {
				return printer{w: cmd.OutOrStdout(), format: format}.json(v)
			}
			fmt.Fprintln(cmd.OutOrStdout(), versionLine(g.build))
			return nil
		},
	}
	outputFlag(cmd, &format)
	return cmd
}

// versionLine is what ssi version and ssi --version print.
func versionLine(b buildinfo.Info) string {
	return fmt.Sprintf("ssi %s (commit %s, protocol %d, %s)", b.Version, b.Commit, ssipb.ProtocolVersion, runtime.Version())
}
