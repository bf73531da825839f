package jobs

import (
	"os"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ssi-cluster/ssi/internal/api/jobspb"
	"github.com/ssi-cluster/ssi/internal/api/ssipb"
)

// benchArray runs arrays of `true` on three nodes (all servers, as ssi dev makes them) of
// cpus cpus each, in this process, over a real etcd, and reports jobs per second from submit
// until the array has moved to history.
func benchArray(b *testing.B, tasks int, cpusMilli int64) {
	c := newCluster(b)
	n1 := c.start("n1", true, 2)
	c.start("n2", true, 2)
	c.start("n3", true, 2)
	dir := b.TempDir()
	total := 0
	var ids []string
	cpu0, self0 := cpuTime(), selfCPU()
	rev0 := etcdRev(b, n1)
	start := time.Now()
	for b.Loop() {
		req := cmd(dir, "")
		req.Args = ssipb.ByteWords([]string{"true"})
		req.Array = "0-" + strconv.Itoa(tasks-1)
		req.CpusMilli = cpusMilli
		id := n1.submit(b, req)
		waitFor(b, 10*time.Minute, "the array to finish", func() bool {
			resp, err := n1.cli.Get(ctxT(b), histKey(id), clientv3CountOnly()...)
			return err == nil && resp.Count == 1
		})
		total += tasks
		ids = append(ids, id)
	}
	b.ReportMetric(float64(total)/time.Since(start).Seconds(), "jobs/s")
	// CPU per job (the agents, etcd and the jobs themselves) is steadier than wall time on a
	// shared machine.
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/1000/float64(total), "cpu-ms/job")
	b.ReportMetric(float64((selfCPU()-self0).Microseconds())/1000/float64(total), "agent-cpu-ms/job")
	// Every etcd write (transaction) adds one revision.
	b.ReportMetric(float64(etcdRev(b, n1)-rev0)/float64(total), "writes/job")
	// A change that made elements fail fast would look like a gain.
	for _, id := range ids {
		completed := 0
		for _, ti := range n1.tasks(b, id) {
			if ti.State == "completed" {
				completed++
			}
		}
		if completed != tasks {
			b.Fatalf("array %s: %d of %d elements completed", id, completed, tasks)
		}
	}
}

// BenchmarkArray10kTrue is the end-to-end goal: a 10,000-task array of true on a 3-node
// cluster with 2 cpus per node, each task asking for the default 1 cpu.
func BenchmarkArray10kTrue(b *testing.B) { benchArray(b, 10000, 0) }

// BenchmarkArray10kTrueTenthCPU is the same with --cpus 0.1, so up to 60 tasks run at once.
func BenchmarkArray10kTrueTenthCPU(b *testing.B) { benchArray(b, 10000, 100) }

// cpuTime is the user and system time of this process and its reaped children.
func cpuTime() time.Duration {
	var self, children syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &children)
	total := time.Duration(0)
	for _, ru := range []syscall.Rusage{self, children} {
		total += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	return total
}

// selfCPU is the user and system time of this process alone: agents and etcd.
func selfCPU() time.Duration {
	var self syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	return time.Duration(self.Utime.Nano() + self.Stime.Nano())
}

// BenchmarkSubmitRPC is the agent's share of ssi submit: one Submit call over the agent's
// Unix socket, from the caller's identity to the job stored in etcd. The job is held so that
// nothing runs.
func BenchmarkSubmitRPC(b *testing.B) {
	c := newCluster(b)
	n1 := c.start("n1", true, 2)
	dir := b.TempDir()
	req := cmd(dir, "true")
	req.Env = ssipb.ByteWords(os.Environ())
	req.Hold = true
	var lat []time.Duration
	for b.Loop() {
		t := time.Now()
		n1.submit(b, req)
		lat = append(lat, time.Since(t))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "median-ms")
}

func etcdRev(b *testing.B, n *testNode) int64 {
	resp, err := n.cli.Get(ctxT(b), "/", clientv3.WithCountOnly())
	if err != nil {
		b.Fatal(err)
	}
	return resp.Header.Revision
}

// BenchmarkListArray10k is the agent's share of ssi jobs ID on a held 10,000-element array:
// every element is pending and listed. ssi jobs is polled while arrays run, so its cost
// counts against their throughput.
func BenchmarkListArray10k(b *testing.B) {
	c := newCluster(b)
	n1 := c.start("n1", true, 2)
	req := cmd(b.TempDir(), "true")
	req.Array = "0-9999"
	req.Hold = true
	id := n1.submit(b, req)
	for b.Loop() {
		resp, err := n1.client.List(ctxT(b), &jobspb.ListRequest{Ids: []string{id}})
		if err != nil || len(resp.Tasks) != 10000 {
			b.Fatalf("%d tasks, %v", len(resp.GetTasks()), err)
		}
	}
}
