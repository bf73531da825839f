package jobs

import (
	"sync"
	"time"
)

// claimAhead is how many elements of a chain a slot keeps claimed (queued allocations) ahead
// of the element it runs. Claims are written while earlier elements run, so they must cover
// a flush interval plus an etcd transaction under load with elements that may take ~2 ms each.
const claimAhead = 16

// flushEvery is how long a slot lets the ends of short elements gather before writing them,
// unless something cannot wait (claims running low, the runner waiting, a give-back, the chain
// stopping): one transaction then records several ends, which saves etcd, the leader and the
// watchers work per job. Nothing waits for those ends: the slot runs on from its claims.
const flushEvery = 20 * time.Millisecond

// maxEndsPerUnit keeps a slot's combined report within etcd's operations per transaction
// (an end is three operations).
const maxEndsPerUnit = 32

// slotEnd is an element that ended in a slot and whose end is not yet written.
type slotEnd struct {
	r       *run
	res     result
	requeue bool
}

// slot runs the elements of one chain one after the other on the resources of the
// allocation the leader made for the first (HTCondor's claim reuse), without waiting for
// etcd between elements:
//
//   - While an element runs, the slot claims the next elements of the chain: queued
//     allocations on this node (allocRecord.Queued), written only while the allocation that
//     reserves them (the holder) still exists and the job record is unchanged. A queued
//     allocation holds no resources, so the leader never counts the slot twice.
//   - When an element exits, the next claimed one starts at once. Its allocation becomes
//     running (Queued cleared) in the same transaction that records the end of the element
//     before it, so the leader sees the slot charged to exactly one element at every revision.
//   - The ends of a slot are written in one transaction (through the node's reporter, which
//     packs the slots of the node together); while one is in flight the next ones gather.
//   - Claimed elements that have not started are given back (their allocations deleted, so
//     they are pending again) when the chain is cut (signal Truncate, also sent for held
//     elements), when a claim is refused, and when the agent stops; a cancelled one ends as
//     cancelled without running. An agent that restarts gives back the queued allocations it
//     finds without a cgroup marker and fails those with one (they may have run).
//
// The runner (executor.runTask) and the flusher goroutine share the state below under mu.
type slot struct {
	e         *executor
	job       string
	rec       *jobRecord
	jobModRev int64
	base      *allocRecord // the first element's allocation: nodes and time limit

	mu       sync.Mutex
	cond     *sync.Cond
	holder   *run   // whose allocation's chain reserves chain
	chain    []int  // reserved elements not yet claimed, in order
	claiming bool   // a claim is in flight
	claimed  []*run // claimed, not started, in order
	cur      *run   // the element running, if any
	ends     []slotEnd
	mark     *run   // started from a claim; its allocation is still queued in etcd
	giveBack []*run // claimed elements to give back
	inflight int    // units sent to the reporter and not yet answered
	split    bool   // a combined report failed: send the next ends and mark one by one
	stopped  bool   // no more claims, no more starts
	waiting  bool   // the runner waits for a claim to start
	over     bool   // the runner is done
	lastSent time.Time
	timerSet bool // a wake-up at the end of the flush interval is pending
	exited   chan struct{}
}

func (e *executor) newSlot(head *run) *slot {
	s := &slot{
		e: e, job: head.alloc.Job, rec: head.rec, jobModRev: head.jobModRev, base: head.alloc,
		holder: head, chain: head.alloc.Chain, cur: head, exited: make(chan struct{}),
	}
	s.cond = sync.NewCond(&s.mu)
	head.slot = s
	go s.flush()
	// The runner may wait for a claim that etcd will not answer while the agent stops.
	go func() {
		select {
		case <-e.stopping:
			s.kick()
		case <-s.exited:
		}
	}()
	return s
}

// kick wakes the slot's goroutines: a control request arrived for one of its elements.
func (s *slot) kick() {
	s.mu.Lock()
	s.cond.Broadcast()
	s.mu.Unlock()
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// checkLocked applies control requests: a cut or cancel of the running element stops the
// chain, as does a cut of a claimed one; a claimed element cancelled or withdrawn never starts.
// Once stopped, every claimed element is given back.
func (s *slot) checkLocked() {
	if s.cur != nil {
		if sig := s.cur.latest(); sig != nil && (sig.Truncate || sig.End != "") {
			s.stopped = true
		}
	}
	if s.e.closed.Load() {
		s.stopped = true
	}
	kept := s.claimed[:0]
	for _, n := range s.claimed {
		sig := n.latest()
		switch {
		case isClosed(n.revoked):
			// Withdrawn: by the leader (a lost node, say), or by a resync that ran while its
			// claim was in flight. Give it back, which does nothing if it is already gone.
			n.ended.Store(true)
			s.giveBack = append(s.giveBack, n)
		case sig != nil && sig.End != "":
			n.ended.Store(true)
			s.ends = append(s.ends, slotEnd{r: n, res: result{State: sig.End, Reason: sig.Reason, End: time.Now()}})
		default:
			if sig != nil && sig.Truncate {
				s.stopped = true
			}
			kept = append(kept, n)
		}
	}
	s.claimed = kept
	if s.stopped {
		for _, n := range s.claimed {
			n.ended.Store(true)
			s.giveBack = append(s.giveBack, n)
		}
		s.claimed, s.chain = nil, nil
	}
}

// endAndNext records the end of the element that ran (res nil: it was withdrawn or its end
// is already written) and returns the next element to run, already marked started, or nil
// when the chain is over. It waits only while a claim is in flight and nothing is claimed.
func (s *slot) endAndNext(ended *run, res *result, requeue bool) *run {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.cond.Broadcast()
	if res != nil {
		s.ends = append(s.ends, slotEnd{r: ended, res: *res, requeue: requeue})
	}
	if s.mark == ended {
		s.mark = nil // its end (or withdrawal) settles its allocation
	}
	s.checkLocked()
	s.cur = nil
	for {
		if len(s.claimed) > 0 {
			n := s.claimed[0]
			s.claimed = s.claimed[1:]
			a := *n.alloc
			a.Queued, a.Start = false, time.Now()
			n.alloc = &a
			s.cur, s.mark = n, n
			return n
		}
		if s.stopped || (len(s.chain) == 0 && !s.claiming) {
			return nil
		}
		s.waiting = true
		s.cond.Broadcast()
		s.cond.Wait()
		s.waiting = false
		s.checkLocked()
	}
}

// sync waits until the slot's writes about r are done, so that r's allocation can be
// rewritten (a restart in place after exit 85).
func (s *slot) sync(r *run) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for (s.mark == r || s.inflight > 0 || len(s.ends) > 0) && !isClosed(s.e.stopping) {
		s.cond.Broadcast()
		s.cond.Wait()
	}
}

// finish ends the slot: what is claimed is given back, the last ends are written (or, when
// the agent stops, handed to the reporter without waiting: etcd may be gone).
func (s *slot) finish() {
	s.mu.Lock()
	s.over, s.stopped = true, true
	s.cur = nil
	s.checkLocked()
	s.cond.Broadcast()
	s.mu.Unlock()
	<-s.exited
}

// flush is the slot's writer: it sends the slot's ends, claims and give-backs to the
// reporter, one round at a time (a claim needs the previous one's revision).
func (s *slot) flush() {
	defer close(s.exited)
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		s.checkLocked()
		stopping := isClosed(s.e.stopping)
		if s.inflight > 0 && !stopping {
			s.cond.Wait()
			continue
		}
		if s.pendingLocked() && !s.urgentLocked(stopping) {
			if wait := flushEvery - time.Since(s.lastSent); wait > 0 {
				if !s.timerSet {
					s.timerSet = true
					time.AfterFunc(wait, func() {
						s.mu.Lock()
						s.timerSet = false
						s.cond.Broadcast()
						s.mu.Unlock()
					})
				}
				s.cond.Wait()
				continue
			}
		}
		units := s.unitsLocked()
		if len(units) == 0 {
			if s.over && (s.inflight == 0 || stopping) {
				return
			}
			s.cond.Wait()
			continue
		}
		s.inflight += len(units)
		s.lastSent = time.Now()
		s.mu.Unlock()
		for _, u := range units {
			s.e.reports <- u
		}
		s.mu.Lock()
	}
}

// pendingLocked reports whether the slot has something to write.
func (s *slot) pendingLocked() bool {
	return len(s.ends) > 0 || s.mark != nil || len(s.giveBack) > 0 || s.canClaimLocked()
}

// urgentLocked reports whether the slot's writes cannot wait for the flush interval.
func (s *slot) urgentLocked(stopping bool) bool {
	return stopping || s.stopped || s.over || s.waiting || s.split || len(s.giveBack) > 0 ||
		(s.canClaimLocked() && len(s.claimed) < claimAhead/2)
}

// canClaimLocked reports whether the slot may claim more elements now.
func (s *slot) canClaimLocked() bool {
	return !s.stopped && !s.over && !s.claiming && len(s.chain) > 0 && len(s.claimed) < claimAhead &&
		s.holder != nil && !s.e.closed.Load()
}

// unitsLocked takes the slot's pending writes as units.
func (s *slot) unitsLocked() []unit {
	var units []unit
	// While the runner waits for a claim, its last end waits too, so that the end and the
	// next element's start are written together.
	if (len(s.ends) > 0 || s.mark != nil) && (!s.waiting || s.stopped) {
		n := min(len(s.ends), maxEndsPerUnit)
		ends := s.ends[:n:n]
		s.ends = s.ends[n:]
		var mark *run
		if len(s.ends) == 0 {
			mark, s.mark = s.mark, nil
		}
		if s.split {
			s.split = false
			for _, x := range ends {
				units = append(units, s.endUnit(x))
			}
			if mark != nil {
				units = append(units, s.markUnit(mark))
			}
		} else {
			units = append(units, s.combinedUnit(ends, mark))
		}
	}
	for _, n := range s.giveBack {
		units = append(units, s.giveBackUnit(n))
	}
	s.giveBack = nil
	if c, ok := s.claimUnit(); ok {
		units = append(units, c)
	}
	return units
}

// answered is told by each unit's done: one fewer in flight.
func (s *slot) answered(f func()) {
	s.mu.Lock()
	s.inflight--
	if f != nil {
		f()
	}
	s.cond.Broadcast()
	s.mu.Unlock()
}

func (s *slot) endUnit(x slotEnd) unit {
	u := s.e.endUnit(x.r, x.res, x.requeue)
	removeMarker := u.done
	u.done = func(ok bool, rev int64) {
		removeMarker(ok, rev)
		s.e.forget(x.r)
		s.answered(nil)
	}
	return u
}

// markUnit clears the queued mark of a started element.
func (s *slot) markUnit(m *run) unit {
	var u unit
	u.checks = []check{{key: allocKey(s.e.node, m.task), create: true, rev: m.createRev}}
	u.put(allocKey(s.e.node, m.task), encode(m.alloc))
	// A failure means the allocation is gone: the watch withdraws the element.
	u.done = func(bool, int64) { s.answered(nil) }
	return u
}

// combinedUnit writes the ends and the start of the slot's next element as one change.
func (s *slot) combinedUnit(ends []slotEnd, mark *run) unit {
	var u unit
	for _, x := range ends {
		eu := s.e.endUnit(x.r, x.res, x.requeue)
		u.checks = append(u.checks, eu.checks...)
		u.ops = append(u.ops, eu.ops...)
		u.keys = append(u.keys, eu.keys...)
	}
	if mark != nil {
		m := s.markUnit(mark)
		u.checks = append(u.checks, m.checks...)
		u.ops = append(u.ops, m.ops...)
		u.keys = append(u.keys, m.keys...)
	}
	u.done = func(ok bool, _ int64) {
		if ok {
			for _, x := range ends {
				s.e.removeMarker(x.r.task, x.r.createRev)
				s.e.forget(x.r)
			}
		}
		s.answered(func() {
			if ok {
				return
			}
			// Some allocation is gone (withdrawn by the leader): retry one by one, so that
			// each of the others is still written.
			s.ends = append(ends, s.ends...)
			if mark != nil && s.mark == nil && !mark.ended.Load() {
				s.mark = mark
			}
			s.split = true
		})
	}
	return u
}

func (s *slot) giveBackUnit(n *run) unit {
	u := s.e.giveBackUnit(n.task, n.createRev)
	u.done = func(bool, int64) {
		s.e.forget(n)
		s.answered(nil)
	}
	return u
}

// claimUnit claims the next elements of the chain, if the slot may.
func (s *slot) claimUnit() (unit, bool) {
	if !s.canClaimLocked() {
		return unit{}, false
	}
	n := min(claimAhead-len(s.claimed), len(s.chain))
	now := time.Now()
	var runs []*run
	for i, idx := range s.chain[:n] {
		task := taskID(s.job, idx)
		a := &allocRecord{Task: task, Job: s.job, Index: idx, Nodes: s.base.Nodes, Start: now,
			TimeLimit: s.base.TimeLimit, Queued: true}
		if i == n-1 {
			a.Chain = s.chain[n:] // the new holder
		}
		r := &run{task: task, alloc: a, rec: s.rec, jobModRev: s.jobModRev, slot: s,
			notify: make(chan struct{}, 1), revoked: make(chan struct{})}
		// Registered before the allocation exists, so its watch event does not start it.
		if !s.e.register(r) {
			break
		}
		runs = append(runs, r)
	}
	if len(runs) == 0 {
		s.stopped = true
		s.cond.Broadcast() // the runner may wait for this claim
		return unit{}, false
	}
	if len(runs) < n {
		// Some element is already known here (cannot happen while the leader keeps chains
		// apart): stop after what could be claimed.
		s.chain = nil
	} else {
		s.chain = s.chain[n:]
	}
	u := s.claimOf(runs)
	s.claiming = true
	u.done = func(ok bool, rev int64) {
		if ok {
			for _, r := range runs {
				r.createRev = rev
				s.e.noteHandedOn(r.task, rev)
			}
		} else {
			for _, r := range runs {
				r.ended.Store(true)
				s.e.forget(r)
			}
			s.e.dropSpec(s.job)
		}
		s.answered(func() {
			s.claiming = false
			if !ok {
				// The job changed (cancel, hold, signal) or the holder is gone: the chain
				// ends here; what it reserved is released with the holder's allocation.
				s.stopped, s.chain = true, nil
				return
			}
			s.claimed = append(s.claimed, runs...)
			s.holder = runs[len(runs)-1]
		})
	}
	return u, true
}

// claimOf writes the queued allocations of runs, provided the holder's allocation still
// exists (it reserves the chain: once it is gone the elements may be pending again, or started
// elsewhere), the job record is unchanged (no cancel, hold or signal since it was read), and no
// element has ended or been allocated.
func (s *slot) claimOf(runs []*run) unit {
	var u unit
	u.checks = []check{
		{key: allocKey(s.e.node, s.holder.task), create: true, rev: s.holder.createRev},
		{key: jobKey(s.job), rev: s.jobModRev},
	}
	for _, r := range runs {
		u.checks = append(u.checks, check{key: doneKey(r.task), create: true}, check{key: allocKey(s.e.node, r.task), create: true})
		u.put(allocKey(s.e.node, r.task), encode(r.alloc))
	}
	return u
}
