package jobs

import (
	"context"
	"fmt"
	osuser "os/user"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ssi-cluster/ssi/internal/api/jobspb"
	"github.com/ssi-cluster/ssi/internal/api/ssipb"
	"github.com/ssi-cluster/ssi/internal/proc"
	"github.com/ssi-cluster/ssi/internal/sched"
)

const (
	defaultHistoryLimit = 1000
	maxHistoryLimit     = 1_000_000
	// listFinishedWindow is how far back ssi jobs -a shows finished tasks.
	listFinishedWindow = 24 * time.Hour
	historyPage        = 1000
)

func unavailable(err error) error {
	return status.Errorf(codes.Unavailable, "%v; is a quorum of the servers up?", err)
}

// List shows pending and running tasks, and with all the finished ones of the last day.
func (s *Service) List(ctx context.Context, req *jobspb.ListRequest) (*jobspb.ListResponse, error) {
	if _, err := s.callerOf(ctx); err != nil {
		return nil, err
	}
	f, err := newTaskFilter(req.User, req.States, req.Ids)
	if err != nil {
		return nil, err
	}
	load := loadActiveModel
	if req.All {
		load = loadModel
	}
	m, err := load(ctx, s.d.Etcd, s.log)
	if err != nil {
		return nil, unavailable(err)
	}
	out := &jobspb.ListResponse{}
	for _, j := range sortedJobs(m) {
		if !f.wantsJob(j.id, j.rec.Spec.UID) {
			continue
		}
		for pos := range j.tasks {
			if !req.All && j.tasks[pos].done != nil {
				continue // finished, and unread in an active model
			}
			ti := activeTaskInfo(j, pos)
			if f.wants(ti) && (req.All || !sched.JobState(ti.State).Terminal()) {
				out.Tasks = append(out.Tasks, ti)
			}
		}
	}
	if req.All {
		hist, err := s.readHistory(ctx, time.Now().Add(-listFinishedWindow), maxHistoryLimit, f)
		if err != nil {
			return nil, err
		}
		// Tasks of jobs still active are already listed.
		for _, ti := range hist {
			if m.jobs[ti.JobId] == nil {
				out.Tasks = append(out.Tasks, ti)
			}
		}
	}
	if err := s.checkNamedJobsExist(ctx, req.Ids, out.Tasks); err != nil {
		return nil, err
	}
	s.fillExpectedLimits(ctx, out.Tasks)
	sortTasks(out.Tasks)
	return out, nil
}

// checkNamedJobsExist fails for a job named in ssi jobs ID... that was never submitted, as
// squeue -j does ("Invalid job id specified"), instead of an empty table that reads like a
// job that ended. Named jobs that ended are not an error: ssi jobs lists what still runs.
func (s *Service) checkNamedJobsExist(ctx context.Context, ids []string, listed []*jobspb.TaskInfo) error {
	seen := make(map[string]bool, len(listed))
	for _, t := range listed {
		seen[t.JobId] = true
	}
	var missing []string
	for _, id := range ids {
		base, _, _ := strings.Cut(canonicalID(strings.TrimSpace(id)), "_")
		if !seen[base] && !slices.Contains(missing, base) {
			missing = append(missing, base)
		}
	}
	if len(missing) == 0 || len(missing) > maxTxnOps/2 {
		return nil
	}
	var ops []clientv3.Op
	for _, base := range missing {
		ops = append(ops, clientv3.OpGet(jobKey(base), clientv3.WithCountOnly()), clientv3.OpGet(histKey(base), clientv3.WithCountOnly()))
	}
	resp, err := s.d.Etcd.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return unavailable(err)
	}
	for i, base := range missing {
		if resp.Responses[2*i].GetResponseRange().Count == 0 && resp.Responses[2*i+1].GetResponseRange().Count == 0 {
			return status.Errorf(codes.NotFound, "no job %s: see ssi jobs -a or ssi history for the ids", base)
		}
	}
	return nil
}

// fillExpectedLimits gives the tasks that never started, and so carry only the limit the user
// asked for (0 when none), the limit they run (or would have run) under, as squeue shows a
// pending job's partition limit: 0 reads as "no time at all" in ssi job show, and as
// "unlimited" to a script reading the JSON. The queues come from the cache, else from etcd;
// without them the tasks are left as they are.
func (s *Service) fillExpectedLimits(ctx context.Context, tasks []*jobspb.TaskInfo) {
	if !slices.ContainsFunc(tasks, func(t *jobspb.TaskInfo) bool { return t.TimeLimitSeconds == 0 }) {
		return
	}
	queues := s.queueCache.get()
	if queues == nil {
		var err error
		if queues, err = s.readQueues(ctx); err != nil {
			s.log.Debug("reading the queues for the time limits of pending jobs", "err", err)
			return
		}
	}
	expectedLimits(tasks, queues)
}

// expectedLimits sets the time limit of each task without one to its queue's maximum, else
// the scheduler's default.
func expectedLimits(tasks []*jobspb.TaskInfo, queues []sched.Queue) {
	for _, t := range tasks {
		if t.TimeLimitSeconds != 0 {
			continue
		}
		var queueMax time.Duration
		if i := slices.IndexFunc(queues, func(q sched.Queue) bool { return q.Name == t.Queue }); i >= 0 {
			queueMax = queues[i].MaxTime
		}
		t.TimeLimitSeconds = int64(sched.EffectiveTimeLimit(0, queueMax, sched.DefaultTimeLimit) / time.Second)
	}
}

// History lists finished tasks, newest first.
func (s *Service) History(ctx context.Context, req *jobspb.HistoryRequest) (*jobspb.ListResponse, error) {
	if _, err := s.callerOf(ctx); err != nil {
		return nil, err
	}
	f, err := newTaskFilter(req.User, nil, nil)
	if err != nil {
		return nil, err
	}
	limit := int(req.Limit)
	if limit == 0 {
		limit = defaultHistoryLimit
	}
	since := time.Time{}
	if req.SinceUnixMs > 0 {
		since = time.UnixMilli(req.SinceUnixMs)
	}
	tasks, err := s.readHistory(ctx, since, min(limit, maxHistoryLimit), f)
	if err != nil {
		return nil, err
	}
	s.fillExpectedLimits(ctx, tasks)
	return &jobspb.ListResponse{Tasks: tasks}, nil
}

// readHistory reads finished tasks that ended after since, newest first: done records, and the
// array elements cancelled before they ran (recorded in their job's hist record).
func (s *Service) readHistory(ctx context.Context, since time.Time, limit int, f *taskFilter) ([]*jobspb.TaskInfo, error) {
	var out []*jobspb.TaskInfo
	err := s.scanNewest(ctx, prefixDone, historyPage, func(kv *mvccpb.KeyValue) (bool, error) {
		d, err := decode[doneRecord](kv.Value)
		if err != nil {
			return true, nil
		}
		if !d.End.IsZero() && d.End.Before(since) {
			return false, nil
		}
		ti := doneTaskInfo(d)
		if f.wantsJob(d.Job, d.UID) && f.wants(ti) {
			out = append(out, ti)
		}
		return len(out) < limit, nil
	})
	if err != nil {
		return nil, err
	}
	var cancelled []*jobspb.TaskInfo
	err = s.scanNewest(ctx, prefixHist, historyPage, func(kv *mvccpb.KeyValue) (bool, error) {
		rec, err := decode[jobRecord](kv.Value)
		if err != nil || rec.Final == nil {
			return true, nil
		}
		if rec.Final.End.Before(since) {
			return false, nil
		}
		if rec.Final.CancelledPending == "" || !f.wantsJob(rec.ID, rec.Spec.UID) {
			return true, nil
		}
		spec, err := sched.ParseArray(rec.Final.CancelledPending)
		if err != nil {
			return true, nil
		}
		for _, idx := range spec.Indices() {
			ti := cancelledTaskInfo(rec, idx, rec.Cancel, rec.CancelIndices[idx])
			if f.wants(ti) {
				cancelled = append(cancelled, ti)
			}
		}
		return len(cancelled) < limit, nil
	})
	if err != nil {
		return nil, err
	}
	out = append(out, cancelled...)
	sort.SliceStable(out, func(a, b int) bool { return out[a].EndUnixMs > out[b].EndUnixMs })
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// scanNewest calls fn on the keys under p from the most recently written back, a page at a
// time, until fn says stop. Keys written by one transaction share a revision, so when a page
// ends, the rest of its last revision's keys are read on their own before the next page.
func (s *Service) scanNewest(ctx context.Context, p string, page int, fn func(*mvccpb.KeyValue) (bool, error)) error {
	var rev, below int64
	get := func(opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
		opts = append(opts, clientv3.WithPrefix())
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := s.d.Etcd.Get(ctx, p, opts...)
		if err != nil {
			return nil, unavailable(fmt.Errorf("reading the job history: %w", err))
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		return resp, nil
	}
	for {
		opts := []clientv3.OpOption{clientv3.WithSort(clientv3.SortByModRevision, clientv3.SortDescend), clientv3.WithLimit(int64(page))}
		if below > 0 {
			opts = append(opts, clientv3.WithMaxModRev(below-1))
		}
		resp, err := get(opts...)
		if err != nil {
			return err
		}
		if len(resp.Kvs) == 0 {
			return nil
		}
		last := resp.Kvs[len(resp.Kvs)-1].ModRevision
		seen := map[string]bool{}
		for _, kv := range resp.Kvs {
			if kv.ModRevision == last {
				seen[string(kv.Key)] = true
			}
			if more, err := fn(kv); err != nil || !more {
				return err
			}
		}
		if !resp.More {
			return nil
		}
		group, err := get(clientv3.WithMinModRev(last), clientv3.WithMaxModRev(last))
		if err != nil {
			return err
		}
		for _, kv := range group.Kvs {
			if seen[string(kv.Key)] {
				continue
			}
			if more, err := fn(kv); err != nil || !more {
				return err
			}
		}
		below = last
		if below <= 1 {
			return nil
		}
	}
}

// Show describes one job (or array element) in full.
func (s *Service) Show(ctx context.Context, req *jobspb.ShowRequest) (*jobspb.ShowResponse, error) {
	if _, err := s.callerOf(ctx); err != nil {
		return nil, err
	}
	id := strings.TrimSpace(req.Id)
	if !isJobID(id) {
		return nil, invalid("%q is not a job id: give one like 42 or 42_7 (see ssi jobs)", id)
	}
	id = canonicalID(id)
	base, _, isElem := strings.Cut(id, "_")
	m, rec, err := s.loadJob(ctx, base)
	if err != nil {
		return nil, err
	}
	if rec == nil {
		return nil, status.Errorf(codes.NotFound, "no job %s: see ssi jobs -a or ssi history for the ids", base)
	}
	sp := &rec.Spec
	out := &jobspb.ShowResponse{
		JobId: rec.ID, Command: ssipb.ByteWords(sp.Args), Script: len(sp.Script) > 0, Cwd: []byte(sp.Cwd),
		Output: []byte(sp.Output), Error: []byte(sp.Error),
		Array: sp.Array, After: sp.After, AfterAny: sp.AfterAny, Requeue: sp.Requeue, Hold: rec.Hold, NoKill: sp.NoKill,
		Nodes: uint32(sp.Nodes), Events: rec.Events, SubmitNode: sp.SubmitNode,
	}
	if len(sp.Script) > 0 {
		out.Command = append([][]byte{[]byte(sp.ScriptName)}, out.Command...)
	}
	if j := m.jobs[base]; j != nil {
		for pos := range j.tasks {
			out.Tasks = append(out.Tasks, activeTaskInfo(j, pos))
		}
	} else {
		hist, err := s.finishedTasks(ctx, rec)
		if err != nil {
			return nil, err
		}
		out.Tasks = hist
	}
	if isElem {
		out.Tasks = slices.DeleteFunc(out.Tasks, func(t *jobspb.TaskInfo) bool { return t.Id != id })
		if len(out.Tasks) == 0 {
			return nil, status.Errorf(codes.NotFound, "job %s has no element %s: see ssi job show %s", base, id, base)
		}
	}
	s.fillExpectedLimits(ctx, out.Tasks)
	att, err := s.attempts(ctx, base, id, isElem)
	if err != nil {
		return nil, err
	}
	out.Attempts = att
	return out, nil
}

// loadJob reads one job: a model holding just it while it is active, or its hist record.
func (s *Service) loadJob(ctx context.Context, id string) (*model, *jobRecord, error) {
	cli := s.d.Etcd
	resp, err := cli.Txn(ctx).Then(clientv3.OpGet(jobKey(id)), clientv3.OpGet(histKey(id))).Commit()
	if err != nil {
		return nil, nil, unavailable(err)
	}
	m := newModel(s.log)
	active := resp.Responses[0].GetResponseRange().Kvs
	if len(active) == 0 {
		hist := resp.Responses[1].GetResponseRange().Kvs
		if len(hist) == 0 {
			return m, nil, nil
		}
		rec, err := decode[jobRecord](hist[0].Value)
		if err != nil {
			return nil, nil, status.Errorf(codes.Internal, "reading job %s: %v", id, err)
		}
		return m, rec, nil
	}
	rev := resp.Header.Revision
	m.apply(active[0], false)
	var ops []clientv3.Op
	for _, p := range []string{prefixNode, prefixPart + id, prefixDone + id, prefixAttempt + id, reasonKey(id), grantKey(id), sessionKey(id)} {
		// The prefixes also match longer ids (42 matches 420): the model ignores those.
		ops = append(ops, clientv3.OpGet(p, clientv3.WithPrefix(), clientv3.WithRev(rev)))
	}
	tr, err := cli.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return nil, nil, unavailable(err)
	}
	for _, r := range tr.Responses {
		for _, kv := range r.GetResponseRange().Kvs {
			m.apply(kv, false)
		}
	}
	m.rev = rev
	return m, m.jobs[id].rec, nil
}

// finishedTasks lists every task of a job that moved to history.
func (s *Service) finishedTasks(ctx context.Context, rec *jobRecord) ([]*jobspb.TaskInfo, error) {
	resp, err := s.d.Etcd.Get(ctx, prefixDone+rec.ID, clientv3.WithPrefix())
	if err != nil {
		return nil, unavailable(err)
	}
	var out []*jobspb.TaskInfo
	for _, kv := range resp.Kvs {
		if d, err := decode[doneRecord](kv.Value); err == nil && d.Job == rec.ID {
			out = append(out, doneTaskInfo(d))
		}
	}
	if rec.Final != nil && rec.Final.CancelledPending != "" {
		if spec, err := sched.ParseArray(rec.Final.CancelledPending); err == nil {
			for _, idx := range spec.Indices() {
				out = append(out, cancelledTaskInfo(rec, idx, rec.Cancel, rec.CancelIndices[idx]))
			}
		}
	}
	sortTasks(out)
	return out, nil
}

func (s *Service) attempts(ctx context.Context, base, id string, isElem bool) ([]*jobspb.Attempt, error) {
	p := attemptPrefix(id)
	if !isElem {
		p = prefixAttempt + base // the job's own attempts and those of its elements
	}
	resp, err := s.d.Etcd.Get(ctx, p, clientv3.WithPrefix())
	if err != nil {
		return nil, unavailable(err)
	}
	var out []*jobspb.Attempt
	for _, kv := range resp.Kvs {
		k := parseKey(string(kv.Key))
		if tb, _, _ := strings.Cut(k.a, "_"); tb != base {
			continue
		}
		a, err := decode[attemptRecord](kv.Value)
		if err != nil {
			continue
		}
		out = append(out, &jobspb.Attempt{
			Number: uint32(a.Number), State: string(a.State), Reason: a.Task + ": " + a.Reason, Nodes: nodeNames(a.Nodes),
			StartUnixMs: unixMs(a.Start), EndUnixMs: unixMs(a.End), HasExitCode: a.HasExit, ExitCode: int32(a.ExitCode),
		})
	}
	return out, nil
}

func unixMs(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

// activeTaskInfo describes task pos of an active job.
func activeTaskInfo(j *jobEntry, pos int) *jobspb.TaskInfo {
	t := &j.tasks[pos]
	if t.done != nil {
		return doneTaskInfo(t.done)
	}
	state := j.state(pos)
	if state == sched.StateCancelled {
		st := j.cancelStamp(pos)
		ti := cancelledTaskInfo(j.rec, j.index(pos), &st, st)
		ti.Attempts = uint32(t.attempts)
		return ti
	}
	ti := baseTaskInfo(j.rec, j.index(pos))
	ti.State = string(state)
	ti.Attempts = uint32(t.attempts)
	switch state {
	case sched.StatePending:
		ti.Reason, ti.NeverRunnable = j.reason.Reason, j.reason.Never
		switch {
		case t.queued():
			ti.Reason, ti.NeverRunnable = "next in line: claimed by node "+strings.Join(allocNodes(t), ",")+", starts there as soon as the element before it ends", false
		case t.reserved > 0:
			ti.Reason, ti.NeverRunnable = "next in line: runs in the slot of an earlier element of its array as soon as that ends", false
		case j.isHeld(pos) && ti.Reason != "held by user":
			ti.Reason, ti.NeverRunnable = "held by user", false
		case !j.isHeld(pos) && ti.Reason == "held by user":
			// Released since the scheduler's last word, or another element's reason.
			ti.Reason = "waiting for the scheduler to consider it"
		case ti.Reason == "":
			ti.Reason = "waiting for the scheduler to consider it"
		}
		if t.attempts > 0 && !strings.Contains(ti.Reason, "requeued") {
			ti.Reason = fmt.Sprintf("requeued after %d earlier run(s); %s", t.attempts, ti.Reason)
		}
	case sched.StateRunning:
		if a := t.alloc; a != nil {
			// A task runs from its allocation's start (an element that took over a slot from
			// the element before it in its chain starts when it took over).
			ti.Nodes = nodeNames(a.Nodes)
			ti.StartUnixMs = unixMs(a.Start)
			ti.TimeLimitSeconds = a.TimeLimit
		}
	}
	return ti
}

func baseTaskInfo(rec *jobRecord, index int) *jobspb.TaskInfo {
	sp := &rec.Spec
	return &jobspb.TaskInfo{
		Id: taskID(rec.ID, index), JobId: rec.ID, ArrayIndex: int32(index), Name: sp.Name, User: sp.User,
		Uid: sp.UID, Queue: sp.Queue, SubmitUnixMs: unixMs(sp.Submit), CpusMilli: sp.CPUs, MemBytes: sp.Memory,
		Tasks: uint32(sp.Tasks), TimeLimitSeconds: sp.TimeLimit, Priority: int32(sp.Priority), Interactive: sp.Interactive,
	}
}

func cancelledTaskInfo(rec *jobRecord, index int, whole *stamp, elem stamp) *jobspb.TaskInfo {
	st := elem
	if whole != nil {
		st = *whole
	}
	ti := baseTaskInfo(rec, index)
	ti.State = string(sched.StateCancelled)
	ti.Reason = "cancelled by " + proc.UserName(st.UID) + " before it started"
	ti.EndUnixMs = unixMs(st.At)
	return ti
}

func doneTaskInfo(d *doneRecord) *jobspb.TaskInfo {
	return &jobspb.TaskInfo{
		Id: d.Task, JobId: d.Job, ArrayIndex: int32(d.Index), Name: d.Name, User: d.User, Uid: d.UID,
		State: string(d.State), Reason: d.Reason, Queue: d.Queue, Nodes: nodeNames(d.Nodes),
		SubmitUnixMs: unixMs(d.Submit), StartUnixMs: unixMs(d.Start), EndUnixMs: unixMs(d.End),
		HasExitCode: d.HasExit, ExitCode: int32(d.ExitCode), CpusMilli: d.CPUs, MemBytes: d.Memory,
		Tasks: uint32(d.Tasks), TimeLimitSeconds: d.TimeLimit, CpuTimeMs: d.CPUTime.Milliseconds(),
		MaxRssBytes: d.MaxRSS, Attempts: uint32(d.Attempts), Interactive: d.Interactive,
	}
}

func sortedJobs(m *model) []*jobEntry {
	jobs := make([]*jobEntry, 0, len(m.jobs))
	for _, j := range m.jobs {
		jobs = append(jobs, j)
	}
	sort.Slice(jobs, func(a, b int) bool { return lessID(jobs[a].id, jobs[b].id) })
	return jobs
}

// lessID orders ids numerically: 9 < 42 < 42_2 < 42_10 < 43.
func lessID(a, b string) bool {
	ab, ai, _ := strings.Cut(a, "_")
	bb, bi, _ := strings.Cut(b, "_")
	an, _ := strconv.ParseUint(ab, 10, 64)
	bn, _ := strconv.ParseUint(bb, 10, 64)
	if an != bn {
		return an < bn
	}
	ax, aerr := strconv.Atoi(ai)
	bx, berr := strconv.Atoi(bi)
	if aerr != nil || berr != nil {
		return ai < bi
	}
	return ax < bx
}

func sortTasks(t []*jobspb.TaskInfo) {
	sort.SliceStable(t, func(a, b int) bool { return lessID(t[a].Id, t[b].Id) })
}

// taskFilter selects tasks by user, state and id.
type taskFilter struct {
	uid    *uint32
	states map[string]bool
	ids    map[string]bool
}

// parseState reads a --state word, in any case, as a state name or as squeue's short code
// (and the US spelling), which Slurm users type by habit: "ssi jobs --state PD,R".
func parseState(s string) (sched.JobState, bool) {
	st := sched.JobState(strings.ToLower(strings.TrimSpace(s)))
	switch st {
	case "pd":
		st = sched.StatePending
	case "r":
		st = sched.StateRunning
	case "cd":
		st = sched.StateCompleted
	case "f":
		st = sched.StateFailed
	case "ca", "canceled":
		st = sched.StateCancelled
	case "to":
		st = sched.StateTimeout
	case "nf":
		st = sched.StateNodeFail
	}
	return st, st == sched.StatePending || st == sched.StateRunning || st.Terminal()
}

func newTaskFilter(user string, states, ids []string) (*taskFilter, error) {
	f := &taskFilter{}
	if user != "" {
		uid, err := lookupUID(user)
		if err != nil {
			return nil, err
		}
		f.uid = &uid
	}
	if len(states) > 0 {
		f.states = map[string]bool{}
		for _, s := range states {
			st, ok := parseState(s)
			if !ok {
				return nil, invalid("unknown state %q: use pending, running, completed, failed, cancelled, timeout or node_fail", s)
			}
			f.states[string(st)] = true
		}
	}
	if len(ids) > 0 {
		f.ids = map[string]bool{}
		for _, id := range ids {
			if !isJobID(id) {
				return nil, invalid("%q is not a job id: give ids like 42 or 42_7", id)
			}
			f.ids[canonicalID(id)] = true
		}
	}
	return f, nil
}

func (f *taskFilter) wantsJob(job string, uid uint32) bool {
	if f.uid != nil && *f.uid != uid {
		return false
	}
	if f.ids == nil {
		return true
	}
	if f.ids[job] {
		return true
	}
	for id := range f.ids {
		if strings.HasPrefix(id, job+"_") {
			return true
		}
	}
	return false
}

func (f *taskFilter) wants(t *jobspb.TaskInfo) bool {
	if f.states != nil && !f.states[t.State] {
		return false
	}
	if f.ids != nil && !f.ids[t.Id] && !f.ids[t.JobId] {
		return false
	}
	return true
}

// lookupUID accepts a user name or a numeric uid.
func lookupUID(user string) (uint32, error) {
	if n, err := strconv.ParseUint(user, 10, 32); err == nil {
		return uint32(n), nil
	}
	u, err := osuser.Lookup(user)
	if err != nil {
		return 0, invalid("unknown user %q: give a user name or a uid", user)
	}
	n, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return 0, invalid("user %q has uid %q, which is not a number", user, u.Uid)
	}
	return uint32(n), nil
}

// allocNodes lists the nodes a task has allocations on.
func allocNodes(t *taskState) []string {
	out := make([]string, 0, len(t.allocs))
	for _, a := range t.allocs {
		out = append(out, a.node)
	}
	return out
}
