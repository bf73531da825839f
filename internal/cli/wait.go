package cli

import (
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ssi-cluster/ssi/internal/api/ssipb"
	"github.com/ssi-cluster/ssi/internal/gpid"
	"github.com/ssi-cluster/ssi/internal/procspace"
)

func newWaitCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "wait GPID",
		Short: "Wait for a process started with ssi run and exit with its status",
		Long: `Wait for a process started with "ssi run" (usually --detach) on any node and exit with its
status: its exit code, 128+N after death by signal N, or 255 when the node it ran on is lost.
Only its owner (or root) may wait for it; its status stays available for 10 minutes.`,
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
			if st, ok := status.FromError(err); ok && st.Code() == codes.Unavailable && strings.HasPrefix(st.Message(), "node ") {
				// The node the process ran on is lost: 255, as ssi run exits then.
				return exitError{code: procspace.ExitLostNode, msg: st.Message()}
			}
			if err != nil {
				return g.rpcError(err)
			}
			return exitError{code: int(resp.Code), msg: resp.Message}
		},
	}
}
