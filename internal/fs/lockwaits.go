package fs

import (
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Deadlock detection for POSIX locks taken through the tree.
//
// Locally, Linux answers F_SETLKW with EDEADLK when the caller would wait for a lock whose
// holder waits, directly or through others, for a lock the caller holds. Through the tree the
// owner's kernel never sees anyone wait: a blocking wait is a series of non-blocking attempts
// from the client (fileHandle.Setlkw), and the locks are OFD locks on the owner's own
// descriptions, which the kernel does no deadlock detection for and which F_OFD_GETLK cannot
// trace back to their description. So the owner keeps what it needs itself, in a lockGraph:
// the ranges each tree lock owner (client session and FUSE lock owner) holds on each file, as
// granted by the kernel, and which of them wait for which range. An attempt of a blocking wait
// that the kernel refuses is checked for a cycle before it is noted as waiting.
//
// It sees only waits through this owner: a cycle through locks on two owner nodes, or through
// a process on the owner using the file by its own path, is not found, and waits for ever as
// before.

// waitStale is how long a noted wait counts without a new attempt. A waiter tries again within
// 100 ms (plus the round trip); a wait not tried for this long was given up without the owner
// hearing of it (its cancel was lost with the connection), and must not make others' requests
// fail with EDEADLK.
const waitStale = 2 * time.Second

// waitForget is how long a cancelled wait is remembered, so that an attempt of it that was
// still on the way (a call that timed out on the client, then arrived) is refused rather than
// noted or granted to a process that was told it was interrupted.
const waitForget = 30 * time.Second

// lockOwnerID names a lock owner that reaches this owner through the tree.
type lockOwnerID struct {
	sess  uint32 // session.idx
	owner uint64 // FUSE lock owner
}

// lockSpan is a lock's type and byte range (inclusive; math.MaxInt64 ends at the end of file,
// as in FUSE requests).
type lockSpan struct {
	typ        int16 // F_RDLCK, F_WRLCK, or F_UNLCK to unlock
	start, end uint64
}

func (a lockSpan) conflicts(b lockSpan) bool {
	return a.start <= b.end && b.start <= a.end && (a.typ == unix.F_WRLCK || b.typ == unix.F_WRLCK)
}

// heldSpans are one lock owner's locks on one file, sorted by start, not overlapping.
type heldSpans []lockSpan

// with returns h after s was granted: s's range takes s's type, or is unlocked, as with
// fcntl. Adjacent ranges of one type are not merged: nothing here needs them to be.
func (h heldSpans) with(s lockSpan) heldSpans {
	out := make(heldSpans, 0, len(h)+2)
	for _, x := range h {
		if x.end < s.start || x.start > s.end {
			out = append(out, x)
			continue
		}
		if x.start < s.start {
			out = append(out, lockSpan{typ: x.typ, start: x.start, end: s.start - 1})
		}
		if x.end > s.end {
			out = append(out, lockSpan{typ: x.typ, start: s.end + 1, end: x.end})
		}
	}
	if s.typ != unix.F_UNLCK {
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b lockSpan) int {
		switch {
		case a.start < b.start:
			return -1
		case a.start > b.start:
			return 1
		}
		return 0
	})
	return out
}

func (h heldSpans) conflict(s lockSpan) bool {
	for _, x := range h {
		if x.conflicts(s) {
			return true
		}
	}
	return false
}

// waitKey names one blocking wait: the client numbers its waits within its session.
type waitKey struct {
	sess uint32
	wait uint64
}

// lockWait is a blocking wait the owner knows of: who wants want on file. A cancelled one is
// only remembered, to refuse late attempts of it.
type lockWait struct {
	who       lockOwnerID
	file      fileID
	want      lockSpan
	seen      time.Time // its last attempt, or its cancel
	cancelled bool
}

// lockGraph is an owner's record of the POSIX locks held through the tree and of the waits for
// them, for deadlock detection. The server's lock calls change locks through it (attempt), so
// that the record and the kernel's locks change together.
type lockGraph struct {
	mu    sync.Mutex
	held  map[fileID]map[lockOwnerID]heldSpans
	waits map[waitKey]*lockWait
	swept time.Time
}

func newLockGraph() *lockGraph {
	return &lockGraph{held: make(map[fileID]map[lockOwnerID]heldSpans), waits: make(map[waitKey]*lockWait)}
}

// attempt runs try, which asks the kernel for who's lock span on file (F_OFD_SETLK) and
// answers 0, EAGAIN for a conflict, or another errno. wait, if not 0, is the blocking wait the
// attempt belongs to: refused with EDEADLK if waiting would close a cycle of waits, else
// noted as waiting while refused, and forgotten once it ends either way.
//
// try runs without the graph's lock, so that a lock call that blocks in the kernel (a file on
// an unreachable NFS server) holds up no other's. The caller must not run two attempts of one
// lock owner on one file at once (the session's lock keeps them apart): the record of its
// locks is put back as it was if the kernel refuses.
func (g *lockGraph) attempt(who lockOwnerID, file fileID, span lockSpan, wait uint64, now time.Time, try func() syscall.Errno) syscall.Errno {
	key := waitKey{sess: who.sess, wait: wait}
	g.mu.Lock()
	g.sweep(now)
	if wait != 0 {
		if w := g.waits[key]; w != nil && w.cancelled {
			g.mu.Unlock()
			return syscall.EINTR
		}
	}
	// The range leaves the record before the kernel changes it, and the new lock enters it
	// after: a lock already gone must not stay on record even for a moment (it could fail
	// another's wait with EDEADLK), while one not yet on record only puts a detection off to
	// the next attempt.
	before := g.held[file][who]
	g.setHeld(who, file, lockSpan{typ: unix.F_UNLCK, start: span.start, end: span.end})
	g.mu.Unlock()

	errno := try()

	g.mu.Lock()
	defer g.mu.Unlock()
	if errno == 0 {
		g.setHeld(who, file, span)
	} else {
		g.putHeld(who, file, before)
	}
	if wait == 0 {
		return errno
	}
	if w := g.waits[key]; w != nil && w.cancelled {
		// Cancelled while the kernel was asked: the process was already answered.
		return syscall.EINTR
	}
	if errno != syscall.EAGAIN || span.typ == unix.F_UNLCK {
		delete(g.waits, key)
		return errno
	}
	if g.closesCycle(who, file, span, now) {
		delete(g.waits, key)
		return syscall.EDEADLK
	}
	g.waits[key] = &lockWait{who: who, file: file, want: span, seen: now}
	return syscall.EAGAIN
}

// heldBy returns the record of who's locks on file.
func (g *lockGraph) heldBy(who lockOwnerID, file fileID) heldSpans {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.held[file][who])
}

func (g *lockGraph) setHeld(who lockOwnerID, file fileID, span lockSpan) {
	g.putHeld(who, file, g.held[file][who].with(span))
}

// putHeld makes h the record of who's locks on file.
func (g *lockGraph) putHeld(who lockOwnerID, file fileID, h heldSpans) {
	owners := g.held[file]
	if len(h) == 0 {
		if owners != nil {
			delete(owners, who)
			if len(owners) == 0 {
				delete(g.held, file)
			}
		}
		return
	}
	if owners == nil {
		owners = make(map[lockOwnerID]heldSpans)
		g.held[file] = owners
	}
	owners[who] = h
}

// blockers returns the lock owners other than who holding locks on file that conflict with
// span.
func (g *lockGraph) blockers(who lockOwnerID, file fileID, span lockSpan) []lockOwnerID {
	var out []lockOwnerID
	for o, h := range g.held[file] {
		if o != who && h.conflict(span) {
			out = append(out, o)
		}
	}
	return out
}

// closesCycle tells whether who waiting for span on file would wait for itself: some holder
// of a conflicting lock waits (for a lock held by someone who waits …) for a lock who holds.
// Unlike Linux, which follows the first conflicting lock only, it follows every holder that
// blocks a wait: a waiter needs all of them gone, so any such path is a deadlock.
func (g *lockGraph) closesCycle(who lockOwnerID, file fileID, span lockSpan, now time.Time) bool {
	waiting := make(map[lockOwnerID][]*lockWait)
	for _, w := range g.waits {
		if !w.cancelled && now.Sub(w.seen) <= waitStale {
			waiting[w.who] = append(waiting[w.who], w)
		}
	}
	visited := map[lockOwnerID]bool{}
	next := g.blockers(who, file, span)
	for len(next) > 0 {
		o := next[len(next)-1]
		next = next[:len(next)-1]
		if o == who {
			return true
		}
		if visited[o] {
			continue
		}
		visited[o] = true
		for _, w := range waiting[o] {
			next = append(next, g.blockers(o, w.file, w.want)...)
		}
	}
	return false
}

// cancel forgets a blocking wait its client gave up, remembering that it did.
func (g *lockGraph) cancel(sess uint32, wait uint64, now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.sweep(now)
	g.waits[waitKey{sess: sess, wait: wait}] = &lockWait{seen: now, cancelled: true}
}

// dropHeld forgets who's locks on file: call it before the description holding them closes
// (a record of locks already gone could make others' requests fail with EDEADLK; a lock not
// yet recorded only delays a detection to the next attempt).
func (g *lockGraph) dropHeld(who lockOwnerID, file fileID) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if owners := g.held[file]; owners != nil {
		delete(owners, who)
		if len(owners) == 0 {
			delete(g.held, file)
		}
	}
}

// dropSession forgets a session's locks and waits.
func (g *lockGraph) dropSession(sess uint32) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for file, owners := range g.held {
		for o := range owners {
			if o.sess == sess {
				delete(owners, o)
			}
		}
		if len(owners) == 0 {
			delete(g.held, file)
		}
	}
	for k := range g.waits {
		if k.sess == sess {
			delete(g.waits, k)
		}
	}
}

// sweep drops stale waits and old cancels, at most once a second.
func (g *lockGraph) sweep(now time.Time) {
	if now.Sub(g.swept) < time.Second {
		return
	}
	g.swept = now
	for k, w := range g.waits {
		if age := now.Sub(w.seen); age > waitForget || !w.cancelled && age > waitStale {
			delete(g.waits, k)
		}
	}
}

// waiting counts the waits that count at now, for tests.
func (g *lockGraph) waiting(now time.Time) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for _, w := range g.waits {
		if !w.cancelled && now.Sub(w.seen) <= waitStale {
			n++
		}
	}
	return n
}
