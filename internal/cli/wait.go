package cli

import (
	"errors"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ssi-cluster/ssi/internal/api/ssipb"
	"github.com/ssi-cluster/ssi/internal/gpid"
	"github.com/ssi-cluster/ssi/internal/localrpc"
)

func newWaitCommand(g *Globals) *cobra.Command {
	return &cobra.Command{
		Use:   "wait GPID",
		Short: "Wait for a process started with ssi run and exit with its status",
		Long: `Wait for a process started with "ssi run" (usually --detach) on any node and exit with its
status: its exit code, 128+N after death by signal N, or 255 when the node it ran on is lost;
127, as the shell's wait, for a GPID that is not a process ssi started (or whose status is
gone). Only its owner (or root) may wait for it; its status stays available for 10 minutes.`,
		Example: `  GPID=$(ssi run --detach -n n2 -- ./simulate)
  ssi wait $GPID; echo "simulate exited with $?"`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := gpid.Parse(args[0])
			if err != nil {
				return err
			}
			ctl := g.control()
			resp, err := ctl.Wait(cmd.Context(), &ssipb.WaitRequest{Gpid: id})
			var rerr *localrpc.Error
			if errors.As(err, &rerr) && rerr.Code == localrpc.Unavailable && strings.HasPrefix(rerr.Message, "node ") {
				// The node the process ran on is lost: 255, as ssi run exits then.
				return exitError{code: ssipb.ExitLostNode, msg: rerr.Message}
			}
			if errors.As(err, &rerr) && rerr.Code == localrpc.NotFound {
				// Not a process ssi started (or its status is gone): 127, as the shell's wait
				// exits for a pid that is not its child.
				return exitError{code: 127, msg: rerr.Message}
			}
			if err != nil {
				return g.rpcError(err)
			}
			return exitError{code: int(resp.Code), msg: resp.Message}
		},
	}
}
