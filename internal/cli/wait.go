package cli

import (
	"github.com/spf13/cobra"

	"github.com/ssi-cluster/ssi/internal/api/ssipb"
	"github.com/ssi-cluster/ssi/internal/gpid"
)

func newWaitCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "wait GPID",
		Short: "Wait for a process started with ssi run and exit with its status",
		Example: `  GPID=$(ssi run --detach -n n2 -- ./simulate)
  ssi wait $GPID; echo "simulate exited with $?"`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := gpid.Parse(args[0])
			if err != nil {
				return err
			}
			ctl, closeConn, err := g.control()
			if err != nil {
				return err
			}
			defer closeConn()
			resp, err := ctl.Wait(cmd.Context(), &ssipb.WaitRequest{Gpid: id})
			if err != nil {
				return g.rpcError(err)
			}
			return exitError{code: int(resp.Code), msg: resp.Message}
		},
	}
}
