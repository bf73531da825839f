package jobs

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/ssi-cluster/ssi/internal/proc"
	"github.com/ssi-cluster/ssi/internal/sched"
)

// leader is the scheduler while this server holds the election: a watch-fed model of the
// state, the scheduler core, and the fair-share table.
type leader struct {
	s       *Service
	w       *txnWriter
	m       *model
	core    *sched.Scheduler
	usage   *sched.Usage
	since   time.Time
	members string // fingerprint of the last membership view

	usageDirty bool
	usageSaved time.Time
	// finished caches the states of finished jobs and elements that dependencies name.
	finished map[string]sched.JobState
	// reasons is the last reason the scheduler gave each task it examined.
	reasons map[string]reasonRecord
	// waiting holds the jobs with a runnable task waiting in the last pass: chains (claim
	// reuse) are granted only while no other job waits, and cut short once one does.
	waiting map[string]bool
	// capacity is the cpus (millicores) of the usable nodes in the last pass, with the
	// largest oversubscription: it sizes chains.
	capacity int64
}

// maxChain bounds how many array elements one allocation may run in turn. Chains are also
// kept short enough to end together (see chains), so long ones cost no tail.
const maxChain = 256

// lead runs the scheduler until leadership is lost or the service closes.
func (s *Service) lead(parent context.Context, sess *concurrency.Session, e *concurrency.Election) error {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	go func() {
		select {
		case <-sess.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	core, err := sched.New(sched.Config{})
	if err != nil {
		return err
	}
	l := &leader{
		s:        s,
		w:        &txnWriter{cli: s.d.Etcd, guard: &check{key: e.Key(), create: true, rev: e.Rev()}},
		core:     core,
		since:    time.Now(),
		finished: map[string]sched.JobState{},
		reasons:  map[string]reasonRecord{},
	}
	for {
		err := l.run(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, errNotLeader):
			return err
		}
		// A broken watch or a failed read: start over from a fresh load.
		s.log.Warn("scheduler reloads its state", "err", err)
		sleep(ctx, 200*time.Millisecond)
	}
}

// run loads the state, then passes whenever it changes, the clock ticks or membership moves.
func (l *leader) run(ctx context.Context) error {
	cli := l.s.d.Etcd
	m, err := loadModel(ctx, cli, l.s.log)
	if err != nil {
		return err
	}
	l.m = m
	if err := l.restoreUsage(ctx); err != nil {
		return err
	}
	m.charge = l.charge
	wch := cli.Watch(clientv3.WithRequireLeader(ctx), prefix, clientv3.WithPrefix(), clientv3.WithRev(m.rev+1))
	tick := time.NewTicker(l.s.t.tick)
	defer tick.Stop()
	moved := l.s.d.MembersChanged()
	var waitRev int64
	needPass := true
	for {
		// Our own writes must be in the model before the next pass decides on it.
		if needPass && m.rev >= waitRev {
			rev, err := l.pass(ctx, time.Now())
			if err != nil {
				return err
			}
			waitRev = max(waitRev, rev)
			needPass = false
			m.changed = false
		}
		select {
		case wr, ok := <-wch:
			for {
				if !ok {
					return errors.New("the watch on the job state closed")
				}
				if err := wr.Err(); err != nil {
					return fmt.Errorf("watching the job state: %w", err)
				}
				for _, ev := range wr.Events {
					m.applyEvent(ev)
				}
				// Take whatever else already arrived, so one pass answers many events.
				select {
				case wr, ok = <-wch:
					continue
				default:
				}
				break
			}
			if m.changed {
				needPass = true
			}
		case <-tick.C:
			needPass = true
		case <-moved:
			moved = l.s.d.MembersChanged() // before reading the view, so no change slips between
			if l.membersChanged() {
				needPass = true
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (l *leader) membersChanged() bool {
	h := fnv.New64a()
	ms := l.s.d.Members()
	sort.Slice(ms, func(i, j int) bool { return ms[i].Name < ms[j].Name })
	for _, m := range ms {
		fmt.Fprintf(h, "%s/%t/%d/%d;", m.Name, m.Alive, m.CPUs, m.MemTotal)
	}
	fp := strconv.FormatUint(h.Sum64(), 16)
	changed := fp != l.members
	l.members = fp
	return changed
}

// restoreUsage rebuilds the fair-share table from its last saved copy plus every record
// created since.
func (l *leader) restoreUsage(ctx context.Context) error {
	l.usage = sched.NewUsage(l.s.t.usageHalfLife)
	var from int64
	if u := l.m.usage; u != nil {
		for user, v := range u.Users {
			l.usage.Add(user, v, u.At)
		}
		from = u.Rev
	}
	resp, err := l.s.d.Etcd.Txn(ctx).Then(
		clientv3.OpGet(prefixDone, clientv3.WithPrefix(), clientv3.WithMinCreateRev(from+1), clientv3.WithRev(l.m.rev)),
		clientv3.OpGet(prefixAttempt, clientv3.WithPrefix(), clientv3.WithMinCreateRev(from+1), clientv3.WithRev(l.m.rev)),
	).Commit()
	if err != nil {
		return fmt.Errorf("reading usage records: %w", err)
	}
	for i, kind := range []keyKind{kindDone, kindAttempt} {
		for _, kv := range resp.Responses[i].GetResponseRange().Kvs {
			if user, sec, at, ok := chargeOf(kind, kv.Value); ok {
				l.usage.Add(user, sec, at)
				l.usageDirty = true
			}
		}
	}
	return nil
}

func (l *leader) charge(user string, cpuSeconds float64, at time.Time, _ int64) {
	l.usage.Add(user, cpuSeconds, at)
	l.usageDirty = true
}

// passState is the read-only view one pass decides on.
type passState struct {
	l      *leader
	nodes  []sched.Node
	queues []sched.Queue
	jobs   []*sched.Job
}

func (p *passState) Nodes() []sched.Node                     { return p.nodes }
func (p *passState) Queues() []sched.Queue                   { return p.queues }
func (p *passState) Jobs() []*sched.Job                      { return p.jobs }
func (p *passState) Lookup(id string) (sched.JobState, bool) { return p.l.lookup(id) }
func (p *passState) Usage(user string, at time.Time) float64 { return p.l.usage.Get(user, at) }

func (l *leader) lookup(id string) (sched.JobState, bool) {
	if j, pos := l.m.task(id); j != nil {
		return j.state(pos), true
	}
	if j := l.m.jobs[id]; j != nil {
		return j.combinedState(), true
	}
	st, ok := l.finished[id]
	return st, ok
}

// pass runs the scheduler once and writes its decisions and the bookkeeping they imply.
// It returns the revision of its last write.
func (l *leader) pass(ctx context.Context, now time.Time) (int64, error) {
	st, known, err := l.buildState(ctx)
	if err != nil {
		return 0, err
	}
	plan := l.core.Pass(st, now)

	touched := map[string]bool{}
	var units []unit
	units = append(units, l.ends(plan, now, known, touched)...)
	units = append(units, l.lostQueued(st, now, known, touched)...)
	units = append(units, l.starts(plan, now)...)
	units = append(units, l.reasonUnits(plan, st)...)
	units = append(units, l.backstops(now, touched)...)
	units = append(units, l.parts(now, touched)...)
	units = append(units, l.controls(touched)...)
	units = append(units, l.orphans(now, touched)...)
	units = append(units, l.settle(now)...)
	units = append(units, l.saveUsage(now)...)
	if len(units) == 0 {
		return 0, nil
	}
	return l.w.commit(ctx, units)
}

// buildState makes the pass's view: nodes from gossip and drains, queues, running tasks and
// pending ones. Arrays are expanded lazily: only as many pending elements as could start now
// (plus one, to give the rest a reason) are shown to the scheduler.
func (l *leader) buildState(ctx context.Context) (*passState, map[string]bool, error) {
	m := l.m
	st := &passState{l: l, queues: m.queueList()}
	known := map[string]bool{}
	var capacity int64
	for _, mem := range l.s.d.Members() {
		n := sched.Node{Name: mem.Name, CPUs: int64(mem.CPUs) * 1000, Memory: int64(min(mem.MemTotal, math.MaxInt64)), Alive: mem.Alive}
		if d, ok := m.drains[mem.Name]; ok {
			n.Draining, n.DrainReason = true, d.Reason
		}
		if n.Alive && !n.Draining {
			capacity += n.CPUs
		}
		known[mem.Name] = true
		st.nodes = append(st.nodes, n)
	}
	over := 1.0
	for _, q := range st.queues {
		over = max(over, q.Oversubscribe)
	}
	capacity = int64(float64(capacity) * over)
	l.capacity = capacity

	for _, ref := range m.active {
		if sj := l.runningJob(ref.job, ref.pos); sj != nil {
			st.jobs = append(st.jobs, sj)
		}
	}
	var deps []string
	for _, j := range m.jobs {
		if j.rec.Cancel != nil || j.activeCount+j.doneCount == len(j.tasks) {
			continue
		}
		limit := len(j.tasks)
		if j.indices != nil {
			limit = int(min(capacity/max(j.rec.Spec.CPUs, 1)+1, int64(len(j.tasks))))
			if j.maxRunning > 0 {
				limit = min(limit, max(j.maxRunning-j.activeCount, 0)+1)
			}
		}
		n := 0
		first := -1
		for pos := j.nextPending; pos < len(j.tasks) && n < limit; pos++ {
			if !j.pending(pos) {
				continue
			}
			if first < 0 {
				first = pos
			}
			st.jobs = append(st.jobs, l.schedJob(j, pos, sched.StatePending))
			n++
		}
		if first >= 0 {
			j.nextPending = first
		} else if j.indices != nil && n == 0 {
			j.nextPending = len(j.tasks)
		}
		if n > 0 {
			deps = append(deps, j.rec.Spec.After...)
			deps = append(deps, j.rec.Spec.AfterAny...)
		}
	}
	if err := l.fetchFinished(ctx, deps); err != nil {
		return nil, nil, err
	}
	l.waiting = map[string]bool{}
	for _, sj := range st.jobs {
		if sj.State == sched.StatePending && !sj.Hold {
			id := sj.ID
			if sj.ArrayJobID != "" {
				id = sj.ArrayJobID
			}
			l.waiting[id] = true
		}
	}
	return st, known, nil
}

// othersWaiting reports whether a job other than job has a runnable task waiting.
func (l *leader) othersWaiting(job string) bool {
	for id := range l.waiting {
		if id != job {
			return true
		}
	}
	return false
}

// chains picks, for each array started in this pass, the elements each of its new allocations
// may run in turn after its first. Only fresh single-node elements of an array with nothing
// else waiting qualify; the remaining pending elements are shared evenly among the starts.
func (l *leader) chains(plan sched.Plan) map[string][]int {
	perJob := map[string][]string{} // array id → task ids started now
	started := map[string]bool{}
	for _, st := range plan.Starts {
		started[st.JobID] = true
		j, pos := l.m.task(st.JobID)
		if j == nil || j.indices == nil || len(st.Nodes) != 1 || j.tasks[pos].attempts > 0 || l.othersWaiting(j.id) {
			continue
		}
		perJob[j.id] = append(perJob[j.id], st.JobID)
	}
	out := map[string][]int{}
	for jobID, tasks := range perJob {
		j := l.m.jobs[jobID]
		var free []int
		for pos := j.nextPending; pos < len(j.tasks) && len(free) < maxChain*len(tasks); pos++ {
			if j.pending(pos) && !started[j.taskID(pos)] && !j.isHeld(pos) && j.tasks[pos].attempts == 0 {
				free = append(free, j.indices[pos])
			}
		}
		// Share what remains so that every slot of the cluster could take part: a chain is at
		// most half of a slot's share, so the array's last chains end close together.
		// (Remaining counts reserved elements too, so it errs on the long side.)
		slots := max(l.capacity/max(j.rec.Spec.CPUs*int64(j.rec.Spec.Tasks), 1), 1)
		remaining := int64(len(j.tasks) - j.doneCount - j.activeCount)
		per := min(len(free)/len(tasks), maxChain, int(max(remaining/(2*slots), 1)))
		for i, id := range tasks {
			if per > 0 {
				out[id] = free[i*per : (i+1)*per]
			}
		}
	}
	return out
}

func (l *leader) schedJob(j *jobEntry, pos int, state sched.JobState) *sched.Job {
	sp := &j.rec.Spec
	id := j.taskID(pos)
	sj := &sched.Job{
		ID: id, Name: sp.Name, User: sp.User, UID: sp.UID, Queue: sp.Queue, Priority: sp.Priority,
		SubmitTime: sp.Submit, CPUsPerTask: sp.CPUs, MemoryPerTask: sp.Memory, Nodes: sp.Nodes, Tasks: sp.Tasks,
		TimeLimit: time.Duration(sp.TimeLimit) * time.Second, After: sp.After, AfterAny: sp.AfterAny,
		Hold: j.isHeld(pos), Requeue: sp.Requeue && !sp.Interactive, State: state, Reason: l.reasons[id].Reason,
	}
	if j.indices != nil {
		sj.ArrayJobID, sj.ArrayTaskID, sj.ArrayMaxRunning = j.id, j.indices[pos], j.maxRunning
	}
	return sj
}

func (l *leader) runningJob(j *jobEntry, pos int) *sched.Job {
	a := j.tasks[pos].alloc
	if a == nil || j.tasks[pos].queued() {
		// A claimed-ahead element holds nothing: its slot is charged to the element running
		// in it.
		return nil
	}
	sj := l.schedJob(j, pos, sched.StateRunning)
	sj.StartTime = a.Start
	sj.TimeLimit = time.Duration(a.TimeLimit) * time.Second
	sj.Allocation = toSchedNodes(a.Nodes)
	return sj
}

// fetchFinished reads the end states of finished jobs that pending jobs depend on.
func (l *leader) fetchFinished(ctx context.Context, ids []string) error {
	var want []string
	seen := map[string]bool{}
	for _, id := range ids {
		if seen[id] {
			continue
		}
		seen[id] = true
		if _, ok := l.lookup(id); !ok {
			want = append(want, id)
		}
	}
	for len(want) > 0 {
		chunk := want[:min(len(want), maxTxnOps/2)]
		want = want[len(chunk):]
		var ops []clientv3.Op
		for _, id := range chunk {
			base, _, _ := strings.Cut(id, "_")
			ops = append(ops, clientv3.OpGet(histKey(base)), clientv3.OpGet(doneKey(id)))
		}
		resp, err := l.s.d.Etcd.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return fmt.Errorf("reading finished jobs: %w", err)
		}
		for i, id := range chunk {
			hist := resp.Responses[2*i].GetResponseRange().Kvs
			done := resp.Responses[2*i+1].GetResponseRange().Kvs
			if st, ok := finishedState(id, hist, done); ok {
				l.finished[id] = st
			}
		}
	}
	return nil
}

// finishedState is the state of a finished job or element from its hist and done records.
func finishedState(id string, hist, done []*mvccpb.KeyValue) (sched.JobState, bool) {
	if len(hist) == 0 {
		return "", false
	}
	rec, err := decode[jobRecord](hist[0].Value)
	if err != nil || rec.Final == nil {
		return "", false
	}
	_, idx, isElem := strings.Cut(id, "_")
	if !isElem {
		return rec.Final.State, true
	}
	if len(done) > 0 {
		d, err := decode[doneRecord](done[0].Value)
		if err != nil {
			return "", false
		}
		return d.State, true
	}
	if n, err := strconv.Atoi(idx); err == nil && rec.Final.CancelledPending != "" {
		if spec, err := sched.ParseArray(rec.Final.CancelledPending); err == nil && slices.Contains(spec.Indices(), n) {
			return sched.StateCancelled, true
		}
	}
	return "", false
}

// starts turns the plan's starts into allocations, one unit per task so a gang starts whole.
func (l *leader) starts(plan sched.Plan, now time.Time) []unit {
	units := make([]unit, 0, len(plan.Starts))
	chains := l.chains(plan)
	for _, st := range plan.Starts {
		j, pos := l.m.task(st.JobID)
		if j == nil {
			continue
		}
		delete(l.reasons, st.JobID)
		rec := allocRecord{
			Task: st.JobID, Job: j.id, Index: j.index(pos), Nodes: fromSchedNodes(st.Nodes), Start: now,
			TimeLimit: int64(math.Ceil(st.TimeLimit.Seconds())), Attempt: j.tasks[pos].attempts, Interactive: j.rec.Spec.Interactive,
			Chain: chains[st.JobID],
		}
		val := encode(rec)
		u := unit{checks: []check{{key: jobKey(j.id), rev: j.modRev}}}
		for _, n := range st.Nodes {
			u.put(allocKey(n.Node, st.JobID), val)
		}
		if rec.Interactive {
			u.put(grantKey(st.JobID), val)
		}
		units = append(units, u)
	}
	return units
}

// reasonUnits records why each job still waits: the reason of its first waiting element.
func (l *leader) reasonUnits(plan sched.Plan, st *passState) []unit {
	for _, r := range plan.Reasons {
		l.reasons[r.JobID] = reasonRecord{Reason: r.Reason, Never: r.NeverRunnable}
	}
	started := map[string]bool{}
	for _, s := range plan.Starts {
		started[s.JobID] = true
	}
	// The first waiting element of each job, in index order, preferring one that is not held:
	// held elements show "held by user" whatever the job's reason, the others show the job's,
	// which must then be theirs (an array with element 1 held and the rest waiting for a
	// dependency would otherwise show "held by user" on every element).
	first := map[string]*sched.Job{}
	for _, sj := range st.jobs {
		if sj.State != sched.StatePending || started[sj.ID] {
			continue
		}
		jobID := sj.ID
		if sj.ArrayJobID != "" {
			jobID = sj.ArrayJobID
		}
		if f := first[jobID]; f == nil || f.Hold && !sj.Hold || f.Hold == sj.Hold && sj.ArrayTaskID < f.ArrayTaskID {
			first[jobID] = sj
		}
	}
	var units []unit
	for jobID, sj := range first {
		j := l.m.jobs[jobID]
		want := l.reasons[sj.ID]
		if j == nil || want.Reason == "" || want == j.reason {
			continue
		}
		var u unit
		u.put(reasonKey(jobID), encode(want))
		units = append(units, u)
	}
	// Forget the reasons of tasks that are no longer pending.
	if len(l.reasons) > 4*len(st.jobs)+64 {
		keep := make(map[string]reasonRecord, len(st.jobs))
		for _, sj := range st.jobs {
			if r, ok := l.reasons[sj.ID]; ok && sj.State == sched.StatePending {
				keep[sj.ID] = r
			}
		}
		l.reasons = keep
	}
	return units
}

// ends carries out the plan's ends for lost nodes. Time limits are enforced by the nodes
// themselves (see backstops for nodes that do not).
func (l *leader) ends(plan sched.Plan, now time.Time, known, touched map[string]bool) []unit {
	var units []unit
	for _, e := range plan.Ends {
		if e.State != sched.StateNodeFail {
			continue
		}
		j, pos := l.m.task(e.JobID)
		if j == nil || touched[e.JobID] {
			continue
		}
		t := &j.tasks[pos]
		// Right after a failover gossip may not list every node yet: only a node it reports
		// dead counts as lost until then.
		if now.Sub(l.since) < l.s.t.nodeGrace && t.alloc != nil {
			unknown := false
			for _, n := range t.alloc.Nodes {
				if !known[n.Node] {
					unknown = true
				}
			}
			if unknown {
				continue
			}
		}
		touched[e.JobID] = true
		units = append(units, l.endUnit(j, pos, sched.StateNodeFail, e.Reason, e.Requeue, now))
	}
	return units
}

// lostQueued ends the claimed-ahead (queued) elements of lost nodes as node_fail, requeued
// where allowed, as the scheduler core does for running tasks (it never sees queued ones).
// The node may have started such an element without having recorded it yet, so it cannot
// simply go back to pending.
func (l *leader) lostQueued(st *passState, now time.Time, known, touched map[string]bool) []unit {
	alive := make(map[string]bool, len(st.nodes))
	for _, n := range st.nodes {
		alive[n.Name] = n.Alive
	}
	var units []unit
	for id, ref := range l.m.active {
		t := &ref.job.tasks[ref.pos]
		if touched[id] || !t.queued() {
			continue
		}
		lost := ""
		for _, a := range t.allocs {
			// As in ends: right after a failover, only a node gossip reports dead is lost.
			if (known[a.node] && !alive[a.node]) || (!known[a.node] && now.Sub(l.since) >= l.s.t.nodeGrace) {
				lost = a.node
			}
		}
		if lost == "" {
			continue
		}
		touched[id] = true
		sp := &ref.job.rec.Spec
		units = append(units, l.endUnit(ref.job, ref.pos, sched.StateNodeFail,
			fmt.Sprintf("node %s is down or gone", lost), sp.Requeue && !sp.Interactive, now))
	}
	return units
}

// endUnit ends a running task from the leader's side: its allocations and parts go, and it is
// either requeued (an attempt is recorded) or finished with a done record.
func (l *leader) endUnit(j *jobEntry, pos int, state sched.JobState, reason string, requeue bool, now time.Time) unit {
	t := &j.tasks[pos]
	id := j.taskID(pos)
	var u unit
	for _, a := range t.allocs {
		u.checks = append(u.checks, check{key: allocKey(a.node, id), create: true, rev: a.createRev})
		u.del(allocKey(a.node, id))
	}
	for _, s := range t.signals {
		u.del(signalKey(s.node, id))
	}
	res := result{State: state, Reason: reason, End: now}
	if t.alloc != nil && !t.queued() {
		res.Start = t.alloc.Start
	}
	for _, p := range t.parts {
		u.checks = append(u.checks, check{key: partKey(id, p.Node), rev: p.modRev})
		u.del(partKey(id, p.Node))
		res.CPUTime += p.CPUTime
		res.MaxRSS = max(res.MaxRSS, p.MaxRSS)
	}
	if t.grant {
		u.del(grantKey(id))
	}
	if requeue {
		u.put(attemptKey(id, t.attempts), encode(l.attempt(j, pos, res)))
		l.s.log.Info("job requeued", "job", id, "reason", reason)
	} else {
		u.put(doneKey(id), encode(doneFor(j, pos, t.alloc, res)))
		l.s.log.Info("job ended", "job", id, "state", state, "reason", reason)
	}
	return u
}

func (l *leader) attempt(j *jobEntry, pos int, res result) attemptRecord {
	t := &j.tasks[pos]
	a := attemptRecord{Task: j.taskID(pos), Number: t.attempts, User: j.rec.Spec.User, CPUs: j.rec.Spec.CPUs * int64(j.rec.Spec.Tasks), result: res}
	if t.alloc != nil {
		a.Nodes = t.alloc.Nodes
	}
	return a
}

// doneFor is the accounting record of task pos ending with res.
func doneFor(j *jobEntry, pos int, alloc *allocRecord, res result) doneRecord {
	sp := &j.rec.Spec
	d := doneRecord{
		Task: j.taskID(pos), Job: j.id, Index: j.index(pos), Name: sp.Name, User: sp.User, UID: sp.UID,
		Queue: sp.Queue, Submit: sp.Submit, CPUs: sp.CPUs, Memory: sp.Memory, Tasks: sp.Tasks,
		TimeLimit: sp.TimeLimit, Attempts: j.tasks[pos].attempts, Interactive: sp.Interactive, result: res,
	}
	if alloc != nil {
		d.Nodes, d.TimeLimit = alloc.Nodes, alloc.TimeLimit
	}
	return d
}

// backstops end tasks whose node neither ended them at their time limit nor was declared
// lost: an executor that died without its node going down, for example.
func (l *leader) backstops(now time.Time, touched map[string]bool) []unit {
	var units []unit
	for id, ref := range l.m.active {
		t := &ref.job.tasks[ref.pos]
		if t.alloc == nil || touched[id] {
			continue
		}
		limit := time.Duration(t.alloc.TimeLimit) * time.Second
		if t.queued() {
			// Claimed while the elements ahead of it in its slot ran: each of them may take
			// its whole limit before this one starts.
			limit *= claimAhead + 1
		}
		deadline := t.alloc.Start.Add(limit + l.s.t.killGrace + l.s.t.backstop)
		if now.After(deadline) {
			touched[id] = true
			units = append(units, l.endUnit(ref.job, ref.pos, sched.StateTimeout,
				"reached its time limit, and its node did not report the end in time", false, now))
		}
	}
	return units
}

// parts finishes multi-node tasks: once every node has reported, the parts are combined into
// one end; while some still run, a failed part ends the others (unless --no-kill).
func (l *leader) parts(now time.Time, touched map[string]bool) []unit {
	var units []unit
	for id, ref := range l.m.active {
		j, t := ref.job, &ref.job.tasks[ref.pos]
		if len(t.parts) == 0 || touched[id] {
			continue
		}
		if len(t.allocs) == 0 {
			touched[id] = true
			units = append(units, l.combineUnit(j, ref.pos, now))
			continue
		}
		bad := firstBadPart(t.parts)
		if bad == nil || (j.rec.Spec.NoKill && !(bad.HasExit && bad.ExitCode == exitRequeue)) {
			continue
		}
		reason := fmt.Sprintf("its task on %s ended (%s)", bad.Node, describeResult(&bad.result))
		for _, a := range t.allocs {
			if sig := signalOf(t, a.node); sig != nil && sig.End != "" {
				continue
			}
			touched[id] = true
			sig := signalRecord{End: sched.StateCancelled, Reason: reason}
			if cur := signalOf(t, a.node); cur != nil {
				sig.Seq, sig.Signal = cur.Seq, cur.Signal
			}
			units = append(units, unit{
				checks: []check{{key: allocKey(a.node, id), create: true, rev: a.createRev}},
				ops:    []clientv3.Op{clientv3.OpPut(signalKey(a.node, id), encode(sig))},
				keys:   []string{signalKey(a.node, id)},
			})
		}
	}
	return units
}

func (l *leader) combineUnit(j *jobEntry, pos int, now time.Time) unit {
	t := &j.tasks[pos]
	id := j.taskID(pos)
	res, requeue := combineParts(t.parts, t.alloc)
	requeue = requeue && (j.rec.Spec.Requeue || res.State == "requeued")
	var u unit
	for _, p := range t.parts {
		u.checks = append(u.checks, check{key: partKey(id, p.Node), rev: p.modRev})
		u.del(partKey(id, p.Node))
	}
	if requeue {
		u.put(attemptKey(id, t.attempts), encode(l.attempt(j, pos, res)))
		l.s.log.Info("job requeued", "job", id, "reason", res.Reason)
		return u
	}
	if res.State == "requeued" {
		res.State = sched.StateFailed
	}
	u.put(doneKey(id), encode(doneFor(j, pos, t.alloc, res)))
	return u
}

// controls delivers users' cancels and signals to the nodes running the tasks.
func (l *leader) controls(touched map[string]bool) []unit {
	var units []unit
	for id, ref := range l.m.active {
		j, t := ref.job, &ref.job.tasks[ref.pos]
		if touched[id] || j.rec.Spec.Interactive {
			continue
		}
		cancelled := j.cancelled(ref.pos)
		// A chain is cut when other work waits; a claimed-ahead element is also given back
		// when it is held.
		truncate := j.indices != nil && l.othersWaiting(j.id)
		giveBack := truncate || (j.indices != nil && j.isHeld(ref.pos))
		var req *signalRequest
		for i := range j.rec.Signals {
			r := &j.rec.Signals[i]
			if r.Index < 0 || r.Index == j.index(ref.pos) {
				req = r
			}
		}
		if !cancelled && req == nil && !giveBack {
			continue
		}
		for _, a := range t.allocs {
			cur := signalOf(t, a.node)
			want := signalRecord{}
			if cur != nil {
				want = *cur
			}
			if (truncate && len(a.rec.Chain) > 0) || (giveBack && a.rec.Queued) {
				want.Truncate = true
			}
			if cancelled && want.End == "" {
				st := j.cancelStamp(ref.pos)
				want.End, want.Reason = sched.StateCancelled, "cancelled by "+proc.UserName(st.UID)
			}
			if req != nil && req.Seq > want.Seq {
				want.Seq, want.Signal = req.Seq, req.Signal
			}
			if (cur != nil && want == *cur) || (cur == nil && want == signalRecord{}) {
				continue
			}
			touched[id] = true
			units = append(units, unit{
				checks: []check{{key: allocKey(a.node, id), create: true, rev: a.createRev}},
				ops:    []clientv3.Op{clientv3.OpPut(signalKey(a.node, id), encode(want))},
				keys:   []string{signalKey(a.node, id)},
			})
		}
	}
	return units
}

// orphans ends interactive jobs whose client's agent went away without ending them.
func (l *leader) orphans(now time.Time, touched map[string]bool) []unit {
	var units []unit
	for _, j := range l.m.jobs {
		if !j.rec.Spec.Interactive || j.tasks[0].session || j.tasks[0].done != nil || l.m.settled[j.id] {
			continue
		}
		t := &j.tasks[0]
		switch {
		case len(t.allocs) > 0:
			if touched[j.id] {
				continue
			}
			touched[j.id] = true
			units = append(units, l.endUnit(j, 0, sched.StateFailed, "its interactive session was lost with the agent that held it", false, now))
		case j.rec.Cancel == nil:
			rec := *j.rec
			rec.Cancel = &stamp{At: now}
			rec.Events = append(slices.Clone(rec.Events), fmt.Sprintf("%s cancelled: its interactive session was lost", now.UTC().Format(time.RFC3339)))
			var u unit
			u.checks = []check{{key: jobKey(j.id), rev: j.modRev}}
			u.put(jobKey(j.id), encode(rec))
			units = append(units, u)
		}
	}
	return units
}

// settle moves jobs whose every task has ended from job/ to hist/.
func (l *leader) settle(now time.Time) []unit {
	var units []unit
	for id := range l.m.settled {
		j := l.m.jobs[id]
		if j == nil {
			continue
		}
		rec := *j.rec
		end := now
		if len(j.tasks) == 1 && j.tasks[0].done != nil {
			end = j.tasks[0].done.End
		}
		rec.Final = &finalState{State: j.combinedState(), End: end, CancelledPending: j.cancelledPending()}
		var u unit
		u.checks = []check{{key: jobKey(id), rev: j.modRev}}
		u.del(jobKey(id))
		u.put(histKey(id), encode(rec))
		u.del(reasonKey(id))
		if j.tasks[0].session {
			u.del(sessionKey(id))
		}
		if j.indices == nil && j.tasks[0].done == nil {
			// A plain job cancelled before it ran: its accounting record says so.
			st := j.cancelStamp(0)
			res := result{State: sched.StateCancelled, End: st.At, Reason: "cancelled by " + proc.UserName(st.UID) + " before it started"}
			u.put(doneKey(id), encode(doneFor(j, 0, nil, res)))
		}
		l.finished[id] = rec.Final.State
		units = append(units, u)
		l.s.log.Debug("job finished", "job", id, "state", rec.Final.State)
	}
	return units
}

func (l *leader) saveUsage(now time.Time) []unit {
	if !l.usageDirty || now.Sub(l.usageSaved) < l.s.t.usageSave {
		return nil
	}
	l.usageDirty, l.usageSaved = false, now
	var u unit
	u.put(keyUsage, encode(usageRecord{Users: l.usage.Snapshot(now), At: now, Rev: l.m.rev}))
	return []unit{u}
}

func signalOf(t *taskState, node string) *signalRecord {
	for _, s := range t.signals {
		if s.node == node {
			return s.rec
		}
	}
	return nil
}

// firstBadPart is the first part (by node name) that did not complete.
func firstBadPart(parts []*partRecord) *partRecord {
	var bad *partRecord
	for _, p := range parts {
		if p.State != sched.StateCompleted && p.State != sched.StateCancelled && (bad == nil || p.Node < bad.Node) {
			bad = p
		}
	}
	return bad
}

// exitRequeue is the exit status with which a job asks to be requeued (HTCondor's
// self-checkpointing convention).
const exitRequeue = 85

// combineParts folds the nodes' parts of a multi-node task into its end. The worst part
// decides: a lost node, then a requeue request (exit 85), then timeout, failure,
// cancellation. requeue reports whether the task should go back to pending.
func combineParts(parts []*partRecord, alloc *allocRecord) (result, bool) {
	ordered := slices.Clone(parts)
	slices.SortFunc(ordered, func(a, b *partRecord) int { return strings.Compare(a.Node, b.Node) })
	res := result{State: sched.StateCompleted, HasExit: true}
	if alloc != nil {
		res.Start = alloc.Start
	}
	rank := func(p *partRecord) int {
		switch {
		case p.State == sched.StateNodeFail:
			return 5
		case p.HasExit && p.ExitCode == exitRequeue && p.State == sched.StateFailed:
			return 4
		case p.State == sched.StateTimeout:
			return 3
		case p.State == sched.StateFailed:
			return 2
		case p.State == sched.StateCancelled:
			return 1
		}
		return 0
	}
	var worst *partRecord
	for _, p := range ordered {
		res.CPUTime += p.CPUTime
		res.MaxRSS = max(res.MaxRSS, p.MaxRSS)
		res.End = maxTime(res.End, p.End)
		if res.Start.IsZero() || (!p.Start.IsZero() && p.Start.Before(res.Start)) {
			res.Start = p.Start
		}
		if worst == nil || rank(p) > rank(worst) {
			worst = p
		}
	}
	if worst == nil {
		return res, false
	}
	switch r := rank(worst); {
	case r == 5:
		res.State, res.HasExit, res.Reason = sched.StateNodeFail, false, worst.Reason
		return res, true
	case r == 4:
		res.State, res.ExitCode, res.Reason = "requeued", exitRequeue, fmt.Sprintf("its task on %s exited with %d: requeued", worst.Node, exitRequeue)
		return res, true
	case r > 0:
		res.State, res.ExitCode, res.HasExit, res.Reason = worst.State, worst.ExitCode, worst.HasExit, worst.Reason
		switch {
		case r == 2 && worst.Reason != "":
			// Keep the part's own reason: "killed by signal 9 (SIGKILL)", say.
			res.Reason = fmt.Sprintf("its task on %s ended (%s: %s)", worst.Node, describeResult(&worst.result), worst.Reason)
		case worst.Reason == "" || r == 2:
			res.Reason = fmt.Sprintf("its task on %s ended (%s)", worst.Node, describeResult(&worst.result))
		}
	}
	return res, false
}

func describeResult(r *result) string {
	if r.HasExit {
		return fmt.Sprintf("%s, exit code %d", r.State, r.ExitCode)
	}
	return string(r.State)
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
