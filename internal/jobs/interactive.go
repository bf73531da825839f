package jobs

import (
	"context"
	"fmt"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ssi-cluster/ssi/internal/api/jobspb"
	"github.com/ssi-cluster/ssi/internal/api/jobsrpc"
	"github.com/ssi-cluster/ssi/internal/proc"
	"github.com/ssi-cluster/ssi/internal/sched"
)

// exitGone is the status recorded when the client of an interactive job went away without
// reporting one, as a shell reports a lost terminal.
const exitGone = 129

// Interactive serves ssi submit -i and ssi alloc: it queues the job, tells the client where
// it runs once the scheduler has allocated it, and records its end when the client reports the
// exit status of the session it ran there (through ssi run), or goes away. The job's session
// key lives on this agent's lease, so if this agent dies the scheduler ends the job.
func (s *Service) Interactive(stream jobsrpc.Jobs_InteractiveServer) error {
	ctx := stream.Context()
	who, err := s.callerOf(ctx)
	if err != nil {
		return err
	}
	in, err := stream.Recv()
	if err != nil {
		return err
	}
	req := in.GetSubmit()
	if req == nil {
		return status.Error(codes.InvalidArgument, "the first message must be the submission")
	}
	rec, _, err := s.prepare(ctx, req, who, true)
	if err != nil {
		return err
	}
	lease, err := s.interactiveLease(ctx)
	if err != nil {
		return unavailable(err)
	}
	id, rev, err := s.allocateAndPut(ctx, rec, func(id string) []clientv3.Op {
		return []clientv3.Op{clientv3.OpPut(sessionKey(id), encode(sessionRecord{Node: s.d.Node}), clientv3.WithLease(lease))}
	})
	if err != nil {
		return err
	}
	h := &holder{s: s, stream: stream, rec: rec, id: id}
	return h.serve(rev)
}

type holder struct {
	s      *Service
	stream jobsrpc.Jobs_InteractiveServer
	rec    *jobRecord
	id     string

	grant          *allocRecord
	grantCreateRev int64
	ending         sched.JobState
	endReason      string
	lastReason     string
	lastSeq        int
}

func (h *holder) send(out *jobspb.InteractiveOutput) {
	// A client that went away is noticed by the receiving side.
	_ = h.stream.Send(out)
}

func (h *holder) serve(rev int64) error {
	s := h.s
	h.send(&jobspb.InteractiveOutput{Msg: &jobspb.InteractiveOutput_Queued{Queued: h.id}})
	for _, seq := range h.rec.Signals {
		h.lastSeq = max(h.lastSeq, seq.Seq)
	}
	exits := make(chan int32, 1)
	gone := make(chan struct{})
	go func() {
		for {
			in, err := h.stream.Recv()
			if err != nil {
				close(gone)
				return
			}
			if x, ok := in.Msg.(*jobspb.InteractiveInput_Exit); ok {
				exits <- x.Exit
				return
			}
		}
	}()
	wctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	watch := func(key string) clientv3.WatchChan {
		return s.d.Etcd.Watch(clientv3.WithRequireLeader(wctx), key, clientv3.WithRev(rev+1))
	}
	grants, reasons, records := watch(grantKey(h.id)), watch(reasonKey(h.id)), watch(jobKey(h.id))
	var limit, backstop <-chan time.Time
	for {
		select {
		case wr := <-grants:
			if err := wr.Err(); err != nil {
				return h.lost(fmt.Errorf("watching the allocation: %w", err))
			}
			for _, ev := range wr.Events {
				if ev.Type == mvccpb.DELETE {
					// The scheduler ended it (a lost node, or the session's agent lost).
					return h.endedByLeader()
				}
				if h.grant != nil {
					continue
				}
				a, err := decode[allocRecord](ev.Kv.Value)
				if err != nil {
					return h.lost(err)
				}
				h.grant, h.grantCreateRev = a, ev.Kv.CreateRevision
				limit = time.After(time.Until(a.Start.Add(time.Duration(a.TimeLimit) * time.Second)))
				h.send(&jobspb.InteractiveOutput{Msg: &jobspb.InteractiveOutput_Granted{Granted: &jobspb.Granted{
					JobId: h.id, Nodes: nodeNames(a.Nodes), Env: interactiveEnv(h.rec, a), TimeLimitSeconds: a.TimeLimit,
				}}})
			}
		case wr := <-reasons:
			for _, ev := range wr.Events {
				if ev.Type == mvccpb.DELETE || h.grant != nil {
					continue
				}
				if r, err := decode[reasonRecord](ev.Kv.Value); err == nil && r.Reason != h.lastReason {
					h.lastReason = r.Reason
					h.send(&jobspb.InteractiveOutput{Msg: &jobspb.InteractiveOutput_Waiting{Waiting: r.Reason}})
				}
			}
		case wr := <-records:
			for _, ev := range wr.Events {
				if ev.Type == mvccpb.DELETE {
					// Settled by the scheduler: it was cancelled before it started.
					if h.grant == nil {
						return h.final(sched.StateCancelled, 0)
					}
					continue
				}
				rec, err := decode[jobRecord](ev.Kv.Value)
				if err != nil {
					continue
				}
				h.rec = rec
				if rec.Cancel != nil && h.grant == nil {
					return h.final(sched.StateCancelled, 0)
				}
				if rec.Cancel != nil && h.ending == "" {
					h.revoke(sched.StateCancelled, "cancelled by "+proc.UserName(rec.Cancel.UID))
					backstop = time.After(h.s.t.killGrace + 5*time.Second)
				}
				for _, sig := range rec.Signals {
					if sig.Seq > h.lastSeq {
						h.lastSeq = sig.Seq
						h.send(&jobspb.InteractiveOutput{Msg: &jobspb.InteractiveOutput_Signal{Signal: int32(sig.Signal)}})
					}
				}
			}
		case <-limit:
			limit = nil
			if h.ending == "" {
				h.revoke(sched.StateTimeout, "reached its time limit of "+sched.FormatTimeLimit(time.Duration(h.grant.TimeLimit)*time.Second))
				backstop = time.After(h.s.t.killGrace + 5*time.Second)
			}
		case code := <-exits:
			if h.grant == nil {
				h.cancelPending()
				return h.final(sched.StateCancelled, 0)
			}
			return h.finish(code, true)
		case <-gone:
			if h.grant == nil {
				h.cancelPending()
				return nil
			}
			h.endReason = "the client went away"
			return h.finish(exitGone, false)
		case <-backstop:
			return h.finish(0, false)
		case <-s.ctx.Done():
			return status.Error(codes.Unavailable, "the agent is stopping")
		}
	}
}

func (h *holder) revoke(state sched.JobState, reason string) {
	h.ending, h.endReason = state, reason
	h.send(&jobspb.InteractiveOutput{Msg: &jobspb.InteractiveOutput_Revoke{Revoke: &jobspb.Revoke{
		State: string(state), Reason: reason, GraceMs: h.s.t.killGrace.Milliseconds(),
	}}})
}

func (h *holder) final(state sched.JobState, code int) error {
	h.send(&jobspb.InteractiveOutput{Msg: &jobspb.InteractiveOutput_Final{Final: &jobspb.Final{State: string(state), ExitCode: int32(code)}}})
	return nil
}

func (h *holder) lost(err error) error {
	return status.Errorf(codes.Unavailable, "lost track of interactive job %s: %v", h.id, err)
}

// finish records the end of the session, unless the scheduler already ended the job.
func (h *holder) finish(code int32, hasExit bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res := result{ExitCode: int(code), HasExit: hasExit, Start: h.grant.Start, End: time.Now(), Reason: h.endReason}
	switch {
	case h.ending != "":
		res.State = h.ending
	case hasExit && code == 0:
		res.State = sched.StateCompleted
	default:
		res.State = sched.StateFailed
	}
	var u unit
	u.checks = []check{{key: grantKey(h.id), create: true, rev: h.grantCreateRev}}
	u.del(grantKey(h.id))
	for _, n := range h.grant.Nodes {
		u.del(allocKey(n.Node, h.id))
		u.del(signalKey(n.Node, h.id))
	}
	u.del(sessionKey(h.id))
	u.put(doneKey(h.id), encode(doneFromRecord(h.rec, h.grant, res)))
	written := false
	u.done = func(ok bool, _ int64) { written = ok }
	w := &txnWriter{cli: h.s.d.Etcd}
	if _, err := w.commit(ctx, []unit{u}); err != nil {
		return unavailable(err)
	}
	if !written {
		return h.endedByLeader()
	}
	return h.final(res.State, int(code))
}

// endedByLeader reports the end the scheduler recorded.
func (h *holder) endedByLeader() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := h.s.d.Etcd.Get(ctx, doneKey(h.id))
	state, code := sched.StateFailed, 0
	reason := "the scheduler ended it"
	if err == nil && len(resp.Kvs) > 0 {
		if d, err := decode[doneRecord](resp.Kvs[0].Value); err == nil {
			state, code, reason = d.State, d.ExitCode, d.Reason
		}
	}
	h.revoke(state, reason)
	return h.final(state, code)
}

// cancelPending cancels the job of a client that left before it started.
func (h *holder) cancelPending() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for range 10 {
		resp, err := h.s.d.Etcd.Get(ctx, jobKey(h.id))
		if err != nil || len(resp.Kvs) == 0 {
			return
		}
		rec, err := decode[jobRecord](resp.Kvs[0].Value)
		if err != nil || rec.Cancel != nil {
			return
		}
		now := time.Now().UTC()
		rec.Cancel = &stamp{At: now, UID: rec.Spec.UID}
		rec.Events = append(slices.Clone(rec.Events), now.Format(time.RFC3339)+" cancelled: the client left before it started")
		tr, err := h.s.d.Etcd.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(jobKey(h.id)), "=", resp.Kvs[0].ModRevision)).
			Then(clientv3.OpPut(jobKey(h.id), encode(rec)), clientv3.OpDelete(sessionKey(h.id))).Commit()
		if err != nil || tr.Succeeded {
			return
		}
	}
}

// interactiveEnv is the job's variables, which the client adds to its session's environment.
func interactiveEnv(rec *jobRecord, a *allocRecord) []string {
	var env []string
	for _, v := range jobVars(&run{task: a.Task, alloc: a, rec: rec}, 0, "") {
		env = append(env, v[0]+"="+v[1])
	}
	return env
}
