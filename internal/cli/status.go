package cli

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ssi-cluster/ssi/internal/api/ssipb"
)

type serverJSON struct {
	Name     string `json:"name"`
	Endpoint string `json:"etcd_endpoint"`
	Leader   bool   `json:"leader"`
	Healthy  bool   `json:"healthy"`
	Learner  bool   `json:"learner,omitempty"`
	Error    string `json:"error,omitempty"`
}

type statusJSON struct {
	ClusterID       string            `json:"cluster_id"`
	ThisNode        nodeJSON          `json:"this_node"`
	Servers         []serverJSON      `json:"servers"`
	EtcdLeader      string            `json:"etcd_leader"`
	EtcdHealthy     bool              `json:"etcd_healthy"`
	EtcdError       string            `json:"etcd_error,omitempty"`
	EtcdEndpoints   []string          `json:"etcd_endpoints"`
	ExternalEtcd    bool              `json:"external_etcd"`
	Members         map[string]uint32 `json:"members"`
	SchedulerLeader string            `json:"scheduler_leader"`
}

func newStatusCommand(g *Globals) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show cluster health: servers, etcd leader, members and this node",
		Example: `  ssi status
  ssi status -o json | jq .etcd_leader`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := callControl(g, cmd, format, func(ctx context.Context, ctl control) (*ssipb.StatusResponse, error) {
				return ctl.Status(ctx, &ssipb.StatusRequest{})
			})
			if err != nil {
				return err
			}
			out := toStatusJSON(resp)
			p := printer{w: cmd.OutOrStdout(), format: format}
			if format == formatJSON {
				return p.json(out)
			}
			return printStatus(p, out)
		},
	}
	outputFlag(cmd, &format)
	return cmd
}

// toStatusJSON is the status as scripts get it: empty lists and maps as [] and {}, never null.
func toStatusJSON(resp *ssipb.StatusResponse) statusJSON {
	out := statusJSON{
		ClusterID: resp.ClusterId, EtcdLeader: resp.EtcdLeader, EtcdHealthy: resp.EtcdHealthy,
		EtcdError: resp.EtcdError, EtcdEndpoints: nonNil(resp.EtcdEndpoints), ExternalEtcd: resp.ExternalEtcd,
		Members: resp.Members, SchedulerLeader: resp.SchedulerLeader, Servers: []serverJSON{},
	}
	if out.Members == nil {
		out.Members = map[string]uint32{}
	}
	if resp.ThisNode != nil {
		out.ThisNode = toNodeJSON(resp.ThisNode)
	}
	for _, s := range resp.Servers {
		out.Servers = append(out.Servers, serverJSON{Name: s.Name, Endpoint: s.EtcdEndpoint, Leader: s.Leader, Healthy: s.Healthy, Learner: s.Learner, Error: s.Error})
	}
	// etcd lists members in its own order (by member id); people and scripts
	// compare runs by name.
	sort.SliceStable(out.Servers, func(i, j int) bool { return out.Servers[i].Name < out.Servers[j].Name })
	return out
}

func printStatus(p printer, s statusJSON) error {
	w := p.w
	health := "healthy"
	if !s.EtcdHealthy {
		health = "UNHEALTHY: " + s.EtcdError
	}
	fmt.Fprintf(w, "Cluster:    %s (%s)\n", s.ClusterID, health)
	fmt.Fprintf(w, "This node:  %s (index %d, %s, %s)\n", s.ThisNode.Name, s.ThisNode.Index, s.ThisNode.Role, s.ThisNode.Addr)
	leader := s.EtcdLeader
	if leader == "" {
		leader = "none"
	}
	store := "embedded etcd"
	if s.ExternalEtcd {
		store = "external etcd " + strings.Join(s.EtcdEndpoints, ",")
	}
	fmt.Fprintf(w, "State:      %s, leader %s\n", store, leader)
	states := make([]string, 0, len(s.Members))
	for st, n := range s.Members {
		states = append(states, fmt.Sprintf("%d %s", n, st))
	}
	sort.Strings(states)
	fmt.Fprintf(w, "Members:    %s\n", strings.Join(states, ", "))
	if s.SchedulerLeader != "" {
		fmt.Fprintf(w, "Scheduler:  %s\n", s.SchedulerLeader)
	}
	fmt.Fprintln(w)
	rows := make([][]string, 0, len(s.Servers))
	for _, sv := range s.Servers {
		role := "follower"
		if sv.Leader {
			role = "leader"
		} else if sv.Learner {
			role = "learner"
		}
		health := "ok"
		if !sv.Healthy {
			health = sv.Error
		}
		rows = append(rows, []string{sv.Name, sv.Endpoint, role, health})
	}
	return p.table([]string{"SERVER", "ETCD", "ROLE", "HEALTH"}, rows)
}
