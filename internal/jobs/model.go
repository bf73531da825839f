package jobs

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ssi-cluster/ssi/internal/sched"
)

// model is the job system's state as of one etcd revision: active jobs with the state of each
// task, queues, drains and the fair-share table. The leader keeps one current through a watch;
// the RPCs of every agent load one on demand. Finished jobs (hist/, done/) are not in it.
type model struct {
	rev    int64
	log    *slog.Logger
	jobs   map[string]*jobEntry
	queues map[string]queueRecord
	drains map[string]drainRecord
	usage  *usageRecord
	// active holds every task with an allocation or a part, by task id.
	active map[string]taskRef
	// settled holds jobs whose every task has ended: the leader moves them to hist/.
	settled map[string]bool
	// charge, when set, is told about each done or attempt record created after the load, for
	// fair-share accounting.
	charge func(user string, cpuSeconds float64, at time.Time, rev int64)
	// changed is set by every applied event that can change a scheduling decision.
	changed bool
	// light: done and attempt records were read without their values (see loadActiveModel).
	light bool
}

type taskRef struct {
	job *jobEntry
	pos int
}

type jobEntry struct {
	id         string
	rec        *jobRecord
	modRev     int64
	createRev  int64
	indices    []int // sorted array indices; nil for a plain job
	maxRunning int   // the array's %N, 0 for none
	tasks      []taskState
	held       map[int]bool // rec.HeldIndices
	released   map[int]bool // rec.ReleasedIndices
	// nextPending: no position below it is pending, so scans for pending elements start here.
	nextPending int
	reason      reasonRecord
	activeCount int // positions with allocations or parts
	doneCount   int // positions with a done record
}

type taskState struct {
	// alloc is the latest allocation seen, kept while the parts of a multi-node task come in.
	alloc    *allocRecord
	allocs   []allocEntry
	signals  []signalEntry
	parts    []*partRecord
	done     *doneRecord
	attempts int
	grant    bool
	session  bool
	// reserved counts the allocations whose chain holds this element: it is not pending.
	reserved int
}

type allocEntry struct {
	node      string
	rec       *allocRecord
	createRev int64
	modRev    int64
}

type signalEntry struct {
	node string
	rec  *signalRecord
}

func newModel(log *slog.Logger) *model {
	return &model{
		log:     log,
		jobs:    map[string]*jobEntry{},
		queues:  map[string]queueRecord{},
		drains:  map[string]drainRecord{},
		active:  map[string]taskRef{},
		settled: map[string]bool{},
	}
}

// loadModel reads the state at one revision: the active jobs, then everything that belongs
// to them. Done and attempt records are read job by job (history of finished jobs is never
// scanned), many reads to a transaction.
func loadModel(ctx context.Context, cli *clientv3.Client, log *slog.Logger) (*model, error) {
	return load(ctx, cli, log, false)
}

// loadActiveModel is loadModel for a view of pending and running tasks only: done and attempt
// records are read as keys, which is all that says a task has ended or how often it was
// requeued. A large array being listed while it runs would otherwise read and decode every
// finished element's record on each call, and ssi jobs is polled while arrays run. A finished
// task of such a model is marked done with an unknown state: never show or use it.
func loadActiveModel(ctx context.Context, cli *clientv3.Client, log *slog.Logger) (*model, error) {
	return load(ctx, cli, log, true)
}

func load(ctx context.Context, cli *clientv3.Client, log *slog.Logger, light bool) (*model, error) {
	m := newModel(log)
	m.light = light
	resp, err := cli.Get(ctx, prefixJob, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("reading the job queue from etcd: %w", err)
	}
	rev := resp.Header.Revision
	for _, kv := range resp.Kvs {
		m.apply(kv, false)
	}
	at := clientv3.WithRev(rev)
	ops := []clientv3.Op{
		clientv3.OpGet(prefixNode, clientv3.WithPrefix(), at),
		clientv3.OpGet(prefixPart, clientv3.WithPrefix(), at),
		clientv3.OpGet(prefixReason, clientv3.WithPrefix(), at),
		clientv3.OpGet(prefixGrant, clientv3.WithPrefix(), at),
		clientv3.OpGet(prefixSession, clientv3.WithPrefix(), at),
		clientv3.OpGet(prefixQueue, clientv3.WithPrefix(), at),
		clientv3.OpGet(prefixDrain, clientv3.WithPrefix(), at),
		clientv3.OpGet(keyUsage, at),
	}
	keys := at
	if light {
		keys = func(op *clientv3.Op) { at(op); clientv3.WithKeysOnly()(op) }
	}
	for id, j := range m.jobs {
		if j.indices != nil {
			ops = append(ops, clientv3.OpGet(prefixDone+id+"_", clientv3.WithPrefix(), keys),
				clientv3.OpGet(prefixAttempt+id+"_", clientv3.WithPrefix(), keys))
		} else {
			ops = append(ops, clientv3.OpGet(doneKey(id), keys), clientv3.OpGet(attemptPrefix(id), clientv3.WithPrefix(), keys))
		}
	}
	for len(ops) > 0 {
		n := min(len(ops), maxTxnOps)
		tr, err := cli.Txn(ctx).Then(ops[:n]...).Commit()
		if err != nil {
			return nil, fmt.Errorf("reading the job state from etcd: %w", err)
		}
		for _, r := range tr.Responses {
			for _, kv := range r.GetResponseRange().Kvs {
				m.apply(kv, false)
			}
		}
		ops = ops[n:]
	}
	m.rev = rev
	return m, nil
}

// applyEvent applies one watch event.
func (m *model) applyEvent(ev *clientv3.Event) {
	m.apply(ev.Kv, ev.Type == mvccpb.DELETE)
	m.rev = max(m.rev, ev.Kv.ModRevision)
}

// apply folds one key's new value (or deletion) into the model.
func (m *model) apply(kv *mvccpb.KeyValue, deleted bool) {
	k := parseKey(string(kv.Key))
	var err error
	switch k.kind {
	case kindJob:
		err = m.applyJob(k.a, kv, deleted)
	case kindAlloc, kindSignal, kindPart, kindDone, kindAttempt, kindGrant, kindSession:
		err = m.applyTask(k, kv, deleted)
	case kindReason:
		if j := m.jobs[k.a]; j != nil {
			j.reason = reasonRecord{}
			if !deleted {
				var r *reasonRecord
				if r, err = decode[reasonRecord](kv.Value); err == nil {
					j.reason = *r
				}
			}
		}
	case kindQueue:
		m.changed = true
		if deleted {
			delete(m.queues, k.a)
			break
		}
		var q *queueRecord
		if q, err = decode[queueRecord](kv.Value); err == nil {
			q.Name = k.a
			m.queues[k.a] = *q
		}
	case kindDrain:
		m.changed = true
		if deleted {
			delete(m.drains, k.a)
			break
		}
		var d *drainRecord
		if d, err = decode[drainRecord](kv.Value); err == nil {
			m.drains[k.a] = *d
		}
	case kindUsage:
		if !deleted {
			m.usage, err = decode[usageRecord](kv.Value)
		}
	}
	if err != nil {
		m.log.Warn("ignoring an unreadable job record", "key", string(kv.Key), "err", err)
	}
}

func (m *model) applyJob(id string, kv *mvccpb.KeyValue, deleted bool) error {
	m.changed = true
	if deleted {
		if j := m.jobs[id]; j != nil {
			for pos := range j.tasks {
				delete(m.active, j.taskID(pos))
			}
		}
		delete(m.jobs, id)
		delete(m.settled, id)
		return nil
	}
	rec, err := decode[jobRecord](kv.Value)
	if err != nil {
		return err
	}
	j := m.jobs[id]
	if j == nil {
		j = &jobEntry{id: id, createRev: kv.CreateRevision}
		if rec.Spec.Array != "" {
			spec, err := sched.ParseArray(rec.Spec.Array)
			if err != nil {
				return fmt.Errorf("job %s: %w", id, err)
			}
			j.indices = spec.Indices()
			j.maxRunning = spec.MaxRunning
		}
		j.tasks = make([]taskState, max(len(j.indices), 1))
		m.jobs[id] = j
	}
	j.rec, j.modRev = rec, kv.ModRevision
	j.held, j.released = indexSet(rec.HeldIndices), indexSet(rec.ReleasedIndices)
	// A release or an index-level change can make earlier elements pending again.
	j.nextPending = 0
	m.checkSettled(j)
	return nil
}

func (m *model) applyTask(k parsedKey, kv *mvccpb.KeyValue, deleted bool) error {
	j, pos := m.task(k.a)
	if j == nil {
		// Records of a job that moved to history, or an id that never existed.
		if k.kind == kindDone || k.kind == kindAttempt {
			m.chargeRecord(k.kind, kv, deleted)
		}
		return nil
	}
	t := &j.tasks[pos]
	wasActive := len(t.allocs) > 0 || len(t.parts) > 0
	switch k.kind {
	case kindAlloc:
		m.changed = true
		for _, old := range t.allocs {
			if old.node == k.b {
				j.reserve(old.rec.Chain, -1)
			}
		}
		t.allocs = slices.DeleteFunc(t.allocs, func(a allocEntry) bool { return a.node == k.b })
		if !deleted {
			rec, err := decode[allocRecord](kv.Value)
			if err != nil {
				return err
			}
			t.allocs = append(t.allocs, allocEntry{node: k.b, rec: rec, createRev: kv.CreateRevision, modRev: kv.ModRevision})
			t.alloc = rec
			j.reserve(rec.Chain, 1)
		}
	case kindSignal:
		t.signals = slices.DeleteFunc(t.signals, func(s signalEntry) bool { return s.node == k.b })
		if !deleted {
			rec, err := decode[signalRecord](kv.Value)
			if err != nil {
				return err
			}
			t.signals = append(t.signals, signalEntry{node: k.b, rec: rec})
		}
	case kindPart:
		m.changed = true
		t.parts = slices.DeleteFunc(t.parts, func(p *partRecord) bool { return p.Node == k.b })
		if !deleted {
			rec, err := decode[partRecord](kv.Value)
			if err != nil {
				return err
			}
			rec.Node, rec.modRev = k.b, kv.ModRevision
			t.parts = append(t.parts, rec)
		}
	case kindDone:
		m.changed = true
		if t.done != nil {
			j.doneCount--
		}
		t.done = nil
		if !deleted && m.light && len(kv.Value) == 0 {
			t.done = &doneRecord{result: result{State: stateUnknownDone}}
			j.doneCount++
		} else if !deleted {
			rec, err := decode[doneRecord](kv.Value)
			if err != nil {
				return err
			}
			t.done = rec
			j.doneCount++
			// Charged from the record just decoded: decoding it a second time was about a
			// third of the leader's work per end.
			if m.charge != nil && kv.CreateRevision == kv.ModRevision {
				if user, cpuSec, at, ok := doneCharge(rec); ok {
					m.charge(user, cpuSec, at, kv.ModRevision)
				}
			}
		}
	case kindAttempt:
		if !deleted {
			n, err := strconv.Atoi(k.b)
			if err == nil {
				t.attempts = max(t.attempts, n+1)
			}
		}
		m.chargeRecord(k.kind, kv, deleted)
	case kindGrant:
		t.grant = !deleted
	case kindSession:
		m.changed = true
		t.session = !deleted
	}
	isActive := len(t.allocs) > 0 || len(t.parts) > 0
	id := j.taskID(pos)
	switch {
	case isActive && !wasActive:
		j.activeCount++
		m.active[id] = taskRef{j, pos}
	case !isActive && wasActive:
		j.activeCount--
		delete(m.active, id)
		t.alloc = nil
		if t.done == nil {
			j.nextPending = min(j.nextPending, pos) // requeued: pending again
		}
	}
	m.checkSettled(j)
	return nil
}

// stateUnknownDone is the state of a finished task in a model loaded without done records.
const stateUnknownDone sched.JobState = "done"

// chargeRecord reports a newly created done or attempt record to the fair-share accounting.
func (m *model) chargeRecord(kind keyKind, kv *mvccpb.KeyValue, deleted bool) {
	if m.charge == nil || deleted || kv.CreateRevision != kv.ModRevision {
		return
	}
	user, cpuSec, at, ok := chargeOf(kind, kv.Value)
	if ok {
		m.charge(user, cpuSec, at, kv.ModRevision)
	}
}

// chargeOf is the fair-share charge of a done or attempt record: allocated cpus × wall time.
func chargeOf(kind keyKind, value []byte) (user string, cpuSeconds float64, at time.Time, ok bool) {
	switch kind {
	case kindDone:
		d, err := decode[doneRecord](value)
		if err != nil {
			return "", 0, time.Time{}, false
		}
		return doneCharge(d)
	case kindAttempt:
		a, err := decode[attemptRecord](value)
		if err != nil || a.Start.IsZero() {
			return "", 0, time.Time{}, false
		}
		return a.User, float64(a.CPUs) / 1000 * a.End.Sub(a.Start).Seconds(), a.End, true
	}
	return "", 0, time.Time{}, false
}

// doneCharge is chargeOf of a decoded done record.
func doneCharge(d *doneRecord) (user string, cpuSeconds float64, at time.Time, ok bool) {
	if d.Start.IsZero() {
		return "", 0, time.Time{}, false
	}
	return d.User, float64(d.CPUs*int64(d.Tasks)) / 1000 * d.End.Sub(d.Start).Seconds(), d.End, true
}

// checkSettled notes a job whose every task has ended.
func (m *model) checkSettled(j *jobEntry) {
	if j.activeCount == 0 && j.rec != nil && j.allEnded() {
		m.settled[j.id] = true
	} else {
		delete(m.settled, j.id)
	}
}

// task finds the job and position of a task id ("42" or "42_7").
func (m *model) task(id string) (*jobEntry, int) {
	base, idx, isElem := strings.Cut(id, "_")
	j := m.jobs[base]
	if j == nil {
		return nil, 0
	}
	if !isElem {
		if j.indices != nil {
			return nil, 0
		}
		return j, 0
	}
	if j.indices == nil {
		return nil, 0
	}
	n, err := strconv.Atoi(idx)
	if err != nil {
		return nil, 0
	}
	pos, found := slices.BinarySearch(j.indices, n)
	if !found {
		return nil, 0
	}
	return j, pos
}

func (j *jobEntry) index(pos int) int {
	if j.indices == nil {
		return -1
	}
	return j.indices[pos]
}

func (j *jobEntry) taskID(pos int) string { return taskID(j.id, j.index(pos)) }

func (j *jobEntry) cancelled(pos int) bool {
	if j.rec.Cancel != nil {
		return true
	}
	_, ok := j.rec.CancelIndices[j.index(pos)]
	return ok
}

func (j *jobEntry) cancelStamp(pos int) stamp {
	if j.rec.Cancel != nil {
		return *j.rec.Cancel
	}
	return j.rec.CancelIndices[j.index(pos)]
}

func (j *jobEntry) isHeld(pos int) bool {
	idx := j.index(pos)
	return j.rec.Hold && !j.released[idx] || j.held[idx]
}

// state is where task pos is in its life.
func (j *jobEntry) state(pos int) sched.JobState {
	t := &j.tasks[pos]
	switch {
	case t.done != nil:
		return t.done.State
	case t.running():
		return sched.StateRunning
	case j.cancelled(pos):
		return sched.StateCancelled
	}
	return sched.StatePending
}

// running reports whether the task runs: it has a part, or an allocation that is not merely
// claimed ahead (queued) by a node. A queued task is neither running nor pending.
func (t *taskState) running() bool {
	if len(t.parts) > 0 {
		return true
	}
	for _, a := range t.allocs {
		if !a.rec.Queued {
			return true
		}
	}
	return false
}

// queued reports whether the task's only allocations are claims ahead of a chain.
func (t *taskState) queued() bool { return len(t.allocs) > 0 && !t.running() }

func (j *jobEntry) pending(pos int) bool {
	t := &j.tasks[pos]
	return t.done == nil && len(t.allocs) == 0 && len(t.parts) == 0 && t.reserved == 0 && !j.cancelled(pos)
}

// reserve adds delta to the reservation count of the chained elements. A chain is released
// when its allocation goes, which can be in the same transaction as the next one is made, so
// counts (not flags) keep the order of those events from mattering.
func (j *jobEntry) reserve(chain []int, delta int) {
	for _, idx := range chain {
		if pos, ok := slices.BinarySearch(j.indices, idx); ok {
			t := &j.tasks[pos]
			t.reserved += delta
			if t.reserved == 0 && t.done == nil && len(t.allocs) == 0 {
				j.nextPending = min(j.nextPending, pos) // released: pending again
			}
		}
	}
}

// allEnded reports whether no task of the job can run any more.
func (j *jobEntry) allEnded() bool {
	if j.activeCount > 0 {
		return false
	}
	if j.rec.Cancel != nil || j.doneCount == len(j.tasks) {
		return true
	}
	if len(j.rec.CancelIndices) == 0 {
		return false
	}
	for pos := range j.tasks {
		if j.tasks[pos].done == nil && !j.cancelled(pos) {
			return false
		}
	}
	return true
}

// combinedState is the job's state as a dependency sees it.
func (j *jobEntry) combinedState() sched.JobState {
	if len(j.tasks) == 1 {
		return j.state(0)
	}
	states := make([]sched.JobState, len(j.tasks))
	for pos := range j.tasks {
		states[pos] = j.state(pos)
	}
	return sched.CombineArrayStates(states)
}

// cancelledPending lists, as an array spec, the elements cancelled before they ever ran.
func (j *jobEntry) cancelledPending() string {
	if j.indices == nil {
		return ""
	}
	var idx []int
	for pos := range j.tasks {
		if j.tasks[pos].done == nil && j.cancelled(pos) {
			idx = append(idx, j.indices[pos])
		}
	}
	return formatIndices(idx)
}

// formatIndices writes sorted indices as compact ranges ("1-3,7").
func formatIndices(idx []int) string {
	sort.Ints(idx)
	var b strings.Builder
	for i := 0; i < len(idx); {
		k := i
		for k+1 < len(idx) && idx[k+1] == idx[k]+1 {
			k++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(idx[i]))
		if k > i {
			b.WriteByte('-')
			b.WriteString(strconv.Itoa(idx[k]))
		}
		i = k + 1
	}
	return b.String()
}

func itoa(i int) string { return strconv.Itoa(i) }

// queueList is the configured queues plus the implicit default queue when it is not
// configured, so jobs without --queue always have a home.
func (m *model) queueList() []sched.Queue {
	qs := make([]sched.Queue, 0, len(m.queues)+1)
	if _, ok := m.queues[sched.DefaultQueueName]; !ok {
		qs = append(qs, sched.Queue{Name: sched.DefaultQueueName})
	}
	names := make([]string, 0, len(m.queues))
	for n := range m.queues {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		qs = append(qs, m.queues[n].sched())
	}
	return qs
}

// indexSet is the set of indices, nil when there are none.
func indexSet(indices []int) map[int]bool {
	if len(indices) == 0 {
		return nil
	}
	set := make(map[int]bool, len(indices))
	for _, i := range indices {
		set[i] = true
	}
	return set
}
