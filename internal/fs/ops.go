package fs

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"slices"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/status"

	"github.com/ssi-cluster/ssi/internal/fs/fspb"
)

// maxIO is the largest read or write served in one request (FUSE's own maximum).
const maxIO = 1 << 20

// maxXattrSize is Linux's limit on one extended attribute's value.
const maxXattrSize = 64 << 10

func refPath(ref *fspb.NodeRef) (string, syscall.Errno) {
	if ref == nil {
		return "", syscall.EINVAL
	}
	if errno := validPath(ref.Path); errno != 0 {
		return "", errno
	}
	return string(ref.Path), 0
}

// matches reports whether st is the object the client expects (any, if it expects none).
func matches(st *unix.Statx_t, want *fspb.FileID) bool {
	if want == nil {
		return true
	}
	id := statxID(st)
	return id.dev == want.Dev && id.ino == want.Ino && (want.Btime == 0 || id.btime == want.Btime)
}

// objectOpener opens the resolved object when its file system kind must be learned.
func objectOpener(r resolved) func() (int, bool) {
	return func() (int, bool) {
		fd, errno := openObject(r)
		if errno != 0 {
			return -1, false
		}
		return fd, true
	}
}

func fdOpener(fd int) func() (int, bool) { return func() (int, bool) { return fd, false } }

// dirOf stats the directory holding a resolved object and starts watching it.
func (s *Server) dirOf(r resolved) (fileID, bool, syscall.Errno) {
	var st unix.Statx_t
	if errno := statFD(r.dir, &st); errno != 0 {
		return fileID{}, false, errno
	}
	id := statxID(&st)
	return id, s.watchDir(r.dir, id), 0
}

// dirAttr describes a directory after a change in it, for the client to cache.
func (s *Server) dirAttr(fd int) *fspb.Attr {
	var st unix.Statx_t
	if statFD(fd, &st) != 0 {
		return nil
	}
	a, _ := s.describe(&st, fdOpener(fd), atFD(fd))
	return a
}

// finish records the session as a cacher of what it was told and says whether it may cache it.
func (c *call) finish(start uint64, watched bool, attrs []*fspb.Attr, dirs ...fileID) bool {
	var ids []fileID
	for _, a := range attrs {
		if a != nil {
			ids = append(ids, idFromPB(a.Id))
		}
	}
	stable := c.s.hold(c.sess, start, ids, dirs) && watched
	for _, a := range attrs {
		if a != nil {
			a.Watched = stable && !a.Direct
		}
	}
	return stable
}

func (s *Server) Lookup(ctx context.Context, req *fspb.LookupRequest) (*fspb.EntryReply, error) {
	c, err := s.begin(ctx, req.Session, req.Caller)
	if err != nil {
		return nil, err
	}
	defer c.end()
	dirPath, errno := refPath(req.Dir)
	if errno == 0 {
		errno = validName(req.Name)
	}
	if errno != 0 {
		return &fspb.EntryReply{Errno: int32(errno)}, nil
	}
	path := joinPath(dirPath, string(req.Name))
	start := s.cache.now()
	reply := &fspb.EntryReply{}
	var dirID fileID
	var watched bool
	errno = c.look(func() syscall.Errno {
		r, errno := s.resolve(path)
		if errno != 0 {
			return errno
		}
		defer r.close()
		var dst unix.Statx_t
		if errno := statFD(r.dir, &dst); errno != 0 {
			return errno
		}
		if !matches(&dst, req.Dir.Id) {
			return syscall.ESTALE
		}
		dirID = statxID(&dst)
		watched = s.watchDir(r.dir, dirID)
		var st unix.Statx_t
		if errno := statAt(r, &st); errno != 0 {
			return errno
		}
		attr, cluster := s.describe(&st, objectOpener(r), r.object())
		if cluster {
			return syscall.ENOENT
		}
		reply.Attr = attr
		if st.Mode&syscall.S_IFMT == syscall.S_IFDIR {
			// Watched from now on, so that the client may cache its first listing already.
			if fd, errno := openObject(r); errno == 0 {
				attr.ListingWatched = s.watchDir(fd, statxID(&st))
				unix.Close(fd)
			}
		}
		return 0
	})
	reply.Errno = int32(errno)
	switch errno {
	case 0:
		if !c.finish(start, watched, []*fspb.Attr{reply.Attr}, dirID) {
			reply.Attr.ListingWatched = false
		}
	case syscall.ENOENT:
		if dirID != (fileID{}) {
			reply.Cacheable = c.finish(start, watched, nil, dirID)
		}
	}
	if errno == syscall.ENOENT || errno == syscall.ESTALE {
		reply.WatchSeq = s.watchSeq(c.sess)
	}
	return reply, nil
}

func (s *Server) Getattr(ctx context.Context, req *fspb.NodeRequest) (*fspb.EntryReply, error) {
	c, err := s.begin(ctx, req.Session, req.Caller)
	if err != nil {
		return nil, err
	}
	defer c.end()
	path, errno := refPath(req.Node)
	if errno != 0 {
		return &fspb.EntryReply{Errno: int32(errno)}, nil
	}
	start := s.cache.now()
	reply := &fspb.EntryReply{}
	if req.Node.Handle != 0 {
		if f, errno := c.sess.handle(req.Node.Handle); errno == 0 {
			defer f.release()
			var st unix.Statx_t
			if errno := statFD(f.fd, &st); errno != 0 {
				return &fspb.EntryReply{Errno: int32(errno)}, nil
			}
			reply.Attr, _ = s.describe(&st, fdOpener(f.fd), atFD(f.fd))
			c.finish(start, f.watched, []*fspb.Attr{reply.Attr})
			return reply, nil
		}
	}
	var watched bool
	errno = c.look(func() syscall.Errno {
		r, errno := s.resolve(path)
		if errno != 0 {
			return errno
		}
		defer r.close()
		_, watched, errno = s.dirOf(r)
		if errno != 0 {
			return errno
		}
		var st unix.Statx_t
		if errno := statAt(r, &st); errno != 0 {
			return errno
		}
		if !matches(&st, req.Node.Id) {
			return syscall.ESTALE
		}
		reply.Attr, _ = s.describe(&st, objectOpener(r), r.object())
		return 0
	})
	reply.Errno = int32(errno)
	if errno == 0 {
		c.finish(start, watched, []*fspb.Attr{reply.Attr})
	}
	return reply, nil
}

// FUSE's FATTR_* bits, as sent in SetattrRequest.valid.
const (
	setMode     = 1 << 0
	setUID      = 1 << 1
	setGID      = 1 << 2
	setSize     = 1 << 3
	setAtime    = 1 << 4
	setMtime    = 1 << 5
	setAtimeNow = 1 << 7
	setMtimeNow = 1 << 8
)

func (s *Server) Setattr(ctx context.Context, req *fspb.SetattrRequest) (*fspb.EntryReply, error) {
	c, err := s.begin(ctx, req.Session, req.Caller)
	if err != nil {
		return nil, err
	}
	defer c.end()
	path, errno := refPath(req.Node)
	if errno == 0 && s.cfg.ReadOnly && req.Valid != 0 {
		errno = syscall.EROFS
	}
	if errno != 0 {
		return &fspb.EntryReply{Errno: int32(errno)}, nil
	}
	var handle *openFile
	if req.Node.Handle != 0 {
		if f, errno := c.sess.handle(req.Node.Handle); errno == 0 {
			defer f.release()
			if !f.exported {
				// A directory on the way to the exports, opened to be listed.
				return &fspb.EntryReply{Errno: int32(syscall.EACCES)}, nil
			}
			handle = f
		}
	}
	expected := idFromPB(req.Node.Id)
	if req.Valid&setSize != 0 {
		s.running.waitNotRunning(expected)
	}
	c.sess.begin(expected)
	defer c.sess.end(expected)

	reply := &fspb.EntryReply{}
	var watched bool
	var id fileID
	errno = c.change(func() syscall.Errno {
		var fd int
		if handle != nil {
			fd, watched = handle.fd, handle.watched
		} else {
			r, errno := s.resolve(path)
			if errno != 0 {
				return errno
			}
			defer r.close()
			if !r.exported {
				// A directory on the way to the exports.
				return syscall.EACCES
			}
			_, watched, errno = s.dirOf(r)
			if errno != 0 {
				return errno
			}
			if fd, errno = openObject(r); errno != 0 {
				return errno
			}
			defer unix.Close(fd)
		}
		var st unix.Statx_t
		if errno := statFD(fd, &st); errno != 0 {
			return errno
		}
		if !matches(&st, req.Node.Id) {
			return syscall.ESTALE
		}
		id = statxID(&st)
		if req.Valid&setSize != 0 {
			if errno := s.running.refuseID(id); errno != 0 {
				return errno
			}
		}
		if errno := applySetattr(fd, handle != nil, req); errno != 0 {
			return errno
		}
		if errno := statFD(fd, &st); errno != 0 {
			return errno
		}
		reply.Attr, _ = s.describe(&st, fdOpener(fd), atFD(fd))
		return 0
	})
	reply.Errno = int32(errno)
	if id != (fileID{}) {
		s.publish(c.sess, attrChange(id, req.Valid&setSize != 0))
	}
	if errno == 0 {
		c.finish(s.cache.now(), watched, []*fspb.Attr{reply.Attr})
	}
	return reply, nil
}

// applySetattr changes what req asks on the object fd refers to (O_PATH unless isOpen).
func applySetattr(fd int, isOpen bool, req *fspb.SetattrRequest) syscall.Errno {
	if req.Valid&setMode != 0 {
		if err := unix.Fchmodat(unix.AT_FDCWD, procFD(fd), req.Mode&07777, 0); err != nil {
			return errnoOf(err)
		}
	}
	if req.Valid&(setUID|setGID) != 0 {
		uid, gid := -1, -1
		if req.Valid&setUID != 0 {
			uid = int(req.Uid)
		}
		if req.Valid&setGID != 0 {
			gid = int(req.Gid)
		}
		if err := unix.Fchownat(fd, "", uid, gid, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return errnoOf(err)
		}
	}
	if req.Valid&setSize != 0 {
		if req.Size < 0 {
			return syscall.EINVAL
		}
		var err error
		if isOpen {
			err = unix.Ftruncate(fd, req.Size)
		} else {
			err = unix.Truncate(procFD(fd), req.Size)
		}
		if err != nil {
			return errnoOf(err)
		}
	}
	if req.Valid&(setAtime|setMtime|setAtimeNow|setMtimeNow) != 0 {
		ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
		switch {
		case req.Valid&setAtimeNow != 0:
			ts[0].Nsec = unix.UTIME_NOW
		case req.Valid&setAtime != 0:
			ts[0] = unix.Timespec{Sec: req.AtimeSec, Nsec: int64(req.AtimeNsec)}
		}
		switch {
		case req.Valid&setMtimeNow != 0:
			ts[1].Nsec = unix.UTIME_NOW
		case req.Valid&setMtime != 0:
			ts[1] = unix.Timespec{Sec: req.MtimeSec, Nsec: int64(req.MtimeNsec)}
		}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, procFD(fd), ts, 0); err != nil {
			return errnoOf(err)
		}
	}
	return 0
}

func (s *Server) Readlink(ctx context.Context, req *fspb.NodeRequest) (*fspb.ReadlinkReply, error) {
	c, err := s.begin(ctx, req.Session, req.Caller)
	if err != nil {
		return nil, err
	}
	defer c.end()
	path, errno := refPath(req.Node)
	if errno != 0 {
		return &fspb.ReadlinkReply{Errno: int32(errno)}, nil
	}
	start := s.cache.now()
	reply := &fspb.ReadlinkReply{}
	var id fileID
	errno = c.look(func() syscall.Errno {
		r, errno := s.resolve(path)
		if errno != 0 {
			return errno
		}
		defer r.close()
		if r.name == "" {
			return syscall.EINVAL
		}
		var st unix.Statx_t
		if errno := statAt(r, &st); errno != 0 {
			return errno
		}
		if !matches(&st, req.Node.Id) {
			return syscall.ESTALE
		}
		id = statxID(&st)
		buf := make([]byte, maxPathLen+1)
		n, err := unix.Readlinkat(r.dir, r.name, buf)
		if err != nil {
			return errnoOf(err)
		}
		reply.Target = buf[:n]
		return 0
	})
	reply.Errno = int32(errno)
	if errno == 0 {
		c.s.hold(c.sess, start, []fileID{id}, nil)
	}
	return reply, nil
}

// direntSize is an estimate of one entry's share of a reply, to keep replies near max_bytes.
func direntSize(name []byte, plus bool) int {
	if plus {
		return len(name) + 160
	}
	return len(name) + 32
}

func (s *Server) Readdir(ctx context.Context, req *fspb.ReaddirRequest) (*fspb.ReaddirReply, error) {
	c, err := s.begin(ctx, req.Session, req.Caller)
	if err != nil {
		return nil, err
	}
	defer c.end()
	dirPath, errno := refPath(req.Dir)
	if errno != 0 {
		return &fspb.ReaddirReply{Errno: int32(errno)}, nil
	}
	budget := int(req.MaxBytes)
	if budget <= 0 || budget > maxIO {
		budget = 128 << 10
	}
	start := s.cache.now()
	reply := &fspb.ReaddirReply{}
	var dirID fileID
	var watched bool
	errno = c.look(func() syscall.Errno {
		r, errno := s.resolve(dirPath)
		if errno != 0 {
			return errno
		}
		defer r.close()
		name := r.name
		if name == "" {
			name = "."
		}
		fd, err := unix.Openat(r.dir, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return errnoOf(err)
		}
		defer unix.Close(fd)
		var dst unix.Statx_t
		if errno := statFD(fd, &dst); errno != 0 {
			return errno
		}
		if !matches(&dst, req.Dir.Id) {
			return syscall.ESTALE
		}
		dirID = statxID(&dst)
		watched = s.watchDir(fd, dirID)
		if req.Cookie != 0 {
			if _, err := unix.Seek(fd, req.Cookie, 0); err != nil {
				return errnoOf(err)
			}
		}
		filter := len(s.exports) > 1 || s.exports[0].rel != ""
		// The agent's own /proc/<pid> is hidden (inAgentProc): so is its name in the listing.
		hidden := ""
		var sfs unix.Statfs_t
		if unix.Fstatfs(fd, &sfs) == nil && sfs.Type == unix.PROC_SUPER_MAGIC && dst.Ino == procRootIno {
			hidden = strconv.Itoa(os.Getpid())
		}
		used := 0
		buf := make([]byte, 32<<10)
		for {
			n, err := unix.Getdents(fd, buf)
			if err != nil {
				return errnoOf(err)
			}
			if n == 0 {
				reply.Eof = true
				return 0
			}
			full := false
			parseDirents(buf[:n], func(ino uint64, off int64, typ uint8, name []byte) bool {
				if used > 0 && used+direntSize(name, req.Plus) > budget {
					full = true
					return false
				}
				dot := string(name) == "." || string(name) == ".."
				if hidden != "" && string(name) == hidden {
					reply.Entries = append(reply.Entries, &fspb.DirEntry{Cookie: off, Name: nil})
					return true
				}
				if filter && !dot {
					if where, _, _ := locate(s.exports, joinPath(dirPath, string(name))); where == outside {
						reply.Entries = append(reply.Entries, &fspb.DirEntry{Cookie: off, Name: nil})
						return true
					}
				}
				e := &fspb.DirEntry{Name: append([]byte(nil), name...), Type: uint32(typ) << 12, Ino: ino, Cookie: off}
				if req.Plus && !dot {
					var st unix.Statx_t
					if unix.Statx(fd, string(name), unix.AT_SYMLINK_NOFOLLOW|unix.AT_STATX_SYNC_AS_STAT, statxMask, &st) == nil {
						attr, cluster := s.describe(&st, func() (int, bool) {
							cfd, err := unix.Openat(fd, string(name), unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
							return cfd, err == nil
						}, objectAt{dir: fd, name: string(name)})
						if cluster {
							e.Name = nil // hidden, but its cookie still counts
						} else {
							e.Attr = attr
							e.Type = attr.Mode & syscall.S_IFMT
						}
					}
				}
				used += direntSize(name, req.Plus)
				reply.Entries = append(reply.Entries, e)
				return true
			})
			if full {
				return 0
			}
		}
	})
	reply.Errno = int32(errno)
	if errno != 0 {
		return &fspb.ReaddirReply{Errno: int32(errno)}, nil
	}
	attrs := make([]*fspb.Attr, 0, len(reply.Entries))
	for _, e := range reply.Entries {
		attrs = append(attrs, e.Attr)
	}
	reply.Watched = c.finish(start, watched, attrs, dirID)
	return reply, nil
}

// parseDirents walks linux_dirent64 records until fn returns false.
func parseDirents(buf []byte, fn func(ino uint64, off int64, typ uint8, name []byte) bool) {
	for len(buf) >= 19 {
		reclen := int(binary.LittleEndian.Uint16(buf[16:18]))
		if reclen < 19 || reclen > len(buf) {
			return
		}
		ino := binary.LittleEndian.Uint64(buf[0:8])
		off := int64(binary.LittleEndian.Uint64(buf[8:16]))
		typ := buf[18]
		name := buf[19:reclen]
		for i, b := range name {
			if b == 0 {
				name = name[:i]
				break
			}
		}
		if !fn(ino, off, typ, name) {
			return
		}
		buf = buf[reclen:]
	}
}

// openFlags keeps the open(2) flags a client may pass through and adds the owner's own: never
// follow, never acquire a controlling terminal, never block in open itself.
func openFlags(flags uint32) int {
	keep := int(flags) & (unix.O_ACCMODE | unix.O_APPEND | unix.O_NONBLOCK | unix.O_SYNC | unix.O_DSYNC |
		unix.O_NOATIME | unix.O_TRUNC | unix.O_EXCL)
	return keep | unix.O_CLOEXEC | unix.O_NOCTTY | unix.O_NOFOLLOW | unix.O_NONBLOCK
}

func writes(flags uint32) bool {
	return int(flags)&unix.O_ACCMODE != unix.O_RDONLY || int(flags)&unix.O_TRUNC != 0
}

// finishOpen checks and registers a descriptor the owner just opened for the client.
// exported says the object is exported, so that it may be changed through the handle.
func (c *call) finishOpen(fd int, requested uint32, watched, exported bool, want *fspb.FileID) (*fspb.OpenReply, syscall.Errno) {
	var st unix.Statx_t
	if errno := statFD(fd, &st); errno != 0 {
		unix.Close(fd)
		return nil, errno
	}
	if !matches(&st, want) {
		unix.Close(fd)
		return nil, syscall.ESTALE
	}
	if int(requested)&unix.O_NONBLOCK == 0 {
		if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err == nil {
			unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl&^unix.O_NONBLOCK)
		}
	}
	attr, _ := c.s.describe(&st, fdOpener(fd), atFD(fd))
	f := &openFile{fd: fd, id: statxID(&st), flags: int(requested), watched: watched,
		regular: st.Mode&syscall.S_IFMT == syscall.S_IFREG, exported: exported, opener: c.who}
	if attr.Direct || !f.regular {
		who := c.who
		f.reader = &who
	}
	if !c.s.handles.take(c.who.uid) {
		// The user has their share of the owner's descriptors open: as a system out of them.
		unix.Close(fd)
		return nil, syscall.ENFILE
	}
	f.counted, f.uid = c.s.handles, c.who.uid
	if requested&fmodeExec != 0 {
		f.running = c.s.running
		f.running.add(f.id)
	}
	h := newHandleID()
	if errno := c.sess.addHandle(h, f); errno != 0 {
		f.close()
		return nil, errno
	}
	return &fspb.OpenReply{Handle: h, Attr: attr, Instance: c.s.instance}, 0
}

func (s *Server) Open(ctx context.Context, req *fspb.OpenRequest) (*fspb.OpenReply, error) {
	c, err := s.begin(ctx, req.Session, req.Caller)
	if err != nil {
		return nil, err
	}
	defer c.end()
	path, errno := refPath(req.Node)
	if errno != 0 {
		return &fspb.OpenReply{Errno: int32(errno)}, nil
	}
	// A read-only file system refuses to open its files, directories and symlinks for
	// writing, not its devices, fifos and sockets.
	roWrite := s.cfg.ReadOnly && writes(req.Flags)
	start := s.cache.now()
	var reply *fspb.OpenReply
	var watched bool
	run := c.look
	if writes(req.Flags) && int(req.Flags)&unix.O_TRUNC != 0 {
		run = c.change
	}
	if writes(req.Flags) {
		s.running.waitNotRunning(idFromPB(req.Node.Id))
	}
	errno = run(func() syscall.Errno {
		r, errno := s.resolve(path)
		if errno != 0 {
			return errno
		}
		defer r.close()
		_, watched, errno = s.dirOf(r)
		if errno != 0 {
			return errno
		}
		name := r.name
		if name == "" {
			name = "."
		}
		if writes(req.Flags) {
			if errno := s.running.refuseRunning(r.dir, r.name); errno != 0 {
				return errno
			}
		}
		flags := openFlags(req.Flags) &^ unix.O_EXCL
		if roWrite {
			// Known to be no regular file only once open: never truncate what it may be.
			flags &^= unix.O_TRUNC
		}
		fd, err := unix.Openat(r.dir, name, flags, 0)
		// Only what the kernel sends for an exec (read-only, nothing else that changes the
		// file): opened as the agent, an O_TRUNC would empty any program the caller may run.
		if err == unix.EACCES && req.Flags&fmodeExec != 0 && flags&unix.O_ACCMODE == unix.O_RDONLY && flags&unix.O_TRUNC == 0 {
			fd, err = s.openToExecute(r, flags)
		}
		if err != nil {
			return errnoOf(err)
		}
		if roWrite {
			var st unix.Statx_t
			if errno := statFD(fd, &st); errno != 0 || st.Mode&syscall.S_IFMT == syscall.S_IFREG {
				unix.Close(fd)
				return cmp.Or(errno, syscall.EROFS)
			}
		}
		reply, errno = c.finishOpen(fd, req.Flags, watched, r.exported, req.Node.Id)
		return errno
	})
	if errno == syscall.ENOENT || errno == syscall.ESTALE {
		return &fspb.OpenReply{Errno: int32(errno), WatchSeq: s.watchSeq(c.sess)}, nil
	}
	if errno != 0 {
		return &fspb.OpenReply{Errno: int32(errno)}, nil
	}
	c.finish(start, watched, []*fspb.Attr{reply.Attr})
	return s.answerOpen(ctx, c, reply)
}

// answerOpen answers an open (or create) that was made, unless the client gave up on it
// meanwhile (its deadline passed, its connection ended): then no one would ever close it, and
// it is closed here.
func (s *Server) answerOpen(ctx context.Context, c *call, reply *fspb.OpenReply) (*fspb.OpenReply, error) {
	if s.cfg.afterOpen != nil {
		s.cfg.afterOpen()
	}
	if err := ctx.Err(); err != nil {
		if f := c.sess.removeHandle(reply.Handle); f != nil {
			f.close()
			c.sess.dropUnusedLocks(f.id)
		}
		return nil, status.FromContextError(err).Err()
	}
	return reply, nil
}

// fmodeExec marks, in the flags of a FUSE open, the kernel's opening of a program to execute
// it (__FMODE_EXEC).
const fmodeExec = 0x20

// openToExecute opens, for the kernel that is to execute it, a regular file the caller (whose
// credentials the calling thread has) may execute but not read: locally the kernel reads such
// a program on the caller's behalf. The file is opened as the agent, once the caller is known
// to have search permission on the way (an O_PATH open as the caller) and execute permission.
func (s *Server) openToExecute(r resolved, flags int) (int, error) {
	pfd, errno := openObject(r)
	if errno != 0 {
		return -1, errno
	}
	defer unix.Close(pfd)
	var st unix.Statx_t
	if errno := statFD(pfd, &st); errno != 0 {
		return -1, errno
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return -1, unix.EACCES
	}
	if err := unix.Faccessat2(pfd, "", unix.X_OK, unix.AT_EMPTY_PATH|unix.AT_EACCESS); err != nil {
		return -1, err
	}
	type opened struct {
		fd  int
		err error
	}
	done := make(chan opened)
	// A new goroutine runs on an ordinary thread, with the agent's credentials, not the user's.
	go func() {
		// Through the descriptor's magic link, which O_NOFOLLOW would refuse; the object
		// itself was opened without following. Read-only and with none of the caller's other
		// flags: the agent may do more than the caller.
		fd, err := unix.Open(procFD(pfd), flags&(unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NONBLOCK), 0)
		done <- opened{fd, err}
	}()
	o := <-done
	return o.fd, o.err
}

// entryCall resolves the directory entry dir/name for a change and checks it may be changed.
func (s *Server) entryCall(dir *fspb.NodeRef, name []byte) (string, syscall.Errno) {
	dirPath, errno := refPath(dir)
	if errno == 0 {
		errno = validName(name)
	}
	if errno == 0 && s.cfg.ReadOnly {
		errno = syscall.EROFS
	}
	return joinPath(dirPath, string(name)), errno
}

// resolveEntry resolves path for a change of its directory entry, checking the directory is
// the one the client means.
func (s *Server) resolveEntry(path string, wantDir *fspb.FileID) (resolved, fileID, bool, syscall.Errno) {
	if where, _, _ := locate(s.exports, path); where == outside {
		// A new name beside the exports: the directory is there, changing it is not allowed.
		if dirWhere, _, _ := locate(s.exports, parentPath(path)); dirWhere != outside {
			return resolved{}, fileID{}, false, syscall.EACCES
		}
	}
	r, errno := s.resolve(path)
	if errno != 0 {
		return r, fileID{}, false, errno
	}
	if !r.modifiable {
		r.close()
		return resolved{}, fileID{}, false, syscall.EACCES
	}
	var dst unix.Statx_t
	if errno := statFD(r.dir, &dst); errno != 0 {
		r.close()
		return resolved{}, fileID{}, false, errno
	}
	if !matches(&dst, wantDir) {
		r.close()
		return resolved{}, fileID{}, false, syscall.ESTALE
	}
	dirID := statxID(&dst)
	return r, dirID, s.watchDir(r.dir, dirID), 0
}

func (s *Server) Create(ctx context.Context, req *fspb.CreateRequest) (*fspb.OpenReply, error) {
	c, err := s.begin(ctx, req.Session, req.Caller)
	if err != nil {
		return nil, err
	}
	defer c.end()
	path, errno := s.entryCall(req.Dir, req.Name)
	if errno == 0 && s.handles.full(c.who.uid) {
		errno = syscall.ENFILE
	}
	if errno != 0 {
		return &fspb.OpenReply{Errno: int32(errno)}, nil
	}
	expected := idFromPB(req.Dir.Id)
	c.sess.begin(expected)
	defer c.sess.end(expected)
	var reply *fspb.OpenReply
	var dirID fileID
	var watched bool
	errno = c.change(func() syscall.Errno {
		var r resolved
		var errno syscall.Errno
		r, dirID, watched, errno = s.resolveEntry(path, req.Dir.Id)
		if errno != 0 {
			return errno
		}
		defer r.close()
		if writes(req.Flags) {
			if errno := s.running.refuseRunning(r.dir, r.name); errno != 0 {
				return errno
			}
		}
		flags := openFlags(req.Flags) | unix.O_CREAT
		mode, inherits := createMode(r.dir, req.Mode, req.UnmaskedMode)
		fd, err := unix.Openat(r.dir, r.name, flags|unix.O_EXCL, mode&07777)
		created := err == nil
		if err == syscall.EEXIST && flags&unix.O_EXCL == 0 {
			// Made meanwhile by someone else: opened as open(2) with O_CREAT opens it, with
			// that flag's checks (EISDIR for a directory; protected_regular and
			// protected_fifos in sticky directories, against a file planted there).
			fd, err = unix.Openat(r.dir, r.name, flags, mode&07777)
		}
		if err != nil {
			return errnoOf(err)
		}
		if created && !inherits && mode&s.creds.umask != 0 {
			unix.Fchmod(fd, mode&07777)
		}
		reply, errno = c.finishOpen(fd, req.Flags, watched, true, nil)
		if errno == 0 {
			reply.Dir = s.dirAttr(r.dir)
		}
		return errno
	})
	if dirID != (fileID{}) && errno == 0 {
		s.publish(c.sess, entryChange(dirID, string(req.Name)))
	}
	if errno != 0 {
		return &fspb.OpenReply{Errno: int32(errno)}, nil
	}
	c.finish(s.cache.now(), watched, []*fspb.Attr{reply.Attr, reply.Dir}, dirID)
	return s.answerOpen(ctx, c, reply)
}

func (s *Server) Read(ctx context.Context, req *fspb.ReadRequest) (*fspb.ReadReply, error) {
	return s.read(ctx, req, make([]byte, min(int(req.Size), maxIO)))
}

// ReadInto serves this node's own mount, reading straight into the kernel's buffer.
func (s *Server) ReadInto(ctx context.Context, req *fspb.ReadRequest, dest []byte) (*fspb.ReadReply, error) {
	return s.read(ctx, req, dest[:min(int(req.Size), maxIO, len(dest))])
}

// read reads into buf; the reply's Data is the part of it read.
func (s *Server) read(ctx context.Context, req *fspb.ReadRequest, buf []byte) (*fspb.ReadReply, error) {
	c, err := s.begin(ctx, req.Session, nil)
	if err != nil {
		return nil, err
	}
	defer c.end()
	f, errno := c.sess.handle(req.Handle)
	if errno != 0 {
		return &fspb.ReadReply{Errno: int32(errno)}, nil
	}
	defer f.release()
	if req.Offset < 0 {
		return &fspb.ReadReply{Errno: int32(syscall.EINVAL)}, nil
	}
	// Recorded before reading, so a change after the read is sent to this client.
	s.hold(c.sess, 0, []fileID{f.id}, nil)
	var n int
	if f.reader != nil {
		reader := call{s: s, sess: c.sess, who: *f.reader}
		errno = reader.look(func() (errno syscall.Errno) {
			n, errno = readAt(f, buf, req.Offset)
			return errno
		})
	} else {
		// In one of the opener's slots, as calls with credentials are: a read may wait too
		// (a file in a FUSE mount whose daemon does not answer).
		release := s.calls.acquire(f.opener.uid)
		n, errno = readAt(f, buf, req.Offset)
		release()
	}
	s.stats.bytesRead.Add(uint64(n))
	return &fspb.ReadReply{Errno: int32(errno), Data: buf[:n]}, nil
}

// readAt fills buf from offset.
func readAt(f *openFile, buf []byte, off int64) (int, syscall.Errno) {
	return transfer(f, buf, off, unix.Pread, unix.Read)
}

// transfer repeats a positioned read or write until buf is done: a short transfer of a
// regular file means its end; other files (devices, pipes) answer what one call gives, and
// those that cannot seek are used without an offset.
func transfer(f *openFile, buf []byte, off int64, positioned func(int, []byte, int64) (int, error), stream func(int, []byte) (int, error)) (int, syscall.Errno) {
	return repeatIO(len(buf), !f.regular, func(total int) (int, error) {
		n, err := positioned(f.fd, buf[total:], off+int64(total))
		if err == syscall.ESPIPE {
			n, err = stream(f.fd, buf[total:])
		}
		return n, err
	})
}

// repeatIO calls step, which moves data from done bytes on, until size bytes are done, a step
// moves none, or after the first when once; an error after some were done ends it quietly.
func repeatIO(size int, once bool, step func(done int) (int, error)) (int, syscall.Errno) {
	total := 0
	for total < size {
		n, err := step(total)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			if total > 0 {
				return total, 0
			}
			return 0, errnoOf(err)
		}
		total += n
		if n == 0 || once {
			break
		}
	}
	return total, 0
}

func (s *Server) Write(ctx context.Context, req *fspb.WriteRequest) (*fspb.WriteReply, error) {
	return s.write(ctx, req, [][]byte{req.Data})
}

// write writes data, the pieces of the request's data in order (its Data is not used).
func (s *Server) write(ctx context.Context, req *fspb.WriteRequest, data [][]byte) (*fspb.WriteReply, error) {
	c, err := s.begin(ctx, req.Session, req.Caller)
	if err != nil {
		return nil, err
	}
	defer c.end()
	f, errno := c.sess.handle(req.Handle)
	if errno != 0 {
		return &fspb.WriteReply{Errno: int32(errno)}, nil
	}
	defer f.release()
	if s.cfg.ReadOnly && f.regular {
		return &fspb.WriteReply{Errno: int32(syscall.EROFS)}, nil
	}
	size := 0
	for _, d := range data {
		size += len(d)
	}
	if req.Offset < 0 || size > maxIO {
		return &fspb.WriteReply{Errno: int32(syscall.EINVAL)}, nil
	}
	if fromWriteback(req.Caller) {
		c.who = writebackIdentity(f.opener)
	}
	c.sess.begin(f.id)
	defer c.sess.end(f.id)
	var n int
	errno = c.change(func() (errno syscall.Errno) {
		n, errno = writevAt(f, data, req.Offset)
		return errno
	})
	s.stats.bytesWritten.Add(uint64(n))
	if n > 0 {
		s.publish(c.sess, attrChange(f.id, true))
	}
	if n >= startWritebackAt && f.regular && f.flags&syscall.O_APPEND == 0 {
		go f.startWriteback(req.Offset, n)
	}
	return &fspb.WriteReply{Errno: int32(errno), Written: uint32(n)}, nil
}

// fromWriteback reports whether a write's caller is none: the kernel's FUSE sends a shared
// writable mapping's pages back with uid, gid and pid 0 (a request with no credentials of its
// own), which the client passes on as it is.
func fromWriteback(c *fspb.Caller) bool {
	return c != nil && c.Uid == 0 && c.Gid == 0 && c.Pid == 0 && c.Capabilities == nil && len(c.Groups) == 0
}

// writebackIdentity is who a written-back page is written as: the file's opener, as locally,
// where the pages were reserved on the disk (quotas, ext4's blocks kept for root) for the
// process that wrote them into the mapping. With CAP_FSETID on top: writes through a mapping
// leave set-user-ID and set-group-ID bits alone, as locally.
func writebackIdentity(opener identity) identity {
	const capFsetid = 4
	if opener.caps != allCaps {
		opener.caps |= 1 << capFsetid
	}
	return opener
}

func writeAt(f *openFile, data []byte, off int64) (int, syscall.Errno) {
	return transfer(f, data, off, unix.Pwrite, unix.Write)
}

// writevAt writes the pieces of data in order from off, as writeAt would write them joined:
// with one pwritev per (up to) maxIovecs pieces for regular files.
func writevAt(f *openFile, data [][]byte, off int64) (int, syscall.Errno) {
	switch {
	case len(data) == 0:
		return 0, 0
	case len(data) == 1:
		return writeAt(f, data[0], off)
	case !f.regular:
		return writeAt(f, bytes.Join(data, nil), off)
	}
	size := 0
	for _, d := range data {
		size += len(d)
	}
	data = slices.Clone(data)
	skipped := 0 // bytes of the pieces dropped from data
	return repeatIO(size, false, func(done int) (int, error) {
		for len(data) > 0 && skipped+len(data[0]) <= done {
			skipped += len(data[0])
			data = data[1:]
		}
		data[0] = data[0][done-skipped:]
		skipped = done
		return unix.Pwritev(f.fd, data[:min(len(data), maxIovecs)], off+int64(done))
	})
}

// startWritebackAt is the size from which a write starts its way to the disk at once. A large
// file is written through the tree in writes of 1 MiB, each waiting for the last: its pages
// then go to the disk while the next ones arrive, rather than all at the writer's fsync (or
// when the kernel's dirty limits are reached). Smaller writes are left to the kernel.
const startWritebackAt = 1 << 20

// startWriteback starts writing a range of the file's pages to the disk, without waiting.
func (f *openFile) startWriteback(off int64, n int) {
	f.use.RLock()
	defer f.use.RUnlock()
	if !f.closed {
		unix.SyncFileRange(f.fd, off, int64(n), unix.SYNC_FILE_RANGE_WRITE)
	}
}

// maxIovecs is the most pieces one pwritev takes (IOV_MAX).
const maxIovecs = 1024

func (s *Server) Release(ctx context.Context, req *fspb.HandleRequest) (*fspb.ErrnoReply, error) {
	c, err := s.begin(ctx, req.Session, nil)
	if err != nil {
		return nil, err
	}
	defer c.end()
	errno := syscall.Errno(0)
	for _, h := range append([]uint64{req.Handle}, req.Handles...) {
		if f := c.sess.removeHandle(h); f != nil {
			f.close()
			c.sess.dropUnusedLocks(f.id)
		} else if h != 0 {
			errno = syscall.EBADF
		}
	}
	return &fspb.ErrnoReply{Errno: int32(errno)}, nil
}

func (s *Server) Fsync(ctx context.Context, req *fspb.FsyncRequest) (*fspb.ErrnoReply, error) {
	c, err := s.begin(ctx, req.Session, nil)
	if err != nil {
		return nil, err
	}
	defer c.end()
	f, errno := c.sess.handle(req.Handle)
	if errno != 0 {
		return &fspb.ErrnoReply{Errno: int32(errno)}, nil
	}
	defer f.release()
	defer s.calls.acquire(f.opener.uid)()
	if req.Datasync {
		err = unix.Fdatasync(f.fd)
	} else {
		err = unix.Fsync(f.fd)
	}
	return &fspb.ErrnoReply{Errno: int32(errnoOf(err))}, nil
}

func (s *Server) Allocate(ctx context.Context, req *fspb.AllocateRequest) (*fspb.ErrnoReply, error) {
	c, err := s.begin(ctx, req.Session, req.Caller)
	if err != nil {
		return nil, err
	}
	defer c.end()
	if s.cfg.ReadOnly {
		return &fspb.ErrnoReply{Errno: int32(syscall.EROFS)}, nil
	}
	f, errno := c.sess.handle(req.Handle)
	if errno != 0 {
		return &fspb.ErrnoReply{Errno: int32(errno)}, nil
	}
	defer f.release()
	if req.Offset > 1<<62 || req.Length > 1<<62 {
		return &fspb.ErrnoReply{Errno: int32(syscall.EINVAL)}, nil
	}
	c.sess.begin(f.id)
	defer c.sess.end(f.id)
	errno = c.change(func() syscall.Errno {
		return errnoOf(unix.Fallocate(f.fd, req.Mode, int64(req.Offset), int64(req.Length)))
	})
	if errno == 0 {
		s.publish(c.sess, attrChange(f.id, true))
	}
	return &fspb.ErrnoReply{Errno: int32(errno)}, nil
}

func (s *Server) Lseek(ctx context.Context, req *fspb.LseekRequest) (*fspb.LseekReply, error) {
	c, err := s.begin(ctx, req.Session, nil)
	if err != nil {
		return nil, err
	}
	defer c.end()
	f, errno := c.sess.handle(req.Handle)
	if errno != 0 {
		return &fspb.LseekReply{Errno: int32(errno)}, nil
	}
	defer f.release()
	if req.Whence != unix.SEEK_DATA && req.Whence != unix.SEEK_HOLE {
		return &fspb.LseekReply{Errno: int32(syscall.EINVAL)}, nil
	}
	defer s.calls.acquire(f.opener.uid)()
	off, err := unix.Seek(f.fd, req.Offset, int(req.Whence))
	return &fspb.LseekReply{Errno: int32(errnoOf(err)), Offset: off}, nil
}

// createdEntry fills the answer to a call that made a directory entry: the new object's
// attributes and its directory's.
func (s *Server) createdEntry(r resolved, reply *fspb.EntryReply) syscall.Errno {
	var st unix.Statx_t
	if errno := statAt(r, &st); errno != 0 {
		return errno
	}
	reply.Attr, _ = s.describe(&st, objectOpener(r), r.object())
	reply.Dir = s.dirAttr(r.dir)
	return 0
}

func (s *Server) Mknod(ctx context.Context, req *fspb.MknodRequest) (*fspb.EntryReply, error) {
	return s.makeEntry(ctx, req.Session, req.Caller, req.Dir, req.Name, req.Mode, req.UnmaskedMode, func(r resolved, mode uint32) error {
		if mode&syscall.S_IFMT == syscall.S_IFDIR {
			return unix.Mkdirat(r.dir, r.name, mode&07777)
		}
		return unix.Mknodat(r.dir, r.name, mode, int(req.Rdev))
	})
}

func (s *Server) Symlink(ctx context.Context, req *fspb.SymlinkRequest) (*fspb.EntryReply, error) {
	if len(req.Target) == 0 || len(req.Target) > maxPathLen || containsNUL(req.Target) {
		c, err := s.begin(ctx, req.Session, req.Caller)
		if err != nil {
			return nil, err
		}
		c.end()
		return &fspb.EntryReply{Errno: int32(syscall.EINVAL)}, nil
	}
	return s.makeEntry(ctx, req.Session, req.Caller, req.Dir, req.Name, syscall.S_IFLNK, nil, func(r resolved, _ uint32) error {
		return unix.Symlinkat(string(req.Target), r.dir, r.name)
	})
}

func containsNUL(b []byte) bool {
	for _, c := range b {
		if c == 0 {
			return true
		}
	}
	return false
}

// makeEntry serves the calls that create a directory entry without opening it.
func (s *Server) makeEntry(ctx context.Context, sessionID []byte, caller *fspb.Caller, dir *fspb.NodeRef, name []byte, mode uint32, unmasked *uint32, create func(r resolved, mode uint32) error) (*fspb.EntryReply, error) {
	c, err := s.begin(ctx, sessionID, caller)
	if err != nil {
		return nil, err
	}
	defer c.end()
	path, errno := s.entryCall(dir, name)
	if errno != 0 {
		return &fspb.EntryReply{Errno: int32(errno)}, nil
	}
	expected := idFromPB(dir.Id)
	c.sess.begin(expected)
	defer c.sess.end(expected)
	reply := &fspb.EntryReply{}
	var dirID fileID
	var watched bool
	errno = c.change(func() syscall.Errno {
		var r resolved
		var errno syscall.Errno
		r, dirID, watched, errno = s.resolveEntry(path, dir.Id)
		if errno != 0 {
			return errno
		}
		defer r.close()
		mode := mode
		inherits := false
		if mode&syscall.S_IFMT != syscall.S_IFLNK {
			mode, inherits = createMode(r.dir, mode, unmasked)
		}
		if err := create(r, mode); err != nil {
			return errnoOf(err)
		}
		if mode&syscall.S_IFMT != syscall.S_IFLNK && !inherits && mode&s.creds.umask&0o777 != 0 {
			// The agent's umask took bits the client's kernel meant to keep.
			restoreUmasked(r, mode, mode&s.creds.umask&0o777, c.who.uid)
		}
		if errno := s.createdEntry(r, reply); errno != 0 {
			return errno
		}
		if mode&syscall.S_IFMT == syscall.S_IFDIR {
			reply.EmptyDir = s.emptyAndWatched(r, idFromPB(reply.Attr.Id))
		}
		return 0
	})
	if dirID != (fileID{}) && errno == 0 {
		s.publish(c.sess, entryChange(dirID, string(name)))
	}
	reply.Errno = int32(errno)
	if errno == 0 {
		stable := c.finish(s.cache.now(), watched, []*fspb.Attr{reply.Attr, reply.Dir}, dirID)
		reply.EmptyDir = reply.EmptyDir && stable
	}
	return reply, nil
}

// restoreUmasked gives the object just made at r (type and mode as asked) back the permission
// bits the agent's umask took from it. It only adds them to the mode the object has: a
// directory made in a set-group-ID directory inherits the bit, which a chmod by its maker
// would drop when they are not in its group (the kernel clears it then), so the chmod is made
// as the agent (CAP_FSETID). That is safe only on the caller's own new object: one found
// there owned by someone else, or of another type (swapped in meanwhile), is left alone.
func restoreUmasked(r resolved, mode, bits, uid uint32) {
	fd, errno := openObject(r)
	if errno != 0 {
		return
	}
	defer unix.Close(fd)
	var st unix.Statx_t
	want := mode & syscall.S_IFMT
	if want == 0 {
		want = syscall.S_IFREG // mknod's default
	}
	if statFD(fd, &st) != 0 || st.Uid != uid || uint32(st.Mode)&syscall.S_IFMT != want {
		return
	}
	done := make(chan struct{})
	// A new goroutine runs on an ordinary thread, with the agent's credentials, not the user's.
	go func() {
		defer close(done)
		unix.Fchmodat(unix.AT_FDCWD, procFD(fd), uint32(st.Mode)&07777|bits, 0)
	}()
	<-done
}

// createMode is the mode to create an object with in the directory dir: masked (the caller's
// umask applied), unless the directory has a default ACL, which then combines with the mode as
// asked, unmasked (if the client sent it), as locally. inherits reports the default ACL: the
// owner's file system ignores the agent's umask then, and a chmod would undo the ACL's mask.
func createMode(dir int, masked uint32, unmasked *uint32) (mode uint32, inherits bool) {
	_, err := unix.Getxattr(procFD(dir), xattrACLDefault, nil)
	if err != nil {
		return masked, false
	}
	if unmasked != nil {
		return masked&syscall.S_IFMT | *unmasked&07777, true
	}
	return masked, true
}

// emptyAndWatched starts watching a directory just made and reports whether it is still
// empty, so that the client may answer lookups in it without asking.
func (s *Server) emptyAndWatched(r resolved, id fileID) bool {
	fd, err := unix.Openat(r.dir, r.name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	var st unix.Statx_t
	if statFD(fd, &st) != 0 || statxID(&st) != id || !s.watchDir(fd, id) {
		return false
	}
	buf := make([]byte, 4096)
	n, err := unix.Getdents(fd, buf)
	if err != nil {
		return false
	}
	empty := true
	parseDirents(buf[:n], func(_ uint64, _ int64, _ uint8, name []byte) bool {
		if string(name) != "." && string(name) != ".." {
			empty = false
		}
		return empty
	})
	return empty
}

func (s *Server) Link(ctx context.Context, req *fspb.LinkRequest) (*fspb.EntryReply, error) {
	c, err := s.begin(ctx, req.Session, req.Caller)
	if err != nil {
		return nil, err
	}
	defer c.end()
	targetPath, errno := refPath(req.Target)
	path, errno2 := s.entryCall(req.Dir, req.Name)
	if errno == 0 {
		errno = errno2
	}
	if errno != 0 {
		return &fspb.EntryReply{Errno: int32(errno)}, nil
	}
	expected := idFromPB(req.Dir.Id)
	c.sess.begin(expected, idFromPB(req.Target.Id))
	defer c.sess.end(expected, idFromPB(req.Target.Id))
	reply := &fspb.EntryReply{}
	var dirID, targetID fileID
	var watched bool
	errno = c.change(func() syscall.Errno {
		t, errno := s.resolve(targetPath)
		if errno != 0 {
			return errno
		}
		defer t.close()
		if !t.exported {
			return syscall.EACCES
		}
		tfd, errno := openObject(t)
		if errno != 0 {
			return errno
		}
		defer unix.Close(tfd)
		var st unix.Statx_t
		if errno := statFD(tfd, &st); errno != 0 {
			return errno
		}
		if !matches(&st, req.Target.Id) {
			return syscall.ESTALE
		}
		targetID = statxID(&st)
		var r resolved
		r, dirID, watched, errno = s.resolveEntry(path, req.Dir.Id)
		if errno != 0 {
			return errno
		}
		defer r.close()
		if err := unix.Linkat(unix.AT_FDCWD, procFD(tfd), r.dir, r.name, unix.AT_SYMLINK_FOLLOW); err != nil {
			return errnoOf(err)
		}
		return s.createdEntry(r, reply)
	})
	if errno == 0 {
		s.publish(c.sess, entryChange(dirID, string(req.Name)), attrChange(targetID, false))
	}
	reply.Errno = int32(errno)
	if errno == 0 {
		c.finish(s.cache.now(), watched, []*fspb.Attr{reply.Attr, reply.Dir}, dirID)
	}
	return reply, nil
}

func (s *Server) Remove(ctx context.Context, req *fspb.RemoveRequest) (*fspb.ChangeReply, error) {
	c, err := s.begin(ctx, req.Session, req.Caller)
	if err != nil {
		return nil, err
	}
	defer c.end()
	path, errno := s.entryCall(req.Dir, req.Name)
	if errno != 0 {
		return &fspb.ChangeReply{Errno: int32(errno)}, nil
	}
	expected := idFromPB(req.Dir.Id)
	c.sess.begin(expected)
	defer c.sess.end(expected)
	var dirID, childID fileID
	var watched bool
	reply := &fspb.ChangeReply{}
	errno = c.change(func() syscall.Errno {
		var r resolved
		var errno syscall.Errno
		r, dirID, watched, errno = s.resolveEntry(path, req.Dir.Id)
		if errno != 0 {
			return errno
		}
		defer r.close()
		var st unix.Statx_t
		if statAt(r, &st) == 0 {
			childID = statxID(&st)
		}
		flags := 0
		if req.DirEntry {
			flags = unix.AT_REMOVEDIR
		}
		if err := unix.Unlinkat(r.dir, r.name, flags); err != nil {
			return errnoOf(err)
		}
		reply.Dir = s.dirAttr(r.dir)
		return 0
	})
	if errno != 0 {
		return &fspb.ChangeReply{Errno: int32(errno)}, nil
	}
	removed := entryChange(dirID, string(req.Name))
	removed.item.Gone = true
	s.publish(c.sess, removed, attrChange(childID, false))
	c.finish(s.cache.now(), watched, []*fspb.Attr{reply.Dir}, dirID)
	return reply, nil
}

func (s *Server) Rename(ctx context.Context, req *fspb.RenameRequest) (*fspb.ChangeReply, error) {
	c, err := s.begin(ctx, req.Session, req.Caller)
	if err != nil {
		return nil, err
	}
	defer c.end()
	from, errno := s.entryCall(req.Dir, req.Name)
	to, errno2 := s.entryCall(req.NewDir, req.NewName)
	if errno == 0 {
		errno = errno2
	}
	if errno != 0 {
		return &fspb.ChangeReply{Errno: int32(errno)}, nil
	}
	busy := []fileID{idFromPB(req.Dir.Id), idFromPB(req.NewDir.Id)}
	c.sess.begin(busy...)
	defer c.sess.end(busy...)
	queued := s.renames.begin()
	defer queued()
	var oldDir, newDir, moved, replaced fileID
	var watched, newWatched bool
	reply := &fspb.ChangeReply{}
	errno = c.change(func() syscall.Errno {
		var src, dst resolved
		var errno syscall.Errno
		src, oldDir, watched, errno = s.resolveEntry(from, req.Dir.Id)
		if errno != 0 {
			return errno
		}
		defer src.close()
		dst, newDir, newWatched, errno = s.resolveEntry(to, req.NewDir.Id)
		if errno != 0 {
			return errno
		}
		defer dst.close()
		var st unix.Statx_t
		if statAt(src, &st) == 0 {
			moved = statxID(&st)
		}
		if statAt(dst, &st) == 0 {
			replaced = statxID(&st)
		}
		if err := unix.Renameat2(src.dir, src.name, dst.dir, dst.name, uint(req.Flags)); err != nil {
			return errnoOf(err)
		}
		reply.Dir, reply.NewDir = s.dirAttr(src.dir), s.dirAttr(dst.dir)
		return 0
	})
	if errno != 0 {
		return &fspb.ChangeReply{Errno: int32(errno)}, nil
	}
	gone := entryChange(oldDir, string(req.Name))
	// Renaming a name over another link of the same file changes nothing: both names stay.
	noop := moved == replaced
	gone.item.Gone = req.Flags&unix.RENAME_EXCHANGE == 0 && !noop
	switch {
	case noop:
	case req.Flags&^unix.RENAME_NOREPLACE == 0, req.Flags == unix.RENAME_EXCHANGE:
		// A move (or an exchange, two moves): clients that know both directories move
		// their nodes, so that a process working inside one (or below) follows it, as
		// locally. A whiteout leaves a new object in the old place: clients only drop
		// the name.
		gone.item.MovedTo, gone.item.MovedName = newDir.pb(), req.NewName
		gone.item.Exchanged = req.Flags == unix.RENAME_EXCHANGE
	}
	arrived := entryChange(newDir, string(req.NewName))
	arrived.item.Gone = replaced != (fileID{}) && req.Flags&unix.RENAME_EXCHANGE == 0 && !noop
	wait := s.queue(c.sess, gone, arrived,
		attrChange(moved, false), attrChange(replaced, false))
	queued()
	wait()
	c.finish(s.cache.now(), watched && newWatched, []*fspb.Attr{reply.Dir, reply.NewDir}, oldDir, newDir)
	return reply, nil
}

func (s *Server) Statfs(ctx context.Context, req *fspb.NodeRequest) (*fspb.StatfsReply, error) {
	c, err := s.begin(ctx, req.Session, req.Caller)
	if err != nil {
		return nil, err
	}
	defer c.end()
	path, errno := refPath(req.Node)
	if errno != 0 {
		return &fspb.StatfsReply{Errno: int32(errno)}, nil
	}
	reply := &fspb.StatfsReply{}
	errno = c.look(func() syscall.Errno {
		r, errno := s.resolve(path)
		if errno != 0 {
			return errno
		}
		defer r.close()
		fd, errno := openObject(r)
		if errno != 0 {
			return errno
		}
		defer unix.Close(fd)
		var sfs unix.Statfs_t
		if err := unix.Fstatfs(fd, &sfs); err != nil {
			return errnoOf(err)
		}
		reply.Blocks, reply.Bfree, reply.Bavail = sfs.Blocks, sfs.Bfree, sfs.Bavail
		reply.Files, reply.Ffree = sfs.Files, sfs.Ffree
		reply.Bsize, reply.Namelen, reply.Frsize = uint32(sfs.Bsize), uint32(sfs.Namelen), uint32(sfs.Frsize)
		return 0
	})
	reply.Errno = int32(errno)
	return reply, nil
}

func (s *Server) Xattr(ctx context.Context, req *fspb.XattrRequest) (*fspb.XattrReply, error) {
	c, err := s.begin(ctx, req.Session, req.Caller)
	if err != nil {
		return nil, err
	}
	defer c.end()
	path, errno := refPath(req.Node)
	changes := req.Op == fspb.XattrRequest_SET || req.Op == fspb.XattrRequest_REMOVE
	if errno == 0 && req.Op != fspb.XattrRequest_LIST {
		if len(req.Name) == 0 || len(req.Name) > maxNameLen || containsNUL(req.Name) {
			errno = syscall.EINVAL
		}
	}
	if errno == 0 && changes && s.cfg.ReadOnly {
		errno = syscall.EROFS
	}
	if errno == 0 && len(req.Value) > maxXattrSize {
		errno = syscall.E2BIG
	}
	if errno != 0 {
		return &fspb.XattrReply{Errno: int32(errno)}, nil
	}
	size := min(int(req.Size), maxXattrSize)
	reply := &fspb.XattrReply{}
	var id fileID
	run := c.look
	if changes {
		run = c.change
	}
	errno = run(func() syscall.Errno {
		r, errno := s.resolve(path)
		if errno != 0 {
			return errno
		}
		defer r.close()
		if changes && !r.exported {
			return syscall.EACCES
		}
		fd, errno := openObject(r)
		if errno != 0 {
			return errno
		}
		defer unix.Close(fd)
		var st unix.Statx_t
		if errno := statFD(fd, &st); errno != 0 {
			return errno
		}
		if !matches(&st, req.Node.Id) {
			return syscall.ESTALE
		}
		id = statxID(&st)
		p := procFD(fd)
		switch req.Op {
		case fspb.XattrRequest_GET, fspb.XattrRequest_LIST:
			if req.Op == fspb.XattrRequest_LIST {
				names, errno := listShownXattrs(p)
				if errno != 0 {
					return errno
				}
				reply.Size = uint32(len(names))
				if size > 0 {
					if len(names) > size {
						return syscall.ERANGE
					}
					reply.Value = names
				}
				return 0
			}
			var buf []byte
			if size > 0 {
				buf = make([]byte, size)
			}
			n, err := unix.Getxattr(p, string(req.Name), buf)
			if err != nil {
				return errnoOf(err)
			}
			reply.Size = uint32(n)
			if size > 0 {
				reply.Value = buf[:n]
			}
			return 0
		case fspb.XattrRequest_SET:
			return errnoOf(unix.Setxattr(p, string(req.Name), req.Value, int(req.Flags)))
		case fspb.XattrRequest_REMOVE:
			return errnoOf(unix.Removexattr(p, string(req.Name)))
		}
		return syscall.EINVAL
	})
	if errno == 0 && changes {
		s.publish(c.sess, attrChange(id, false))
	}
	reply.Errno = int32(errno)
	return reply, nil
}

func (s *Server) Lock(ctx context.Context, req *fspb.LockRequest) (*fspb.LockReply, error) {
	c, err := s.begin(ctx, req.Session, nil)
	if err != nil {
		return nil, err
	}
	defer c.end()
	reply, errno := s.lock(c.sess, req)
	if errno != 0 {
		return &fspb.LockReply{Errno: int32(errno)}, nil
	}
	return reply, nil
}

// listShownXattrs lists the extended attributes of path that the tree shows: all but
// security.*, which clients answer themselves (see docs/fs.md).
func listShownXattrs(path string) ([]byte, syscall.Errno) {
	for {
		size, err := unix.Listxattr(path, nil)
		if err != nil {
			return nil, errnoOf(err)
		}
		buf := make([]byte, size)
		n, err := unix.Listxattr(path, buf)
		if errors.Is(err, unix.ERANGE) {
			continue // the list grew in between
		}
		if err != nil {
			return nil, errnoOf(err)
		}
		return filterXattrNames(buf[:n]), 0
	}
}

// filterXattrNames drops security.* from a NUL-separated list of names.
func filterXattrNames(list []byte) []byte {
	out := list[:0:0]
	for name := range bytes.SplitSeq(list, []byte{0}) {
		if len(name) == 0 || bytes.HasPrefix(name, []byte("security.")) {
			continue
		}
		out = append(append(out, name...), 0)
	}
	return out
}
