package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ssi-cluster/ssi/internal/api/ssipb"
)

// procJSON is the stable JSON shape of a process for scripts.
type procJSON struct {
	GPID       int64     `json:"gpid"`
	Node       string    `json:"node"`
	PID        int32     `json:"pid"`
	PPIDGPID   int64     `json:"ppid_gpid"`
	User       string    `json:"user"`
	UID        uint32    `json:"uid"`
	State      string    `json:"state"`
	CPUPercent float64   `json:"cpu_percent"`
	RSSBytes   uint64    `json:"rss_bytes"`
	StartTime  time.Time `json:"start_time"`
	CPUTimeMS  int64     `json:"cpu_time_ms"`
	Command    string    `json:"command"`
	SSIStarted bool      `json:"ssi_started"`
}

func newPsCommand(g *Globals) *cobra.Command {
	var (
		node, user, format string
		tree               bool
	)
	cmd := &cobra.Command{
		Use:   "ps",
		Short: "List the processes of every node, like ps aux for the whole cluster",
		Long: `List every process of every alive node with its global process id (GPID = node index ×
10,000,000 + local pid). A process started with "ssi run" has as its parent the process that
started it, wherever that one runs; --tree draws that hierarchy. Nodes that do not answer
within 2 s, and those that are down, are reported on stderr, not waited for.`,
		Example: `  ssi ps
  ssi ps -n n2 -u alice
  ssi ps --tree
  ssi ps -o json | jq '.[] | select(.cpu_percent > 50)'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			if err := checkNodeFlag(cmd, node); err != nil {
				return err
			}
			if user == "" && cmd.Flags().Changed("user") {
				// As an empty -n: an unset $USER_TO_CHECK would list everyone's processes.
				return errors.New("-u/--user is empty: give a user name or uid, or leave -u out")
			}
			ctl := g.control()
			ctx, cancel := context.WithTimeout(cmd.Context(), callTimeout)
			defer cancel()
			resp, err := ctl.Ps(ctx, &ssipb.PsRequest{Node: node, User: user})
			if err != nil {
				return g.rpcError(err)
			}
			if node != "" && len(resp.Procs) == 0 && len(resp.Unreachable) > 0 {
				// The one node asked for: an empty list would read as "no processes".
				return fmt.Errorf("node %s did not answer within 2 s: see ssi nodes for its state", resp.Unreachable[0])
			}
			for _, n := range resp.Unreachable {
				fmt.Fprintf(os.Stderr, "warning: node %s did not answer (see ssi nodes): its processes are not listed\n", n)
			}
			p := printer{w: cmd.OutOrStdout(), format: format}
			if format == formatJSON {
				out := make([]procJSON, 0, len(resp.Procs))
				for _, pr := range resp.Procs {
					out = append(out, procJSON{
						GPID: pr.Gpid, Node: pr.Node, PID: pr.Pid, PPIDGPID: pr.PpidGpid, User: pr.User, UID: pr.Uid,
						State: pr.State, CPUPercent: pr.CpuPercent, RSSBytes: pr.RssBytes,
						StartTime: time.UnixMilli(pr.StartUnixMs).UTC(), CPUTimeMS: pr.CpuTimeMs, Command: pr.Command, SSIStarted: pr.SsiStarted,
					})
				}
				return p.json(out)
			}
			procs := resp.Procs
			prefix := map[int64]string{}
			if tree {
				procs, prefix = treeOrder(procs)
			}
			rows := make([][]string, 0, len(procs))
			for _, pr := range procs {
				rows = append(rows, []string{
					strconv.FormatInt(pr.Gpid, 10), pr.Node, pr.User, strconv.FormatInt(pr.PpidGpid, 10),
					fmt.Sprintf("%.1f", pr.CpuPercent), humanBytes(pr.RssBytes), pr.State,
					startColumn(time.UnixMilli(pr.StartUnixMs)), cpuTimeColumn(pr.CpuTimeMs), prefix[pr.Gpid] + pr.Command,
				})
			}
			return p.table([]string{"GPID", "NODE", "USER", "PPID", "%CPU", "RSS", "STAT", "START", "TIME", "COMMAND"}, rows)
		},
	}
	cmd.Flags().StringVarP(&node, "node", "n", "", "only this node")
	cmd.Flags().StringVarP(&user, "user", "u", "", "only this user's processes (name or uid)")
	cmd.Flags().BoolVar(&tree, "tree", false, "show the process hierarchy across nodes")
	outputFlag(cmd, &format)
	return cmd
}

// treeOrder sorts processes depth-first under their parents (which may be on other nodes)
// and returns the indentation for each.
func treeOrder(procs []*ssipb.ProcInfo) ([]*ssipb.ProcInfo, map[int64]string) {
	byGPID := map[int64]*ssipb.ProcInfo{}
	for _, p := range procs {
		byGPID[p.Gpid] = p
	}
	children := map[int64][]*ssipb.ProcInfo{}
	var roots []*ssipb.ProcInfo
	for _, p := range procs {
		if _, ok := byGPID[p.PpidGpid]; ok && p.PpidGpid != p.Gpid {
			children[p.PpidGpid] = append(children[p.PpidGpid], p)
		} else {
			roots = append(roots, p)
		}
	}
	out := make([]*ssipb.ProcInfo, 0, len(procs))
	prefix := map[int64]string{}
	seen := map[int64]bool{}
	var walk func(p *ssipb.ProcInfo, depth int)
	walk = func(p *ssipb.ProcInfo, depth int) {
		if seen[p.Gpid] {
			return
		}
		seen[p.Gpid] = true
		out = append(out, p)
		if depth > 0 {
			prefix[p.Gpid] = strings.Repeat("  ", depth-1) + "\\_ "
		}
		kids := children[p.Gpid]
		sort.Slice(kids, func(i, j int) bool { return kids[i].Gpid < kids[j].Gpid })
		for _, k := range kids {
			walk(k, depth+1)
		}
	}
	for _, r := range roots {
		walk(r, 0)
	}
	return out, prefix
}

func startColumn(t time.Time) string {
	if time.Since(t) < 24*time.Hour {
		return t.Format("15:04")
	}
	return t.Format("Jan02")
}

func cpuTimeColumn(ms int64) string {
	s := ms / 1000
	return fmt.Sprintf("%d:%02d", s/60, s%60)
}
