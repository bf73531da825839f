package fs

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/fs/fspb"
)

// Reclaim after an owner's file server restarted (NFS-style).
//
// A restarted file server has none of the files its clients had open, nor their locks. When a
// client's watch stream finds the owner with a new instance, the client opens its files there
// again, as the users who opened them (by path, the owner checking that the path still leads
// to the same file), and then takes again the locks it was granted: each lock owner's POSIX
// ranges on each file and each handle's flock, as non-blocking requests, before any other
// call on those files goes out. A reclaim the owner refuses (someone else took the lock while
// the server was down) is not retried: the lock owner's next call that takes or releases a
// lock on that file (not F_GETLK), or the next flock call on that handle, fails with EIO, and
// the ranges it still holds there are dropped. A file that cannot be opened again (removed,
// replaced, no longer permitted) stays lost: its calls fail with EIO. Devices are not opened
// again, as an open may act on one (a tape rewinds on close).
//
// Grace period: for reclaimGracePeriod after a file server starts, it holds back the lock
// requests that take a lock (POSIX or flock) or test for one (F_GETLK), except reclaims, which
// are marked as such: it answers them at once that it is in its grace period and for how much
// longer, and the client asks again then. So another node's request that reaches the restarted
// owner before the holder's reclaim does not win the lock: it waits, and is then answered as
// after the reclaim. Unlocks are served at once: they take nothing from anyone. The server
// cannot tell a restart from a first start (it keeps nothing on disk), so the grace period
// follows every start, unless the server has a state directory (ServerConfig.StateDir): then it
// records there, before it grants the first lock of its life, that clients may hold locks, and
// removes the record when it closes with none held. A start without the record (a first start,
// or one after a clean stop with no locks) has no grace period: no client can have locks to
// reclaim. A crash leaves the record, so the next start waits for reclaims, as NFS servers do
// with the client list they keep on stable storage. A reclaim is a non-blocking request like any other, during the grace
// period or after it: the mark lets it skip the wait, never a lock someone else holds. Its
// owner's own processes, using the file by its own path, are not held back.
//
// The client waits (lock) rather than the server: a bounded request held on the server would
// pin a thread there and could meet the request timeout, and a blocking wait must stay
// interruptible.

// reclaimGracePeriod is how long a file server holds lock requests back for reclaims after it
// starts. A client learns of the restart when its watch stream connects again, retried at
// most maxWatchBackoff (2 s) apart, then reclaims with one open per file and one request per
// lock, a few round trips; 5 s leaves room for a slow reconnection or a busy owner, while a
// lock call in the first seconds after an agent starts (a first start too) waits at most that.
// NFS servers keep 90 s, their clients' lease time.
const reclaimGracePeriod = 5 * time.Second

// maxGraceWait bounds one wait for an owner's grace period, whatever the owner says.
const maxGraceWait = 2 * reclaimGracePeriod

// lockMarkName is the record, in the server's state directory, that clients may hold locks.
const lockMarkName = "locks-held"

// graceEnd is when the grace period of a server starting now ends.
func graceEnd(cfg ServerConfig) time.Time {
	now := time.Now()
	if cfg.StateDir != "" {
		if _, err := os.Lstat(filepath.Join(cfg.StateDir, lockMarkName)); errors.Is(err, os.ErrNotExist) {
			return now
		}
	}
	return now.Add(cfg.reclaimGracePeriod())
}

// markLocks records, once in the server's life and before a lock is granted, that clients may
// hold locks: should the server stop without releasing them, its next start waits for their
// reclaims. The record is made durable (file and directory synced), as a node may go down with
// its agent. A server that cannot make it refuses the lock (ENOLCK), as it could not honour it
// across a restart.
func (s *Server) markLocks() syscall.Errno {
	if s.cfg.StateDir == "" || s.marked.Load() {
		return 0
	}
	s.markMu.Lock()
	defer s.markMu.Unlock()
	if s.marked.Load() {
		return 0
	}
	if err := writeMark(s.cfg.StateDir); err != nil {
		s.log.Error("cannot record that clients hold locks; refusing locks", "dir", s.cfg.StateDir, "err", err)
		return syscall.ENOLCK
	}
	s.marked.Store(true)
	return 0
}

func writeMark(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, lockMarkName), os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// unmarkLocks removes the record when the server closes with no client lock held.
func (s *Server) unmarkLocks() {
	if s.cfg.StateDir == "" {
		return
	}
	if err := os.Remove(filepath.Join(s.cfg.StateDir, lockMarkName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Warn("cannot remove the record that clients hold locks: the next start waits for reclaims", "err", err)
	}
}

func (cfg ServerConfig) reclaimGracePeriod() time.Duration {
	switch {
	case cfg.reclaimGrace < 0:
		return 0
	case cfg.reclaimGrace > 0:
		return cfg.reclaimGrace
	}
	return reclaimGracePeriod
}

// graceLeft tells how much longer req is held back by the grace period: requests that take a
// lock or test for one, other than reclaims.
func (s *Server) graceLeft(req *fspb.LockRequest, now time.Time) time.Duration {
	left := s.graceEnd.Sub(now)
	if left <= 0 || req.Reclaim {
		return 0
	}
	switch req.Op {
	case fspb.LockRequest_GET:
		return left
	case fspb.LockRequest_SET:
		if req.Type != unix.F_UNLCK {
			return left
		}
	}
	return 0
}

// awaitGrace waits for the owner's grace period to end, as the owner said it would after
// left. Only the attempts of a blocking wait are interrupted (interruptible): other lock
// calls are bounded ones, which are not (see callCtx), and the grace period is short.
func (p *peer) awaitGrace(ctx context.Context, left time.Duration, interruptible bool) syscall.Errno {
	t := time.NewTimer(min(left, maxGraceWait))
	defer t.Stop()
	var interrupted <-chan struct{}
	if interruptible {
		interrupted = ctx.Done()
	}
	select {
	case <-t.C:
		return 0
	case <-interrupted:
		return syscall.EINTR
	case <-p.m.ctx.Done():
		return syscall.EIO
	}
}

// noteHandle adds a handle to those the peer reopens after a restart of the owner.
func (p *peer) noteHandle(f *fileHandle) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.handles == nil {
		p.handles = make(map[*fileHandle]struct{})
	}
	p.handles[f] = struct{}{}
}

func (p *peer) forgetHandle(f *fileHandle) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.handles, f)
}

// awaitReclaim waits while the peer's files are being opened again after a restart of the
// owner. A bounded call is not interrupted (see callCtx): the reclaim is bounded, as it stops
// at its first call that does not reach the owner.
func (p *peer) awaitReclaim(ctx context.Context, bounded bool) syscall.Errno {
	running := p.reclaiming.Load()
	if running == nil {
		return 0
	}
	var interrupted <-chan struct{}
	if !bounded {
		interrupted = ctx.Done()
	}
	select {
	case <-*running:
		return 0
	case <-interrupted:
		return syscall.EINTR
	case <-p.m.ctx.Done():
		return syscall.EIO
	}
}

// startReclaim begins reopening the handles that belong to an earlier instance of the owner's
// file server; p.mu is held.
func (p *peer) startReclaim(instance []byte) {
	if p.local || p.reclaiming.Load() != nil {
		// The reclaim running looks again when it is done (files it opened on whatever
		// server answered it know which one that was).
		return
	}
	var stale []*fileHandle
	for f := range p.handles {
		f.mu.Lock()
		if f.inst != nil && !bytes.Equal(f.inst, instance) && !f.lost {
			stale = append(stale, f)
		}
		f.mu.Unlock()
	}
	if len(stale) == 0 {
		p.wakeReclaimWaiters()
		return
	}
	done := make(chan struct{})
	p.reclaiming.Store(&done)
	p.m.wg.Add(1)
	go func() {
		defer p.m.wg.Done()
		p.reclaim(stale, instance)
		p.mu.Lock()
		p.reclaiming.Store(nil)
		p.wakeReclaimWaiters()
		if !bytes.Equal(p.instance, instance) {
			// The owner restarted again meanwhile.
			p.startReclaim(p.instance)
		}
		p.mu.Unlock()
		close(done)
	}()
}

// wakeReclaimWaiters wakes the calls waiting in afterRestart to look again; p.mu is held.
func (p *peer) wakeReclaimWaiters() {
	if p.reclaimed != nil {
		close(p.reclaimed)
		p.reclaimed = nil
	}
}

func (p *peer) reclaim(stale []*fileHandle, instance []byte) {
	ctx := p.m.ctx
	start := time.Now()
	byNode := make(map[*node][]*fileHandle)
	reopened, lost := 0, 0
	retried := false
	for i, f := range stale {
		ok, unreachable := p.reopen(ctx, f, instance)
		if unreachable && !retried && p.connectedTo(instance) {
			// The owner's watch stream is up on the instance reclaimed from: the call may have
			// gone on a connection to the server that went away, not yet seen closed. Once
			// more on a new connection before giving the files up.
			retried = true
			p.dropCalls()
			ok, unreachable = p.reopen(ctx, f, instance)
		}
		if unreachable {
			// Gone again, or too slow: the rest are lost rather than each waiting for the
			// timeout in turn while calls on open files wait for the reclaim.
			p.m.log.Info("owner unreachable while opening its files again; the rest are lost", "node", p.name, "left", len(stale)-i)
			for _, f := range stale[i:] {
				f.mu.Lock()
				f.lost = true
				f.mu.Unlock()
			}
			lost += len(stale) - i
			break
		}
		if ok {
			byNode[f.n] = append(byNode[f.n], f)
			reopened++
		} else {
			lost++
		}
	}
	locks, failed := 0, 0
	for n, handles := range byNode {
		l, fl := p.reclaimLocks(ctx, n, handles)
		locks += l
		failed += fl
	}
	p.m.stats.reclaims.Add(1)
	p.m.log.Info("node's file server restarted: files opened there again and locks reclaimed", "node", p.name,
		"files", reopened, "files_lost", lost, "locks", locks, "locks_lost", failed, "took", time.Since(start))
}

// connectedTo reports whether the owner's watch stream is up on the given server instance.
func (p *peer) connectedTo(instance []byte) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.up && bytes.Equal(p.instance, instance)
}

// reopen opens f's file again on the restarted owner and tells whether it could, or whether the
// owner could not be reached (then f is left as it was).
func (p *peer) reopen(ctx context.Context, f *fileHandle, instance []byte) (ok, unreachable bool) {
	f.n.mu.Lock()
	device := f.n.device
	f.n.mu.Unlock()
	var reply *fspb.OpenReply
	errno := syscall.Errno(0)
	if device {
		errno = syscall.ENXIO
	} else {
		ref, e := f.n.ref(nil)
		if errno = e; errno == 0 {
			// Never create, truncate or fail because it exists: it is the same file again.
			flags := f.flags &^ (syscall.O_CREAT | syscall.O_EXCL | syscall.O_TRUNC)
			if hook := p.m.reopenFails.Load(); hook != nil {
				errno = (*hook)()
			}
			if errno == 0 {
				errno = p.call(ctx, true, func(rpc context.Context, api filesAPI) (err error) {
					reply, err = api.Open(rpc, &fspb.OpenRequest{Session: p.m.session, Caller: f.caller, Node: ref, Flags: flags})
					return err
				})
			}
			if errno != 0 {
				return false, true
			}
			errno = syscall.Errno(reply.Errno)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if errno != 0 {
		f.lost = true
		p.m.log.Info("could not open a file again on its restarted owner; its calls fail with EIO",
			"node", p.name, "errno", errno)
		return false, false
	}
	if f.released {
		// Closed meanwhile: close it there too.
		go p.releaseNow([]uint64{reply.Handle})
		return false, false
	}
	f.h, f.inst = reply.Handle, reply.Instance
	if f.inst == nil {
		f.inst = instance
	}
	return true, false
}

// reclaimLocks takes again, through the file's reopened handles, the POSIX locks its lock owners
// held and the flocks of those handles. It returns how many were reclaimed and lost.
func (p *peer) reclaimLocks(ctx context.Context, n *node, handles []*fileHandle) (reclaimed, failed int) {
	n.mu.Lock()
	owners := make(map[uint64]heldSpans, len(n.posixLocks))
	for o, h := range n.posixLocks {
		owners[o] = h
	}
	n.mu.Unlock()
	// Through any of the file's handles still open here: the owner only needs one to find the
	// file (a process's POSIX locks are not the handle's).
	via := handles[0]
	for _, f := range handles {
		f.mu.Lock()
		released := f.released
		f.mu.Unlock()
		if !released {
			via = f
			break
		}
	}
	for owner, spans := range owners {
		ok := true
		for _, s := range spans {
			errno := p.reclaimOne(ctx, via, &fspb.LockRequest{Op: fspb.LockRequest_SET, Owner: owner, Type: uint32(s.typ), Start: s.start, End: s.end, Reclaim: true})
			if errno != 0 {
				ok = false
				break
			}
		}
		if ok {
			reclaimed++
			continue
		}
		// Not all of it: none of it, and the process hears of it at its next lock call.
		failed++
		p.reclaimOne(ctx, via, &fspb.LockRequest{Op: fspb.LockRequest_RELEASE_OWNER, Owner: owner})
		n.mu.Lock()
		if n.lostLocks == nil {
			n.lostLocks = make(map[uint64]bool)
		}
		n.lostLocks[owner] = true
		delete(n.posixLocks, owner)
		n.mu.Unlock()
	}
	for _, f := range handles {
		f.mu.Lock()
		typ := f.flockTyp
		f.mu.Unlock()
		if typ == 0 {
			continue
		}
		if p.reclaimOne(ctx, f, &fspb.LockRequest{Op: fspb.LockRequest_SET, Type: typ, Flock: true, Reclaim: true}) == 0 {
			reclaimed++
			continue
		}
		failed++
		f.mu.Lock()
		f.flockTyp, f.flockLost = 0, true
		f.mu.Unlock()
	}
	return reclaimed, failed
}

// reclaimOne sends one lock request of a reclaim (not held up by the reclaim itself, nor, when
// marked as a reclaim, by the owner's grace period).
func (p *peer) reclaimOne(ctx context.Context, f *fileHandle, req *fspb.LockRequest) syscall.Errno {
	req.Session, req.Handle = p.m.session, f.handle()
	var reply *fspb.LockReply
	errno := p.call(ctx, true, func(rpc context.Context, api filesAPI) (err error) {
		reply, err = api.Lock(rpc, req)
		return err
	})
	if errno != 0 {
		return errno
	}
	return syscall.Errno(reply.Errno)
}

// afterRestart is called when the owner answered that it does not know handle h of f: if
// that is because its file server restarted, it waits until this client has learnt of it and
// opened the file again, and tells whether the call may be made again with the new handle.
func (f *fileHandle) afterRestart(ctx context.Context, h uint64) bool {
	p := f.n.p
	deadline := time.NewTimer(p.m.cfg.Timeout + maxWatchBackoff)
	defer deadline.Stop()
	for {
		p.mu.Lock()
		f.mu.Lock()
		changed, lost, inst := f.h != h, f.lost, f.inst
		f.mu.Unlock()
		if changed || lost || inst == nil || p.up && p.reclaiming.Load() == nil && bytes.Equal(p.instance, inst) {
			// Opened again; or lost; or opened on an owner that did not say which instance;
			// or the owner this client is connected to is the one the handle was opened on,
			// which does not know it for another reason (the session expired).
			p.mu.Unlock()
			return changed
		}
		if p.reclaimed == nil {
			p.reclaimed = make(chan struct{})
		}
		next := p.reclaimed
		p.mu.Unlock()
		select {
		case <-next:
		case <-deadline.C:
			return false
		case <-ctx.Done():
			return false
		case <-p.m.ctx.Done():
			return false
		}
	}
}

// noteLockGranted keeps the POSIX locks and flocks granted through f, for a reclaim. An
// unlock is noted before it is sent (req.Type F_UNLCK, or RELEASE_OWNER), whatever its
// answer: a process that unlocked must never get its lock back from a reclaim.
func (f *fileHandle) noteLock(req *fspb.LockRequest, granted bool) {
	unlock := req.Op == fspb.LockRequest_RELEASE_OWNER || req.Type == unix.F_UNLCK
	if unlock == granted {
		return // an unlock is noted before it is sent, a lock once granted
	}
	if req.Flock {
		f.mu.Lock()
		if unlock {
			f.flockTyp = 0
		} else {
			f.flockTyp = req.Type
		}
		f.mu.Unlock()
		return
	}
	n := f.n
	n.mu.Lock()
	defer n.mu.Unlock()
	var h heldSpans
	if req.Op != fspb.LockRequest_RELEASE_OWNER {
		h = n.posixLocks[req.Owner].with(lockSpan{typ: int16(req.Type), start: req.Start, end: req.End})
	}
	if len(h) == 0 {
		delete(n.posixLocks, req.Owner)
		return
	}
	if n.posixLocks == nil {
		n.posixLocks = make(map[uint64]heldSpans)
	}
	n.posixLocks[req.Owner] = h
}

// lockLost reports, once, that req's lock owner lost its locks on the file (or the handle its
// flock) in a reclaim that failed.
func (f *fileHandle) lockLost(req *fspb.LockRequest) bool {
	if req.Flock {
		f.mu.Lock()
		defer f.mu.Unlock()
		lost := f.flockLost
		f.flockLost = false
		return lost
	}
	f.n.mu.Lock()
	defer f.n.mu.Unlock()
	lost := f.n.lostLocks[req.Owner]
	delete(f.n.lostLocks, req.Owner)
	return lost
}
