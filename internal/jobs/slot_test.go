package jobs

import (
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ssi-cluster/ssi/internal/api/jobspb"
)

// queuedAllocs lists the claimed-ahead (queued) allocations of a node, by task.
func queuedAllocs(t *testing.T, n *testNode, node string) map[string]*allocRecord {
	t.Helper()
	resp, err := n.cli.Get(ctxT(t), nodePrefix(node)+"alloc/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*allocRecord{}
	for _, kv := range resp.Kvs {
		if a, err := decode[allocRecord](kv.Value); err == nil && a.Queued {
			out[a.Task] = a
		}
	}
	return out
}

// lastQueued is the queued element furthest from starting.
func lastQueued(q map[string]*allocRecord) *allocRecord {
	var last *allocRecord
	for _, a := range q {
		if last == nil || a.Index > last.Index {
			last = a
		}
	}
	return last
}

// TestClaimedElementsAreGivenBack runs an array in one slot, which claims elements ahead of
// the one running, and checks what happens to the claimed elements when the array is held,
// when one of them is cancelled, when the agent restarts and when the node dies: none is lost,
// none runs twice unless it was requeued, a cancelled one never runs, and a queued element
// never shows as running.
func TestClaimedElementsAreGivenBack(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	n1 := c.start("n1", true, 0)
	c.start("w1", false, 1)
	dir := t.TempDir()
	const n = 80
	// The element says it ran before it sleeps, so a run cut short by a lost agent counts.
	req := cmd(dir, `echo $SSI_ARRAY_TASK_ID >> ran.log; sleep 0.3`)
	req.Array = "0-" + strconv.Itoa(n-1)
	arr := n1.submit(t, req)
	waitQueued := func(node string) map[string]*allocRecord {
		var q map[string]*allocRecord
		waitFor(t, 30*time.Second, "elements claimed ahead on "+node, func() bool {
			q = queuedAllocs(t, n1, node)
			return len(q) >= 2
		})
		return q
	}

	// Queued elements are pending, with their own reason, never running.
	q := waitQueued("w1")
	tasks := n1.tasks(t, arr)
	for id := range q {
		if ti := tasks[id]; ti != nil && ti.State == "running" {
			t.Errorf("claimed element %s shows as running", id)
		}
	}

	// Hold: the claimed elements are given back and nothing more starts.
	if _, err := n1.client.Hold(ctxT(t), &jobspb.ControlRequest{Ids: []string{arr}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the claimed elements to be given back after a hold", func() bool {
		return len(queuedAllocs(t, n1, "w1")) == 0
	})
	waitFor(t, 30*time.Second, "the running element to end", func() bool {
		for _, ti := range n1.tasks(t, arr) {
			if ti.State == "running" {
				return false
			}
		}
		return true
	})
	for id := range q {
		if ti := n1.tasks(t, arr)[id]; ti.State != "pending" || ti.Reason != "held by user" {
			t.Errorf("given-back element %s after a hold: %s", id, describe(ti))
		}
	}
	// Without -a, the list (read without the finished elements' records) shows exactly the
	// unfinished elements.
	all := n1.tasks(t, arr)
	active, err := n1.client.List(ctxT(t), &jobspb.ListRequest{Ids: []string{arr}})
	if err != nil {
		t.Fatal(err)
	}
	shown := map[string]bool{}
	for _, ti := range active.Tasks {
		shown[ti.Id] = true
		if full := all[ti.Id]; full == nil || full.State != ti.State || full.Reason != ti.Reason {
			t.Errorf("listed without -a: %s; with -a: %s", describe(ti), describe(full))
		}
	}
	for id, ti := range all {
		if unfinished := ti.State == "pending" || ti.State == "running"; unfinished != shown[id] {
			t.Errorf("element %s (%s) shown without -a: %v", id, ti.State, shown[id])
		}
	}
	if _, err := n1.client.Release(ctxT(t), &jobspb.ControlRequest{Ids: []string{arr}}); err != nil {
		t.Fatal(err)
	}

	// Cancel a claimed element: it ends as cancelled without running.
	q = waitQueued("w1")
	victim := lastQueued(q).Task
	if _, err := n1.client.Cancel(ctxT(t), &jobspb.ControlRequest{Ids: []string{victim}}); err != nil {
		t.Fatal(err)
	}
	n1.waitState(t, victim, 30*time.Second, "cancelled")

	// Agent restart (kill -9): its claims that never started are given back, the element it
	// ran is requeued.
	q = waitQueued("w1")
	c.nodes["w1"].crash()
	c.start("w1", false, 1)
	waitFor(t, 30*time.Second, "the old agent's claims to be given back", func() bool {
		now := queuedAllocs(t, n1, "w1")
		for id, a := range q {
			if b := now[id]; b != nil && b.Start.Equal(a.Start) {
				return false
			}
		}
		return true
	})

	// Node death: its claims end as node_fail and are requeued, and run on another node.
	q = waitQueued("w1")
	c.start("w2", false, 1)
	c.nodes["w1"].crash()
	c.setAlive("w1", false)
	for id := range q {
		waitFor(t, 30*time.Second, "claimed element "+id+" of the lost node to be requeued", func() bool {
			ti := n1.tasks(t, arr)[id]
			return ti.Attempts >= 1 || ti.State == "completed"
		})
	}

	var final map[string]*jobspb.TaskInfo
	waitFor(t, 120*time.Second, "the array to end", func() bool {
		final = n1.tasks(t, arr)
		for _, ti := range final {
			if ti.State == "pending" || ti.State == "running" {
				return false
			}
		}
		return true
	})
	counts := map[string]int{}
	for _, line := range strings.Fields(readFile(t, filepath.Join(dir, "ran.log"))) {
		counts[arr+"_"+line]++
	}
	var ids []string
	for id := range final {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		ti := final[id]
		switch {
		case id == victim:
			if ti.State != "cancelled" || counts[id] != 0 {
				t.Errorf("cancelled claimed element %s: %s, ran %d times", id, describe(ti), counts[id])
			}
		case ti.State != "completed":
			t.Errorf("element %s: %s", id, describe(ti))
		case counts[id] < 1 || counts[id] > 1+int(ti.Attempts):
			// A requeued attempt may or may not have run (a claim lost with its node had not).
			t.Errorf("element %s ran %d times with %d requeued attempts", id, counts[id], ti.Attempts)
		}
	}
}

// TestLeaderFailoverMidChainsExactlyOnce kills the scheduler leader while few slots run long
// chains with elements claimed ahead: the new leader must neither start a claimed element
// again nor lose one, and no element is requeued.
func TestLeaderFailoverMidChainsExactlyOnce(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	s1 := c.start("s1", true, 0)
	s2 := c.start("s2", true, 0)
	c.start("w1", false, 2)
	first := c.leader()
	other := s2
	if first == s2 {
		other = s1
	}
	dir := t.TempDir()
	const n = 400
	req := cmd(dir, `echo $SSI_ARRAY_TASK_ID >> ran.log`)
	req.Array = "0-" + strconv.Itoa(n-1)
	id := other.submit(t, req)
	waitFor(t, 30*time.Second, "elements claimed ahead", func() bool { return len(queuedAllocs(t, other, "w1")) > 0 })
	waitFor(t, 60*time.Second, "a third of the array to finish", func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "ran.log"))
		return strings.Count(string(b), "\n") >= n/3
	})
	crashLeaderMidArray(t, c, first, other, id, dir, n, 120*time.Second)
}

// TestExit85InChainRestartsInPlace has array elements in a slot's chain ask for a requeue
// (exit 85) on their first run: each restarts in place with its checkpoint directory, once,
// and every other element runs once.
func TestExit85InChainRestartsInPlace(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	n1 := c.start("n1", true, 0)
	c.start("w1", false, 1)
	dir := t.TempDir()
	const n = 60
	req := cmd(dir, `
echo "$SSI_ARRAY_TASK_ID $SSI_RESTART_COUNT $(cat "$SSI_CHECKPOINT_DIR/mark" 2>/dev/null)" >> ran.log
if [ $((SSI_ARRAY_TASK_ID % 7)) = 3 ] && [ "$SSI_RESTART_COUNT" = 0 ]; then
	echo kept > "$SSI_CHECKPOINT_DIR/mark"
	exit 85
fi`)
	req.Array = "0-" + strconv.Itoa(n-1)
	arr := n1.submit(t, req)
	waitFor(t, 30*time.Second, "elements claimed ahead", func() bool { return len(queuedAllocs(t, n1, "w1")) > 0 })
	var final map[string]*jobspb.TaskInfo
	waitFor(t, 60*time.Second, "the array to end", func() bool {
		final = n1.tasks(t, arr)
		for _, ti := range final {
			if ti.State == "pending" || ti.State == "running" {
				return false
			}
		}
		return len(final) == n
	})
	runs := map[int][]string{}
	for _, line := range strings.Split(strings.TrimSpace(readFile(t, filepath.Join(dir, "ran.log"))), "\n") {
		f := strings.Fields(line)
		i, _ := strconv.Atoi(f[0])
		runs[i] = append(runs[i], strings.Join(f[1:], " "))
	}
	for i := range n {
		ti := final[arr+"_"+strconv.Itoa(i)]
		want := []string{"0"}
		attempts := uint32(0)
		if i%7 == 3 {
			want, attempts = []string{"0", "1 kept"}, 1
		}
		if ti.State != "completed" || ti.Attempts != attempts || !slices.Equal(runs[i], want) {
			t.Errorf("element %d: %s, %d attempts, runs %q (want %q)", i, describe(ti), ti.Attempts, runs[i], want)
		}
	}
}
