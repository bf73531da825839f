package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ssi-cluster/ssi/internal/api/ssipb"
	"github.com/ssi-cluster/ssi/internal/gpid"
	"github.com/ssi-cluster/ssi/internal/localrpc"
)

func newWaitCommand(g *Globals) *cobra.Command {
	return &cobra.Command{
		Use:   "wait GPID...",
		Short: "Wait for processes started with ssi run and exit with the last one's status",
		Long: `Wait for processes started with "ssi run" (usually --detach) on any node, one after the
other, and exit with the status of the last, as the shell's wait does: its exit code, 128+N
after death by signal N, or 255 when the node it ran on is lost; 127, as the shell's wait,
for a GPID that is not a process ssi started (or whose status is gone). Only its owner (or
root) may wait for it; its status stays available for 10 minutes.`,
		Example: `  GPID=$(ssi run --detach -n n2 -- ./simulate)
  ssi wait $GPID; echo "simulate exited with $?"
  ssi wait $A $B $C                          # all three; the status is C's`,
		Args: NeedArgs(1, -1, "the GPID of a process started with ssi run, e.g. ssi wait 20004321"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ids := make([]int64, 0, len(args))
			for _, a := range args {
				id, err := gpid.Parse(a)
				if err != nil {
					return err
				}
				ids = append(ids, id)
			}
			var last exitError
			for i, id := range ids {
				var err error
				if last, err = g.waitOne(cmd.Context(), id); err != nil {
					return err
				}
				if i < len(ids)-1 && last.msg != "" {
					// Said now: only the last one's status is the exit status.
					fmt.Fprintln(os.Stderr, "ssi: "+last.msg)
				}
			}
			return last
		},
	}
}

// waitOne waits for one process and returns how ssi wait would exit for it, or why it could
// not wait.
func (g *Globals) waitOne(ctx context.Context, id int64) (exitError, error) {
	resp, err := g.control().Wait(ctx, &ssipb.WaitRequest{Gpid: id})
	var rerr *localrpc.Error
	if errors.As(err, &rerr) && rerr.Code == localrpc.Unavailable && strings.HasPrefix(rerr.Message, "node ") {
		// The node the process ran on is lost: 255, as ssi run exits then.
		return exitError{code: ssipb.ExitLostNode, msg: rerr.Message}, nil
	}
	if errors.As(err, &rerr) && rerr.Code == localrpc.NotFound {
		// Not a process ssi started (or its status is gone): 127, as the shell's wait
		// exits for a pid that is not its child.
		return exitError{code: 127, msg: rerr.Message}, nil
	}
	if err != nil {
		return exitError{}, g.rpcError(err)
	}
	return exitError{code: int(resp.Code), msg: resp.Message}, nil
}
