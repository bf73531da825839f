package fs

import (
	"bytes"
	"context"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ssi-cluster/ssi/internal/fs/fspb"
)

// rootNode is the top of the mount: one directory per node of the cluster.
type rootNode struct {
	fs.Inode
	m *Mounted
}

var (
	_ fs.NodeLookuper  = (*rootNode)(nil)
	_ fs.NodeReaddirer = (*rootNode)(nil)
	_ fs.NodeGetattrer = (*rootNode)(nil)
	_ fs.NodeStatfser  = (*rootNode)(nil)
)

func (r *rootNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if len(name) > maxNameLen {
		// The kernel lets FUSE names up to 1024 bytes through; local file systems refuse them.
		return nil, syscall.ENAMETOOLONG
	}
	if validName([]byte(name)) != 0 || !r.m.knownNode(name) {
		// Nodes join: do not remember an absence for long.
		out.SetEntryTimeout(time.Second)
		return nil, syscall.ENOENT
	}
	p := r.m.peer(name)
	in := p.root(ctx, r)
	// The owner's real attributes come with the first getattr; these only make the entry.
	out.Attr = fuse.Attr{Mode: syscall.S_IFDIR | 0o555, Nlink: 2, Ino: in.StableAttr().Ino}
	out.SetEntryTimeout(cacheTTL)
	return in, 0
}

func (r *rootNode) nodeNames() []string {
	names := slices.Clone(r.m.cfg.Nodes.Names())
	if r.m.cfg.LocalNode != "" && !slices.Contains(names, r.m.cfg.LocalNode) {
		names = append(names, r.m.cfg.LocalNode)
	}
	sort.Strings(names)
	return slices.Compact(names)
}

func (r *rootNode) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	var entries []fuse.DirEntry
	for _, name := range r.nodeNames() {
		if validName([]byte(name)) == 0 {
			entries = append(entries, fuse.DirEntry{Name: name, Mode: syscall.S_IFDIR, Ino: nodeRootIno(name)})
		}
	}
	return fs.NewListDirStream(entries), 0
}

func (r *rootNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | 0o555
	out.Nlink = 2
	out.SetTimeout(time.Second)
	return 0
}

// Statx answers for the top of the mount as Getattr does: left unanswered (ENOSYS), the
// kernel would stop asking any object of the mount for its birth time.
func (r *rootNode) Statx(ctx context.Context, f fs.FileHandle, flags uint32, mask uint32, out *fuse.StatxOut) syscall.Errno {
	var a fuse.AttrOut
	r.Getattr(ctx, f, &a)
	fillStatx(&out.Statx, &a.Attr)
	out.SetTimeout(a.Timeout())
	return 0
}

func (r *rootNode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	*out = fuse.StatfsOut{Bsize: 4096, Frsize: 4096, NameLen: maxNameLen}
	return 0
}

// The top of the mount is made of the cluster's nodes, not of files: every change to it
// fails with EROFS, as on a read-only directory. Without these go-fuse answers ENOTSUP for
// most and, for rmdir and unlink, success without doing anything, so "rmdir /ssi/n1" would
// seem to have removed a node's tree.
var (
	_ fs.NodeMkdirer       = (*rootNode)(nil)
	_ fs.NodeCreater       = (*rootNode)(nil)
	_ fs.NodeMknoder       = (*rootNode)(nil)
	_ fs.NodeSymlinker     = (*rootNode)(nil)
	_ fs.NodeLinker        = (*rootNode)(nil)
	_ fs.NodeUnlinker      = (*rootNode)(nil)
	_ fs.NodeRmdirer       = (*rootNode)(nil)
	_ fs.NodeRenamer       = (*rootNode)(nil)
	_ fs.NodeSetattrer     = (*rootNode)(nil)
	_ fs.NodeSetxattrer    = (*rootNode)(nil)
	_ fs.NodeRemovexattrer = (*rootNode)(nil)
)

func (r *rootNode) Mkdir(context.Context, string, uint32, *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (r *rootNode) Create(context.Context, string, uint32, uint32, *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EROFS
}

func (r *rootNode) Mknod(context.Context, string, uint32, uint32, *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (r *rootNode) Symlink(context.Context, string, string, *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (r *rootNode) Link(context.Context, fs.InodeEmbedder, string, *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (r *rootNode) Unlink(context.Context, string) syscall.Errno { return syscall.EROFS }

func (r *rootNode) Rmdir(context.Context, string) syscall.Errno { return syscall.EROFS }

func (r *rootNode) Rename(context.Context, string, fs.InodeEmbedder, string, uint32) syscall.Errno {
	return syscall.EROFS
}

func (r *rootNode) Setattr(context.Context, fs.FileHandle, *fuse.SetAttrIn, *fuse.AttrOut) syscall.Errno {
	return syscall.EROFS
}

func (r *rootNode) Setxattr(context.Context, string, []byte, uint32) syscall.Errno {
	return syscall.EROFS
}

func (r *rootNode) Removexattr(context.Context, string) syscall.Errno { return syscall.EROFS }

func nodeRootIno(name string) uint64 { return inoOf(name, fileID{}) }

// root returns the directory /<mount>/<node>, made once.
func (p *peer) root(ctx context.Context, parent *rootNode) *fs.Inode {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.rootInode == nil {
		n := &node{p: p, isRoot: true}
		p.rootInode = parent.NewPersistentInode(ctx, n, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: nodeRootIno(p.name)})
	}
	return p.rootInode
}

// node is a file, directory or other object on an owner.
type node struct {
	fs.Inode
	p      *peer
	isRoot bool // the owner's root directory

	mu     sync.Mutex
	id     fileID // on the owner; learned on first getattr for a node root
	direct bool   // device or pseudo file: never cached
	device bool
	// listWatched: the owner said its last listing of this directory would be invalidated on
	// change, so the kernel may cache listings.
	listWatched bool
	mode        uint32
	size        int64
	mtime       [2]int64

	// attr is the owner's last answer, given again to the kernel while nothing changed: the
	// kernel drops its own copy after every change made through it (a directory's after each
	// create in it), and the next path walk would otherwise ask the owner again.
	attr      *fspb.Attr
	attrEpoch uint64
	attrGen   uint64
	attrUntil time.Time

	// posixLocks are the POSIX lock ranges granted on this file to each lock owner, and
	// lostLocks the lock owners whose ranges could not be reclaimed after the owner restarted
	// (reclaim.go).
	posixLocks map[uint64]heldSpans
	lostLocks  map[uint64]bool
	// unsentUnlocks are the lock owners whose unlock of the whole file (a close) did not
	// reach the owner, with the handle it was made through: sent again until it does, and
	// before any later lock request of that lock owner on the file (fileHandle.unsentUnlock).
	unsentUnlocks map[uint64]*fileHandle

	// listing is the directory's every name while the client knows it whole (nil when not): a
	// lookup of any other name fails here without asking the owner.
	listing      map[string]struct{}
	listingEpoch uint64
	listingGen   uint64

	// acls are the POSIX ACLs the owner said the object has (aclAccess, aclDefault), while
	// aclsKnown and no invalidation came since aclsGen.
	acls      uint32
	aclsKnown bool
	aclsGen   uint64

	// gen changes on every invalidation: an answer requested before it must not be cached.
	gen atomic.Uint64
	// lookups counts lookups in flight in this directory (see notifyEntry).
	lookups atomic.Int32
	// busy counts changes of this node from here in flight (see peer.apply).
	busy atomic.Int32
}

var (
	_ fs.NodeOnAdder        = (*node)(nil)
	_ fs.NodeOnForgetter    = (*node)(nil)
	_ fs.NodeLookuper       = (*node)(nil)
	_ fs.NodeGetattrer      = (*node)(nil)
	_ fs.NodeSetattrer      = (*node)(nil)
	_ fs.NodeReadlinker     = (*node)(nil)
	_ fs.NodeOpener         = (*node)(nil)
	_ fs.NodeCreater        = (*node)(nil)
	_ fs.NodeMkdirer        = (*node)(nil)
	_ fs.NodeMknoder        = (*node)(nil)
	_ fs.NodeSymlinker      = (*node)(nil)
	_ fs.NodeLinker         = (*node)(nil)
	_ fs.NodeUnlinker       = (*node)(nil)
	_ fs.NodeRmdirer        = (*node)(nil)
	_ fs.NodeRenamer        = (*node)(nil)
	_ fs.NodeStatfser       = (*node)(nil)
	_ fs.NodeGetxattrer     = (*node)(nil)
	_ fs.NodeSetxattrer     = (*node)(nil)
	_ fs.NodeListxattrer    = (*node)(nil)
	_ fs.NodeRemovexattrer  = (*node)(nil)
	_ fs.NodeOpendirHandler = (*node)(nil)
	_ fs.NodeFsyncer        = (*node)(nil)
)

func (n *node) identity() fileID {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.id
}

func (n *node) OnAdd(ctx context.Context) { n.p.m.register(n) }

func (n *node) OnForget() { n.p.m.unregister(n) }

// changed is called before the kernel is told to drop what it caches about n. Whether its
// listing is watched is learned again too: after a flush the owner may be a new process.
func (n *node) changed() {
	n.gen.Add(1)
	n.mu.Lock()
	n.listWatched = false
	n.mu.Unlock()
}

// notifyEntry drops the kernel's entry for name in this directory. A lookup that was in flight
// may still install the old answer after this: tell the kernel once more a little later.
func (n *node) notifyEntry(name string) {
	n.NotifyEntry(name)
	if n.lookups.Load() > 0 {
		time.AfterFunc(20*time.Millisecond, func() { n.NotifyEntry(name) })
	}
}

// remember keeps what the client needs from the owner's attributes.
func (n *node) remember(a *fspb.Attr) {
	n.mu.Lock()
	learned := n.isRoot && n.id == (fileID{}) && a.Id != nil
	if learned {
		n.id = idFromPB(a.Id)
	}
	n.direct = a.Direct
	n.device = isDevice(a.Mode)
	n.mode = a.Mode
	if a.ListingWatched {
		n.listWatched = true
	}
	n.size = a.Size
	n.mtime = [2]int64{a.MtimeSec, int64(a.MtimeNsec)}
	n.mu.Unlock()
	if learned {
		n.p.m.register(n)
	}
}

// snapshot is what a request started from: its answer may be cached only if none of it
// changed before the answer arrived.
type snapshot struct {
	epoch uint64 // the owner connection's
	gen   uint64 // the node's invalidations
	seq   uint64 // the owner's invalidations, for objects the client has no node for yet
}

func (n *node) snapshot() snapshot {
	return snapshot{epoch: n.p.epoch.Load(), gen: n.gen.Load(), seq: n.p.invalSeq.Load()}
}

// cacheAttr keeps a for Getattr if the owner keeps it coherent and nothing changed since s.
func (n *node) cacheAttr(a *fspb.Attr, s snapshot) {
	if a == nil {
		return
	}
	n.remember(a)
	n.learnACLs(a, s.gen)
	ok := n.ttl(a, s) > 0
	n.mu.Lock()
	defer n.mu.Unlock()
	if !ok {
		n.attr = nil
		return
	}
	n.attr, n.attrEpoch, n.attrGen, n.attrUntil = a, s.epoch, s.gen, time.Now().Add(cacheTTL)
}

func (n *node) cachedAttr() *fspb.Attr {
	n.mu.Lock()
	a, epoch, gen, until := n.attr, n.attrEpoch, n.attrGen, n.attrUntil
	n.mu.Unlock()
	if a == nil || n.gen.Load() != gen || !n.p.cacheable(epoch) || time.Now().After(until) {
		return nil
	}
	return a
}

// dropAttr forgets the cached attributes after a change made from here.
func (n *node) dropAttr() {
	n.mu.Lock()
	n.attr = nil
	n.aclsKnown = false
	n.mu.Unlock()
}

// learnACLs keeps which ACLs the owner said the object has, in an answer to a request that
// started at the node's invalidation count gen.
func (n *node) learnACLs(a *fspb.Attr, gen uint64) {
	if a == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.acls, n.aclsKnown, n.aclsGen = a.GetAcl(), a.Acl != nil, gen
}

// lacksACL reports whether the object is known to have no ACL of the kind the xattr name
// holds, so that the kernel's question needs no answer from the owner.
func (n *node) lacksACL(name string) bool {
	bit := uint32(aclAccess)
	switch name {
	case xattrACLAccess:
	case xattrACLDefault:
		bit = aclDefault
	default:
		return false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.aclsKnown && n.aclsGen == n.gen.Load() && n.acls&bit == 0
}

// dropChildAttr forgets the cached attributes of the child name, if known.
func (n *node) dropChildAttr(name string) {
	if ch := n.GetChild(name); ch != nil {
		if c, ok := ch.Operations().(*node); ok {
			c.dropAttr()
		}
	}
}

// path is the object's path on its owner, or false if it is no longer in the tree (removed
// while open).
func (n *node) path() ([]byte, bool) {
	var names []string
	in := n.EmbeddedInode()
	for {
		cur, ok := in.Operations().(*node)
		if !ok {
			return nil, false
		}
		if cur.isRoot {
			break
		}
		name, parent := in.Parent()
		if parent == nil {
			return nil, false
		}
		names = append(names, name)
		in = parent
	}
	slices.Reverse(names)
	return []byte(strings.Join(names, "/")), true
}

// ref names n to its owner: by path, checked against its identity, or by an open handle.
func (n *node) ref(f fs.FileHandle) (*fspb.NodeRef, syscall.Errno) {
	n.p.m.claim(n)
	r := &fspb.NodeRef{}
	if fh, ok := f.(*fileHandle); ok {
		r.Handle = fh.handle()
	}
	path, ok := n.path()
	if !ok && r.Handle == 0 {
		return nil, syscall.ESTALE
	}
	r.Path = path
	if id := n.identity(); id != (fileID{}) {
		r.Id = id.pb()
	}
	return r, 0
}

// call makes one bounded request to n's owner.
func (n *node) call(ctx context.Context, fn func(ctx context.Context, api filesAPI) error) syscall.Errno {
	return n.p.call(ctx, true, fn)
}

// changing marks the nodes as being changed from here until the returned function is called.
func changing(nodes ...*node) func() {
	for _, n := range nodes {
		n.busy.Add(1)
	}
	return func() {
		for _, n := range nodes {
			n.busy.Add(-1)
		}
	}
}

func (p *peer) call(ctx context.Context, bounded bool, fn func(ctx context.Context, api filesAPI) error) syscall.Errno {
	p.m.stats.ops.Add(1)
	if lv, ok := p.m.cfg.Nodes.(Liveness); ok && !p.local && lv.Gone(p.name) {
		p.m.stats.failures.Add(1)
		return syscall.ENOTCONN
	}
	p.awaitFirstTry(ctx)
	if !p.local && !p.mayCall() {
		p.m.stats.failures.Add(1)
		return syscall.EIO
	}
	api, err := p.api(bounded)
	if err != nil {
		p.m.stats.failures.Add(1)
		return syscall.ENOTCONN
	}
	cctx, cancel := p.callCtx(ctx, bounded)
	defer cancel()
	sent := time.Now()
	if err := fn(cctx, api); err != nil {
		if bounded && !p.local && status.Code(err) == codes.DeadlineExceeded {
			p.timedOut(sent, api)
		}
		return p.failure(ctx, bounded, err)
	}
	p.heardFrom()
	return 0
}

func (n *node) caller(ctx context.Context) *fspb.Caller { return n.p.m.groups.caller(ctx) }

// clientType is how an owner's file type shows in the mount. Devices show as regular files, so
// that the kernel sends their I/O here (and so to the owner) instead of opening a local device.
func clientType(mode uint32) uint32 {
	if isDevice(mode) {
		return syscall.S_IFREG
	}
	return mode & syscall.S_IFMT
}

func fillAttr(out *fuse.Attr, a *fspb.Attr, ino uint64) {
	*out = fuse.Attr{
		Ino:       ino,
		Size:      uint64(max(a.Size, 0)),
		Blocks:    uint64(max(a.Blocks, 0)),
		Atime:     uint64(max(a.AtimeSec, 0)),
		Atimensec: a.AtimeNsec,
		Mtime:     uint64(max(a.MtimeSec, 0)),
		Mtimensec: a.MtimeNsec,
		Ctime:     uint64(max(a.CtimeSec, 0)),
		Ctimensec: a.CtimeNsec,
		Mode:      clientType(a.Mode) | a.Mode&07777,
		Nlink:     a.Nlink,
		Owner:     fuse.Owner{Uid: a.Uid, Gid: a.Gid},
		Blksize:   a.Blksize,
	}
	if isDevice(a.Mode) {
		out.Size, out.Blocks = 0, 0
	} else {
		out.Rdev = uint32(a.Rdev)
	}
}

// ttl is how long the kernel may cache an answer: long if the owner keeps it coherent and
// nothing changed while it was computed, not at all otherwise.
func (n *node) ttl(a *fspb.Attr, s snapshot) time.Duration {
	if a != nil && !a.Watched {
		return 0
	}
	if !n.p.cacheable(s.epoch) || n.gen.Load() != s.gen {
		return 0
	}
	return cacheTTL
}

// child makes (or finds) the inode for an object the owner described in answer to a request
// that started from s.
func (n *node) child(ctx context.Context, a *fspb.Attr, out *fuse.EntryOut, s snapshot) *fs.Inode {
	id := idFromPB(a.Id)
	ino := inoOf(n.p.name, id)
	ttl := n.ttl(a, s)
	ch := &node{p: n.p, id: id}
	ch.remember(a)
	ch.learnACLs(a, 0)
	in := n.NewInode(ctx, ch, fs.StableAttr{Mode: clientType(a.Mode), Ino: ino})
	if n.p.invalidatedSince(id, s.seq) {
		// Changed before the client had a node to tell.
		if c, ok := in.Operations().(*node); ok {
			c.changed()
		}
		ttl = 0
	}
	fillAttr(&out.Attr, a, ino)
	out.SetEntryTimeout(ttl)
	out.SetAttrTimeout(ttl)
	return in
}

// maxListing bounds the directories whose whole listing a client keeps to answer lookups.
const maxListing = 10000

// setListing records the directory's complete listing as of s.
func (n *node) setListing(names map[string]struct{}, s snapshot) {
	if len(names) > maxListing {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.listing, n.listingEpoch, n.listingGen = names, s.epoch, s.gen
}

// knownAbsent reports whether the client knows, without asking, that name is not in n.
func (n *node) knownAbsent(name string) bool {
	n.mu.Lock()
	listing, epoch, gen := n.listing, n.listingEpoch, n.listingGen
	_, present := listing[name]
	n.mu.Unlock()
	return listing != nil && !present && n.gen.Load() == gen && n.p.cacheable(epoch)
}

// listed updates the known listing after a change made from here; with errno set, after one
// that failed, whose effect may be unknown.
func (n *node) listed(name string, present bool, errno syscall.Errno) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.listing == nil {
		return
	}
	switch {
	case errno == 0 && present:
		if len(n.listing) >= maxListing {
			n.listing = nil
			return
		}
		n.listing[name] = struct{}{}
	case errno == 0:
		delete(n.listing, name)
	case errno == syscall.EEXIST && !present, errno == syscall.ENOENT && present:
		// The failure agrees with what was known.
	default:
		n.listing = nil
	}
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if len(name) > maxNameLen {
		// Before the known listing, which would answer ENOENT: no such name can exist.
		return nil, syscall.ENAMETOOLONG
	}
	if n.knownAbsent(name) {
		out.SetEntryTimeout(cacheTTL)
		return nil, syscall.ENOENT
	}
	n.lookups.Add(1)
	defer n.lookups.Add(-1)
	var reply *fspb.EntryReply
	var snap snapshot
	for attempt := 0; ; attempt++ {
		moves := n.p.m.moves.Load()
		dir, errno := n.ref(nil)
		if errno != 0 {
			return nil, errno
		}
		snap = n.snapshot()
		errno = n.call(ctx, func(rpc context.Context, api filesAPI) (err error) {
			reply, err = api.Lookup(rpc, &fspb.LookupRequest{Session: n.p.m.session, Caller: n.caller(ctx), Dir: dir, Name: []byte(name)})
			return err
		})
		if errno != 0 {
			return nil, errno
		}
		// Another node renamed the directory (or one above it) while the request was on
		// its way by the old path: the owner's invalidation moves the node, once applied
		// here, so the lookup is made again by the new path, as the kernel would find the
		// name locally. A few times at most, should renames go on.
		n.p.awaitApplied(ctx, reply.WatchSeq)
		if attempt == 3 || !n.movedSince(dir, reply.Errno, moves) {
			break
		}
	}
	if reply.Errno != 0 {
		if reply.Errno == int32(syscall.ENOENT) && reply.Cacheable {
			// Passed on to the kernel as a negative entry by lockReleasingFS.Lookup.
			out.SetEntryTimeout(n.ttl(nil, snap))
		}
		n.staleCheck(reply.Errno)
		return nil, syscall.Errno(reply.Errno)
	}
	return n.child(ctx, reply.Attr, out, snap), 0
}

// movedSince reports whether a call by ref that failed with errno may have failed only because
// another node's rename moved n (or a directory above it) while the call was on its way: the
// owner's invalidation has since moved n in the tree, so its path is no longer ref's. moves is
// the mount's count of such moves when the call was named; while it stands, nothing moved (a
// create's lookup of a new name fails every time, and is not worth a path walk).
func (n *node) movedSince(ref *fspb.NodeRef, errno int32, moves uint64) bool {
	if errno != int32(syscall.ENOENT) && errno != int32(syscall.ESTALE) || n.p.m.moves.Load() == moves {
		return false
	}
	now, ok := n.path()
	return ok && !bytes.Equal(now, ref.Path)
}

// staleCheck reacts to ESTALE: the owner's object at n's path is no longer n, so the kernel's
// entry for n is dropped (asynchronously: the kernel may hold the directory's lock now).
func (n *node) staleCheck(errno int32) {
	if errno != int32(syscall.ESTALE) {
		return
	}
	name, parent := n.Parent()
	if parent != nil {
		go parent.NotifyEntry(name)
	}
}

func (n *node) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	a, ttl, errno := n.getattr(ctx, f)
	if errno != 0 {
		return errno
	}
	fillAttr(&out.Attr, a, n.StableAttr().Ino)
	out.SetTimeout(ttl)
	return 0
}

// getattr gives the object's attributes, cached or from the owner, and how long the kernel
// may keep them.
func (n *node) getattr(ctx context.Context, f fs.FileHandle) (*fspb.Attr, time.Duration, syscall.Errno) {
	if a := n.cachedAttr(); a != nil {
		return a, cacheTTL, 0
	}
	ref, errno := n.ref(f)
	if errno != 0 {
		return nil, 0, errno
	}
	snap := n.snapshot()
	var reply *fspb.EntryReply
	errno = n.call(ctx, func(rpc context.Context, api filesAPI) (err error) {
		reply, err = api.Getattr(rpc, &fspb.NodeRequest{Session: n.p.m.session, Caller: n.caller(ctx), Node: ref})
		return err
	})
	if errno != 0 {
		return nil, 0, errno
	}
	if reply.Errno != 0 {
		n.staleCheck(reply.Errno)
		return nil, 0, syscall.Errno(reply.Errno)
	}
	n.cacheAttr(reply.Attr, snap)
	return reply.Attr, n.ttl(reply.Attr, snap), 0
}

// Statx is Getattr with the birth time, which the kernel asks for only this way (stat's %W,
// ls --time=birth, statx with STATX_BTIME): without it the tree showed none, where the
// owner's file system has one. The owner sends it in every answer, as part of the object's
// identity (FileID.btime, 0 where its file system keeps none).
func (n *node) Statx(ctx context.Context, f fs.FileHandle, flags uint32, mask uint32, out *fuse.StatxOut) syscall.Errno {
	a, ttl, errno := n.getattr(ctx, f)
	if errno != 0 {
		return errno
	}
	var attr fuse.Attr
	fillAttr(&attr, a, n.StableAttr().Ino)
	fillStatx(&out.Statx, &attr)
	if bt := a.GetId().GetBtime(); bt > 0 {
		out.Mask |= unix.STATX_BTIME
		out.Btime = fuse.SxTime{Sec: uint64(bt / 1e9), Nsec: uint32(bt % 1e9)}
	}
	out.SetTimeout(ttl)
	return 0
}

// fillStatx gives the basic attributes in a statx answer.
func fillStatx(out *fuse.Statx, a *fuse.Attr) {
	*out = fuse.Statx{
		Mask:      unix.STATX_BASIC_STATS,
		Blksize:   a.Blksize,
		Nlink:     a.Nlink,
		Uid:       a.Uid,
		Gid:       a.Gid,
		Mode:      uint16(a.Mode),
		Ino:       a.Ino,
		Size:      a.Size,
		Blocks:    a.Blocks,
		Atime:     fuse.SxTime{Sec: a.Atime, Nsec: a.Atimensec},
		Mtime:     fuse.SxTime{Sec: a.Mtime, Nsec: a.Mtimensec},
		Ctime:     fuse.SxTime{Sec: a.Ctime, Nsec: a.Ctimensec},
		RdevMajor: unix.Major(uint64(a.Rdev)),
		RdevMinor: unix.Minor(uint64(a.Rdev)),
	}
}

func (n *node) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	defer changing(n)()
	ref, errno := n.ref(f)
	if errno != 0 {
		return errno
	}
	req := &fspb.SetattrRequest{
		Session: n.p.m.session, Caller: n.caller(ctx), Node: ref,
		Valid: in.Valid & (setMode | setUID | setGID | setSize | setAtime | setMtime | setAtimeNow | setMtimeNow),
		Mode:  in.Mode, Uid: in.Uid, Gid: in.Gid, Size: int64(min(in.Size, 1<<63-1)),
		AtimeSec: int64(in.Atime), AtimeNsec: in.Atimensec, MtimeSec: int64(in.Mtime), MtimeNsec: in.Mtimensec,
	}
	n.mu.Lock()
	if n.device && req.Valid&setSize != 0 {
		// Truncating a device (O_TRUNC on /dev/null) means nothing, as locally, where the
		// kernel does not truncate devices on open; nor the times the truncation would set.
		req.Valid &^= setSize | setMtime | setMtimeNow
	}
	n.mu.Unlock()
	n.dropAttr()
	snap := n.snapshot()
	var reply *fspb.EntryReply
	errno = n.call(ctx, func(rpc context.Context, api filesAPI) (err error) {
		reply, err = api.Setattr(rpc, req)
		return err
	})
	if errno != 0 {
		return errno
	}
	if reply.Errno != 0 {
		n.staleCheck(reply.Errno)
		return syscall.Errno(reply.Errno)
	}
	n.cacheAttr(reply.Attr, snap)
	fillAttr(&out.Attr, reply.Attr, n.StableAttr().Ino)
	out.SetTimeout(n.ttl(reply.Attr, snap))
	return 0
}

func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	ref, errno := n.ref(nil)
	if errno != 0 {
		return nil, errno
	}
	var reply *fspb.ReadlinkReply
	errno = n.call(ctx, func(rpc context.Context, api filesAPI) (err error) {
		reply, err = api.Readlink(rpc, &fspb.NodeRequest{Session: n.p.m.session, Caller: n.caller(ctx), Node: ref})
		return err
	})
	if errno != 0 {
		return nil, errno
	}
	if reply.Errno != 0 {
		n.staleCheck(reply.Errno)
		return nil, syscall.Errno(reply.Errno)
	}
	return rewriteLink(reply.Target, ref.Path, n.p.m.cfg.Path, n.p.name), 0
}

// rewriteLink makes a symlink mean on the client what it means on its owner. The kernel
// resolves symlinks on the client, where "/etc" would be the client's own: absolute targets
// are moved under /<mount>/<node>, and so are relative ones that climb above the owner's root
// (where ".." stops on the owner). An absolute target already in the cluster tree (every node
// mounts it at the same path) names on the owner what it names here, and is kept: moved, it
// would lead into the owner's own mount, which the tree does not show.
func rewriteLink(target, linkPath []byte, mount, node string) []byte {
	mount = strings.TrimSuffix(mount, "/")
	prefix := mount + "/" + node
	if len(target) > 0 && target[0] == '/' {
		if inTree(string(target), mount) {
			return target
		}
		return []byte(prefix + string(target))
	}
	depth := strings.Count(string(linkPath), "/") // directories between the owner's root and the link
	for _, part := range strings.Split(string(target), "/") {
		switch part {
		case "", ".":
		case "..":
			depth--
			if depth < 0 {
				return []byte(prefix + "/" + cleanBelowRoot(string(linkPath), string(target)))
			}
		default:
			depth++
		}
	}
	return target
}

// inTree reports whether the absolute path p lies in the tree mounted at mount.
func inTree(p, mount string) bool {
	return mount != "" && (p == mount || strings.HasPrefix(p, mount+"/"))
}

// storedLink is rewriteLink's inverse for a symlink made through the tree: a target in the
// owner's own part of the tree (what readlink there returns for an absolute target, and so
// what tar, cp -a and ln -s "$(readlink …)" write back) is stored as the owner's own path,
// which reads back as the same target and means the same file on the owner, with its tree
// mounted or not. Other targets are stored as given.
func storedLink(target, mount, node string) string {
	mount = strings.TrimSuffix(mount, "/")
	prefix := mount + "/" + node
	if mount == "" || !inTree(target, prefix) {
		return target
	}
	if rest := target[len(prefix):]; rest != "" {
		return rest
	}
	return "/"
}

// cleanBelowRoot resolves target lexically against the link's directory, stopping ".." at the
// root, and returns the result without its leading slash.
func cleanBelowRoot(linkPath, target string) string {
	var stack []string
	if i := strings.LastIndexByte(linkPath, '/'); i >= 0 {
		stack = strings.Split(linkPath[:i], "/")
	}
	for _, part := range strings.Split(target, "/") {
		switch part {
		case "", ".":
		case "..":
			if len(stack) > 0 {
				stack = stack[:len(stack)-1]
			}
		default:
			stack = append(stack, part)
		}
	}
	return strings.Join(stack, "/")
}

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	n.mu.Lock()
	oldSize, oldMtime := n.size, n.mtime
	n.mu.Unlock()
	var snap snapshot
	var reply *fspb.OpenReply
	caller := n.caller(ctx)
	for attempt := 0; ; attempt++ {
		moves := n.p.m.moves.Load()
		ref, errno := n.ref(nil)
		if errno != 0 {
			return nil, 0, errno
		}
		snap = n.snapshot()
		if hook := n.p.m.beforeOpenCall.Load(); hook != nil {
			(*hook)()
		}
		errno = n.call(ctx, func(rpc context.Context, api filesAPI) (err error) {
			reply, err = api.Open(rpc, &fspb.OpenRequest{Session: n.p.m.session, Caller: caller, Node: ref, Flags: flags})
			return err
		})
		if errno != 0 {
			return nil, 0, errno
		}
		// As in Lookup: an open that failed on the way is made again by the new path.
		n.p.awaitApplied(ctx, reply.WatchSeq)
		if attempt == 3 || !n.movedSince(ref, reply.Errno, moves) {
			break
		}
	}
	if reply.Errno != 0 {
		n.staleCheck(reply.Errno)
		return nil, 0, syscall.Errno(reply.Errno)
	}
	n.remember(reply.Attr)
	n.learnACLs(reply.Attr, snap.gen)
	fh := n.newHandle(reply, flags, caller)
	unchanged := reply.Attr.Size == oldSize && [2]int64{reply.Attr.MtimeSec, int64(reply.Attr.MtimeNsec)} == oldMtime
	name, _ := n.Parent()
	return fh, n.openFlags(name, reply.Attr, flags, unchanged && n.ttl(reply.Attr, snap) > 0), 0
}

// walIndex tells SQLite's wal-index by its name, the database's with "-shm" added. SQLite
// maps it shared and writable as the shared memory of every process using the database in
// WAL mode, and relies on their stores being seen at once; a mapping is coherent only within
// one node's kernel (the owner's invalidations drop clean pages, not another node's stores),
// so processes on two nodes overwrote each other's commits. A file the kernel opened with
// direct I/O cannot be mapped shared (ENODEV), which SQLite reports as an I/O error
// (SQLITE_IOERR_SHMMAP) before it reads or writes anything.
func walIndex(name string) bool {
	return strings.HasSuffix(name, "-shm")
}

// openFlags tells the kernel how to cache an open file: keep its pages if the owner keeps
// them coherent and the file did not change since they were read (close-to-open); never for
// devices, pseudo files and appends (an append's offset is only known on the owner), nor for
// SQLite's wal-index, which direct I/O keeps from being mapped shared (see walIndex).
func (n *node) openFlags(name string, a *fspb.Attr, flags uint32, keep bool) uint32 {
	switch {
	case a.Direct || isDevice(a.Mode) || flags&syscall.O_APPEND != 0 || walIndex(name):
		return fuse.FOPEN_DIRECT_IO
	case keep:
		return fuse.FOPEN_KEEP_CACHE
	}
	return 0
}

func (n *node) newHandle(reply *fspb.OpenReply, flags uint32, caller *fspb.Caller) *fileHandle {
	f := &fileHandle{n: n, h: reply.Handle, inst: reply.Instance, flags: flags, caller: caller}
	n.p.noteHandle(f)
	return f
}

func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	defer changing(n)()
	dir, errno := n.ref(nil)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	snap := n.snapshot()
	masked, unmasked := n.p.m.umasks.modes(ctx, mode)
	var reply *fspb.OpenReply
	caller := n.caller(ctx)
	errno = n.call(ctx, func(rpc context.Context, api filesAPI) (err error) {
		reply, err = api.Create(rpc, &fspb.CreateRequest{Session: n.p.m.session, Caller: caller, Dir: dir,
			Name: []byte(name), Flags: flags, Mode: masked, UnmaskedMode: unmasked})
		return err
	})
	if errno != 0 {
		n.listed(name, true, errno)
		return nil, nil, 0, errno
	}
	n.listed(name, true, syscall.Errno(reply.Errno))
	if reply.Errno != 0 {
		n.staleCheck(reply.Errno)
		return nil, nil, 0, syscall.Errno(reply.Errno)
	}
	n.cacheAttr(reply.Dir, snap)
	in := n.child(ctx, reply.Attr, out, snap)
	ch := in.Operations().(*node)
	return in, ch.newHandle(reply, flags, caller), n.openFlags(name, reply.Attr, flags, out.EntryTimeout() > 0), 0
}

// made takes in the owner's answer to a call that makes a directory entry: the entry's
// listing and the directory's attributes, or the errno it failed with.
func (n *node) made(name string, reply *fspb.EntryReply, errno syscall.Errno, s snapshot) syscall.Errno {
	if errno == 0 {
		errno = syscall.Errno(reply.Errno)
	}
	n.listed(name, true, errno)
	if errno != 0 {
		if reply != nil {
			n.staleCheck(reply.Errno)
		}
		return errno
	}
	n.cacheAttr(reply.Dir, s)
	return 0
}

// entry finishes the calls that make a directory entry.
func (n *node) entry(ctx context.Context, name string, reply *fspb.EntryReply, errno syscall.Errno, s snapshot, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if errno := n.made(name, reply, errno, s); errno != 0 {
		return nil, errno
	}
	in := n.child(ctx, reply.Attr, out, s)
	if reply.EmptyDir && out.EntryTimeout() > 0 {
		if ch, ok := in.Operations().(*node); ok {
			ch.setListing(map[string]struct{}{}, ch.snapshotAt(s.epoch))
		}
	}
	return in, 0
}

// snapshotAt is the node's snapshot now, in a connection epoch read earlier.
func (n *node) snapshotAt(epoch uint64) snapshot {
	return snapshot{epoch: epoch, gen: n.gen.Load(), seq: n.p.invalSeq.Load()}
}

func (n *node) mknod(ctx context.Context, name string, mode, rdev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	defer changing(n)()
	dir, errno := n.ref(nil)
	if errno != 0 {
		return nil, errno
	}
	snap := n.snapshot()
	reply, errno := n.askMknod(ctx, dir, name, mode, rdev)
	return n.entry(ctx, name, reply, errno, snap, out)
}

// askMknod has the owner make the object, with the caller's umask as the kernel gave it.
func (n *node) askMknod(ctx context.Context, dir *fspb.NodeRef, name string, mode, rdev uint32) (*fspb.EntryReply, syscall.Errno) {
	masked, unmasked := n.p.m.umasks.modes(ctx, mode)
	var reply *fspb.EntryReply
	errno := n.call(ctx, func(rpc context.Context, api filesAPI) (err error) {
		reply, err = api.Mknod(rpc, &fspb.MknodRequest{Session: n.p.m.session, Caller: n.caller(ctx), Dir: dir,
			Name: []byte(name), Mode: masked, UnmaskedMode: unmasked, Rdev: uint64(rdev)})
		return err
	})
	return reply, errno
}

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return n.mknod(ctx, name, syscall.S_IFDIR|mode&07777, 0, out)
}

func (n *node) Mknod(ctx context.Context, name string, mode uint32, rdev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if !isDevice(mode) {
		return n.mknod(ctx, name, mode, rdev, out)
	}
	defer changing(n)()
	dir, errno := n.ref(nil)
	if errno != 0 {
		return nil, errno
	}
	snap := n.snapshot()
	reply, errno := n.askMknod(ctx, dir, name, mode, rdev)
	if errno := n.made(name, reply, errno, snap); errno != 0 {
		return nil, errno
	}
	return n.madeDevice(ctx, reply.Attr, mode, out), 0
}

// madeDevice answers the kernel's mknod of a device. The kernel fails a mknod with EIO unless
// the new inode has the type it asked for, but devices show as regular files in the tree (see
// clientType). So the answer is a throw-away inode of the device's type, under an inode number
// of its own and cached for no time: the next use of the name looks it up again and finds the
// regular file that stands for the device.
func (n *node) madeDevice(ctx context.Context, a *fspb.Attr, mode uint32, out *fuse.EntryOut) *fs.Inode {
	ino := inoOf(n.p.name+"\x00mknod", idFromPB(a.Id))
	// No identity: invalidations go to the node the tree keeps for the device, not this one.
	ch := &node{p: n.p}
	ch.remember(a)
	in := n.NewInode(ctx, ch, fs.StableAttr{Mode: mode & syscall.S_IFMT, Ino: ino})
	fillAttr(&out.Attr, a, ino)
	out.Attr.Mode = mode&syscall.S_IFMT | a.Mode&07777
	out.Attr.Size, out.Attr.Blocks = 0, 0
	out.Attr.Rdev = uint32(a.Rdev)
	out.SetEntryTimeout(0)
	out.SetAttrTimeout(0)
	return in
}

func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	defer changing(n)()
	dir, errno := n.ref(nil)
	if errno != 0 {
		return nil, errno
	}
	snap := n.snapshot()
	var reply *fspb.EntryReply
	errno = n.call(ctx, func(rpc context.Context, api filesAPI) (err error) {
		reply, err = api.Symlink(rpc, &fspb.SymlinkRequest{Session: n.p.m.session, Caller: n.caller(ctx), Dir: dir,
			Name: []byte(name), Target: []byte(storedLink(target, n.p.m.cfg.Path, n.p.name))})
		return err
	})
	return n.entry(ctx, name, reply, errno, snap, out)
}

// sameOwner returns other as a node of the same owner as n: links and renames cannot cross
// nodes (EXDEV, as between file systems).
func (n *node) sameOwner(other fs.InodeEmbedder) (*node, syscall.Errno) {
	o, ok := other.(*node)
	if !ok || o.p != n.p {
		return nil, syscall.EXDEV
	}
	return o, 0
}

func (n *node) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if t, ok := target.(*node); ok {
		defer changing(n, t)()
	}
	t, errno := n.sameOwner(target)
	if errno != 0 {
		return nil, errno
	}
	tref, errno := t.ref(nil)
	if errno != 0 {
		return nil, errno
	}
	dir, errno := n.ref(nil)
	if errno != 0 {
		return nil, errno
	}
	snap := n.snapshot()
	var reply *fspb.EntryReply
	errno = n.call(ctx, func(rpc context.Context, api filesAPI) (err error) {
		reply, err = api.Link(rpc, &fspb.LinkRequest{Session: n.p.m.session, Caller: n.caller(ctx), Target: tref, Dir: dir, Name: []byte(name)})
		return err
	})
	t.dropAttr()
	return n.entry(ctx, name, reply, errno, snap, out)
}

func (n *node) remove(ctx context.Context, name string, isDir bool) syscall.Errno {
	defer changing(n)()
	dir, errno := n.ref(nil)
	if errno != 0 {
		return errno
	}
	snap := n.snapshot()
	var reply *fspb.ChangeReply
	errno = n.call(ctx, func(rpc context.Context, api filesAPI) (err error) {
		reply, err = api.Remove(rpc, &fspb.RemoveRequest{Session: n.p.m.session, Caller: n.caller(ctx), Dir: dir, Name: []byte(name), DirEntry: isDir})
		return err
	})
	n.dropAttr()
	n.dropChildAttr(name)
	if errno == 0 {
		errno = syscall.Errno(reply.Errno)
		n.staleCheck(reply.Errno)
	}
	n.listed(name, false, errno)
	if errno == 0 {
		n.cacheAttr(reply.Dir, snap)
	}
	return errno
}

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	return n.remove(ctx, name, false)
}

func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	return n.remove(ctx, name, true)
}

func (n *node) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	if np, ok := newParent.(*node); ok {
		defer changing(n, np)()
	}
	np, errno := n.sameOwner(newParent)
	if errno != 0 {
		return errno
	}
	dir, errno := n.ref(nil)
	if errno != 0 {
		return errno
	}
	newDir, errno := np.ref(nil)
	if errno != 0 {
		return errno
	}
	snap, newSnap := n.snapshot(), np.snapshot()
	var reply *fspb.ChangeReply
	errno = n.call(ctx, func(rpc context.Context, api filesAPI) (err error) {
		reply, err = api.Rename(rpc, &fspb.RenameRequest{Session: n.p.m.session, Caller: n.caller(ctx), Dir: dir, Name: []byte(name),
			NewDir: newDir, NewName: []byte(newName), Flags: flags})
		return err
	})
	n.dropAttr()
	np.dropAttr()
	n.dropChildAttr(name)
	np.dropChildAttr(newName)
	if errno == 0 {
		errno = syscall.Errno(reply.Errno)
		n.staleCheck(reply.Errno)
	}
	if flags&unix.RENAME_EXCHANGE == 0 || errno != 0 {
		n.listed(name, false, errno)
		np.listed(newName, true, errno)
	}
	if errno == 0 {
		n.cacheAttr(reply.Dir, snap)
		np.cacheAttr(reply.NewDir, newSnap)
	}
	return errno
}

func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	ref, errno := n.ref(nil)
	if errno != 0 {
		return errno
	}
	var reply *fspb.StatfsReply
	errno = n.call(ctx, func(rpc context.Context, api filesAPI) (err error) {
		reply, err = api.Statfs(rpc, &fspb.NodeRequest{Session: n.p.m.session, Caller: n.caller(ctx), Node: ref})
		return err
	})
	if errno != 0 {
		return errno
	}
	if reply.Errno != 0 {
		return syscall.Errno(reply.Errno)
	}
	*out = fuse.StatfsOut{Blocks: reply.Blocks, Bfree: reply.Bfree, Bavail: reply.Bavail, Files: reply.Files,
		Ffree: reply.Ffree, Bsize: reply.Bsize, NameLen: reply.Namelen, Frsize: reply.Frsize}
	return 0
}

func (n *node) xattr(ctx context.Context, req *fspb.XattrRequest) (*fspb.XattrReply, syscall.Errno) {
	ref, errno := n.ref(nil)
	if errno != 0 {
		return nil, errno
	}
	req.Session, req.Caller, req.Node = n.p.m.session, n.caller(ctx), ref
	var reply *fspb.XattrReply
	errno = n.call(ctx, func(rpc context.Context, api filesAPI) (err error) {
		reply, err = api.Xattr(rpc, req)
		return err
	})
	if errno != 0 {
		return nil, errno
	}
	return reply, syscall.Errno(reply.Errno)
}

// xattrRead serves getxattr and listxattr: with a buffer too small, ERANGE and the size needed.
func (n *node) xattrRead(ctx context.Context, op fspb.XattrRequest_Op, name string, dest []byte) (uint32, syscall.Errno) {
	reply, errno := n.xattr(ctx, &fspb.XattrRequest{Op: op, Name: []byte(name), Size: uint32(len(dest))})
	if errno == syscall.ERANGE {
		sized, errno := n.xattr(ctx, &fspb.XattrRequest{Op: op, Name: []byte(name)})
		if errno != 0 {
			return 0, errno
		}
		return sized.Size, syscall.ERANGE
	}
	if errno != 0 {
		return 0, errno
	}
	if len(dest) == 0 {
		return reply.Size, 0
	}
	return uint32(copy(dest, reply.Value)), 0
}

func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	// security.* attributes are not shown through the tree (see docs/fs.md). The kernel asks
	// for them on its own (the capabilities before a write; `ls -l` asks for an SELinux label
	// per file): answering here spares a round trip to the owner each time.
	if strings.HasPrefix(attr, "security.") {
		return 0, syscall.ENODATA
	}
	// The kernel asks for a file's access ACL before its first permission check.
	if n.lacksACL(attr) {
		return 0, syscall.ENODATA
	}
	size, errno := n.xattrRead(ctx, fspb.XattrRequest_GET, attr, dest)
	if errno == syscall.EOPNOTSUPP && (attr == xattrACLAccess || attr == xattrACLDefault) {
		// A file system without ACLs on the owner (/proc): locally the kernel does not ask,
		// and the FUSE kernel takes EOPNOTSUPP for a failed permission check.
		return 0, syscall.ENODATA
	}
	return size, errno
}

func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	return n.xattrRead(ctx, fspb.XattrRequest_LIST, "", dest)
}

func (n *node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	defer changing(n)()
	defer n.dropAttr()
	_, errno := n.xattr(ctx, &fspb.XattrRequest{Op: fspb.XattrRequest_SET, Name: []byte(attr), Value: data, Flags: flags})
	return errno
}

func (n *node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	defer changing(n)()
	defer n.dropAttr()
	_, errno := n.xattr(ctx, &fspb.XattrRequest{Op: fspb.XattrRequest_REMOVE, Name: []byte(attr)})
	return errno
}

func (n *node) Fsync(ctx context.Context, f fs.FileHandle, flags uint32) syscall.Errno {
	if fh, ok := f.(*fileHandle); ok {
		return fh.Fsync(ctx, flags)
	}
	return 0
}

func (n *node) OpendirHandle(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	d := &dirHandle{n: n}
	var fuseFlags uint32
	n.mu.Lock()
	cache := n.listWatched && !n.direct
	n.mu.Unlock()
	if cache && n.p.isConnected() {
		// The owner invalidates the listing when the directory changes.
		fuseFlags = fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE
	}
	return d, fuseFlags, 0
}
