package jobs

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/ssi-cluster/ssi/internal/api/jobspb"
	"github.com/ssi-cluster/ssi/internal/api/ssipb"
	"github.com/ssi-cluster/ssi/internal/sched"
)

func TestBatchJobRunsWithOutputFile(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	n1 := c.start("n1", true, 2)
	c.start("n2", false, 2)
	dir := t.TempDir()

	id := n1.submit(t, cmd(dir, `echo "hello $SSI_JOB_ID $SSI_TASK_ID/$SSI_NTASKS on $SSI_NODELIST in $PWD"; echo oops >&2; exit 3`))
	ti := n1.waitState(t, id, 20*time.Second, "failed")
	if !ti.HasExitCode || ti.ExitCode != 3 || len(ti.Nodes) != 1 || ti.StartUnixMs == 0 || ti.EndUnixMs < ti.StartUnixMs {
		t.Fatalf("task: %s %+v", describe(ti), ti)
	}
	out := readFile(t, filepath.Join(dir, "ssi-"+id+".out"))
	if want := "hello " + id + " 0/1 on " + ti.Nodes[0] + " in " + dir + "\noops\n"; out != want {
		t.Fatalf("output %q, want %q", out, want)
	}

	// Separate files with patterns; the history keeps the usage. The job holds more memory
	// than this process (all the agents) ever did, so its peak is measured on any host: twice
	// as much, as this process goes on growing meanwhile (by more than 32 MiB once, under the
	// race detector, and the peak was not recorded).
	var self syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &self); err != nil {
		t.Fatal(err)
	}
	block := 2*uint64(self.Maxrss)*1024 + 64<<20
	req := cmd(dir, fmt.Sprintf("echo out; echo err >&2; dd if=/dev/zero of=/dev/null bs=%d count=1 2>/dev/null", block))
	req.Output, req.Error = []byte("o-%j-%x.txt"), []byte("sub/e-%A-%a-%u.txt")
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	req.Name = "patterns"
	id2 := n1.submit(t, req)
	n1.waitState(t, id2, 20*time.Second, "completed")
	if got := readFile(t, filepath.Join(dir, "o-"+id2+"-patterns.txt")); got != "out\n" {
		t.Errorf("stdout file holds %q", got)
	}
	if got := readFile(t, filepath.Join(dir, "sub", "e-"+id2+"-0-root.txt")); got != "err\n" {
		t.Errorf("stderr file holds %q", got)
	}
	hist, err := n1.client.History(ctxT(t), &jobspb.HistoryRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var found *jobspb.TaskInfo
	for _, h := range hist.Tasks {
		if h.Id == id2 {
			found = h
		}
	}
	if found == nil || found.MaxRssBytes < block || found.State != "completed" || len(found.Nodes) != 1 {
		t.Fatalf("history of %s: %+v", id2, found)
	}

	// A command that does not exist fails like a shell would say, in the job's error output.
	bad := n1.submit(t, &jobspb.SubmitRequest{Args: [][]byte{[]byte("no-such-command-xyz")}, Cwd: []byte(dir), Env: [][]byte{[]byte("PATH=/bin")}})
	ti = n1.waitState(t, bad, 20*time.Second, "failed")
	if ti.ExitCode != 127 || !strings.Contains(readFile(t, filepath.Join(dir, "ssi-"+bad+".out")), "no-such-command-xyz: command not found") {
		t.Fatalf("missing command: %s", describe(ti))
	}
}

func TestScriptWithArguments(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	n1 := c.start("n1", true, 2)
	dir := t.TempDir()
	req := &jobspb.SubmitRequest{
		Script:     []byte("#!/bin/sh\n#SSI --name ignored-by-the-server\necho \"script $1 $2 $SSI_JOB_NAME\"\n"),
		ScriptName: []byte("/some/where/run.sh"), Args: ssipb.ByteWords([]string{"a", "b c"}), Cwd: []byte(dir),
		Env: [][]byte{[]byte("PATH=/bin:/usr/bin")},
	}
	id := n1.submit(t, req)
	n1.waitState(t, id, 20*time.Second, "completed")
	if got := readFile(t, filepath.Join(dir, "ssi-"+id+".out")); got != "script a b c run.sh\n" {
		t.Fatalf("script output %q", got)
	}
}

// TestArgumentsEnvironmentAndPathsAreBytes checks that what the kernel takes as bytes reaches
// the job as submitted, UTF-8 or not: arguments, environment, the submit directory and the
// output file's name, and that a command named by such bytes that fails still lists.
func TestArgumentsEnvironmentAndPathsAreBytes(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	n1 := c.start("n1", true, 2)
	dir := filepath.Join(t.TempDir(), "caf\xe9")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	req := cmd(dir, `printf '%s|%s|%s' "$1" "$X" "$(pwd)" > got`)
	req.Args = append(req.Args, []byte("sh"), []byte("a\xff b"))
	req.Env = append(req.Env, []byte("X=\xfe\x01"))
	req.Output = []byte("out-\xfd-%j")
	id := n1.submit(t, req)
	n1.waitState(t, id, 20*time.Second, "completed")
	if got, want := readFile(t, filepath.Join(dir, "got")), "a\xff b|\xfe\x01|"+dir; got != want {
		t.Errorf("the job saw %q, want %q", got, want)
	}
	if _, err := os.Stat(filepath.Join(dir, "out-\xfd-"+id)); err != nil {
		t.Errorf("output file: %v", err)
	}
	show, err := n1.client.Show(ctxT(t), &jobspb.ShowRequest{Id: id})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.EqualFunc(show.Command, req.Args, func(a, b []byte) bool { return string(a) == string(b) }) || string(show.Cwd) != dir ||
		string(show.Output) != filepath.Join(dir, "out-\xfd-%j") {
		t.Errorf("ssi job show gives command %q in %q, output %q", show.Command, show.Cwd, show.Output)
	}

	bad := n1.submit(t, &jobspb.SubmitRequest{Args: [][]byte{[]byte("/no/such/\xff")}, Cwd: []byte(dir), Env: [][]byte{[]byte("PATH=/bin")}})
	ti := n1.waitState(t, bad, 20*time.Second, "failed")
	if ti.ExitCode != 127 || ti.Name != "?" {
		t.Errorf("a missing command named by non-UTF-8 bytes: %s, named %q", describe(ti), ti.Name)
	}
}

// TestJobStartsWithTheSubmittersLimits checks that a job's processes start with the resource
// limits of the process that submitted it, another user's, not the agent's.
func TestJobStartsWithTheSubmittersLimits(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	n1 := c.start("n1", true, 2)
	dir := t.TempDir()
	if err := os.Chown(dir, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	req := cmd(dir, `echo $(ulimit -Sc) $(ulimit -Hc) $(ulimit -Ss) $(ulimit -Sn) $(ulimit -Hn) > got`)
	b, _ := protojson.Marshal(req)
	limits := fmt.Sprintf("%d:0:0,%d:%d:%d,%d:100:200", syscall.RLIMIT_CORE, syscall.RLIMIT_STACK, 2<<20, uint64(1<<64-1), syscall.RLIMIT_NOFILE)
	out, err := runAsWithUmask(t, nobody, nobody, "", n1.socket, "submit", string(b), envClientRlimits+"="+limits)
	if err != nil {
		t.Fatal(err)
	}
	var sub struct {
		JobID string `json:"job_id"`
	}
	if err := json.Unmarshal([]byte(out), &sub); err != nil || sub.JobID == "" {
		t.Fatalf("submit as nobody: %q %v", out, err)
	}
	n1.waitState(t, sub.JobID, 20*time.Second, "completed")
	if got, want := readFile(t, filepath.Join(dir, "got")), "0 0 2048 100 200\n"; got != want {
		t.Errorf("the job's limits: %q, want %q", got, want)
	}
}

// TestArrayWithMaxRunning checks that an array runs every element once and never more than
// %N at a time.
func TestArrayWithMaxRunning(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	n1 := c.start("n1", true, 4)
	c.start("n2", false, 4)
	dir := t.TempDir()
	req := cmd(dir, `echo "start $(date +%s%N)" > span.$SSI_ARRAY_TASK_ID; sleep 0.3; echo "end $(date +%s%N)" >> span.$SSI_ARRAY_TASK_ID`)
	req.Array = "1-7:2,20%2"
	id := n1.submit(t, req)
	for _, idx := range []int{1, 3, 5, 7, 20} {
		n1.waitState(t, fmt.Sprintf("%s_%d", id, idx), 30*time.Second, "completed")
	}
	type edge struct {
		at    int64
		delta int
	}
	var edges []edge
	for _, idx := range []int{1, 3, 5, 7, 20} {
		var start, end int64
		if _, err := fmt.Sscanf(readFile(t, filepath.Join(dir, fmt.Sprintf("span.%d", idx))), "start %d\nend %d\n", &start, &end); err != nil {
			t.Fatalf("span of element %d: %v", idx, err)
		}
		edges = append(edges, edge{start, 1}, edge{end, -1})
	}
	sort.Slice(edges, func(a, b int) bool {
		return edges[a].at < edges[b].at || (edges[a].at == edges[b].at && edges[a].delta < edges[b].delta)
	})
	running, peak := 0, 0
	for _, e := range edges {
		running += e.delta
		peak = max(peak, running)
	}
	if peak != 2 {
		t.Fatalf("at most %d elements ran at once, want exactly 2 (the %%2 limit)", peak)
	}
	all := n1.tasks(t, id)
	if len(all) != 5 {
		t.Fatalf("array lists %d tasks, want 5: %v", len(all), all)
	}
	// The finished array moved to history, and its elements still show.
	waitFor(t, 10*time.Second, "the array to move to history", func() bool {
		resp, err := n1.cli.Get(ctxT(t), histKey(id))
		return err == nil && len(resp.Kvs) == 1
	})
	show, err := n1.client.Show(ctxT(t), &jobspb.ShowRequest{Id: id + "_5"})
	if err != nil || len(show.Tasks) != 1 || show.Tasks[0].State != "completed" {
		t.Fatalf("show %s_5: %v %v", id, show, err)
	}
}

func TestDependencies(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	n1 := c.start("n1", true, 4)
	dir := t.TempDir()
	first := n1.submit(t, cmd(dir, `sleep 0.5; date +%s%N > first.end`))
	after := cmd(dir, `date +%s%N > second.start`)
	after.After = []string{first}
	second := n1.submit(t, after)
	// Held until its dependents are in: a dependency that already failed is refused at
	// submit (tested below), and an unheld `exit 1` can end before the next submit.
	failingReq := cmd(dir, `exit 1`)
	failingReq.Hold = true
	failing := n1.submit(t, failingReq)
	never := cmd(dir, `touch never.ran`)
	never.After = []string{failing}
	neverID := n1.submit(t, never)
	anyReq := cmd(dir, `touch any.ran`)
	anyReq.AfterAny = []string{failing}
	anyID := n1.submit(t, anyReq)
	if r, err := n1.client.Release(ctxT(t), &jobspb.ControlRequest{Ids: []string{failing}}); err != nil || len(r.Results) != 1 || r.Results[0].Error != "" {
		t.Fatalf("release %s: %v %v", failing, r, err)
	}

	n1.waitState(t, second, 20*time.Second, "completed")
	n1.waitState(t, anyID, 20*time.Second, "completed")
	var end, start int64
	fmt.Sscan(readFile(t, filepath.Join(dir, "first.end")), &end)
	fmt.Sscan(readFile(t, filepath.Join(dir, "second.start")), &start)
	if start < end {
		t.Fatalf("the dependent started %dns before its dependency ended", end-start)
	}
	var ti *jobspb.TaskInfo
	waitFor(t, 10*time.Second, "the never-runnable reason", func() bool {
		ti = n1.tasks(t, neverID)[neverID]
		return ti.State == "pending" && ti.NeverRunnable
	})
	if !strings.Contains(ti.Reason, "dependency "+failing+" failed: never runnable") {
		t.Fatalf("reason %q", ti.Reason)
	}
	if _, err := os.Stat(filepath.Join(dir, "never.ran")); err == nil {
		t.Fatal("a job ran although its dependency failed")
	}

	// Submit refuses dependencies that can never be met.
	for _, tc := range []struct {
		after, afterAny []string
		want            string
	}{
		{after: []string{"999999"}, want: "dependency 999999 does not exist"},
		{after: []string{failing}, want: "already ended as failed"},
		{afterAny: []string{first + "_3"}, want: "has no element 3"},
		{after: []string{"x1"}, want: "is not a job id"},
	} {
		req := cmd(dir, "true")
		req.After, req.AfterAny = tc.after, tc.afterAny
		if _, err := n1.client.Submit(ctxT(t), req); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("submit --after %v --after-any %v: %v, want %q", tc.after, tc.afterAny, err, tc.want)
		}
	}
	if _, err := n1.client.Cancel(ctxT(t), &jobspb.ControlRequest{Ids: []string{neverID}}); err != nil {
		t.Fatal(err)
	}
	n1.waitState(t, neverID, 10*time.Second, "cancelled")
}

func TestTimeLimitCancelSignalHold(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	n1 := c.start("n1", true, 4)
	dir := t.TempDir()

	// A job that ignores TERM is killed after the grace period.
	limited := cmd(dir, `trap 'echo got TERM' TERM; while :; do sleep 0.1; done`)
	limited.TimeLimitSeconds = 1
	limitedID := n1.submit(t, limited)

	sleeper := n1.submit(t, cmd(dir, `trap 'echo got USR1' USR1; echo ready; i=0; while [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done`))
	waitFor(t, 10*time.Second, "the job to set its trap", func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "ssi-"+sleeper+".out"))
		return strings.HasPrefix(string(b), "ready\n")
	})
	resp, err := n1.client.Cancel(ctxT(t), &jobspb.ControlRequest{Ids: []string{sleeper}, Signal: int32(syscall.SIGUSR1)})
	if err != nil || resp.Results[0].Error != "" {
		t.Fatalf("signal: %v %v", resp, err)
	}
	waitFor(t, 10*time.Second, "the signal to arrive", func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "ssi-"+sleeper+".out"))
		return strings.Contains(string(b), "got USR1")
	})
	if ti := n1.tasks(t, sleeper)[sleeper]; ti.State != "running" {
		t.Fatalf("a signal ended the job: %s", describe(ti))
	}
	if _, err := n1.client.Cancel(ctxT(t), &jobspb.ControlRequest{Ids: []string{sleeper}}); err != nil {
		t.Fatal(err)
	}
	ti := n1.waitState(t, sleeper, 10*time.Second, "cancelled")
	if !strings.Contains(ti.Reason, "cancelled by root") {
		t.Errorf("cancel reason %q", ti.Reason)
	}

	ti = n1.waitState(t, limitedID, 20*time.Second, "timeout")
	if ti.EndUnixMs-ti.StartUnixMs < 1000 || !strings.Contains(readFile(t, filepath.Join(dir, "ssi-"+limitedID+".out")), "got TERM") {
		t.Fatalf("timeout: %s after %dms", describe(ti), ti.EndUnixMs-ti.StartUnixMs)
	}

	// Hold at submit, release, and cancel while pending.
	held := cmd(dir, "echo ran")
	held.Hold = true
	heldID := n1.submit(t, held)
	waitFor(t, 5*time.Second, "the held reason", func() bool { return n1.tasks(t, heldID)[heldID].Reason == "held by user" })
	// An id with a leading zero names the same job, as in Slurm.
	r, err := n1.client.Release(ctxT(t), &jobspb.ControlRequest{Ids: []string{"0" + heldID}})
	if err != nil || r.Results[0].Error != "" {
		t.Fatalf("release: %v %v", r, err)
	}
	n1.waitState(t, heldID, 10*time.Second, "completed")
	r, _ = n1.client.Release(ctxT(t), &jobspb.ControlRequest{Ids: []string{heldID}})
	if !strings.Contains(r.Results[0].Error, "already ended") {
		t.Errorf("release of a finished job: %q", r.Results[0].Error)
	}
	pend := cmd(dir, "touch cancelled.ran")
	pend.Hold = true
	pendID := n1.submit(t, pend)
	r, _ = n1.client.Cancel(ctxT(t), &jobspb.ControlRequest{Ids: []string{pendID + "_1"}})
	if !strings.Contains(r.Results[0].Error, "is not an array") {
		t.Errorf("cancel of an element of a plain job: %q", r.Results[0].Error)
	}
	if _, err := n1.client.Cancel(ctxT(t), &jobspb.ControlRequest{Ids: []string{pendID}}); err != nil {
		t.Fatal(err)
	}
	ti = n1.waitState(t, pendID, 10*time.Second, "cancelled")
	if !strings.Contains(ti.Reason, "before it started") {
		t.Errorf("pending cancel reason %q", ti.Reason)
	}
	show, err := n1.client.Show(ctxT(t), &jobspb.ShowRequest{Id: pendID})
	if err != nil || len(show.Events) != 1 || !strings.Contains(show.Events[0], "cancelled by root") {
		t.Fatalf("accounting trail: %v %v", show.GetEvents(), err)
	}

	// One element of a held array is released on its own, as with scontrol release 42_2.
	arr := cmd(dir, "true")
	arr.Hold, arr.Array = true, "1-3"
	arrID := n1.submit(t, arr)
	if r, err := n1.client.Release(ctxT(t), &jobspb.ControlRequest{Ids: []string{arrID + "_2"}}); err != nil || r.Results[0].Error != "" {
		t.Fatalf("release of one element of a held array: %v %v", r, err)
	}
	n1.waitState(t, arrID+"_2", 10*time.Second, "completed")
	for _, e := range []string{"_1", "_3"} {
		if ti := n1.tasks(t, arrID)[arrID+e]; ti.State != "pending" || ti.Reason != "held by user" {
			t.Errorf("%s%s after releasing only _2: %s", arrID, e, describe(ti))
		}
	}
	if r, err := n1.client.Release(ctxT(t), &jobspb.ControlRequest{Ids: []string{arrID}}); err != nil || r.Results[0].Error != "" {
		t.Fatalf("release of the array: %v %v", r, err)
	}
	n1.waitState(t, arrID+"_1", 10*time.Second, "completed")
	n1.waitState(t, arrID+"_3", 10*time.Second, "completed")
}

func TestDrainAndQueues(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	n1 := c.start("n1", true, 2)
	c.start("n2", false, 2)
	dir := t.TempDir()
	if _, err := n1.client.Drain(ctxT(t), &jobspb.DrainRequest{Node: "n2", Reason: "disk swap"}); err != nil {
		t.Fatal(err)
	}
	if _, err := n1.client.Drain(ctxT(t), &jobspb.DrainRequest{Node: "nope", Reason: "x"}); err == nil {
		t.Error("draining an unknown node worked")
	}
	if _, err := n1.client.CreateQueue(ctxT(t), &jobspb.CreateQueueRequest{Queue: &jobspb.QueueInfo{Name: "typo", Nodes: []string{"n2", "n9"}}}); err == nil || !strings.Contains(err.Error(), `unknown node "n9"`) {
		t.Errorf("a queue on an unknown node: %v", err)
	}
	if _, err := n1.client.CreateQueue(ctxT(t), &jobspb.CreateQueueRequest{Queue: &jobspb.QueueInfo{Name: "only2", Nodes: []string{"n2"}, MaxTimeSeconds: 600}}); err != nil {
		t.Fatal(err)
	}
	if _, err := n1.client.CreateQueue(ctxT(t), &jobspb.CreateQueueRequest{Queue: &jobspb.QueueInfo{Name: "only2"}}); err == nil || !strings.Contains(err.Error(), "--replace") {
		t.Errorf("creating a queue twice: %v", err)
	}
	qs, err := n1.client.ListQueues(ctxT(t), &jobspb.ListQueuesRequest{})
	if err != nil || len(qs.Queues) != 2 || !qs.Queues[0].Implicit || qs.Queues[1].Name != "only2" {
		t.Fatalf("queues: %v %v", qs, err)
	}
	var ids []string
	for range 4 {
		ids = append(ids, n1.submit(t, cmd(dir, "sleep 0.2")))
	}
	for _, id := range ids {
		if ti := n1.waitState(t, id, 20*time.Second, "completed"); ti.Nodes[0] != "n1" {
			t.Fatalf("job %s ran on draining node %s", id, ti.Nodes[0])
		}
	}
	q := cmd(dir, "echo on $SSI_NODELIST")
	q.Queue = "only2"
	qid := n1.submit(t, q)
	var ti *jobspb.TaskInfo
	waitFor(t, 10*time.Second, "the draining reason", func() bool {
		ti = n1.tasks(t, qid)[qid]
		return strings.Contains(ti.Reason, "draining (disk swap)")
	})
	if ti.State != "pending" {
		t.Fatalf("job of a drained queue: %s", describe(ti))
	}
	if _, err := n1.client.RemoveQueue(ctxT(t), &jobspb.RemoveQueueRequest{Name: "only2"}); err == nil || !strings.Contains(err.Error(), "active job") {
		t.Errorf("removing a queue in use: %v", err)
	}
	if _, err := n1.client.Resume(ctxT(t), &jobspb.DrainRequest{Node: "n2"}); err != nil {
		t.Fatal(err)
	}
	if ti := n1.waitState(t, qid, 20*time.Second, "completed"); ti.Nodes[0] != "n2" {
		t.Fatalf("queue only2 ran on %v", ti.Nodes)
	}
	waitFor(t, 10*time.Second, "the queue's jobs to move to history", func() bool {
		_, err := n1.client.RemoveQueue(ctxT(t), &jobspb.RemoveQueueRequest{Name: "only2"})
		return err == nil
	})
}

func TestSubmitRejects(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	n1 := c.start("n1", true, 4)
	dir := t.TempDir()
	for _, tc := range []struct {
		change func(*jobspb.SubmitRequest)
		want   string
	}{
		{func(r *jobspb.SubmitRequest) { r.CpusMilli = 999000 }, "could never run: needs 999 cpus"},
		{func(r *jobspb.SubmitRequest) { r.Queue = "gpu" }, "queue gpu does not exist"},
		{func(r *jobspb.SubmitRequest) { r.Array = "5-1" }, "array"},
		{func(r *jobspb.SubmitRequest) { r.Nodes = 3; r.Tasks = 3 }, "could never run"},
		{func(r *jobspb.SubmitRequest) { r.Nodes = 3; r.Tasks = 2 }, "nodes"},
		{func(r *jobspb.SubmitRequest) { r.Args = nil }, "no command given"},
		{func(r *jobspb.SubmitRequest) { r.Cwd = []byte("rel") }, "not absolute"},
		{func(r *jobspb.SubmitRequest) { r.TimeLimitSeconds = -1 }, "out of range"},
		{func(r *jobspb.SubmitRequest) { r.Output = []byte("logs/") }, "--output logs/ names a directory"},
		{func(r *jobspb.SubmitRequest) { r.Name = "two\nlines" }, "control character"},
		{func(r *jobspb.SubmitRequest) {
			r.Script, r.ScriptName, r.Args = []byte("#!/bin/sh\r\ntrue\r\n"), []byte("dos.sh"), nil
		}, "script dos.sh has DOS line breaks"},
		{func(r *jobspb.SubmitRequest) { r.Error = []byte(".") }, "--error . names a directory"},
	} {
		req := cmd(dir, "true")
		tc.change(req)
		_, err := n1.client.Submit(ctxT(t), req)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("submit %+v: %v, want an error with %q", req, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Errorf("error is not one line: %q", err)
		}
	}
	// ssi jobs ID of a job never submitted is an error, as squeue -j's; of one that exists,
	// an ordinary (here empty) listing.
	held := cmd(dir, "true")
	held.Hold = true
	id := n1.submit(t, held)
	if _, err := n1.client.List(ctxT(t), &jobspb.ListRequest{Ids: []string{"999"}}); status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), "no job 999") {
		t.Errorf("ssi jobs 999: %v", err)
	}
	if resp, err := n1.client.List(ctxT(t), &jobspb.ListRequest{Ids: []string{id}, States: []string{"running"}}); err != nil || len(resp.Tasks) != 0 {
		t.Errorf("ssi jobs --state running %s: %v %v", id, resp, err)
	}
}

// TestNodeLossRequeues kills a node running two jobs: the requeueable one runs again
// elsewhere, the other ends as node_fail.
func TestNodeLossRequeues(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	n1 := c.start("n1", true, 0)
	c.start("n2", false, 2)
	dir := t.TempDir()
	again := n1.submit(t, cmd(dir, `echo "run on $SSI_NODELIST restart $SSI_RESTART_COUNT" >> again.log; sleep 30`))
	noReq := cmd(dir, "sleep 30")
	noReq.Requeue = jobspb.SubmitRequest_REQUEUE_NO
	once := n1.submit(t, noReq)
	n1.waitState(t, once, 10*time.Second, "running")
	waitFor(t, 10*time.Second, "the first run to start", func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "again.log"))
		return string(b) == "run on n2 restart 0\n"
	})
	c.start("n3", false, 2)
	c.nodes["n2"].crash()
	c.setAlive("n2", false)
	ti := n1.waitState(t, once, 15*time.Second, "node_fail")
	if !strings.Contains(ti.Reason, "n2") {
		t.Errorf("node_fail reason %q", ti.Reason)
	}
	var run *jobspb.TaskInfo
	waitFor(t, 15*time.Second, "the requeued job to run on n3", func() bool {
		run = n1.tasks(t, again)[again]
		return run.State == "running" && run.Nodes[0] == "n3"
	})
	if run.Attempts != 1 {
		t.Errorf("attempts %d, want 1", run.Attempts)
	}
	var log string
	defer func() {
		if t.Failed() {
			t.Logf("again.log: %q", log)
		}
	}()
	waitFor(t, 10*time.Second, "the second run's output", func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "again.log"))
		log = string(b)
		return log == "run on n2 restart 0\nrun on n3 restart 1\n"
	})
	show, err := n1.client.Show(ctxT(t), &jobspb.ShowRequest{Id: again})
	if err != nil || len(show.Attempts) != 1 || show.Attempts[0].State != "node_fail" {
		t.Fatalf("attempts: %v %v", show.GetAttempts(), err)
	}
	if _, err := n1.client.Cancel(ctxT(t), &jobspb.ControlRequest{Ids: []string{again}}); err != nil {
		t.Fatal(err)
	}
	n1.waitState(t, again, 10*time.Second, "cancelled")
}

func TestExit85RequeuesKeepingCheckpoint(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	n1 := c.start("n1", true, 2)
	dir := t.TempDir()
	id := n1.submit(t, cmd(dir, `
echo "$SSI_CHECKPOINT_DIR" > ckpt.path
n=$(cat "$SSI_CHECKPOINT_DIR/step" 2>/dev/null || echo 0)
echo "step $n restart $SSI_RESTART_COUNT"
n=$((n+1)); echo $n > "$SSI_CHECKPOINT_DIR/step"
[ $n -ge 3 ] && exit 0
exit 85`))
	ti := n1.waitState(t, id, 20*time.Second, "completed")
	if ti.Attempts != 2 {
		t.Errorf("attempts %d, want 2", ti.Attempts)
	}
	if got := readFile(t, filepath.Join(dir, "ssi-"+id+".out")); got != "step 0 restart 0\nstep 1 restart 1\nstep 2 restart 2\n" {
		t.Fatalf("output %q", got)
	}
	ckpt := strings.TrimSpace(readFile(t, filepath.Join(dir, "ckpt.path")))
	if !strings.HasPrefix(ckpt, filepath.Join(c.tune.spoolDir, "n1", "ckpt", "0")+"/") {
		t.Fatalf("checkpoint directory %q is not in root's directory of the node's spool", ckpt)
	}
	// Emptied for the next task once this one ended for good.
	waitFor(t, 5*time.Second, "the checkpoint directory to be emptied", func() bool {
		names, err := os.ReadDir(ckpt)
		return err == nil && len(names) == 0
	})
}

// TestParallelJob runs a gang across two nodes, then one whose first task fails, which ends
// the others unless --no-kill.
func TestParallelJob(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	n1 := c.start("n1", true, 2)
	c.start("n2", false, 2)
	dir := t.TempDir()
	req := cmd(dir, `echo "$SSI_TASK_ID/$SSI_NTASKS $SSI_NODELIST" > rank.$SSI_TASK_ID`)
	req.Nodes, req.Tasks, req.CpusMilli = 2, 4, 500
	id := n1.submit(t, req)
	ti := n1.waitState(t, id, 20*time.Second, "completed")
	if !slices.Equal(ti.Nodes, []string{"n1", "n2"}) {
		t.Fatalf("nodes %v", ti.Nodes)
	}
	for r := range 4 {
		if got := readFile(t, filepath.Join(dir, "rank."+strconv.Itoa(r))); got != fmt.Sprintf("%d/4 n1,n2\n", r) {
			t.Errorf("rank %d wrote %q", r, got)
		}
	}
	// A task killed by a signal says so: its exit code alone (137) reads like "exit 137".
	killed := n1.submit(t, cmd(dir, `kill -9 $$`))
	if ti := n1.waitState(t, killed, 20*time.Second, "failed"); ti.ExitCode != 137 || ti.Reason != "killed by signal 9 (SIGKILL)" {
		t.Errorf("a job killed by SIGKILL: %s", describe(ti))
	}
	// --nodes alone is one task per node, as Slurm's -N.
	perNode := cmd(dir, `echo "$SSI_NTASKS $SSI_NODELIST" > pernode.$SSI_TASK_ID`)
	perNode.Nodes = 2
	pid := n1.submit(t, perNode)
	n1.waitState(t, pid, 20*time.Second, "completed")
	for r := range 2 {
		if got := readFile(t, filepath.Join(dir, "pernode."+strconv.Itoa(r))); got != "2 n1,n2\n" {
			t.Errorf("--nodes 2 alone: rank %d wrote %q", r, got)
		}
	}
	gang := cmd(dir, `if [ "$SSI_TASK_ID" = 3 ]; then sleep 0.3; exit 7; fi; sleep 30`)
	gang.Nodes, gang.Tasks = 2, 4
	gid := n1.submit(t, gang)
	ti = n1.waitState(t, gid, 20*time.Second, "failed")
	if ti.ExitCode != 7 || ti.EndUnixMs-ti.StartUnixMs > 15000 {
		t.Fatalf("gang: %s after %dms", describe(ti), ti.EndUnixMs-ti.StartUnixMs)
	}
}

// TestLeaderFailoverExactlyOnce kills the scheduler leader in the middle of an array and
// checks that every element ran exactly once.
func TestLeaderFailoverExactlyOnce(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	s1 := c.start("s1", true, 0)
	s2 := c.start("s2", true, 0)
	c.start("w1", false, 4)
	c.start("w2", false, 4)
	first := c.leader()
	other := s2
	if first == s2 {
		other = s1
	}
	dir := t.TempDir()
	const n = 300
	req := cmd(dir, `echo $SSI_ARRAY_TASK_ID >> ran.log`)
	req.Array = "0-" + strconv.Itoa(n-1)
	req.CpusMilli = 100
	id := other.submit(t, req)
	waitFor(t, 30*time.Second, "a third of the array to finish", func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "ran.log"))
		return strings.Count(string(b), "\n") >= n/3
	})
	crashLeaderMidArray(t, c, first, other, id, dir, n, 60*time.Second)
}

// crashLeaderMidArray kills the scheduler leader first while the n-element array id runs
// (each element appends its index to dir/ran.log), and checks that other takes over and that
// every element ran exactly once and completed without a retry.
func crashLeaderMidArray(t *testing.T, c *cluster, first, other *testNode, id, dir string, n int, finishWithin time.Duration) {
	t.Helper()
	first.crash()
	if c.leader() != other {
		t.Fatal("the other server did not take over")
	}
	waitFor(t, finishWithin, "the array to finish", func() bool {
		resp, err := other.cli.Get(ctxT(t), histKey(id))
		return err == nil && len(resp.Kvs) == 1
	})
	counts := map[string]int{}
	for _, line := range strings.Fields(readFile(t, filepath.Join(dir, "ran.log"))) {
		counts[line]++
	}
	for i := range n {
		if c := counts[strconv.Itoa(i)]; c != 1 {
			t.Errorf("element %d ran %d times", i, c)
		}
	}
	tasks := other.tasks(t, id)
	for _, ti := range tasks {
		if ti.State != "completed" || ti.Attempts != 0 {
			t.Errorf("%s: %s, %d attempts", ti.Id, describe(ti), ti.Attempts)
		}
	}
	if len(tasks) != n {
		t.Errorf("%d tasks listed, want %d", len(tasks), n)
	}
}

// nobody is the unprivileged user the tests submit as.
const nobody = 65534

// submitAsNobody submits req from a client process of uid and gid nobody with umask (octal;
// "" keeps the test's), so that the kernel reports that user, into dir, which it gives to
// nobody first; it returns the job id.
func submitAsNobody(t *testing.T, n *testNode, dir, umask string, req *jobspb.SubmitRequest) string {
	t.Helper()
	if err := os.Chown(dir, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	b, _ := protojson.Marshal(req)
	out, err := runAsWithUmask(t, nobody, nobody, umask, n.socket, "submit", string(b))
	if err != nil {
		t.Fatal(err)
	}
	var sub struct {
		JobID string `json:"job_id"`
	}
	if err := json.Unmarshal([]byte(out), &sub); err != nil || sub.JobID == "" {
		t.Fatalf("submit as nobody: %q %v", out, err)
	}
	return sub.JobID
}

// TestTasksGetTheUsersUmask runs two elements one after the other as nobody with umask 027:
// the files each one creates and its output file get that umask and belong to nobody, so the
// thread that opens the outputs as the user and forks the task (as root's file identity) has
// switched back for the second.
func TestTasksGetTheUsersUmask(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	n1 := c.start("n1", true, 2)
	dir := t.TempDir()
	req := cmd(dir, `touch made.$SSI_ARRAY_TASK_ID`)
	req.Array = "0-1%1"
	jobID := submitAsNobody(t, n1, dir, "027", req)
	for i := range 2 {
		id := fmt.Sprintf("%s_%d", jobID, i)
		n1.waitState(t, id, 20*time.Second, "completed")
		for _, name := range []string{fmt.Sprintf("made.%d", i), "ssi-" + id + ".out"} {
			var st syscall.Stat_t
			if err := syscall.Stat(filepath.Join(dir, name), &st); err != nil {
				t.Fatal(err)
			}
			if st.Uid != nobody || st.Mode&0o777 != 0o640 {
				t.Errorf("%s: uid %d mode %#o, want uid %d mode 0640", name, st.Uid, st.Mode&0o777, nobody)
			}
		}
	}
}

// TestPermissionsBetweenUsers submits as uid 65534 (through a client process of that user,
// so the kernel reports its uid), checks the job runs as that user with output it owns, and
// that each user may control only their own jobs.
func TestPermissionsBetweenUsers(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	n1 := c.start("n1", true, 2)
	dir := t.TempDir()
	id := submitAsNobody(t, n1, dir, "", cmd(dir, `id -u; sleep 30`))
	ti := n1.waitState(t, id, 10*time.Second, "running")
	if ti.Uid != nobody {
		t.Fatalf("job of nobody recorded uid %d", ti.Uid)
	}
	outFile := filepath.Join(dir, "ssi-"+id+".out")
	waitFor(t, 10*time.Second, "the job's output", func() bool {
		b, _ := os.ReadFile(outFile)
		return string(b) == "65534\n"
	})
	var st syscall.Stat_t
	if err := syscall.Stat(outFile, &st); err != nil || st.Uid != nobody {
		t.Fatalf("output file owned by uid %d (%v), want %d", st.Uid, err, nobody)
	}

	rootJob := n1.submit(t, cmd(t.TempDir(), "sleep 30"))
	for _, op := range []string{"cancel", "hold"} {
		out, err := runAs(t, nobody, nobody, n1.socket, op, rootJob)
		if err != nil || !strings.Contains(out, "belongs to root: only root may ") {
			t.Errorf("%s of root's job as nobody: %q %v", op, out, err)
		}
	}
	if out, err := runAs(t, nobody, nobody, n1.socket, "drain", "n1"); err == nil || !strings.Contains(err.Error(), "only root may drain") {
		t.Errorf("drain as nobody: %q %v", out, err)
	}
	if out, err := runAs(t, nobody, nobody, n1.socket, "cancel", id); err != nil || strings.Contains(out, "error") {
		t.Errorf("nobody cancelling its own job: %q %v", out, err)
	}
	n1.waitState(t, id, 10*time.Second, "cancelled")
	resp, err := n1.client.Cancel(ctxT(t), &jobspb.ControlRequest{Ids: []string{rootJob}})
	if err != nil || resp.Results[0].Error != "" {
		t.Fatalf("root cancelling its job: %v %v", resp, err)
	}

	// Output is opened as the user: nobody cannot write into a directory of root's.
	closed := t.TempDir()
	if err := os.Chmod(closed, 0o755); err != nil {
		t.Fatal(err)
	}
	req := cmd(dir, "echo should not be written")
	req.Output = []byte(filepath.Join(closed, "out"))
	ti = n1.waitState(t, submitAsNobody(t, n1, dir, "", req), 10*time.Second, "failed")
	if !strings.Contains(ti.Reason, "permission denied") {
		t.Errorf("reason %q", ti.Reason)
	}
	if _, err := os.Stat(filepath.Join(closed, "out")); err == nil {
		t.Error("the output file was created in a directory the user may not write")
	}
}

// TestHistoryAndUsageSurviveRestart stops every node and starts new ones on the same etcd.
func TestHistoryAndUsageSurviveRestart(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	n1 := c.start("n1", true, 2)
	dir := t.TempDir()
	id := n1.submit(t, cmd(dir, "sleep 0.3"))
	n1.waitState(t, id, 10*time.Second, "completed")
	waitFor(t, 10*time.Second, "usage to be saved", func() bool {
		resp, err := n1.cli.Get(ctxT(t), keyUsage)
		if err != nil || len(resp.Kvs) == 0 {
			return false
		}
		u, err := decode[usageRecord](resp.Kvs[0].Value)
		return err == nil && u.Users["root"] > 0.2
	})
	n1.stop()
	c.setAlive("n1", false)
	n2 := c.start("n2", true, 2)
	hist, err := n2.client.History(ctxT(t), &jobspb.HistoryRequest{User: "root"})
	if err != nil || len(hist.Tasks) != 1 || hist.Tasks[0].Id != id || hist.Tasks[0].CpuTimeMs < 0 {
		t.Fatalf("history after restart: %v %v", hist, err)
	}
	next := n2.submit(t, cmd(dir, "true"))
	if next == id {
		t.Fatalf("job id %s handed out twice", id)
	}
	n2.waitState(t, next, 10*time.Second, "completed")
}

func TestInteractiveSession(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	n1 := c.start("n1", true, 2)
	dir := t.TempDir()
	stream, err := n1.client.Interactive(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	req := cmd(dir, "")
	req.Args = nil
	if err := stream.Send(&jobspb.InteractiveInput{Msg: &jobspb.InteractiveInput_Submit{Submit: req}}); err != nil {
		t.Fatal(err)
	}
	var id string
	var granted *jobspb.Granted
	for granted == nil {
		out, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		switch m := out.Msg.(type) {
		case *jobspb.InteractiveOutput_Queued:
			id = m.Queued
		case *jobspb.InteractiveOutput_Granted:
			granted = m.Granted
		}
	}
	if granted.JobId != id || len(granted.Nodes) != 1 || !slices.Contains(granted.Env, "SSI_JOB_ID="+id) {
		t.Fatalf("granted %+v", granted)
	}
	n1.waitState(t, id, 5*time.Second, "running")
	if err := stream.Send(&jobspb.InteractiveInput{Msg: &jobspb.InteractiveInput_Exit{Exit: 4}}); err != nil {
		t.Fatal(err)
	}
	out, err := stream.Recv()
	if err != nil || out.GetFinal().GetState() != "failed" || out.GetFinal().GetExitCode() != 4 {
		t.Fatalf("final: %v %v", out, err)
	}
	n1.waitState(t, id, 5*time.Second, "failed")

	// A client that goes away before its job starts cancels it.
	ctx, cancel := contextWithCancel(t)
	stream, err = n1.client.Interactive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	big := cmd(dir, "")
	big.CpusMilli = 2000
	big.Args = nil
	blocker := n1.submit(t, cmd(dir, "sleep 30"))
	n1.waitState(t, blocker, 10*time.Second, "running")
	if err := stream.Send(&jobspb.InteractiveInput{Msg: &jobspb.InteractiveInput_Submit{Submit: big}}); err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil || first.GetQueued() == "" {
		t.Fatalf("queued: %v %v", first, err)
	}
	cancel()
	n1.waitState(t, first.GetQueued(), 10*time.Second, "cancelled")
	if _, err := n1.client.Cancel(ctxT(t), &jobspb.ControlRequest{Ids: []string{blocker}}); err != nil {
		t.Fatal(err)
	}
}

func TestUsageRecordsAreCharged(t *testing.T) {
	// The pure accounting: a done record charges allocated cpus × wall time.
	d := doneRecord{User: "alice", CPUs: 500, Tasks: 4, result: result{Start: time.Unix(100, 0), End: time.Unix(110, 0)}}
	user, sec, _, ok := chargeOf(kindDone, []byte(encode(d)))
	if !ok || user != "alice" || sec != 20 {
		t.Fatalf("charge %s %v %v", user, sec, ok)
	}
	a := attemptRecord{User: "bob", CPUs: 2000, result: result{Start: time.Unix(0, 0), End: time.Unix(3, 0)}}
	user, sec, _, ok = chargeOf(kindAttempt, []byte(encode(a)))
	if !ok || user != "bob" || sec != 6 {
		t.Fatalf("charge %s %v %v", user, sec, ok)
	}
}

// TestAgentRestartFailsWhatItRan kills a node's agent (kill -9: its job keeps running) and
// starts it again: the job it had started is not started twice but ended as lost and requeued,
// and its leftover process is ended.
func TestAgentRestartFailsWhatItRan(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	n1 := c.start("n1", true, 0)
	c.start("n2", false, 2)
	dir := t.TempDir()
	id := n1.submit(t, cmd(dir, `echo "run $SSI_RESTART_COUNT pid $$" >> runs.log; sleep 30`))
	waitFor(t, 10*time.Second, "the job to start", func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "runs.log"))
		return strings.HasPrefix(string(b), "run 0 pid ")
	})
	var firstPid int
	fmt.Sscanf(readFile(t, filepath.Join(dir, "runs.log")), "run 0 pid %d", &firstPid)
	c.nodes["n2"].crash()
	if syscall.Kill(firstPid, 0) != nil {
		t.Fatal("the job died with its agent; a kill -9 of the agent leaves it running")
	}
	c.start("n2", false, 2)
	var log string
	waitFor(t, 15*time.Second, "the requeued run", func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "runs.log"))
		log = string(b)
		return strings.Count(log, "\n") == 2
	})
	if !strings.Contains(log, "run 1 pid ") {
		t.Fatalf("runs: %q", log)
	}
	waitFor(t, 10*time.Second, "the first run's process to be ended", func() bool {
		return syscall.Kill(firstPid, 0) != nil
	})
	show, err := n1.client.Show(ctxT(t), &jobspb.ShowRequest{Id: id})
	if err != nil || len(show.Attempts) != 1 || !strings.Contains(show.Attempts[0].Reason, "agent on n2 restarted") {
		t.Fatalf("attempts: %v %v", show.GetAttempts(), err)
	}
	if _, err := n1.client.Cancel(ctxT(t), &jobspb.ControlRequest{Ids: []string{id}}); err != nil {
		t.Fatal(err)
	}
	n1.waitState(t, id, 10*time.Second, "cancelled")
}

// TestChainsAreCutForOtherWork runs an array alone, which lets allocations run chains of
// elements in turn, then submits a job of higher priority: the chains must stop so that it
// starts before the array ends, and every element still runs exactly once.
func TestChainsAreCutForOtherWork(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	n1 := c.start("n1", true, 0)
	w1 := c.start("w1", false, 2)
	dir := t.TempDir()
	const n = 120
	req := cmd(dir, `sleep 0.05; echo $SSI_ARRAY_TASK_ID >> ran.log`)
	req.Array = "0-" + strconv.Itoa(n-1)
	arr := n1.submit(t, req)
	sawChain := false
	waitFor(t, 20*time.Second, "an allocation with a chain", func() bool {
		resp, err := w1.cli.Get(ctxT(t), nodePrefix("w1")+"alloc/", clientv3.WithPrefix())
		if err != nil {
			return false
		}
		for _, kv := range resp.Kvs {
			if a, err := decode[allocRecord](kv.Value); err == nil && len(a.Chain) > 0 {
				sawChain = true
			}
		}
		return sawChain
	})
	// Higher priority: it must get the next free slot, not wait for the chains.
	otherReq := cmd(dir, "echo other > other.log")
	otherReq.Priority = 10
	other := n1.submit(t, otherReq)
	otherTask := n1.waitState(t, other, 20*time.Second, "completed")
	var tasks map[string]*jobspb.TaskInfo
	waitFor(t, 30*time.Second, "the array to end", func() bool {
		tasks = n1.tasks(t, arr)
		done := 0
		for _, ti := range tasks {
			if ti.State == "completed" {
				done++
			}
		}
		return done == n
	})
	// Elements that started while the other job waited: with the chains cut, only those
	// already being handed on when the leader saw it (a couple per slot); uncut, up to a
	// whole chain per slot.
	jumped := 0
	for _, ti := range tasks {
		if ti.StartUnixMs > otherTask.SubmitUnixMs && ti.StartUnixMs < otherTask.StartUnixMs {
			jumped++
		}
	}
	if jumped > 6 {
		t.Errorf("%d elements started while a job of higher priority waited: chains were not cut", jumped)
	}
	counts := map[string]int{}
	for _, line := range strings.Fields(readFile(t, filepath.Join(dir, "ran.log"))) {
		counts[line]++
	}
	for i := range n {
		if counts[strconv.Itoa(i)] != 1 {
			t.Errorf("element %d ran %d times", i, counts[strconv.Itoa(i)])
		}
	}
}

// TestBuiltInQueueNeedsReplace checks that the built-in queue, which exists unconfigured,
// is changed only with --replace, like every other existing queue.
func TestBuiltInQueueNeedsReplace(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	n1 := c.start("n1", true, 2)
	create := func(replace bool) error {
		_, err := n1.client.CreateQueue(ctxT(t), &jobspb.CreateQueueRequest{
			Queue: &jobspb.QueueInfo{Name: sched.DefaultQueueName, MaxTimeSeconds: 60}, Replace: replace})
		return err
	}
	for _, step := range []struct {
		name    string
		replace bool
		wantErr bool
	}{
		{"unconfigured, without --replace", false, true},
		{"unconfigured, with --replace", true, false},
		{"configured, without --replace", false, true},
		{"configured, with --replace", true, false},
	} {
		err := create(step.replace)
		if step.wantErr != (err != nil) || (err != nil && (status.Code(err) != codes.AlreadyExists || !strings.Contains(err.Error(), "add --replace"))) {
			t.Errorf("%s: %v", step.name, err)
		}
	}
}
