package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/ssi-cluster/ssi/internal/api/ssipb"
)

func newTokenCommand(g *Globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Manage join tokens",
		Example: `  sudo ssi token create --ttl 1h     # then, on the new node:
  sudo ssi agent --join 10.0.0.1:7700 --token <token>`,
	}
	var ttl time.Duration
	var format string
	create := &cobra.Command{
		Use:   "create",
		Short: "Print a new join token (root only); it also pins the cluster CA",
		Long: `Print a join token. A new node joins with it:

  ssi agent --join <address of any node>:7700 --token <token>

The token carries the hash of the cluster CA, so the joining node only trusts a cluster that
proves it holds that CA; the cluster only admits a node that presents the token's secret.`,
		Example: `  sudo ssi token create
  sudo ssi token create --ttl 1h`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			if ttl < time.Second {
				return fmt.Errorf("--ttl %s is too short: give at least 1s, e.g. --ttl 1h", ttl)
			}
			ctl := g.control()
			ctx, cancel := context.WithTimeout(cmd.Context(), callTimeout)
			defer cancel()
			resp, err := ctl.CreateToken(ctx, &ssipb.CreateTokenRequest{TtlSeconds: int64(ttl / time.Second)})
			if err != nil {
				return g.rpcError(err)
			}
			p := printer{w: cmd.OutOrStdout(), format: format}
			if format == formatJSON {
				return p.json(map[string]any{"token": resp.Token, "expires": time.Unix(resp.ExpiresUnix, 0).UTC()})
			}
			fmt.Fprintln(cmd.OutOrStdout(), resp.Token)
			return nil
		},
	}
	create.Flags().DurationVar(&ttl, "ttl", 24*time.Hour, "how long the token stays valid")
	outputFlag(create, &format)
	cmd.AddCommand(create)
	return cmd
}
