package jobs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/proc"
	"github.com/ssi-cluster/ssi/internal/proc/cgroup"
	"github.com/ssi-cluster/ssi/internal/sched"
)

// executor runs this node's share of the tasks the leader allocates here. It watches
// node/<node>/, runs the tasks as their user, enforces time limits, delivers signals and
// cancels, and reports each end in batched transactions that succeed only while the
// allocation still exists.
//
// It never starts an allocation twice. Before anything of an allocation starts, the executor
// creates the allocation's own cgroup directory, <CgroupParent>/<task>-<alloc revision>, which
// holds every process of it; the directory is removed only once the end is committed to etcd
// (or the leader withdrew the allocation). A restarted agent that finds the directory knows the
// allocation was started and fails it (requeued where allowed) instead of starting it again.
// cgroups survive an agent restart but not a reboot, so the executor also keeps the machine's
// boot id at node/<node>/boot: after a reboot every allocation it finds counts as started.
type executor struct {
	s     *Service
	node  string
	w     *txnWriter
	mount string

	mu        sync.Mutex
	runs      map[string]*run
	specs     map[string]*specEntry
	ckptRoots map[uint32]bool     // users whose checkpoint directory exists
	ckptFree  map[uint32][]string // emptied checkpoint directories to reuse, per user
	ckptNext  int                 // names new checkpoint directories
	users     *userThreads
	// handedOn holds the allocations this executor created itself by claiming elements of a
	// chain (task → create revision), until the watch shows their deletion: their creation
	// event may come after the run has already ended, and must not start them again.
	handedOn map[string]int64

	reports      chan unit
	stopping     chan struct{} // closed at shutdown: running tasks end and report a lost node
	runsWG       sync.WaitGroup
	watchWG      sync.WaitGroup
	reporterDone chan struct{}
	stopWatch    context.CancelFunc
	stopReporter context.CancelFunc
	closed       atomic.Bool
}

// specEntry caches a job record for the elements of an array that run here.
type specEntry struct {
	rec    *jobRecord
	modRev int64 // of the job record as read: a chain hands on only while it is unchanged
	used   time.Time
}

// run is one task's share on this node while it runs.
type run struct {
	task      string
	alloc     *allocRecord
	createRev int64
	rec       *jobRecord
	jobModRev int64
	ckpt      string // its checkpoint directory, once acquired; kept across restarts in place

	mu      sync.Mutex
	sig     *signalRecord // latest control request
	notify  chan struct{}
	revoked chan struct{}
	revOnce sync.Once
	ended   atomic.Bool // the result is in, later deletions of the allocation are ours
	slot    *slot       // the chain it runs in, if any
}

func (r *run) control(sig *signalRecord) {
	r.mu.Lock()
	r.sig = sig
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
	if r.slot != nil {
		r.slot.kick()
	}
}

func (r *run) latest() *signalRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sig
}

func (r *run) revoke() { r.revOnce.Do(func() { close(r.revoked) }) }

func newExecutor(ctx context.Context, s *Service) (*executor, error) {
	e := &executor{
		s: s, node: s.d.Node, w: &txnWriter{cli: s.d.Etcd}, mount: s.t.cgroupMount,
		runs: map[string]*run{}, specs: map[string]*specEntry{}, ckptRoots: map[uint32]bool{}, ckptFree: map[uint32][]string{}, users: newUserThreads(), handedOn: map[string]int64{},
		reports: make(chan unit, 4096), stopping: make(chan struct{}),
	}
	if s.d.CgroupParent == "" {
		s.d.CgroupParent = "ssi-jobs-" + s.d.Node
	}
	if e.mount == "" {
		m, err := cgroup.Mount()
		if err != nil {
			return nil, fmt.Errorf("jobs: %w", err)
		}
		e.mount = m
	}
	for _, dir := range []string{e.spool(), e.spool("ckpt"), e.spool("script")} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("jobs: creating the spool directory: %w (is %s writable by the agent?)", err, s.t.spoolDir)
		}
		_ = os.Chmod(dir, 0o755)
	}
	if err := os.MkdirAll(filepath.Join(e.mount, s.d.CgroupParent), 0o755); err != nil {
		return nil, fmt.Errorf("jobs: creating the cgroup for jobs: %w (is the agent root?)", err)
	}
	resp, err := s.d.Etcd.Get(ctx, nodePrefix(e.node), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("jobs: reading this node's allocations: %w", err)
	}
	boot := bootID()
	rebooted := false
	var fresh []*mvccpb.KeyValue
	var lost []unit
	signals := map[string]*signalRecord{}
	for _, kv := range resp.Kvs {
		k := parseKey(string(kv.Key))
		switch {
		case k.kind == kindSignal:
			if sig, err := decode[signalRecord](kv.Value); err == nil {
				signals[k.a] = sig
			}
		case string(kv.Key) == bootKey(e.node):
			rebooted = string(kv.Value) != boot
		}
	}
	for _, kv := range resp.Kvs {
		k := parseKey(string(kv.Key))
		if k.kind != kindAlloc {
			continue
		}
		a, err := decode[allocRecord](kv.Value)
		if err != nil || a.Interactive {
			continue
		}
		if !rebooted && !e.markerExists(a.Task, kv.CreateRevision) {
			if a.Queued {
				// Claimed ahead by the previous agent and never started: pending again.
				lost = append(lost, e.giveBackUnit(a.Task, kv.CreateRevision))
				continue
			}
			fresh = append(fresh, kv)
			continue
		}
		// A previous agent (or boot) started it. It cannot be adopted (its exit status and
		// usage would be unknown), so it fails as on a lost node, requeued where allowed;
		// whatever still runs of it is ended below.
		rec, err := e.spec(ctx, a.Job)
		if err != nil {
			s.log.Warn("cannot read the job of a lost allocation", "task", a.Task, "err", err)
			continue
		}
		why := "the agent on %s restarted while it ran"
		if rebooted {
			why = "node %s rebooted while it ran"
		}
		res := result{State: sched.StateNodeFail, Start: a.Start, End: time.Now(), Reason: fmt.Sprintf(why, e.node)}
		lost = append(lost, e.endUnit(&run{task: a.Task, alloc: a, createRev: kv.CreateRevision, rec: rec}, res, rec.Spec.Requeue))
	}
	// End the processes first, then report, and only then drop the markers: a crash in
	// between leaves markers, so the next start fails those allocations again, never runs them.
	if n, err := e.terminateLeftovers(ctx); err != nil {
		s.log.Warn("ending job processes of a previous agent", "err", err)
	} else if n > 0 {
		s.log.Info("ended job processes of a previous agent", "trees", n)
	}
	if _, err := e.w.commit(ctx, lost); err != nil {
		return nil, fmt.Errorf("jobs: reporting tasks lost in an agent restart: %w", err)
	}
	e.removeMarkers()
	if rebooted || !hasKey(resp.Kvs, bootKey(e.node)) {
		if _, err := s.d.Etcd.Put(ctx, bootKey(e.node), boot); err != nil {
			return nil, fmt.Errorf("jobs: recording the boot id: %w", err)
		}
	}
	watchCtx, stopWatch := context.WithCancel(context.Background())
	reporterCtx, stopReporter := context.WithCancel(context.Background())
	e.stopWatch, e.stopReporter = stopWatch, stopReporter
	e.reporterDone = make(chan struct{})
	go func() {
		defer close(e.reporterDone)
		e.reporter(reporterCtx)
	}()
	e.watchWG.Add(1)
	go func() {
		defer e.watchWG.Done()
		e.watch(watchCtx, resp.Header.Revision, fresh, signals)
	}()
	return e, nil
}

func (e *executor) spool(elem ...string) string {
	return filepath.Join(append([]string{e.s.t.spoolDir, e.node}, elem...)...)
}

// Checkpoint directories ($SSI_CHECKPOINT_DIR) are <spool>/<node>/ckpt/<uid>/<n>: private,
// empty directories handed to tasks and kept across a task's exit-85 restarts. The per-user
// directory is the user's, so a task's directory is created, emptied and reused as the user:
// root never works inside a tree a user controls. They are reused rather than removed, since
// creating and removing a directory per task is costly on ext4 (its inode allocator scans past
// recently freed inodes) and a busy node would pay it thousands of times a second.

// acquireCheckpoint returns a free checkpoint directory of the user and whether it must be
// created.
func (e *executor) acquireCheckpoint(who identity) (dir string, create bool, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.ckptRoots[who.uid] {
		if err := ensureUserDir(e.spool("ckpt", strconv.FormatUint(uint64(who.uid), 10)), who); err != nil {
			return "", false, err
		}
		e.ckptRoots[who.uid] = true
	}
	if free := e.ckptFree[who.uid]; len(free) > 0 {
		dir = free[len(free)-1]
		e.ckptFree[who.uid] = free[:len(free)-1]
		return dir, false, nil
	}
	e.ckptNext++
	return e.spool("ckpt", strconv.FormatUint(uint64(who.uid), 10), strconv.Itoa(e.ckptNext)), true, nil
}

// releaseCheckpoint empties a task's checkpoint directory (as the user) for the next task.
// Most tasks leave it empty, which root can see from the directory's own listing without
// touching anything in it: then no hand-off to the user's thread is needed.
func (e *executor) releaseCheckpoint(dir string, who identity) {
	if !dirIsEmpty(dir) {
		if err := e.users.emptyAsUser(dir, who); err != nil {
			e.s.log.Warn("emptying a checkpoint directory", "dir", dir, "err", err)
			return
		}
	}
	e.mu.Lock()
	e.ckptFree[who.uid] = append(e.ckptFree[who.uid], dir)
	e.mu.Unlock()
}

// marker is the cgroup (relative to the mount) of one allocation: it exists from before its
// first process starts until its end is committed.
func (e *executor) marker(task string, createRev int64) string {
	return e.s.d.CgroupParent + "/" + task + "-" + strconv.FormatInt(createRev, 10)
}

func (e *executor) markerExists(task string, createRev int64) bool {
	_, err := os.Stat(filepath.Join(e.mount, e.marker(task, createRev)))
	return err == nil
}

// removeMarker drops an allocation's cgroup once its end is recorded (or it was withdrawn).
func (e *executor) removeMarker(task string, createRev int64) {
	// The processes' own groups are gone by now, so one rmdir normally does.
	err := unix.Rmdir(filepath.Join(e.mount, e.marker(task, createRev)))
	if err == nil || errors.Is(err, unix.ENOENT) {
		return
	}
	if err := cgroup.Open(e.mount, e.marker(task, createRev)).Remove(); err != nil {
		e.s.log.Warn("removing a job cgroup", "task", task, "err", err)
	}
}

// terminateLeftovers ends the processes of every allocation a previous agent started.
func (e *executor) terminateLeftovers(ctx context.Context) (int, error) {
	groups, err := cgroup.Open(e.mount, e.s.d.CgroupParent).Children()
	if err != nil {
		return 0, err
	}
	total := 0
	for _, g := range groups {
		n, err := proc.TerminateLeftovers(ctx, e.mount, g.Rel(), time.Second)
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// removeMarkers removes the allocation cgroups a previous agent left, once their allocations
// are reported: the allocations about to start have none yet.
func (e *executor) removeMarkers() {
	groups, err := cgroup.Open(e.mount, e.s.d.CgroupParent).Children()
	if err != nil {
		return
	}
	for _, g := range groups {
		_ = g.Remove()
	}
}

func bootKey(node string) string { return nodePrefix(node) + "boot" }

// bootID identifies this boot of the machine.
func bootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

func hasKey(kvs []*mvccpb.KeyValue, key string) bool {
	for _, kv := range kvs {
		if string(kv.Key) == key {
			return true
		}
	}
	return false
}

// watch follows this node's allocations and control requests.
func (e *executor) watch(ctx context.Context, rev int64, fresh []*mvccpb.KeyValue, signals map[string]*signalRecord) {
	e.startBatch(ctx, fresh, signals)
	for ctx.Err() == nil {
		wch := e.s.d.Etcd.Watch(clientv3.WithRequireLeader(ctx), nodePrefix(e.node), clientv3.WithPrefix(), clientv3.WithRev(rev+1))
		for wr := range wch {
			if wr.Err() != nil {
				e.s.log.Warn("watching this node's allocations", "err", wr.Err())
				break
			}
			events := wr.Events
			// Take what else has arrived, so one transaction marks many allocations started.
		drain:
			for {
				select {
				case more, ok := <-wch:
					if !ok || more.Err() != nil {
						break drain
					}
					events = append(events, more.Events...)
				default:
					break drain
				}
			}
			if len(events) > 0 {
				rev = events[len(events)-1].Kv.ModRevision
			}
			e.handle(ctx, events)
		}
		if ctx.Err() == nil {
			// Compaction or a lost leader: re-read what this node holds and go on from there.
			sleep(ctx, 100*time.Millisecond)
			resp, err := e.s.d.Etcd.Get(ctx, nodePrefix(e.node), clientv3.WithPrefix())
			if err != nil {
				continue
			}
			rev = resp.Header.Revision
			e.resync(ctx, resp.Kvs)
		}
	}
}

func (e *executor) handle(ctx context.Context, events []*clientv3.Event) {
	var fresh []*mvccpb.KeyValue
	signals := map[string]*signalRecord{}
	for _, ev := range events {
		k := parseKey(string(ev.Kv.Key))
		switch k.kind {
		case kindAlloc:
			switch {
			case ev.Type == mvccpb.DELETE:
				e.mu.Lock()
				if rev, ok := e.handedOn[k.a]; ok && ev.Kv.ModRevision > rev {
					delete(e.handedOn, k.a)
				}
				e.mu.Unlock()
				if r := e.lookup(k.a); r != nil && !r.ended.Load() {
					e.s.log.Info("allocation withdrawn by the scheduler: ending its processes", "task", k.a)
					r.revoke()
				}
			case ev.Kv.CreateRevision == ev.Kv.ModRevision:
				e.mu.Lock()
				ours := e.handedOn[k.a] == ev.Kv.CreateRevision
				e.mu.Unlock()
				if !ours {
					fresh = append(fresh, ev.Kv)
				}
			}
		case kindSignal:
			if ev.Type == mvccpb.DELETE {
				continue
			}
			sig, err := decode[signalRecord](ev.Kv.Value)
			if err != nil {
				continue
			}
			if r := e.lookup(k.a); r != nil {
				r.control(sig)
			} else {
				signals[k.a] = sig
			}
		}
	}
	e.startBatch(ctx, fresh, signals)
}

// resync handles allocations that appeared while the watch was broken.
func (e *executor) resync(ctx context.Context, kvs []*mvccpb.KeyValue) {
	var fresh []*mvccpb.KeyValue
	present := map[string]bool{}
	for _, kv := range kvs {
		k := parseKey(string(kv.Key))
		if k.kind != kindAlloc {
			continue
		}
		present[k.a] = true
		if e.lookup(k.a) == nil && !e.markerExists(k.a, kv.CreateRevision) {
			fresh = append(fresh, kv)
		}
	}
	e.mu.Lock()
	for id, r := range e.runs {
		if !present[id] && !r.ended.Load() {
			r.revoke()
		}
	}
	e.mu.Unlock()
	e.startBatch(ctx, fresh, nil)
}

func (e *executor) lookup(task string) *run {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.runs[task]
}

// startBatch starts new allocations. One that was cancelled before it started ends without
// running.
func (e *executor) startBatch(ctx context.Context, kvs []*mvccpb.KeyValue, signals map[string]*signalRecord) {
	if len(kvs) == 0 || e.closed.Load() {
		return
	}
	type candidate struct {
		a         *allocRecord
		createRev int64
		rec       *jobRecord
		modRev    int64
	}
	var cands []*candidate
	for _, kv := range kvs {
		a, err := decode[allocRecord](kv.Value)
		if err != nil {
			e.s.log.Warn("ignoring an unreadable allocation", "key", string(kv.Key), "err", err)
			continue
		}
		if a.Interactive || e.lookup(a.Task) != nil {
			continue // interactive sessions are run by their client through ssi run
		}
		if a.Queued {
			// A claim of a slot that no longer exists here (it was handed back or ended
			// while this event was on its way): give it back unless it is already gone.
			e.queueReports(e.giveBackUnit(a.Task, kv.CreateRevision))
			continue
		}
		cands = append(cands, &candidate{a: a, createRev: kv.CreateRevision})
	}
	for {
		err := fetchSpecs(ctx, e, cands, func(c *candidate) string { return c.a.Job }, func(c *candidate, se *specEntry) { c.rec, c.modRev = se.rec, se.modRev })
		if err == nil || ctx.Err() != nil {
			break
		}
		e.s.log.Warn("reading the jobs of new allocations", "err", err)
		sleep(ctx, 200*time.Millisecond)
	}
	for _, c := range cands {
		if c.rec == nil {
			e.s.log.Warn("allocation of an unknown job", "task", c.a.Task)
			continue
		}
		r := &run{task: c.a.Task, alloc: c.a, createRev: c.createRev, rec: c.rec, jobModRev: c.modRev,
			notify: make(chan struct{}, 1), revoked: make(chan struct{})}
		if sig := signals[c.a.Task]; sig != nil {
			if sig.End != "" {
				e.queueReports(e.endUnit(r, result{State: sig.End, Reason: sig.Reason, End: time.Now()}, false))
				continue
			}
			r.control(sig)
		}
		e.mu.Lock()
		e.runs[r.task] = r
		e.mu.Unlock()
		e.runsWG.Add(1)
		go e.runTask(r)
	}
}

// fetchSpecs fills in the job records of items, from the cache or in one read.
func fetchSpecs[T any](ctx context.Context, e *executor, items []T, jobOf func(T) string, set func(T, *specEntry)) error {
	now := time.Now()
	var missing []string
	e.mu.Lock()
	for _, it := range items {
		id := jobOf(it)
		if se := e.specs[id]; se != nil {
			se.used = now
			set(it, se)
		} else if !containsString(missing, id) {
			missing = append(missing, id)
		}
	}
	// Forget jobs no task here has needed for a while.
	for id, se := range e.specs {
		if now.Sub(se.used) > time.Minute {
			delete(e.specs, id)
		}
	}
	e.mu.Unlock()
	for len(missing) > 0 {
		chunk := missing[:min(len(missing), maxTxnOps)]
		missing = missing[len(chunk):]
		ops := make([]clientv3.Op, len(chunk))
		for i, id := range chunk {
			ops[i] = clientv3.OpGet(jobKey(id))
		}
		resp, err := e.s.d.Etcd.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return fmt.Errorf("reading job records: %w", err)
		}
		e.mu.Lock()
		for i, id := range chunk {
			kvs := resp.Responses[i].GetResponseRange().Kvs
			if len(kvs) == 0 {
				continue
			}
			rec, err := decode[jobRecord](kvs[0].Value)
			if err != nil {
				continue
			}
			e.specs[id] = &specEntry{rec: rec, modRev: kvs[0].ModRevision, used: now}
		}
		e.mu.Unlock()
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, it := range items {
		if se := e.specs[jobOf(it)]; se != nil {
			set(it, se)
		}
	}
	return nil
}

// spec returns one job's record.
func (e *executor) spec(ctx context.Context, job string) (*jobRecord, error) {
	var rec *jobRecord
	err := fetchSpecs(ctx, e, []string{job}, func(s string) string { return s }, func(_ string, se *specEntry) { rec = se.rec })
	if err == nil && rec == nil {
		err = fmt.Errorf("job %s has no record", job)
	}
	return rec, err
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// runTask runs one task's share here until it ends for good, restarting it in place when it
// asks for a requeue (exit 85) and runs on this node alone, and then runs the elements its
// allocation is chained to, one after the other (see slot).
func (e *executor) runTask(r *run) {
	defer e.runsWG.Done()
	var s *slot
	if len(r.alloc.Chain) > 0 && len(r.alloc.Nodes) == 1 && !r.alloc.Queued {
		s = e.newSlot(r)
		defer s.finish()
	}
	for r != nil {
		r = e.runOne(r, s)
	}
}

// runOne runs r until it ends and returns the next element of its slot, if any.
func (e *executor) runOne(r *run, s *slot) *run {
	if s == nil {
		defer e.forget(r)
	}
	next := func(res *result, requeue bool) *run {
		if s == nil {
			return nil
		}
		return s.endAndNext(r, res, requeue)
	}
	for {
		res, requeue, revoked := e.execute(r)
		if revoked {
			r.ended.Store(true)
			e.removeMarker(r.task, r.createRev)
			e.forget(r)
			return next(nil, false)
		}
		if requeue && len(r.alloc.Nodes) == 1 {
			if s != nil {
				s.sync(r) // its start must be written before its allocation is rewritten
			}
			if e.restartInPlace(r, res) {
				continue
			}
			r.ended.Store(true)
			e.removeMarker(r.task, r.createRev)
			e.forget(r)
			return next(nil, false)
		}
		r.ended.Store(true)
		if r.ckpt != "" && !(res.HasExit && res.ExitCode == exitRequeue && res.State == sched.StateFailed) {
			sp := &r.rec.Spec
			e.releaseCheckpoint(r.ckpt, identity{uid: sp.UID, gid: sp.GID, groups: sp.Groups, umask: sp.Umask})
		}
		requeue = res.State == sched.StateNodeFail && r.rec.Spec.Requeue
		if s != nil {
			return s.endAndNext(r, &res, requeue)
		}
		e.queueReports(e.endUnit(r, res, requeue))
		return nil
	}
}

// register adds r to the runs unless its task is already known here.
func (e *executor) register(r *run) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.runs[r.task] != nil {
		return false
	}
	e.runs[r.task] = r
	return true
}

// forget drops r from the runs, once nothing more about it will be written.
func (e *executor) forget(r *run) {
	e.mu.Lock()
	if e.runs[r.task] == r {
		delete(e.runs, r.task)
	}
	e.mu.Unlock()
}

func (e *executor) noteHandedOn(task string, rev int64) {
	e.mu.Lock()
	e.handedOn[task] = rev
	e.mu.Unlock()
}

// dropSpec forgets a cached job record, which may have changed.
func (e *executor) dropSpec(job string) {
	e.mu.Lock()
	delete(e.specs, job)
	e.mu.Unlock()
}

// giveBackUnit deletes a claimed (queued) allocation that never started: the element is
// pending again.
func (e *executor) giveBackUnit(task string, createRev int64) unit {
	var u unit
	u.checks = []check{{key: allocKey(e.node, task), create: true, rev: createRev}}
	u.del(allocKey(e.node, task))
	u.del(signalKey(e.node, task))
	return u
}

// restartInPlace records the run that asked for a requeue as an attempt and starts the task
// again on the same allocation, with the same checkpoint directory and a fresh time limit.
func (e *executor) restartInPlace(r *run, res result) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	next := *r.alloc
	next.Attempt++
	next.Start = time.Now()
	res.State, res.Reason = "requeued", fmt.Sprintf("exited with %d: requeued at once on %s", exitRequeue, e.node)
	att := attemptRecord{Task: r.task, Number: r.alloc.Attempt, User: r.rec.Spec.User, Nodes: r.alloc.Nodes,
		CPUs: r.rec.Spec.CPUs * int64(r.rec.Spec.Tasks), result: res}
	var u unit
	u.checks = []check{{key: allocKey(e.node, r.task), create: true, rev: r.createRev}}
	u.put(attemptKey(r.task, r.alloc.Attempt), encode(att))
	u.put(allocKey(e.node, r.task), encode(next))
	ok := false
	u.done = func(written bool, _ int64) { ok = written }
	for ctx.Err() == nil {
		if _, err := e.w.commit(ctx, []unit{u}); err != nil {
			e.s.log.Warn("recording a requeue", "task", r.task, "err", err)
			sleep(ctx, 200*time.Millisecond)
			continue
		}
		break
	}
	if ok {
		r.alloc = &next
		e.s.log.Info("job requeued in place", "task", r.task, "attempt", next.Attempt)
	}
	return ok
}

// endUnit reports the end of this node's share: a done record when the task ran here alone,
// otherwise this node's part for the leader to combine. requeue puts a single-node task back
// to pending (an attempt is recorded instead of a done record).
func (e *executor) endUnit(r *run, res result, requeue bool) unit {
	var u unit
	task, rev := r.task, r.createRev
	u.done = func(bool, int64) { e.removeMarker(task, rev) }
	u.checks = []check{{key: allocKey(e.node, r.task), create: true, rev: r.createRev}}
	u.del(allocKey(e.node, r.task))
	u.del(signalKey(e.node, r.task))
	switch {
	case len(r.alloc.Nodes) > 1:
		u.put(partKey(r.task, e.node), encode(partRecord{Node: e.node, result: res}))
	case requeue:
		att := attemptRecord{Task: r.task, Number: r.alloc.Attempt, User: r.rec.Spec.User, Nodes: r.alloc.Nodes,
			CPUs: r.rec.Spec.CPUs * int64(r.rec.Spec.Tasks), result: res}
		u.put(attemptKey(r.task, r.alloc.Attempt), encode(att))
	default:
		u.put(doneKey(r.task), encode(doneFromRecord(r.rec, r.alloc, res)))
	}
	return u
}

func doneFromRecord(rec *jobRecord, a *allocRecord, res result) doneRecord {
	sp := &rec.Spec
	return doneRecord{
		Task: a.Task, Job: a.Job, Index: a.Index, Name: sp.Name, User: sp.User, UID: sp.UID, Queue: sp.Queue,
		Submit: sp.Submit, Nodes: a.Nodes, CPUs: sp.CPUs, Memory: sp.Memory, Tasks: sp.Tasks,
		TimeLimit: a.TimeLimit, Attempts: a.Attempt, Interactive: sp.Interactive, result: res,
	}
}

func (e *executor) queueReports(units ...unit) {
	for _, u := range units {
		e.reports <- u
	}
}

// reporter writes ends in batches: while one transaction is in flight the next ones gather.
// It returns once the reports channel is closed and drained, or ctx ends.
func (e *executor) reporter(ctx context.Context) {
	for {
		u, ok := <-e.reports
		if !ok {
			return
		}
		batch := []unit{u}
	more:
		for len(batch) < 1024 {
			select {
			case u, ok := <-e.reports:
				if !ok {
					break more
				}
				batch = append(batch, u)
			default:
				break more
			}
		}
		for {
			_, err := e.w.commit(ctx, batch)
			if err == nil || ctx.Err() != nil {
				break
			}
			e.s.log.Warn("reporting job ends", "err", err)
			sleep(ctx, 200*time.Millisecond)
		}
	}
}

// shutdown stops taking allocations, ends every running task (each is reported as lost, and
// requeued where allowed) and flushes the reports. Used when the agent stops.
func (e *executor) shutdown() {
	e.closed.Store(true)
	e.stopWatch()
	e.watchWG.Wait()
	close(e.stopping)
	e.runsWG.Wait()
	close(e.reports)
	select {
	case <-e.reporterDone:
	case <-time.After(5 * time.Second):
		e.s.log.Warn("could not report every job end before stopping")
		e.stopReporter()
		<-e.reporterDone
	}
	e.stopReporter()
}
