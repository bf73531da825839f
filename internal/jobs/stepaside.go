package jobs

import (
	"context"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// stepAsideSignals tells a server when stepAside's answer may have changed, so that the
// server does not ask twice a second: its embedded etcd member's leader changed, or a candidate
// joined or left the scheduler election. With an external etcd there is no leadership signal,
// and the server polls every stepAsideCheck. Events can be lost (a watch ends with its
// connection), so the server also looks every stepAsideFallback.
type stepAsideSignals struct {
	leaderChanged func() <-chan struct{}
	candidates    clientv3.WatchChan
	every         time.Duration
}

// stepAsideSignals watches the election until ctx ends.
func (s *Service) stepAsideSignals(ctx context.Context) *stepAsideSignals {
	if s.d.EtcdLeaderChanged == nil {
		return &stepAsideSignals{every: s.t.stepAsideCheck}
	}
	// A watch starts where the server is when it registers, a moment after Watch returns:
	// from a known revision, no candidate slips through that moment.
	opts := []clientv3.OpOption{clientv3.WithPrefix()}
	if resp, err := s.d.Etcd.Get(ctx, prefixElection, clientv3.WithPrefix(), clientv3.WithCountOnly(), clientv3.WithSerializable()); err == nil {
		opts = append(opts, clientv3.WithRev(resp.Header.Revision+1))
	}
	return &stepAsideSignals{
		leaderChanged: s.d.EtcdLeaderChanged,
		candidates:    s.d.Etcd.Watch(ctx, prefixElection, opts...),
		every:         s.t.stepAsideFallback,
	}
}

// arm returns what the next wait waits for. Arm before asking stepAside: a leader change
// between the question and the wait then still ends the wait.
func (g *stepAsideSignals) arm() <-chan struct{} {
	if g.leaderChanged == nil {
		return nil
	}
	return g.leaderChanged()
}

// wait returns once something may have changed, or false when ctx ends.
func (g *stepAsideSignals) wait(ctx context.Context, leaderChanged <-chan struct{}) bool {
	t := time.NewTimer(g.every)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-leaderChanged:
	case _, ok := <-g.candidates:
		if !ok {
			g.candidates = nil // the fallback interval takes over
		}
	case <-t.C:
	}
	return true
}
