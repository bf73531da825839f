package jobs

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

func TestStepAsideSignalsWait(t *testing.T) {
	tests := []struct {
		name string
		// act makes something happen once the wait has started.
		act func(leader chan struct{}, candidates chan clientv3.WatchResponse, cancel context.CancelFunc)
		// every is the fallback interval: long, but where the test is that it ends the wait.
		every time.Duration
		want  bool
		// wantCandidates is whether the watch is still followed afterwards.
		wantCandidates bool
	}{
		{"the etcd leader changed", func(l chan struct{}, _ chan clientv3.WatchResponse, _ context.CancelFunc) { close(l) }, time.Hour, true, true},
		{"a candidate came or went", func(_ chan struct{}, c chan clientv3.WatchResponse, _ context.CancelFunc) {
			c <- clientv3.WatchResponse{}
		}, time.Hour, true, true},
		{"the watch ended", func(_ chan struct{}, c chan clientv3.WatchResponse, _ context.CancelFunc) { close(c) }, time.Hour, true, false},
		{"nothing happened", func(chan struct{}, chan clientv3.WatchResponse, context.CancelFunc) {}, 10 * time.Millisecond, true, true},
		{"the campaign ended", func(_ chan struct{}, _ chan clientv3.WatchResponse, cancel context.CancelFunc) { cancel() }, time.Hour, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			leader := make(chan struct{})
			candidates := make(chan clientv3.WatchResponse)
			g := &stepAsideSignals{
				leaderChanged: func() <-chan struct{} { return leader },
				candidates:    candidates,
				every:         tt.every,
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			armed := g.arm()
			go tt.act(leader, candidates, cancel)
			if got := g.wait(ctx, armed); got != tt.want {
				t.Errorf("wait = %v, want %v", got, tt.want)
			}
			if (g.candidates != nil) != tt.wantCandidates {
				t.Errorf("still following the watch: %v, want %v", g.candidates != nil, tt.wantCandidates)
			}
		})
	}
}

// TestStepAsideSignalsPollWithoutMember: with an external etcd there is nothing to arm, and
// the wait is the poll interval.
func TestStepAsideSignalsPollWithoutMember(t *testing.T) {
	s := &Service{t: tuning{stepAsideCheck: 10 * time.Millisecond, stepAsideFallback: time.Hour}}
	g := s.stepAsideSignals(context.Background())
	if g.arm() != nil || g.candidates != nil {
		t.Fatal("signals without an embedded member")
	}
	done := make(chan bool)
	go func() { done <- g.wait(context.Background(), nil) }()
	select {
	case got := <-done:
		if !got {
			t.Error("wait = false without cancellation")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the poll interval never ended the wait")
	}
}

// TestEtcdLeaderAloneKeepsScheduler: the server that leads etcd, as the only candidate, leads
// the scheduler and stays leader. It used to take its own election key for another
// candidate's (etcd's recipe puts a "/" after the name it is given), so alone it stepped aside
// and campaigned again in a loop, a few milliseconds a turn, busying the one member a
// second server was trying to join.
func TestEtcdLeaderAloneKeepsScheduler(t *testing.T) {
	c := newCluster(t)
	n := c.startWith("s1", true, 0, func(d *Deps) {
		d.LeadsEtcd = func() bool { return true }
		never := make(chan struct{})
		d.EtcdLeaderChanged = func() <-chan struct{} { return never }
	})
	waitFor(t, 10*time.Second, "a scheduler leader", func() bool { return n.svc.leading.Load() })
	candidate := func() int64 {
		resp, err := n.cli.Get(ctxT(t), prefixElection, clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) != 1 {
			t.Fatalf("%d candidates, want 1", len(resp.Kvs))
		}
		return resp.Kvs[0].CreateRevision
	}
	first := candidate()
	time.Sleep(time.Second)
	if !n.svc.leading.Load() {
		t.Fatal("the only server stopped leading the scheduler")
	}
	if now := candidate(); now != first {
		t.Fatalf("the election key was made again (revision %d, then %d): the server stepped aside from itself", first, now)
	}
}
