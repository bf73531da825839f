package jobs

import (
	"context"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ssi-cluster/ssi/internal/sched"
)

// queueCache keeps the queues as etcd has them, fed by a watch, so that a submission need not
// read them from etcd: that read was ~0.3 ms of a 5 ms ssi submit, and more when etcd is
// busy. What it holds is a hint that may lag a change by a watch event: a submission it would
// refuse is checked again against a fresh read (see prepare), so a queue made a moment ago is
// never refused; one removed a moment ago may still take a job, which then waits with the
// reason the scheduler gives, as it would had it come just before the removal.
type queueCache struct {
	mu     sync.Mutex
	queues []sched.Queue // nil while the watch is not running
}

func (c *queueCache) get() []sched.Queue {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.queues
}

func (c *queueCache) set(qs []sched.Queue) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.queues = qs
}

// watchQueues keeps s.queueCache current until the service stops.
func (s *Service) watchQueues() {
	for s.ctx.Err() == nil {
		if err := s.followQueues(); err != nil && s.ctx.Err() == nil {
			s.log.Debug("queue watch ended; submissions read the queues until it is back", "err", err)
		}
		s.queueCache.set(nil)
		select {
		case <-s.ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// followQueues loads the queues, then reloads them on every change until the watch ends.
func (s *Service) followQueues() error {
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	rev, err := s.loadQueues(ctx)
	if err != nil {
		return err
	}
	wch := s.d.Etcd.Watch(clientv3.WithRequireLeader(ctx), prefixQueue, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	for resp := range wch {
		if err := resp.Err(); err != nil {
			return err
		}
		// Queues are few and change seldom: reading them all again is simpler than applying
		// each event, and cannot drift.
		if _, err := s.loadQueues(ctx); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// loadQueues reads the queues into the cache and returns the revision it read at.
func (s *Service) loadQueues(ctx context.Context) (int64, error) {
	resp, err := s.d.Etcd.Get(ctx, prefixQueue, clientv3.WithPrefix())
	if err != nil {
		s.queueCache.set(nil)
		return 0, err
	}
	m := newModel(s.log)
	for _, kv := range resp.Kvs {
		m.apply(kv, false)
	}
	s.queueCache.set(m.queueList())
	return resp.Header.Revision, nil
}
