package fs

import (
	"math"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/fs/fspb"
)

// Locks live on the owner, so they hold against every node and against local processes there.
//
// POSIX byte-range locks belong to a lock owner (a process on the client) and a file, across all
// of that process's descriptors, and go away when the process closes any descriptor of the
// file. The owner keeps one open file description per (client session, lock owner, file) and
// takes open-file-description locks (F_OFD_SETLK) on it: locks of different lock owners then
// conflict with each other, those of one lock owner merge, and closing that description drops
// them all. flock(2) locks belong to an open file, which is exactly one client handle: they are
// taken on the handle's own descriptor. POSIX locks are set through the server's lockGraph,
// which keeps what deadlock detection needs (lockwaits.go).

type lockKey struct {
	owner uint64
	id    fileID
}

type lockFile struct {
	fd int
	// writable: fd is open for writing, which write locks need.
	writable bool
}

// toFlock converts a FUSE lock range (inclusive end, MaxInt64 for "to the end") to struct flock.
func toFlock(typ uint32, start, end uint64) (unix.Flock_t, syscall.Errno) {
	if start > math.MaxInt64 || end < start {
		return unix.Flock_t{}, syscall.EINVAL
	}
	lk := unix.Flock_t{Type: int16(typ), Whence: 0, Start: int64(start)}
	if end < math.MaxInt64 {
		lk.Len = int64(end - start + 1)
	}
	return lk, 0
}

// fromFlock converts a struct flock result back to a FUSE lock range.
func fromFlock(lk unix.Flock_t) (typ uint32, start, end uint64) {
	typ, start = uint32(lk.Type), uint64(lk.Start)
	if lk.Len == 0 {
		return typ, start, math.MaxInt64
	}
	return typ, start, uint64(lk.Start + lk.Len - 1)
}

// withLockFD calls fn with the description that holds owner's POSIX locks on f's file, opening
// it if create (else fn gets -1 if there is none), open for writing if write. The session's
// lock is held meanwhile, so that the descriptor cannot be closed, and its number reused,
// under fn.
func (sess *session) withLockFD(owner uint64, f *openFile, create, write bool, fn func(fd int) syscall.Errno) syscall.Errno {
	key := lockKey{owner: owner, id: f.id}
	sess.mu.Lock()
	defer sess.mu.Unlock()
	if lf := sess.locks[key]; lf != nil {
		if write && !lf.writable {
			if errno := sess.reopenForWriting(owner, f, lf); errno != 0 {
				return errno
			}
		}
		return fn(lf.fd)
	}
	if !create {
		return fn(-1)
	}
	if sess.gone {
		return syscall.ESTALE
	}
	// Open for writing only for a write lock or a handle open for writing: while a description
	// is, the owner's kernel refuses to execute the file (ETXTBSY), so a read lock by someone
	// who may only read a program would stop it from running there.
	fd, writable, errno := reopenForLocks(f, write || f.flags&unix.O_ACCMODE != unix.O_RDONLY, write)
	if errno != 0 {
		return errno
	}
	sess.locks[key] = &lockFile{fd: fd, writable: writable}
	return fn(fd)
}

// reopenForLocks opens f's file again for a lock owner's locks: for writing if writable (and
// must, if mustWrite), else for reading. Reopened through /proc as the agent itself: the
// client's kernel already checked that the user's descriptor is open for the lock's type,
// and the user may have lost the permission to open the file since. O_APPEND because a file
// with the append-only attribute opens for writing with it only, and a write lock needs a
// description open for writing.
func reopenForLocks(f *openFile, writable, mustWrite bool) (fd int, isWritable bool, errno syscall.Errno) {
	var modes []int
	if writable {
		modes = append(modes, unix.O_RDWR|unix.O_APPEND, unix.O_WRONLY|unix.O_APPEND)
	}
	if !mustWrite {
		modes = append(modes, unix.O_RDONLY)
	}
	for _, mode := range modes {
		fd, err := unix.Open(procFD(f.fd), mode|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
		if err == nil {
			return fd, mode != unix.O_RDONLY, 0
		}
	}
	return -1, false, syscall.ENOLCK
}

// reopenForWriting moves owner's locks on lf, a description open for reading only, to a new
// one open for writing, for a write lock from a handle of the owner's that is open for
// writing. The locks (all read locks) are taken on the new description before the old one
// closes, so the ranges are never free meanwhile. Called with the session's lock held.
func (sess *session) reopenForWriting(owner uint64, f *openFile, lf *lockFile) syscall.Errno {
	fd, _, errno := reopenForLocks(f, true, true)
	if errno != 0 {
		return errno
	}
	for _, span := range sess.graph.heldBy(lockOwnerID{sess: sess.idx, owner: owner}, f.id) {
		lk, errno := toFlock(uint32(span.typ), span.start, span.end)
		if errno == 0 {
			errno = errnoOf(unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, &lk))
		}
		if errno != 0 {
			unix.Close(fd)
			return syscall.ENOLCK
		}
	}
	unix.Close(lf.fd)
	lf.fd, lf.writable = fd, true
	return 0
}

// releaseOwner drops every POSIX lock owner holds on f's file.
func (sess *session) releaseOwner(owner uint64, f *openFile) {
	key := lockKey{owner: owner, id: f.id}
	sess.mu.Lock()
	lf := sess.locks[key]
	delete(sess.locks, key)
	if lf != nil {
		// Under the session's lock, so that a new description of this owner's cannot be
		// recorded meanwhile and then forgotten here.
		sess.graph.dropHeld(lockOwnerID{sess: sess.idx, owner: owner}, f.id)
	}
	sess.mu.Unlock()
	if lf != nil {
		unix.Close(lf.fd)
	}
}

// dropUnusedLocks drops every POSIX lock the session holds on the file id once it has no
// handle left on it. A process holds POSIX locks only while it has the file open, and drops
// them on close; a lock granted after that close (the request raced with it, or its unlock
// was lost) would otherwise stay until the session ends. Call it after the closed handle's
// descriptor is closed, so that no lock request through it is still running.
func (sess *session) dropUnusedLocks(id fileID) {
	sess.mu.Lock()
	var drop []*lockFile
	for key, lf := range sess.locks {
		if key.id == id {
			drop = append(drop, lf)
		}
	}
	if len(drop) > 0 {
		for _, f := range sess.handles {
			if f.id == id {
				sess.mu.Unlock()
				return
			}
		}
		for key := range sess.locks {
			if key.id == id {
				delete(sess.locks, key)
				sess.graph.dropHeld(lockOwnerID{sess: sess.idx, owner: key.owner}, id)
			}
		}
	}
	sess.mu.Unlock()
	for _, lf := range drop {
		unix.Close(lf.fd)
	}
}

func (s *Server) lock(sess *session, req *fspb.LockRequest) (*fspb.LockReply, syscall.Errno) {
	if req.Op == fspb.LockRequest_CANCEL_WAIT {
		// Before the handle: the process may have closed it since it gave up.
		sess.graph.cancel(sess.idx, req.Wait, time.Now())
		return &fspb.LockReply{}, 0
	}
	if req.Reclaim && (req.Op != fspb.LockRequest_SET || req.Wait != 0) {
		// Only a non-blocking SET takes a lock again.
		return nil, syscall.EINVAL
	}
	f, errno := sess.handle(req.Handle)
	if errno != 0 {
		return nil, errno
	}
	defer f.release()
	// A lock call may wait in the kernel too (a file in a FUSE mount whose daemon does not
	// answer): in one of the opener's slots.
	defer s.calls.acquire(f.opener.uid)()
	// After the handle: a handle of the server's earlier instance is first opened again.
	if left := s.graceLeft(req, time.Now()); left > 0 {
		return &fspb.LockReply{Errno: int32(syscall.EAGAIN), GraceMs: uint32(left.Milliseconds()) + 1}, 0
	}

	switch req.Op {
	case fspb.LockRequest_RELEASE_OWNER:
		sess.releaseOwner(req.Owner, f)
		return &fspb.LockReply{}, 0

	case fspb.LockRequest_GET:
		lk, errno := toFlock(req.Type, req.Start, req.End)
		if errno != 0 {
			return nil, errno
		}
		if req.Flock {
			// flock has no query; FUSE never asks.
			return nil, syscall.EINVAL
		}
		errno = sess.withLockFD(req.Owner, f, false, false, func(fd int) syscall.Errno {
			if fd < 0 {
				// This owner holds no lock on the file: any description reports others' locks.
				fd = f.fd
			}
			return errnoOf(unix.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, &lk))
		})
		if errno != 0 {
			return nil, errno
		}
		typ, start, end := fromFlock(lk)
		return &fspb.LockReply{Type: typ, Start: start, End: end}, 0

	case fspb.LockRequest_SET:
		if req.Flock {
			how := unix.LOCK_NB
			switch req.Type {
			case unix.F_RDLCK:
				how |= unix.LOCK_SH
			case unix.F_WRLCK:
				how |= unix.LOCK_EX
			case unix.F_UNLCK:
				how |= unix.LOCK_UN
			default:
				return nil, syscall.EINVAL
			}
			if req.Type != unix.F_UNLCK {
				if errno := s.markLocks(); errno != 0 {
					return nil, errno
				}
			}
			if err := unix.Flock(f.fd, how); err != nil {
				return nil, errnoOf(err)
			}
			f.flocks.Store(req.Type != unix.F_UNLCK)
			return &fspb.LockReply{}, 0
		}
		lk, errno := toFlock(req.Type, req.Start, req.End)
		if errno != 0 {
			return nil, errno
		}
		if req.Type == unix.F_WRLCK && f.flags&unix.O_ACCMODE == unix.O_RDONLY {
			// As fcntl on a descriptor not open for writing. The client's kernel never asks;
			// a forged request would have the agent open the file for writing.
			return nil, syscall.EBADF
		}
		if req.Type != unix.F_UNLCK {
			if errno := s.markLocks(); errno != 0 {
				return nil, errno
			}
		}
		who := lockOwnerID{sess: sess.idx, owner: req.Owner}
		span := lockSpan{typ: int16(req.Type), start: req.Start, end: req.End}
		errno = sess.withLockFD(req.Owner, f, req.Type != unix.F_UNLCK, req.Type == unix.F_WRLCK, func(fd int) syscall.Errno {
			if fd < 0 {
				return 0 // unlocking what was never locked
			}
			return sess.graph.attempt(who, f.id, span, req.Wait, time.Now(), func() syscall.Errno {
				err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, &lk)
				if err == syscall.EACCES {
					err = syscall.EAGAIN
				}
				return errnoOf(err)
			})
		})
		if errno != 0 {
			return nil, errno
		}
		return &fspb.LockReply{}, 0
	}
	return nil, syscall.EINVAL
}
