package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ssi-cluster/ssi/internal/devcluster"
)

type jobJSON struct {
	ID        string     `json:"id"`
	JobID     string     `json:"job_id"`
	State     string     `json:"state"`
	Reason    string     `json:"reason"`
	Nodes     []string   `json:"nodes"`
	ExitCode  *int32     `json:"exit_code"`
	StartTime *time.Time `json:"start_time"`
	EndTime   *time.Time `json:"end_time"`
	Attempts  int        `json:"attempts"`
}

// allJobs is ssi jobs -a -o json, seen from one node.
func allJobs(t *testing.T, c *devcluster.Cluster, from string) []jobJSON {
	t.Helper()
	r := ssi(t, c, from, "jobs", "-a", "-o", "json")
	var list []jobJSON
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &list) != nil {
		t.Fatalf("ssi jobs -a -o json on %s: %v", from, r)
	}
	return list
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
		waitJobState(t, c, "n2", id, want, 20*time.Second)
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
	waitJobState(t, c, survivor, after, "completed", 20*time.Second)
}

// TestJobModesOnSimulatedHosts goes through the job model with the real CLI inside the
// simulated hosts, as a user would: a script with #SSI lines and the job variables, an array
// with a step and a running limit, dependencies, a gang of tasks on three hosts (one failing
// ends the others, unless --no-kill), an interactive job, drain, a second real user, and a
// host lost under a running job. The submit directory is n1's private /tmp, so the tasks on
// n2 and n3 find it, and write their output to it, through /ssi/n1.
func TestJobModesOnSimulatedHosts(t *testing.T) {
	c := startCluster(t, 3)
	sh := func(node, script string) result {
		t.Helper()
		return inside(t, c, node, "timeout", "30", "sh", "-c", "cd /tmp/jobs && "+script)
	}
	must := func(script string) string {
		t.Helper()
		r := sh("n1", script)
		if r.code != 0 {
			t.Fatalf("on n1: %s: %v", script, r)
		}
		return strings.TrimSpace(r.stdout)
	}
	waitJob := func(id, want string, timeout time.Duration) jobJSON {
		t.Helper()
		return waitJobState(t, c, "n2", id, want, timeout)
	}
	if r := inside(t, c, "n1", "sh", "-c", "mkdir -p /tmp/jobs && chmod 1777 /tmp/jobs"); r.code != 0 {
		t.Fatal(r)
	}

	t.Run("a script with #SSI lines, on three hosts, with the job variables", func(t *testing.T) {
		must(`cat > job.sh <<'S'
#!/bin/sh
#SSI --nodes 3 --tasks 3 --name gang
#SSI --output vars-%j.txt
echo "$SSI_TASK_ID $SSI_NTASKS $SSI_NODELIST $SSI_JOB_ID $(pwd) $1"
S`)
		id := must("ssi submit job.sh arg1")
		waitJob(id, "completed", 30*time.Second)
		lines := strings.Split(must("sort vars-"+id+".txt"), "\n")
		want := []string{
			"0 3 n1,n2,n3 " + id + " /tmp/jobs arg1",
			"1 3 n1,n2,n3 " + id + " /ssi/n1/tmp/jobs arg1",
			"2 3 n1,n2,n3 " + id + " /ssi/n1/tmp/jobs arg1",
		}
		if strings.Join(lines, "\n") != strings.Join(want, "\n") {
			t.Fatalf("the tasks wrote %q, want %q", lines, want)
		}
	})

	t.Run("an array with a step and a running limit", func(t *testing.T) {
		id := must("ssi submit --array 0-6:3%1 --output arr-%a.out -- sh -c 'echo $SSI_JOB_ID $SSI_ARRAY_TASK_ID'")
		for _, i := range []string{"0", "3", "6"} {
			waitJob(id+"_"+i, "completed", 30*time.Second)
			if got := must("cat arr-" + i + ".out"); got != id+"_"+i+" "+i {
				t.Errorf("element %s wrote %q", i, got)
			}
		}
		if j := jobState(t, c, "n1", id+"_1"); j.ID != "" {
			t.Errorf("element 1 is not in 0-6:3 but exists: %+v", j)
		}
	})

	t.Run("dependencies", func(t *testing.T) {
		bad := must("ssi submit --output /dev/null -- false")
		waitJob(bad, "failed", 30*time.Second)
		if r := sh("n1", "ssi submit --after "+bad+" -- true"); r.code == 0 || !strings.Contains(r.stderr, "can never be met") {
			t.Errorf("--after a failed job: %v", r)
		}
		anyID := must("ssi submit --output /dev/null --after-any " + bad + " -- true")
		waitJob(anyID, "completed", 30*time.Second)
		slow := must("ssi submit --output /dev/null -- sh -c 'sleep 1; exit 2'")
		never := must("ssi submit --output /dev/null --after " + slow + " -- true")
		eventually(t, 30*time.Second, "job "+never+" never runnable", func() bool {
			return strings.Contains(must("ssi jobs -o json"), "dependency "+slow+" failed: never runnable")
		})
		must("ssi cancel " + never)
	})

	t.Run("a failing task ends its gang unless --no-kill", func(t *testing.T) {
		script := `'if [ $SSI_TASK_ID = 1 ]; then exit 7; fi; sleep 3; echo survived $SSI_TASK_ID'`
		start := time.Now()
		killed := must("ssi submit --nodes 2 --tasks 2 --output kill-%j.out -- sh -c " + script)
		kept := must("ssi submit --no-kill --nodes 2 --tasks 2 --output kept-%j.out -- sh -c " + script)
		for _, id := range []string{killed, kept} {
			if j := waitJob(id, "failed", 30*time.Second); j.ExitCode == nil || *j.ExitCode != 7 {
				t.Errorf("job %s: %+v, want exit code 7", id, j)
			}
		}
		if got := must("cat kill-" + killed + ".out"); got != "" {
			t.Errorf("the gang's other task went on after the failure: %q (after %v)", got, time.Since(start))
		}
		if got := must("cat kept-" + kept + ".out"); got != "survived 0" {
			t.Errorf("with --no-kill the other task wrote %q", got)
		}
	})

	t.Run("interactive", func(t *testing.T) {
		r := sh("n1", "echo typed | ssi submit -i --nodes 2 --tasks 2 -- sh -c 'read x; echo $x $SSI_NTASKS $SSI_NODELIST; exit 4'")
		if r.code != 4 || strings.TrimSpace(r.stdout) != "typed 2 n1,n2" && strings.TrimSpace(r.stdout) != "typed 2 n1,n3" && strings.TrimSpace(r.stdout) != "typed 2 n2,n3" {
			t.Fatalf("ssi submit -i: %v", r)
		}
		if r := sh("n1", "ssi alloc -- sh -c 'echo $SSI_JOB_ID'"); r.code != 0 || strings.TrimSpace(r.stdout) == "" {
			t.Fatalf("ssi alloc: %v", r)
		}
	})

	t.Run("drain and resume", func(t *testing.T) {
		must("ssi node drain n3 --reason 'disk swap'")
		id := must("ssi submit --output /dev/null --nodes 3 --tasks 3 -- true")
		eventually(t, 15*time.Second, "the drain in job "+id+"'s reason", func() bool {
			return strings.Contains(must("ssi jobs -o json"), "n3 could run it but is draining (disk swap)")
		})
		must("ssi node resume n3")
		waitJob(id, "completed", 30*time.Second)
	})

	t.Run("a second user", func(t *testing.T) {
		nobody := func(script string) result {
			return sh("n1", "setpriv --reuid 65534 --regid 65534 --clear-groups sh -c \""+script+"\"")
		}
		rootJob := must("ssi submit --hold --output /dev/null -- true")
		for _, op := range []string{"cancel", "hold", "release"} {
			if r := nobody("ssi " + op + " " + rootJob); r.code == 0 || !strings.Contains(r.stderr, "belongs to root: only root may "+op) {
				t.Errorf("ssi %s of root's job as nobody: %v", op, r)
			}
		}
		r := nobody("ssi submit -- sh -c 'id -u; sleep 30'")
		theirs := strings.TrimSpace(r.stdout)
		if r.code != 0 {
			t.Fatalf("nobody's submit: %v", r)
		}
		waitJob(theirs, "running", 15*time.Second)
		if got := must("stat -c %u ssi-" + theirs + ".out"); got != "65534" {
			t.Errorf("nobody's output file belongs to %s", got)
		}
		if r := nobody("ssi jobs"); r.code != 0 || !strings.Contains(r.stdout, rootJob) {
			t.Errorf("nobody does not see root's job: %v", r)
		}
		must("ssi cancel " + theirs + " " + rootJob)
		waitJob(theirs, "cancelled", 15*time.Second)
	})

	t.Run("a lost host's jobs are requeued, or end as node_fail", func(t *testing.T) {
		// The tasks on n3 write to n1's /tmp through n3's own mount: when n3 goes, they must
		// end too, not hang on that mount (they once held its /dev/fuse, keeping it open).
		requeued := must("ssi submit --output lost-%j-%t.out --nodes 3 --tasks 3 -- sh -c 'echo started; sleep 60'")
		failed := must("ssi submit --output /dev/null --no-requeue --nodes 3 --tasks 3 --cpus 0.5 -- sleep 60")
		waitJob(requeued, "running", 20*time.Second)
		waitJob(failed, "running", 20*time.Second)
		eventually(t, 10*time.Second, "the task on n3 started", func() bool {
			return sh("n1", "cat lost-"+requeued+"-2.out").stdout == "started\n"
		})
		if err := c.Kill("n3"); err != nil {
			t.Fatal(err)
		}
		waitJob(failed, "node_fail", 30*time.Second)
		waitJob(requeued, "pending", 30*time.Second)
		if got := must("ssi job show " + requeued); !strings.Contains(got, "node_fail on n1,n2,n3") {
			t.Errorf("the requeued job's earlier run is not shown: %s", got)
		}
		must("ssi cancel " + requeued)
	})
}

// TestSchedulingOnSimulatedHosts checks the scheduler's order through the CLI on a queue of
// one 2-cpu host: a time limit ends a job as timeout; a short job backfills a free cpu before
// a waiting wider job, and a long one does not (it would delay that job's reservation); and
// of two equal jobs waiting for one slot, the user with less recent usage goes first, even
// though they submitted later.
func TestSchedulingOnSimulatedHosts(t *testing.T) {
	c := startCluster(t, 3)
	if r := ssi(t, c, "n1", "queue", "create", "one", "--nodes", "n1"); r.code != 0 {
		t.Fatalf("queue create: %v", r)
	}
	submitAs := func(uid string, args ...string) string {
		t.Helper()
		cmd := []string{"timeout", "30"}
		if uid != "0" {
			cmd = append(cmd, "setpriv", "--reuid", uid, "--regid", uid, "--clear-groups")
		}
		cmd = append(cmd, "ssi", "submit", "--queue", "one", "--output", "/dev/null")
		r := inside(t, c, "n1", append(cmd, args...)...)
		if r.code != 0 {
			t.Fatalf("ssi submit %v as %s: %v", args, uid, r)
		}
		return strings.TrimSpace(r.stdout)
	}
	waitJob := func(id, want string, timeout time.Duration) jobJSON {
		t.Helper()
		return waitJobState(t, c, "n2", id, want, timeout)
	}

	t.Run("a time limit ends a job as timeout", func(t *testing.T) {
		id := submitAs("0", "--time", "2s", "--", "sleep", "60")
		j := waitJob(id, "timeout", 20*time.Second)
		if j.StartTime == nil || j.EndTime == nil || j.EndTime.Sub(*j.StartTime) > 20*time.Second { // enforced: the command alone would run 60 s
			t.Fatalf("job %s ran from %v to %v, over its 2 s limit", id, j.StartTime, j.EndTime)
		}
	})

	t.Run("backfill without delaying the waiting job", func(t *testing.T) {
		running := submitAs("0", "--cpus", "1", "--time", "30s", "--", "sleep", "10")
		waitJob(running, "running", 15*time.Second)
		wide := submitAs("0", "--cpus", "2", "--time", "1m", "--", "sleep", "1")
		long := submitAs("0", "--cpus", "1", "--time", "10m", "--", "sleep", "1")
		short := submitAs("0", "--cpus", "1", "--time", "5s", "--", "sleep", "1")
		waitJob(short, "completed", 15*time.Second)
		for _, id := range []string{wide, long} {
			if j := jobState(t, c, "n1", id); j.State != "pending" || j.Reason == "" {
				t.Errorf("job %s while the first still runs: %+v, want pending with a reason", id, j)
			}
		}
		w := waitJob(wide, "completed", 40*time.Second)
		l := waitJob(long, "completed", 40*time.Second)
		if !l.StartTime.After(*w.StartTime) && !l.StartTime.Equal(*w.StartTime) {
			t.Errorf("the long job started at %v, before the wide job it would delay (%v)", l.StartTime, w.StartTime)
		}
	})

	t.Run("fair-share: less recent usage goes first", func(t *testing.T) {
		// root has used cpu time above; nobody none.
		blocker := submitAs("0", "--cpus", "2", "--time", "1m", "--", "sleep", "3")
		waitJob(blocker, "running", 15*time.Second)
		roots := submitAs("0", "--cpus", "2", "--time", "1m", "--", "sleep", "1")
		time.Sleep(100 * time.Millisecond)
		nobodys := submitAs("65534", "--cpus", "2", "--time", "1m", "--", "sleep", "1")
		r := waitJob(roots, "completed", 40*time.Second)
		n := waitJob(nobodys, "completed", 40*time.Second)
		if !n.StartTime.Before(*r.StartTime) {
			t.Errorf("nobody's job started at %v, root's (submitted first, more usage) at %v: want nobody's first", n.StartTime, r.StartTime)
		}
	})
}

// TestFailoverMidArrayExactlyOnce kills the scheduler's server while a 1,500-element array
// runs; every element writes a line to a file on the machine's disk, which all hosts share.
// Every element must complete, and an element may have run twice only if it was requeued
// (its node was the one killed).
func TestFailoverMidArrayExactlyOnce(t *testing.T) {
	c := startCluster(t, 3)
	dir, err := os.MkdirTemp("/var/tmp", "ssi-e2e-once")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o777)
	log := filepath.Join(dir, "log")
	var leader string
	eventually(t, 15*time.Second, "the scheduler and etcd led by different servers", func() bool {
		st := getStatus(t, c, "n3")
		leader = st.SchedulerLeader
		return leader != "" && st.EtcdLeader != "" && leader != st.EtcdLeader
	})
	from := "n1"
	if leader == "n1" {
		from = "n2"
	}
	r := inside(t, c, from, "sh", "-c", "cd "+dir+" && ssi submit --array 0-1499 --output /dev/null -- sh -c 'echo $SSI_JOB_ID $SSI_RESTART_COUNT >> "+log+"'")
	array := strings.TrimSpace(r.stdout)
	if r.code != 0 {
		t.Fatalf("submit: %v", r)
	}
	eventually(t, 30*time.Second, "some elements done", func() bool {
		b, _ := os.ReadFile(log)
		return strings.Count(string(b), "\n") >= 200
	})
	if err := c.Kill(leader); err != nil {
		t.Fatal(err)
	}
	var list []jobJSON
	eventually(t, 90*time.Second, "every element completed", func() bool {
		list = nil
		for _, j := range allJobs(t, c, from) {
			if j.JobID == array {
				list = append(list, j)
			}
		}
		if len(list) != 1500 {
			return false
		}
		for _, j := range list {
			if j.State != "completed" {
				return false
			}
		}
		return true
	})
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	runs := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		id, _, _ := strings.Cut(line, " ")
		runs[id]++
	}
	requeued := 0
	for _, j := range list {
		switch {
		case runs[j.ID] == 0:
			t.Errorf("element %s is completed but never ran", j.ID)
		case runs[j.ID] > 1+j.Attempts:
			t.Errorf("element %s ran %d times with %d requeue(s)", j.ID, runs[j.ID], j.Attempts)
		}
		if j.Attempts > 0 {
			requeued++
		}
	}
	if len(runs) != 1500 {
		t.Errorf("%d distinct elements ran, want 1500", len(runs))
	}
	t.Logf("killed the scheduler's server %s; %d element(s) requeued from it", leader, requeued)
}

// waitJobState waits until node's view of job id is in state want, and returns it.
func waitJobState(t *testing.T, c *devcluster.Cluster, node, id, want string, timeout time.Duration) jobJSON {
	t.Helper()
	var j jobJSON
	eventually(t, timeout, "job "+id+" "+want, func() bool {
		j = jobState(t, c, node, id)
		return j.State == want
	})
	return j
}
