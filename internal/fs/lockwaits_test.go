package fs

import (
	"math"
	"slices"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestLockSpansApplyAsFcntl(t *testing.T) {
	w := func(start, end uint64) lockSpan { return lockSpan{typ: unix.F_WRLCK, start: start, end: end} }
	r := func(start, end uint64) lockSpan { return lockSpan{typ: unix.F_RDLCK, start: start, end: end} }
	u := func(start, end uint64) lockSpan { return lockSpan{typ: unix.F_UNLCK, start: start, end: end} }
	for _, tc := range []struct {
		name  string
		steps []lockSpan
		want  heldSpans
	}{
		{"one lock", []lockSpan{w(10, 19)}, heldSpans{w(10, 19)}},
		{"unlocking the middle splits", []lockSpan{w(0, 99), u(40, 59)}, heldSpans{w(0, 39), w(60, 99)}},
		{"a new type over part", []lockSpan{w(10, 39), r(30, 129)}, heldSpans{w(10, 29), r(30, 129)}},
		{"a type inside", []lockSpan{r(0, math.MaxInt64), w(5, 5)}, heldSpans{r(0, 4), w(5, 5), r(6, math.MaxInt64)}},
		{"unlocking everything", []lockSpan{w(0, 9), r(20, 29), u(0, math.MaxInt64)}, nil},
		{"unlocking what is not held", []lockSpan{w(0, 9), u(10, 19)}, heldSpans{w(0, 9)}},
		{"relocking the same", []lockSpan{w(0, 9), w(0, 9)}, heldSpans{w(0, 9)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h heldSpans
			for _, s := range tc.steps {
				h = h.with(s)
			}
			if !slices.Equal(h, tc.want) {
				t.Errorf("got %v, want %v", h, tc.want)
			}
		})
	}
}

// TestLockWaitCycles checks the owner's deadlock detection on its own: the locks held and the
// waits noted, then one more blocking attempt that the kernel refused.
func TestLockWaitCycles(t *testing.T) {
	type held struct {
		who  string
		file int
		span lockSpan
	}
	type wait struct {
		who  string
		file int
		span lockSpan
		age  time.Duration // since its last attempt
		gone bool          // cancelled
	}
	w := func(start, end uint64) lockSpan { return lockSpan{typ: unix.F_WRLCK, start: start, end: end} }
	r := func(start, end uint64) lockSpan { return lockSpan{typ: unix.F_RDLCK, start: start, end: end} }
	for _, tc := range []struct {
		name  string
		held  []held
		waits []wait
		req   wait // the attempt; its who is always "A"
		want  syscall.Errno
	}{
		{"no one waits", []held{{"A", 1, w(0, 0)}, {"B", 1, w(1, 1)}}, nil,
			wait{who: "A", file: 1, span: w(1, 1)}, syscall.EAGAIN},
		{"two wait for each other", []held{{"A", 1, w(0, 0)}, {"B", 1, w(1, 1)}},
			[]wait{{who: "B", file: 1, span: w(0, 0)}},
			wait{who: "A", file: 1, span: w(1, 1)}, syscall.EDEADLK},
		{"across files", []held{{"A", 1, w(0, 0)}, {"B", 2, w(0, 0)}},
			[]wait{{who: "B", file: 1, span: w(0, 9)}},
			wait{who: "A", file: 2, span: r(0, 0)}, syscall.EDEADLK},
		{"through three", []held{{"A", 1, w(0, 0)}, {"B", 1, w(1, 1)}, {"C", 1, w(2, 2)}},
			[]wait{{who: "B", file: 1, span: w(2, 2)}, {who: "C", file: 1, span: w(0, 0)}},
			wait{who: "A", file: 1, span: w(1, 1)}, syscall.EDEADLK},
		{"a chain that does not come back", []held{{"A", 1, w(0, 0)}, {"B", 1, w(1, 1)}, {"C", 1, w(2, 2)}},
			[]wait{{who: "B", file: 1, span: w(2, 2)}},
			wait{who: "A", file: 1, span: w(1, 1)}, syscall.EAGAIN},
		{"the holder waits for a range A does not hold", []held{{"A", 1, w(0, 0)}, {"B", 1, w(1, 1)}},
			[]wait{{who: "B", file: 1, span: w(5, 5)}},
			wait{who: "A", file: 1, span: w(1, 1)}, syscall.EAGAIN},
		{"read locks do not block readers", []held{{"A", 1, r(0, 0)}, {"B", 1, w(1, 1)}},
			[]wait{{who: "B", file: 1, span: r(0, 0)}},
			wait{who: "A", file: 1, span: w(1, 1)}, syscall.EAGAIN},
		{"a shared range, one of two readers waits", []held{{"A", 1, r(0, 0)}, {"B", 1, r(0, 0)}, {"C", 1, w(1, 1)}},
			[]wait{{who: "C", file: 1, span: w(0, 0)}},
			wait{who: "A", file: 1, span: w(1, 1)}, syscall.EDEADLK},
		{"a wait given up", []held{{"A", 1, w(0, 0)}, {"B", 1, w(1, 1)}},
			[]wait{{who: "B", file: 1, span: w(0, 0), gone: true}},
			wait{who: "A", file: 1, span: w(1, 1)}, syscall.EAGAIN},
		{"a wait not tried for long", []held{{"A", 1, w(0, 0)}, {"B", 1, w(1, 1)}},
			[]wait{{who: "B", file: 1, span: w(0, 0), age: waitStale + time.Millisecond}},
			wait{who: "A", file: 1, span: w(1, 1)}, syscall.EAGAIN},
		{"a cycle among others", []held{{"A", 1, w(0, 0)}, {"B", 1, w(1, 1)}, {"C", 1, w(2, 2)}},
			[]wait{{who: "B", file: 1, span: w(2, 2)}, {who: "C", file: 1, span: w(1, 1)}},
			wait{who: "A", file: 1, span: w(1, 1)}, syscall.EAGAIN},
		{"A's own other wait does not count", []held{{"A", 1, w(0, 0)}, {"B", 1, w(1, 1)}},
			[]wait{{who: "A", file: 1, span: w(1, 1)}},
			wait{who: "A", file: 1, span: w(1, 1)}, syscall.EAGAIN},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := time.Unix(1000, 0)
			g := newLockGraph()
			owners := map[string]lockOwnerID{"A": {1, 7}, "B": {1, 8}, "C": {2, 7}}
			file := func(n int) fileID { return fileID{dev: 1, ino: uint64(n)} }
			granted := func() syscall.Errno { return 0 }
			refused := func() syscall.Errno { return syscall.EAGAIN }
			for _, h := range tc.held {
				if errno := g.attempt(owners[h.who], file(h.file), h.span, 0, now, granted); errno != 0 {
					t.Fatal(errno)
				}
			}
			// Noted directly: some of these states could not come about one attempt at a time.
			for i, wt := range tc.waits {
				who := owners[wt.who]
				g.waits[waitKey{sess: who.sess, wait: uint64(100 + i)}] = &lockWait{who: who, file: file(wt.file),
					want: wt.span, seen: now.Add(-wt.age), cancelled: wt.gone}
			}
			got := g.attempt(owners["A"], file(tc.req.file), tc.req.span, 1, now, refused)
			if got != tc.want {
				t.Errorf("got %v, want %v", unix.ErrnoName(got), unix.ErrnoName(tc.want))
			}
			// A wait refused with EDEADLK is not noted; one still waiting is.
			wantWaiting := 0
			for _, wt := range tc.waits {
				if !wt.gone && wt.age <= waitStale {
					wantWaiting++
				}
			}
			if got == syscall.EAGAIN {
				wantWaiting++
			}
			if n := g.waiting(now); n != wantWaiting {
				t.Errorf("%d waits noted after, want %d", n, wantWaiting)
			}
		})
	}
}

// TestLockWaitsForgotten: a wait ends when granted, refused otherwise, or cancelled, and a
// cancelled wait's late attempt is refused.
func TestLockWaitsForgotten(t *testing.T) {
	now := time.Unix(1000, 0)
	a, b := lockOwnerID{1, 1}, lockOwnerID{1, 2}
	f := fileID{ino: 1}
	w := func(at uint64) lockSpan { return lockSpan{typ: unix.F_WRLCK, start: at, end: at} }
	answer := func(errno syscall.Errno) func() syscall.Errno { return func() syscall.Errno { return errno } }
	g := newLockGraph()
	g.attempt(a, f, w(0), 0, now, answer(0))
	g.attempt(b, f, w(1), 0, now, answer(0))
	deadlockAfter := func(what string, waitB func()) {
		t.Helper()
		g.attempt(a, f, w(1), 1, now, answer(syscall.EAGAIN)) // A waits for B
		waitB()
		if errno := g.attempt(b, f, w(0), 2, now, answer(syscall.EAGAIN)); errno != syscall.EAGAIN {
			t.Errorf("after %s, B's wait for A: %v, want EAGAIN", what, unix.ErrnoName(errno))
		}
		g.cancel(1, 2, now)
	}
	deadlockAfter("A's wait was cancelled", func() { g.cancel(1, 1, now) })
	if errno := g.attempt(a, f, w(1), 1, now, answer(0)); errno != syscall.EINTR {
		t.Errorf("a cancelled wait's late attempt: %v, want EINTR", unix.ErrnoName(errno))
	}
	for i, end := range []syscall.Errno{syscall.EBADF, syscall.EINVAL} {
		id := uint64(10 + i)
		g.attempt(a, f, w(1), id, now, answer(syscall.EAGAIN))
		g.attempt(a, f, w(1), id, now, answer(end))
		if n := g.waiting(now); n != 0 {
			t.Errorf("after a wait ended with %v, %d waits noted", end, n)
		}
	}
	// A waits for B's lock, B unlocks it and A gets it: B then waits for A without deadlock.
	g.attempt(a, f, w(1), 20, now, answer(syscall.EAGAIN))
	g.attempt(b, f, lockSpan{typ: unix.F_UNLCK, start: 1, end: 1}, 0, now, answer(0))
	if errno := g.attempt(a, f, w(1), 20, now, answer(0)); errno != 0 {
		t.Fatal(errno)
	}
	if n := g.waiting(now); n != 0 {
		t.Errorf("after a wait was granted, %d waits noted", n)
	}
	if errno := g.attempt(b, f, w(0), 21, now, answer(syscall.EAGAIN)); errno != syscall.EAGAIN {
		t.Errorf("B's wait for A after A's wait was granted: %v, want EAGAIN", unix.ErrnoName(errno))
	}
	g.dropHeld(a, f)
	g.dropSession(1)
	if len(g.held) != 0 || len(g.waits) != 0 {
		t.Errorf("after dropping the session: held %v, waits %v", g.held, g.waits)
	}
}

// TestLockRecordFollowsTheKernel: a range leaves the record before the kernel is asked, and a
// refused request leaves the record as it was.
func TestLockRecordFollowsTheKernel(t *testing.T) {
	now := time.Unix(1000, 0)
	a, b := lockOwnerID{1, 1}, lockOwnerID{2, 1}
	f := fileID{ino: 1}
	w := func(start, end uint64) lockSpan { return lockSpan{typ: unix.F_WRLCK, start: start, end: end} }
	answer := func(errno syscall.Errno) func() syscall.Errno { return func() syscall.Errno { return errno } }
	g := newLockGraph()
	g.attempt(a, f, w(0, 0), 0, now, answer(0))
	g.attempt(b, f, w(3, 3), 0, now, answer(0))

	// A asks for more and is refused (B holds 3): A still holds 0, so B waiting for 0 closes
	// the cycle.
	if errno := g.attempt(a, f, w(0, 5), 1, now, answer(syscall.EAGAIN)); errno != syscall.EAGAIN {
		t.Fatalf("A's wait: %v", unix.ErrnoName(errno))
	}
	if errno := g.attempt(b, f, w(0, 0), 2, now, answer(syscall.EAGAIN)); errno != syscall.EDEADLK {
		t.Fatalf("B's wait for the lock A kept: %v, want EDEADLK", unix.ErrnoName(errno))
	}

	// While the kernel unlocks, the record no longer has the range.
	g.attempt(a, f, lockSpan{typ: unix.F_UNLCK, start: 0, end: 0}, 0, now, func() syscall.Errno {
		if h := g.held[f][a]; h.conflict(w(0, 0)) {
			t.Errorf("while unlocking, the record still has %v", h)
		}
		return 0
	})
	if h := g.held[f][a]; len(h) != 0 {
		t.Errorf("after unlocking, A holds %v", h)
	}
}
