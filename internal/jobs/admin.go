package jobs

import (
	"context"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ssi-cluster/ssi/internal/api/jobspb"
	"github.com/ssi-cluster/ssi/internal/sched"
)

// isQueueName accepts 1 to 63 letters, digits, '.', '_' and '-', starting with a letter or
// digit, so a name is safe in keys and on command lines.
func isQueueName(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for i, c := range s {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || i > 0 && (c == '.' || c == '_' || c == '-')
		if !ok {
			return false
		}
	}
	return true
}

// requireRoot refuses callers other than root for cluster-wide configuration.
func (s *Service) requireRoot(ctx context.Context, what string) (identity, error) {
	who, err := s.callerOf(ctx)
	if err != nil {
		return who, err
	}
	if who.uid != 0 {
		return who, status.Errorf(codes.PermissionDenied, "only root may %s: run it with sudo", what)
	}
	return who, nil
}

// CreateQueue adds (or with replace, changes) a queue.
func (s *Service) CreateQueue(ctx context.Context, req *jobspb.CreateQueueRequest) (*jobspb.QueueInfo, error) {
	if _, err := s.requireRoot(ctx, "configure queues"); err != nil {
		return nil, err
	}
	qi := req.Queue
	if qi == nil || !isQueueName(qi.Name) {
		return nil, invalid("queue name %q is not valid: use letters, digits, '.', '_' and '-', starting with a letter or digit", qi.GetName())
	}
	q := queueRecord{Name: qi.Name, Nodes: qi.Nodes, MaxRunningJobs: int(qi.MaxRunningJobs),
		MaxCPUsPerUser: qi.MaxCpusPerUserMilli, MaxTime: qi.MaxTimeSeconds, Oversubscribe: qi.Oversubscribe}
	sq := q.sched()
	if err := sq.Validate(); err != nil {
		return nil, invalid("%v", err)
	}
	// A misspelt node would leave the queue silently smaller (or empty, so every submit to it
	// is refused later with a less direct reason): refuse names the cluster has never had.
	members := s.d.Members()
	for _, n := range q.Nodes {
		if !slices.ContainsFunc(members, func(m Member) bool { return m.Name == n }) {
			return nil, invalid("queue %s: unknown node %q: see ssi nodes for the names", q.Name, n)
		}
	}
	if !req.Replace && q.Name == sched.DefaultQueueName {
		// The built-in queue exists (ssi queue ls shows it) even before it is configured:
		// configuring it changes a queue jobs may use, as --replace does for any other.
		return nil, status.Errorf(codes.AlreadyExists, "queue %s exists (the built-in default queue): add --replace to change it", q.Name)
	}
	var cmps []clientv3.Cmp
	if !req.Replace {
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(queueKey(q.Name)), "=", 0))
	}
	resp, err := s.d.Etcd.Txn(ctx).If(cmps...).Then(clientv3.OpPut(queueKey(q.Name), encode(q))).Commit()
	if err != nil {
		return nil, unavailable(err)
	}
	if !resp.Succeeded {
		return nil, status.Errorf(codes.AlreadyExists, "queue %s exists: add --replace to change it", q.Name)
	}
	return queueInfo(q, false), nil
}

func queueInfo(q queueRecord, implicit bool) *jobspb.QueueInfo {
	return &jobspb.QueueInfo{Name: q.Name, Nodes: q.Nodes, MaxRunningJobs: uint32(q.MaxRunningJobs),
		MaxCpusPerUserMilli: q.MaxCPUsPerUser, MaxTimeSeconds: q.MaxTime, Oversubscribe: q.Oversubscribe, Implicit: implicit}
}

// ListQueues shows every queue, the implicit default one included.
func (s *Service) ListQueues(ctx context.Context, _ *jobspb.ListQueuesRequest) (*jobspb.ListQueuesResponse, error) {
	if _, err := s.callerOf(ctx); err != nil {
		return nil, err
	}
	resp, err := s.d.Etcd.Get(ctx, prefixQueue, clientv3.WithPrefix())
	if err != nil {
		return nil, unavailable(err)
	}
	m := newModel(s.log)
	for _, kv := range resp.Kvs {
		m.apply(kv, false)
	}
	out := &jobspb.ListQueuesResponse{}
	if _, ok := m.queues[sched.DefaultQueueName]; !ok {
		out.Queues = append(out.Queues, queueInfo(queueRecord{Name: sched.DefaultQueueName}, true))
	}
	for _, q := range m.queueList() {
		if rec, ok := m.queues[q.Name]; ok {
			out.Queues = append(out.Queues, queueInfo(rec, false))
		}
	}
	return out, nil
}

// RemoveQueue deletes a queue that no active job uses.
func (s *Service) RemoveQueue(ctx context.Context, req *jobspb.RemoveQueueRequest) (*jobspb.RemoveQueueResponse, error) {
	if _, err := s.requireRoot(ctx, "configure queues"); err != nil {
		return nil, err
	}
	jobs, err := s.d.Etcd.Get(ctx, prefixJob, clientv3.WithPrefix())
	if err != nil {
		return nil, unavailable(err)
	}
	users := 0
	for _, kv := range jobs.Kvs {
		if rec, err := decode[jobRecord](kv.Value); err == nil && rec.Spec.Queue == req.Name {
			users++
		}
	}
	if users > 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "queue %s still has %d active job(s): cancel them or let them finish first", req.Name, users)
	}
	resp, err := s.d.Etcd.Delete(ctx, queueKey(req.Name))
	if err != nil {
		return nil, unavailable(err)
	}
	if resp.Deleted == 0 {
		if req.Name == sched.DefaultQueueName {
			return nil, status.Errorf(codes.FailedPrecondition, "queue %s is the built-in default and is not configured: there is nothing to remove", req.Name)
		}
		return nil, status.Errorf(codes.NotFound, "no queue %s: see ssi queue ls", req.Name)
	}
	return &jobspb.RemoveQueueResponse{}, nil
}

// Drain stops new work from starting on a node; running jobs finish.
func (s *Service) Drain(ctx context.Context, req *jobspb.DrainRequest) (*jobspb.DrainResponse, error) {
	who, err := s.requireRoot(ctx, "drain nodes")
	if err != nil {
		return nil, err
	}
	if !slices.ContainsFunc(s.d.Members(), func(m Member) bool { return m.Name == req.Node }) {
		return nil, status.Errorf(codes.NotFound, "unknown node %q: see ssi nodes for the names", req.Node)
	}
	reason := req.Reason
	if reason == "" {
		return nil, invalid("give a reason with --reason, so users see why the node takes no work")
	}
	rec := drainRecord{Reason: reason, By: stamp{At: time.Now().UTC(), UID: who.uid}}
	if _, err := s.d.Etcd.Put(ctx, drainKey(req.Node), encode(rec)); err != nil {
		return nil, unavailable(err)
	}
	s.log.Info("node drained", "node", req.Node, "reason", reason)
	return &jobspb.DrainResponse{Node: req.Node, Draining: true}, nil
}

// Resume lets a drained node take work again.
func (s *Service) Resume(ctx context.Context, req *jobspb.DrainRequest) (*jobspb.DrainResponse, error) {
	if _, err := s.requireRoot(ctx, "resume nodes"); err != nil {
		return nil, err
	}
	resp, err := s.d.Etcd.Delete(ctx, drainKey(req.Node))
	if err != nil {
		return nil, unavailable(err)
	}
	if resp.Deleted == 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "node %s is not drained: nothing to resume", req.Node)
	}
	s.log.Info("node resumed", "node", req.Node)
	return &jobspb.DrainResponse{Node: req.Node, Draining: false}, nil
}
