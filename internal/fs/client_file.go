package fs

import (
	"context"
	"math"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/ssi-cluster/ssi/internal/fs/fspb"
)

// fileHandle is a file open on its owner.
type fileHandle struct {
	n      *node
	flags  uint32
	caller *fspb.Caller // who opened it: a reopen after the owner restarted is made as them

	mu sync.Mutex
	// h is the owner's number for the open file. It changes when the file is opened again
	// on an owner whose file server restarted (reclaim.go).
	h        uint64
	inst     []byte // the owner's file server instance h belongs to (nil: not told)
	lost     bool   // the owner restarted and the file could not be opened again there
	released bool
	flocked  bool   // an flock was taken through it
	flockTyp uint32 // the flock held through it (F_RDLCK, F_WRLCK), 0 if none: reclaimed
	// flockLost says the flock could not be reclaimed after the owner restarted: the next
	// flock call through the handle fails with EIO.
	flockLost bool
}

// handle returns the owner's number for the open file.
func (f *fileHandle) handle() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.h
}

var (
	_ fs.FileReader    = (*fileHandle)(nil)
	_ fs.FileWriter    = (*fileHandle)(nil)
	_ fs.FileFlusher   = (*fileHandle)(nil)
	_ fs.FileReleaser  = (*fileHandle)(nil)
	_ fs.FileFsyncer   = (*fileHandle)(nil)
	_ fs.FileGetlker   = (*fileHandle)(nil)
	_ fs.FileSetlker   = (*fileHandle)(nil)
	_ fs.FileSetlkwer  = (*fileHandle)(nil)
	_ fs.FileAllocater = (*fileHandle)(nil)
	_ fs.FileLseeker   = (*fileHandle)(nil)
)

// call makes a request on the handle. Device I/O is not bounded by the timeout (a serial line
// may wait for input for ever); it ends when the owner is found down.
func (f *fileHandle) call(ctx context.Context, bounded bool, fn func(ctx context.Context, api filesAPI) error) syscall.Errno {
	// After a restart of the owner's file server, its open files are opened again first.
	if errno := f.n.p.awaitReclaim(ctx, bounded); errno != 0 {
		return errno
	}
	return f.n.p.call(ctx, bounded, fn)
}

// onHandle makes a request about the file's handle h on the owner: fn sends it and returns the
// owner's errno. If the owner does not know h because its file server restarted, the request
// is made again once the file is open there again (reclaim.go).
func (f *fileHandle) onHandle(ctx context.Context, bounded bool, fn func(rpc context.Context, api filesAPI, h uint64) (int32, error)) syscall.Errno {
	for retried := false; ; retried = true {
		h := f.handle()
		var answer int32
		errno := f.call(ctx, bounded, func(rpc context.Context, api filesAPI) (err error) {
			answer, err = fn(rpc, api, h)
			return err
		})
		if errno != 0 || retried || answer != int32(syscall.EBADF) || !f.afterRestart(ctx, h) {
			return errno
		}
	}
}

// handleErrno maps the owner's answer about a handle: a handle it does not know was lost with
// a restart of the owner, which the process sees as an I/O error.
func handleErrno(errno int32) syscall.Errno {
	if errno == int32(syscall.EBADF) {
		return syscall.EIO
	}
	return syscall.Errno(errno)
}

func (f *fileHandle) bounded() bool {
	f.n.mu.Lock()
	defer f.n.mu.Unlock()
	return !f.n.device
}

// Read and Write send what the kernel asks for (up to 1 MiB: its read-ahead, the largest
// write) in one request. Cutting it into pieces sent at once gained nothing once the data was
// no longer copied into and out of encoded messages: the pieces share one connection, their
// frames interleaved on it, and each piece is one more call.

func (f *fileHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	var reply *fspb.ReadReply
	errno := f.onHandle(ctx, f.bounded(), func(rpc context.Context, api filesAPI, h uint64) (int32, error) {
		var err error
		reply, err = api.ReadInto(rpc, &fspb.ReadRequest{Session: f.n.p.m.session, Handle: h, Offset: off, Size: uint32(len(dest))}, dest)
		if err != nil {
			return 0, err
		}
		return reply.Errno, nil
	})
	if errno != 0 {
		return nil, errno
	}
	if reply.Errno != 0 {
		return nil, handleErrno(reply.Errno)
	}
	f.n.p.m.stats.bytesRead.Add(uint64(len(reply.Data)))
	return fuse.ReadResultData(reply.Data), 0
}

func (f *fileHandle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	defer changing(f.n)()
	f.n.dropAttr()
	defer f.n.dropAttr()
	var reply *fspb.WriteReply
	caller := f.n.caller(ctx)
	errno := f.onHandle(ctx, f.bounded(), func(rpc context.Context, api filesAPI, h uint64) (int32, error) {
		var err error
		reply, err = api.Write(rpc, &fspb.WriteRequest{Session: f.n.p.m.session, Handle: h, Offset: off, Data: data, Caller: caller})
		if err != nil {
			return 0, err
		}
		return reply.Errno, nil
	})
	if errno != 0 {
		return 0, errno
	}
	if reply.Errno != 0 {
		return 0, handleErrno(reply.Errno)
	}
	f.n.p.m.stats.bytesWritten.Add(uint64(reply.Written))
	return reply.Written, 0
}

// Flush has nothing to do: writes went through to the owner when they were made. The POSIX
// locks that close(2) drops are released by lockReleasingFS.
func (f *fileHandle) Flush(ctx context.Context) syscall.Errno { return 0 }

// Release closes the file on the owner. The kernel does not wait for it, so closes are
// gathered and sent together, a round trip saved per small file. Not when others may be
// waiting for the close: an flock taken through the handle, an executable open for writing
// (the owner refuses to run it, ETXTBSY, while a writer has it open), or a program's file
// opened to run it.
func (f *fileHandle) Release(ctx context.Context) syscall.Errno {
	f.n.p.forgetHandle(f)
	f.mu.Lock()
	flocked, h := f.flocked, f.h
	f.released = true
	f.mu.Unlock()
	f.n.mu.Lock()
	executable := f.n.mode&0o111 != 0
	f.n.mu.Unlock()
	if flocked || executable && f.flags&syscall.O_ACCMODE != syscall.O_RDONLY || f.flags&fmodeExec != 0 {
		f.n.p.releaseNow([]uint64{h})
		return 0
	}
	f.n.p.releaseLater(h)
	return 0
}

func (f *fileHandle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	var reply *fspb.ErrnoReply
	errno := f.onHandle(ctx, true, func(rpc context.Context, api filesAPI, h uint64) (int32, error) {
		var err error
		reply, err = api.Fsync(rpc, &fspb.FsyncRequest{Session: f.n.p.m.session, Handle: h, Datasync: flags&1 != 0})
		if err != nil {
			return 0, err
		}
		return reply.Errno, nil
	})
	if errno != 0 {
		return errno
	}
	return handleErrno(reply.Errno)
}

func (f *fileHandle) Allocate(ctx context.Context, off uint64, size uint64, mode uint32) syscall.Errno {
	defer changing(f.n)()
	f.n.dropAttr()
	defer f.n.dropAttr()
	var reply *fspb.ErrnoReply
	caller := f.n.caller(ctx)
	errno := f.onHandle(ctx, true, func(rpc context.Context, api filesAPI, h uint64) (int32, error) {
		var err error
		reply, err = api.Allocate(rpc, &fspb.AllocateRequest{Session: f.n.p.m.session, Handle: h, Offset: off, Length: size, Mode: mode, Caller: caller})
		if err != nil {
			return 0, err
		}
		return reply.Errno, nil
	})
	if errno != 0 {
		return errno
	}
	return handleErrno(reply.Errno)
}

func (f *fileHandle) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	var reply *fspb.LseekReply
	errno := f.onHandle(ctx, true, func(rpc context.Context, api filesAPI, h uint64) (int32, error) {
		var err error
		reply, err = api.Lseek(rpc, &fspb.LseekRequest{Session: f.n.p.m.session, Handle: h, Offset: int64(off), Whence: whence})
		if err != nil {
			return 0, err
		}
		return reply.Errno, nil
	})
	if errno != 0 {
		return 0, errno
	}
	return uint64(reply.Offset), handleErrno(reply.Errno)
}

// lock sends a lock request, again after the owner's grace period if the owner holds it back
// for reclaims (reclaim.go); blocking says it is an attempt of a blocking wait, whose wait for
// the grace period a signal interrupts.
func (f *fileHandle) lock(ctx context.Context, req *fspb.LockRequest, blocking bool) (*fspb.LockReply, syscall.Errno) {
	req.Session = f.n.p.m.session
	for {
		var reply *fspb.LockReply
		errno := f.onHandle(ctx, true, func(rpc context.Context, api filesAPI, h uint64) (int32, error) {
			req.Handle = h
			var err error
			if reply, err = api.Lock(rpc, req); err != nil {
				return 0, err
			}
			return reply.Errno, nil
		})
		if errno != 0 {
			return nil, errno
		}
		if reply.GraceMs == 0 {
			return reply, handleErrno(reply.Errno)
		}
		if errno := f.n.p.awaitGrace(ctx, time.Duration(reply.GraceMs)*time.Millisecond, blocking); errno != 0 {
			return nil, errno
		}
	}
}

func (f *fileHandle) Getlk(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32, out *fuse.FileLock) syscall.Errno {
	reply, errno := f.lock(ctx, &fspb.LockRequest{Op: fspb.LockRequest_GET, Owner: owner, Type: lk.Typ,
		Start: lk.Start, End: lk.End, Flock: flags&fuse.FUSE_LK_FLOCK != 0}, false)
	if errno != 0 {
		return errno
	}
	*out = fuse.FileLock{Typ: reply.Type, Start: reply.Start, End: reply.End}
	return 0
}

func (f *fileHandle) Setlk(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32) syscall.Errno {
	return f.setlk(ctx, owner, lk, flags, false, 0)
}

// setlk asks the owner for a lock once; blocking says it is an attempt of a blocking wait,
// and wait, if not 0, is that wait's number.
func (f *fileHandle) setlk(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32, blocking bool, wait uint64) syscall.Errno {
	req := &fspb.LockRequest{Op: fspb.LockRequest_SET, Owner: owner, Type: lk.Typ, Start: lk.Start, End: lk.End,
		Flock: flags&fuse.FUSE_LK_FLOCK != 0, Wait: wait}
	if !req.Flock && lk.Typ == syscall.F_UNLCK && lk.Start == 0 && lk.End == math.MaxInt64 {
		// Unlocking the whole file drops all of the owner's locks on it: close their holder.
		req.Op = fspb.LockRequest_RELEASE_OWNER
	}
	if f.lockLost(req) {
		return syscall.EIO
	}
	if !req.Flock {
		if errno := f.n.sendUnsentUnlock(ctx, owner); errno != 0 {
			return errno
		}
	}
	f.noteLock(req, false)
	reply, errno := f.lock(ctx, req, blocking)
	if errno == 0 {
		f.noteLock(req, true)
	}
	if reply == nil && errno != 0 && req.Op == fspb.LockRequest_RELEASE_OWNER {
		f.unsentUnlock(owner)
	}
	if errno == 0 && req.Flock && lk.Typ != syscall.F_UNLCK {
		f.mu.Lock()
		f.flocked = true
		f.mu.Unlock()
	}
	return errno
}

// Setlkw waits for a lock by retrying on the owner: a blocked request would pin a thread
// there and could not notice that this node went away. Waits are not bounded by the timeout.
//
// The attempts of a wait for a POSIX lock carry a number, so that the owner knows who waits
// for what and can answer EDEADLK as Linux does (lockwaits.go); a wait that ends other than
// by the owner's answer is cancelled there, or it would count as waiting a while longer.
// flock waits have no deadlock detection on Linux, and are not numbered.
func (f *fileHandle) Setlkw(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32) syscall.Errno {
	var id uint64
	if flags&fuse.FUSE_LK_FLOCK == 0 && lk.Typ != syscall.F_UNLCK {
		id = f.n.p.m.lockWaits.Add(1)
	}
	errno := f.waitLock(ctx, owner, lk, flags, id)
	if id != 0 && errno != 0 && errno != syscall.EDEADLK {
		f.cancelWait(ctx, owner, id)
	}
	return errno
}

func (f *fileHandle) waitLock(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32, id uint64) syscall.Errno {
	wait := time.Millisecond
	for {
		errno := f.setlk(ctx, owner, lk, flags, true, id)
		if errno != syscall.EAGAIN && errno != syscall.EWOULDBLOCK {
			return errno
		}
		select {
		case <-ctx.Done():
			return syscall.EINTR
		case <-f.n.p.m.ctx.Done():
			return syscall.EIO
		case <-time.After(wait):
		}
		wait = min(2*wait, 100*time.Millisecond)
	}
}

// unsentUnlock notes that lock owner's unlock of the whole file through f did not reach the
// owner (down, cut off, silent) and sends it again until it does. It is what a close of any
// descriptor of the file does to a process's POSIX locks (lockReleasingFS.Flush), and the
// process goes on as if they were gone, as they are locally: left on the owner, they would
// hold for as long as the process keeps another descriptor of the file open.
func (f *fileHandle) unsentUnlock(owner uint64) {
	n, p := f.n, f.n.p
	if p.m.ctx.Err() != nil {
		return
	}
	n.mu.Lock()
	_, retrying := n.unsentUnlocks[owner]
	if n.unsentUnlocks == nil {
		n.unsentUnlocks = make(map[uint64]*fileHandle)
	}
	n.unsentUnlocks[owner] = f
	n.mu.Unlock()
	if retrying {
		return
	}
	p.m.wg.Add(1)
	go func() {
		defer p.m.wg.Done()
		for backoff := 100 * time.Millisecond; ; backoff = min(2*backoff, maxWatchBackoff) {
			select {
			case <-time.After(backoff):
			case <-p.m.ctx.Done():
				return
			}
			if !p.m.knownNode(p.name) || n.sendUnsentUnlock(context.Background(), owner) == 0 {
				return
			}
		}
	}()
}

// sendUnsentUnlock sends lock owner's unlock of the whole file that did not reach the owner,
// if there is one, through any handle of the file still open here. It fails only if this
// attempt does not reach the owner either.
func (n *node) sendUnsentUnlock(ctx context.Context, owner uint64) syscall.Errno {
	n.mu.Lock()
	f := n.unsentUnlocks[owner]
	n.mu.Unlock()
	if f == nil {
		return 0
	}
	via := n.p.openHandleOf(n, f)
	if via != nil {
		reply, errno := via.lock(ctx, &fspb.LockRequest{Session: n.p.m.session, Op: fspb.LockRequest_RELEASE_OWNER, Owner: owner}, false)
		if reply == nil && errno != 0 {
			return errno
		}
	}
	// Done; or no handle of the file is left open here, and the owner drops the locks of
	// a file its client has no handle of.
	n.mu.Lock()
	if n.unsentUnlocks[owner] == f {
		delete(n.unsentUnlocks, owner)
	}
	n.mu.Unlock()
	return 0
}

// openHandleOf returns f if it is still open, else another handle of n's file open through
// this mount, or nil.
func (p *peer) openHandleOf(n *node, f *fileHandle) *fileHandle {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, open := p.handles[f]; open {
		return f
	}
	for h := range p.handles {
		if h.n == n {
			return h
		}
	}
	return nil
}

// cancelWait tells the owner that blocking wait id ended without its answer. Should this
// fail, the owner stops counting the wait after waitStale.
func (f *fileHandle) cancelWait(ctx context.Context, owner uint64, id uint64) {
	if _, errno := f.lock(context.WithoutCancel(ctx), &fspb.LockRequest{Op: fspb.LockRequest_CANCEL_WAIT, Owner: owner, Wait: id}, false); errno != 0 {
		f.n.p.m.log.Debug("could not cancel a lock wait on its owner", "node", f.n.p.name, "errno", errno)
	}
}

// dirHandle lists a directory on its owner, a batch at a time, with each entry's attributes so
// that `ls -l` needs no further request (READDIRPLUS).
type dirHandle struct {
	n *node

	mu      sync.Mutex
	entries []*fspb.DirEntry
	pos     int
	cookie  int64
	eof     bool
	last    *fspb.DirEntry
	snap    snapshot
	// names collects a listing read from the start while the owner said each batch would be
	// invalidated on change; complete at the end, it lets lookups of other names skip the owner.
	names    map[string]struct{}
	complete bool
}

var (
	_ fs.FileReaddirenter = (*dirHandle)(nil)
	_ fs.FileLookuper     = (*dirHandle)(nil)
	_ fs.FileSeekdirer    = (*dirHandle)(nil)
	_ fs.FileFsyncdirer   = (*dirHandle)(nil)
)

const readdirBatch = 256 << 10

func (d *dirHandle) fetch(ctx context.Context) syscall.Errno {
	ref, errno := d.n.ref(nil)
	if errno != 0 {
		return errno
	}
	snap := d.n.snapshot()
	if d.cookie == 0 {
		d.names, d.complete = map[string]struct{}{}, true
		d.snap = snap
	} else if snap.epoch != d.snap.epoch || snap.gen != d.snap.gen {
		d.complete = false
	}
	var reply *fspb.ReaddirReply
	errno = d.n.call(ctx, func(rpc context.Context, api filesAPI) (err error) {
		reply, err = api.Readdir(rpc, &fspb.ReaddirRequest{Session: d.n.p.m.session, Caller: d.n.caller(ctx), Dir: ref,
			Cookie: d.cookie, MaxBytes: readdirBatch, Plus: true})
		return err
	})
	if errno != 0 {
		return errno
	}
	if reply.Errno != 0 {
		d.n.staleCheck(reply.Errno)
		return syscall.Errno(reply.Errno)
	}
	d.entries, d.pos, d.eof = reply.Entries, 0, reply.Eof || len(reply.Entries) == 0
	if len(reply.Entries) > 0 {
		d.cookie = reply.Entries[len(reply.Entries)-1].Cookie
	}
	d.n.mu.Lock()
	d.n.listWatched = reply.Watched
	d.n.mu.Unlock()
	d.complete = d.complete && reply.Watched && len(d.names)+len(reply.Entries) <= maxListing+2
	if d.complete {
		for _, e := range reply.Entries {
			if len(e.Name) > 0 && string(e.Name) != "." && string(e.Name) != ".." {
				d.names[string(e.Name)] = struct{}{}
			}
		}
		if d.eof {
			d.n.setListing(d.names, d.snap)
		}
	}
	if !d.complete {
		d.names = nil
	}
	return 0
}

func (d *dirHandle) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for {
		if d.pos < len(d.entries) {
			e := d.entries[d.pos]
			d.pos++
			if len(e.Name) == 0 {
				continue // hidden by the owner's exports
			}
			d.last = e
			return &fuse.DirEntry{Name: string(e.Name), Mode: clientType(e.Type), Ino: d.ino(e), Off: uint64(e.Cookie)}, 0
		}
		if d.eof {
			return nil, 0
		}
		if errno := d.fetch(ctx); errno != 0 {
			return nil, errno
		}
	}
}

func (d *dirHandle) ino(e *fspb.DirEntry) uint64 {
	switch {
	case e.Attr != nil:
		return inoOf(d.n.p.name, idFromPB(e.Attr.Id))
	case string(e.Name) == ".":
		return d.n.StableAttr().Ino
	case string(e.Name) == "..":
		if _, parent := d.n.Parent(); parent != nil {
			return parent.StableAttr().Ino
		}
		return d.n.StableAttr().Ino
	}
	return inoOf(d.n.p.name, fileID{ino: e.Ino})
}

// Lookup answers READDIRPLUS for the entry just listed from what the listing said.
func (d *dirHandle) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	d.mu.Lock()
	last, snap := d.last, d.snap
	d.mu.Unlock()
	if last == nil || last.Attr == nil || string(last.Name) != name {
		return d.n.Lookup(ctx, name, out)
	}
	return d.n.child(ctx, last.Attr, out, snap), 0
}

func (d *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.entries, d.pos, d.eof, d.last = nil, 0, false, nil
	d.cookie = int64(off)
	return 0
}

func (d *dirHandle) Fsyncdir(ctx context.Context, flags uint32) syscall.Errno { return 0 }

// lockReleasingFS adds to go-fuse what a FUSE server owes on close(2) and on negative lookups:
//
//   - close drops the closing process's POSIX locks on the file (the kernel only sends FLUSH
//     with the lock owner; libfuse does the same unlock);
//   - the last close of an open file description drops its OFD locks (F_OFD_SETLK): the kernel
//     takes them with the description as lock owner, and sends no unlock when it goes, only
//     RELEASE;
//   - a failed lookup whose node set an entry timeout becomes a cacheable negative entry.
type lockReleasingFS struct {
	fuse.RawFileSystem

	mu sync.Mutex
	// lockers holds, for each lock owner on a file that may hold POSIX locks, the handles its
	// locks were taken through; byHandle is the same the other way round. A process's entry
	// goes when it closes the file, an open file description's when it is released.
	lockers  map[lockUse]map[uint64]struct{}
	byHandle map[uint64]map[lockUse]struct{}
}

type lockUse struct{ node, owner uint64 }

func (w *lockReleasingFS) Lookup(cancel <-chan struct{}, header *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	st := w.RawFileSystem.Lookup(cancel, header, name, out)
	if st == fuse.ENOENT && out.EntryTimeout() > 0 {
		out.NodeId, out.Generation = 0, 0
		return fuse.OK
	}
	return st
}

// unlocksAll tells a request that drops all of its owner's POSIX locks on the file.
func unlocksAll(in *fuse.LkIn) bool {
	return in.Lk.Typ == syscall.F_UNLCK && in.Lk.Start == 0 && in.Lk.End == math.MaxInt64
}

// noteLock records a lock owner before its request goes out, so that a close racing with the
// request still releases what it may be granted.
func (w *lockReleasingFS) noteLock(in *fuse.LkIn) {
	if in.LkFlags&fuse.FUSE_LK_FLOCK != 0 || in.Lk.Typ == syscall.F_UNLCK {
		return
	}
	u := lockUse{in.NodeId, in.Owner}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.lockers == nil {
		w.lockers = make(map[lockUse]map[uint64]struct{})
		w.byHandle = make(map[uint64]map[lockUse]struct{})
	}
	if w.lockers[u] == nil {
		w.lockers[u] = make(map[uint64]struct{})
	}
	w.lockers[u][in.Fh] = struct{}{}
	if w.byHandle[in.Fh] == nil {
		w.byHandle[in.Fh] = make(map[lockUse]struct{})
	}
	w.byHandle[in.Fh][u] = struct{}{}
}

// forget drops u's entry and reports whether there was one.
func (w *lockReleasingFS) forget(u lockUse) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	handles, held := w.lockers[u]
	delete(w.lockers, u)
	for h := range handles {
		delete(w.byHandle[h], u)
		if len(w.byHandle[h]) == 0 {
			delete(w.byHandle, h)
		}
	}
	return held
}

// forgetHandle drops handle h from the entries and returns the owners whose locks were taken
// through it.
func (w *lockReleasingFS) forgetHandle(h uint64) []lockUse {
	w.mu.Lock()
	defer w.mu.Unlock()
	var owners []lockUse
	for u := range w.byHandle[h] {
		owners = append(owners, u)
		delete(w.lockers[u], h)
		if len(w.lockers[u]) == 0 {
			delete(w.lockers, u)
		}
	}
	delete(w.byHandle, h)
	return owners
}

// lockOwners is how many lock owners the mount keeps state for.
func (w *lockReleasingFS) lockOwners() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.lockers)
}

func (w *lockReleasingFS) setLk(cancel <-chan struct{}, in *fuse.LkIn, set func(<-chan struct{}, *fuse.LkIn) fuse.Status) fuse.Status {
	w.noteLock(in)
	st := set(cancel, in)
	if st == fuse.OK && in.LkFlags&fuse.FUSE_LK_FLOCK == 0 && unlocksAll(in) {
		w.forget(lockUse{in.NodeId, in.Owner})
	}
	return st
}

func (w *lockReleasingFS) SetLk(cancel <-chan struct{}, in *fuse.LkIn) fuse.Status {
	return w.setLk(cancel, in, w.RawFileSystem.SetLk)
}

func (w *lockReleasingFS) SetLkw(cancel <-chan struct{}, in *fuse.LkIn) fuse.Status {
	return w.setLk(cancel, in, w.RawFileSystem.SetLkw)
}

func (w *lockReleasingFS) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	st := w.RawFileSystem.Flush(cancel, in)
	if w.forget(lockUse{in.NodeId, in.LockOwner}) {
		w.unlockAll(cancel, &in.InHeader, in.Fh, in.LockOwner)
	}
	return st
}

// Release drops the locks still noted for the handle before it goes. Every process that
// used it has closed it by now, and each close dropped that process's locks: what remains
// are the locks of the open file description itself.
func (w *lockReleasingFS) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	for _, u := range w.forgetHandle(in.Fh) {
		w.unlockAll(cancel, &in.InHeader, in.Fh, u.owner)
	}
	w.RawFileSystem.Release(cancel, in)
}

func (w *lockReleasingFS) unlockAll(cancel <-chan struct{}, header *fuse.InHeader, fh, owner uint64) {
	w.RawFileSystem.SetLk(cancel, &fuse.LkIn{InHeader: *header, Fh: fh, Owner: owner,
		Lk: fuse.FileLock{Start: 0, End: math.MaxInt64, Typ: syscall.F_UNLCK}})
}

// releaseDelay is how long closed handles wait to be sent together.
const releaseDelay = 10 * time.Millisecond

// releaseLater queues a handle to close on the owner with others.
func (p *peer) releaseLater(h uint64) {
	p.releaseMu.Lock()
	defer p.releaseMu.Unlock()
	p.releases = append(p.releases, h)
	if len(p.releases) >= 256 {
		batch := p.releases
		p.releases = nil
		go p.releaseNow(batch)
		return
	}
	if len(p.releases) == 1 {
		time.AfterFunc(releaseDelay, func() {
			p.releaseMu.Lock()
			batch := p.releases
			p.releases = nil
			p.releaseMu.Unlock()
			if len(batch) > 0 {
				p.releaseNow(batch)
			}
		})
	}
}

// releaseNow closes handles on the owner. Failures are not reported: the kernel does not wait.
// Handles the owner could not be told about (down, cut off, frozen past the timeout) are sent
// again until it answers: an owner that is back before this session expires there keeps the
// session, and with it those files and their flocks, which nothing else would ever close.
func (p *peer) releaseNow(handles []uint64) {
	if p.sendReleases(handles) != 0 {
		p.retryReleases(handles)
	}
}

func (p *peer) sendReleases(handles []uint64) syscall.Errno {
	return p.call(context.Background(), true, func(rpc context.Context, api filesAPI) error {
		_, err := api.Release(rpc, &fspb.HandleRequest{Session: p.m.session, Handles: handles})
		return err
	})
}

// retryReleases keeps handles whose close did not reach the owner and sends them again, a
// while apart, until it answers or the mount goes. Handle numbers are random, so one that
// reaches a restarted owner (which closed everything) names nothing there.
func (p *peer) retryReleases(handles []uint64) {
	if p.m.ctx.Err() != nil {
		return // the mount is gone (releaseAll sent what it had)
	}
	p.releaseMu.Lock()
	defer p.releaseMu.Unlock()
	p.unreleased = append(p.unreleased, handles...)
	if p.releaseRetrying {
		return
	}
	p.releaseRetrying = true
	p.m.wg.Add(1)
	go p.retryReleasesLoop()
}

// maxReleaseBatch bounds the handles of one Release request.
const maxReleaseBatch = 256

func (p *peer) retryReleasesLoop() {
	defer p.m.wg.Done()
	backoff := 100 * time.Millisecond
	for {
		select {
		case <-time.After(backoff):
		case <-p.m.ctx.Done():
			return
		}
		p.releaseMu.Lock()
		if !p.m.knownNode(p.name) {
			// Gone from the cluster: nothing is open there any more.
			p.unreleased, p.releaseRetrying = nil, false
			p.releaseMu.Unlock()
			return
		}
		batch := p.unreleased[:min(len(p.unreleased), maxReleaseBatch)]
		p.unreleased = p.unreleased[len(batch):]
		p.releaseMu.Unlock()
		failed := p.sendReleases(batch) != 0
		p.releaseMu.Lock()
		if failed {
			p.unreleased = slices.Concat(batch, p.unreleased)
			backoff = min(2*backoff, maxWatchBackoff)
		} else {
			backoff = 0
		}
		if len(p.unreleased) == 0 {
			p.unreleased = nil
			p.releaseRetrying = false
			p.releaseMu.Unlock()
			return
		}
		p.releaseMu.Unlock()
	}
}
