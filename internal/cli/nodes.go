package cli

import (
	"context"
	"fmt"
	"os"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/ssi-cluster/ssi/internal/api/ssipb"
)

// nodeJSON is the stable JSON shape of a node for scripts.
type nodeJSON struct {
	Name          string  `json:"name"`
	Index         uint32  `json:"index"`
	Addr          string  `json:"addr"`
	State         string  `json:"state"`
	Role          string  `json:"role"`
	CPUs          uint32  `json:"cpus"`
	Load1         float64 `json:"load1"`
	Load5         float64 `json:"load5"`
	Load15        float64 `json:"load15"`
	Runnable      uint32  `json:"runnable"`
	CPUUsed       float64 `json:"cpu_used"`
	MemTotalBytes uint64  `json:"mem_total_bytes"`
	MemFreeBytes  uint64  `json:"mem_free_bytes"`
	Version       string  `json:"version,omitempty"`
}

func toNodeJSON(n *ssipb.NodeInfo) nodeJSON {
	return nodeJSON{
		Name: n.Name, Index: n.Index, Addr: n.Addr, State: n.State, Role: n.Role, CPUs: n.Cpus,
		Load1: n.Load1, Load5: n.Load5, Load15: n.Load15, Runnable: n.Runnable, CPUUsed: n.CpuUsed,
		MemTotalBytes: n.MemTotalBytes, MemFreeBytes: n.MemFreeBytes, Version: n.Version,
	}
}

func newNodesCommand(g *Globals) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "nodes",
		Short: "List every node of the cluster with its state, role and load",
		Long: `List every node that has joined the cluster: its index (used in global process ids),
address, state (alive, suspect, dead or left), role (server or client) and load vector, as this
node's agent sees them through gossip.`,
		Example: `  ssi nodes
  ssi nodes -o json | jq '.[] | select(.state == "alive") | .name'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := callControl(g, cmd, format, func(ctx context.Context, ctl control) (*ssipb.NodesResponse, error) {
				return ctl.Nodes(ctx, &ssipb.NodesRequest{})
			})
			if err != nil {
				return err
			}
			if resp.Warning != "" {
				fmt.Fprintln(os.Stderr, "warning: "+resp.Warning)
			}
			p := printer{w: cmd.OutOrStdout(), format: format}
			if format == formatJSON {
				out := make([]nodeJSON, 0, len(resp.Nodes))
				for _, n := range resp.Nodes {
					out = append(out, toNodeJSON(n))
				}
				return p.json(out)
			}
			rows := make([][]string, 0, len(resp.Nodes))
			for _, n := range resp.Nodes {
				rows = append(rows, []string{
					n.Name, strconv.Itoa(int(n.Index)), n.State, n.Role, n.Addr,
					strconv.Itoa(int(n.Cpus)), fmt.Sprintf("%.2f", n.Load1), fmt.Sprintf("%.2f", n.CpuUsed),
					humanBytes(n.MemFreeBytes) + "/" + humanBytes(n.MemTotalBytes),
				})
			}
			return p.table([]string{"NAME", "INDEX", "STATE", "ROLE", "ADDR", "CPUS", "LOAD1", "CPU-USED", "MEM-FREE/TOTAL"}, rows)
		},
	}
	outputFlag(cmd, &format)
	return cmd
}
