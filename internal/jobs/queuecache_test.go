package jobs

import (
	"slices"
	"testing"
	"time"

	"github.com/ssi-cluster/ssi/internal/api/jobspb"
	"github.com/ssi-cluster/ssi/internal/sched"
)

// The cache follows queues made and removed; a submission to a queue made a moment ago is
// taken even before the cache has it, and one to a queue that does not exist is refused.
func TestQueueCache(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	c := newCluster(t)
	n1 := c.start("n1", true, 2)
	names := func() []string {
		var ns []string
		for _, q := range n1.svc.queueCache.get() {
			ns = append(ns, q.Name)
		}
		return ns
	}
	waitFor(t, 10*time.Second, "the queue cache", func() bool { return slices.Equal(names(), []string{sched.DefaultQueueName}) })

	for _, q := range []string{"fresh", "gone"} {
		if _, err := n1.client.CreateQueue(ctxT(t), &jobspb.CreateQueueRequest{Queue: &jobspb.QueueInfo{Name: q}}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "the cache to show the new queues", func() bool {
		return slices.Equal(names(), []string{sched.DefaultQueueName, "fresh", "gone"})
	})
	if _, err := n1.client.RemoveQueue(ctxT(t), &jobspb.RemoveQueueRequest{Name: "gone"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the cache to drop a removed queue", func() bool {
		return slices.Equal(names(), []string{sched.DefaultQueueName, "fresh"})
	})

	// Set back to before "fresh" existed, as a lagging watch would leave it (nothing changes
	// any more, so the watch will not correct it): the submission must still be taken.
	n1.svc.queueCache.set([]sched.Queue{{Name: sched.DefaultQueueName}})
	req := cmd(t.TempDir(), "true")
	req.Queue = "fresh"
	n1.submit(t, req)

	req.Queue = "nope"
	if _, err := n1.client.Submit(ctxT(t), req); err == nil {
		t.Error("a submission to a queue that does not exist was taken")
	}
}
