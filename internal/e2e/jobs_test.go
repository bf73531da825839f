package e2e

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/ssi-cluster/ssi/internal/devcluster"
)

type jobJSON struct {
	ID       string   `json:"id"`
	State    string   `json:"state"`
	Nodes    []string `json:"nodes"`
	ExitCode *int32   `json:"exit_code"`
}

func jobState(t *testing.T, c *devcluster.Cluster, from, id string) jobJSON {
	t.Helper()
	r := ssi(t, c, from, "jobs", "-a", "-o", "json")
	var list []jobJSON
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &list) != nil {
		t.Logf("ssi jobs on %s: %v", from, r)
		return jobJSON{}
	}
	for _, j := range list {
		if j.ID == id {
			return j
		}
	}
	return jobJSON{}
}

// TestJobsOnSimulatedHosts submits batch jobs through the real binary, checks the elected
// scheduler, and kills the scheduler's server to see another take over.
func TestJobsOnSimulatedHosts(t *testing.T) {
	c := startCluster(t, 3)
	submit := func(from string, args ...string) string {
		t.Helper()
		r := ssi(t, c, from, append([]string{"submit", "--output", "/dev/null"}, args...)...)
		if r.code != 0 || strings.TrimSpace(r.stdout) == "" {
			t.Fatalf("ssi submit: %v", r)
		}
		return strings.TrimSpace(r.stdout)
	}
	var leader string
	eventually(t, 15*time.Second, "a scheduler leader", func() bool {
		leader = getStatus(t, c, "n3").SchedulerLeader
		return leader != ""
	})
	// The server that leads etcd hands the scheduler to another (jobs.Service.campaign), told
	// by etcd's leadership signal and the election's watch rather than by polling.
	eventually(t, 10*time.Second, "the scheduler and etcd led by different servers", func() bool {
		st := getStatus(t, c, "n3")
		leader = st.SchedulerLeader
		return leader != "" && st.EtcdLeader != "" && leader != st.EtcdLeader
	})

	ok := submit("n1", "--", "true")
	bad := submit("n1", "--", "sh", "-c", "exit 3")
	for id, want := range map[string]string{ok: "completed", bad: "failed"} {
		eventually(t, 20*time.Second, "job "+id+" "+want, func() bool { return jobState(t, c, "n2", id).State == want })
	}
	if r := ssi(t, c, "n1", "submit", "--cpus", "999", "--", "true"); r.code == 0 || !strings.Contains(r.stderr, "999") {
		t.Fatalf("an impossible request was accepted: %v", r)
	}

	// Kill the scheduler's server: another server takes over and jobs still run.
	if err := c.Kill(leader); err != nil {
		t.Fatal(err)
	}
	survivor := "n1"
	if leader == "n1" {
		survivor = "n2"
	}
	start := time.Now()
	eventually(t, 15*time.Second, "a new scheduler leader", func() bool {
		l := getStatus(t, c, survivor).SchedulerLeader
		return l != "" && l != leader
	})
	t.Logf("scheduler failover took %v", time.Since(start).Round(time.Millisecond))
	after := submit(survivor, "--", "true")
	eventually(t, 20*time.Second, "a job after failover", func() bool { return jobState(t, c, survivor, after).State == "completed" })
}
