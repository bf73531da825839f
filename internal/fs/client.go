package fs

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ssi-cluster/ssi/internal/fs/fspb"
)

// Nodes is the cluster as the mount sees it.
type Nodes interface {
	// Names lists every node, alive or not.
	Names() []string
	// Conn returns a connection to that node's agent (mutual TLS). It is called for every
	// request, so it must be cheap: cache the connections.
	Conn(node string) (grpc.ClientConnInterface, error)
}

// Liveness is implemented by a Nodes that learns of failed nodes (from gossip): requests to a
// node it reports gone fail at once with ENOTCONN instead of waiting for the timeout.
type Liveness interface {
	Gone(node string) bool
}

// MountConfig describes the FUSE mount of the cluster tree.
type MountConfig struct {
	// Path is the mount point, /ssi normally. It must exist.
	Path string
	// LocalNode is this node's name; with Local it is served without gRPC.
	LocalNode string
	Nodes     Nodes
	Local     *Server
	Logger    *slog.Logger
	// Timeout bounds each request to a node (not lock waits, not device I/O, which end when
	// the node is found down): past it the call fails with EIO. Default 5s.
	Timeout time.Duration
}

// Mounted is a mounted cluster tree: /<path>/<node>/<path on node>.
type Mounted struct {
	cfg    MountConfig
	log    *slog.Logger
	server *fuse.Server
	locks  *lockReleasingFS
	// dev is the mount's device number, which names its FUSE connection (see abortFUSE).
	dev     uint64
	root    *rootNode
	session []byte
	groups  *groupCache
	umasks  umasks
	// lockWaits numbers the blocking lock waits of this mount (LockRequest.wait).
	lockWaits atomic.Uint64
	// moves counts the nodes moved by other nodes' renames (peer.follow): a call that failed
	// while it did not change was not sent by a path a rename made stale.
	moves atomic.Uint64
	// beforeOpenCall, when a test sets it, runs in Open between naming the node and sending
	// the request, where a rename by another node would make the request's path a stale one.
	beforeOpenCall atomic.Pointer[func()]
	// reopenFails, when a test sets it, is asked before each open of a reclaim: an errno makes
	// that open fail as if the owner could not be reached.
	reopenFails atomic.Pointer[func() syscall.Errno]

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	peers map[string]*peer

	inodesMu sync.Mutex
	inodes   map[inodeKey]*node

	stats clientStats
}

type inodeKey struct {
	peer string
	id   fileID
}

type clientStats struct {
	ops, bytesRead, bytesWritten, invalidations, flushes, failures atomic.Uint64
	reclaims                                                       atomic.Uint64 // after owner restarts
}

// Stats are the mount's counters, for `ssi fs`.
type Stats struct {
	Path          string
	Ops           uint64
	BytesRead     uint64 // file data received from owners
	BytesWritten  uint64 // file data sent to owners
	Invalidations uint64 // cache entries dropped on an owner's request
	Flushes       uint64 // whole-node cache drops (reconnects, owner overflow)
	Failures      uint64 // requests that failed for want of the owner (EIO, ENOTCONN)
	CachedInodes  int
	Nodes         []NodeState
}

// NodeState is the mount's view of one owner.
type NodeState struct {
	Name      string
	Connected bool // its invalidation stream is up: caching is on
}

const (
	defaultTimeout = 5 * time.Second
	// cacheTTL is how long the kernel may keep entries and attributes that owners keep
	// coherent by invalidation. It only bounds damage from an invalidation that never came.
	cacheTTL = time.Minute
	// heartbeat is how often an owner speaks on an idle Watch stream; after
	// heartbeatMisses of silence the client considers the owner gone.
	heartbeat       = 2 * time.Second
	heartbeatMisses = 3
)

// Mount mounts the cluster tree at cfg.Path.
func Mount(ctx context.Context, cfg MountConfig) (*Mounted, error) {
	if cfg.Path == "" || cfg.Nodes == nil {
		return nil, errors.New("mount the cluster tree: MountConfig needs Path and Nodes")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = defaultTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if st, err := os.Stat(cfg.Path); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("mount the cluster tree at %q: not a directory (create it first): %v", cfg.Path, err)
	}
	session := make([]byte, 16)
	rand.Read(session)
	mctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	m := &Mounted{
		cfg:     cfg,
		log:     cfg.Logger,
		session: session,
		groups:  newGroupCache(),
		ctx:     mctx,
		cancel:  cancel,
		peers:   make(map[string]*peer),
		inodes:  make(map[inodeKey]*node),
	}
	m.root = &rootNode{m: m}
	opts := &fs.Options{
		MountOptions: fuse.MountOptions{
			AllowOther:    true,
			FsName:        "ssi",
			Name:          "ssi",
			DirectMount:   true,
			MaxWrite:      maxIO,
			MaxReadAhead:  maxIO,
			MaxBackground: 64,
			// Replies come from memory; splicing them only logs complaints about pipe sizes.
			DisableSplice:        true,
			EnableLocks:          true,
			EnableSymlinkCaching: true,
			// Not IgnoreSecurityLabels: besides security.capability it answers ENODATA for the
			// ACL xattrs, which the kernel must read from the owners. node.Getxattr answers
			// security.* from here instead.
			// The kernel checks Unix permissions against the owners' attributes too, so that a
			// cached entry never lets a user through a directory they may not search.
			Options: []string{"default_permissions"},
			// Set-user-ID and set-group-ID bits are cleared by the owner's kernel, which writes,
			// truncates and chowns as the caller. Without this the client's kernel clears them
			// itself with a chmod as the caller, which fails (EPERM, and the write with it) for
			// a user who may write the file but does not own it.
			// CAP_DONT_MASK: the owner applies the caller's umask, which a directory's default
			// ACL overrides (see umasks).
			ExtraCapabilities: fuse.CAP_HANDLE_KILLPRIV | fuse.CAP_DONT_MASK,
			// The kernel checks with default_permissions, so it must know the owners' ACLs
			// (read as system.posix_acl_* xattrs, dropped on invalidation): on mode bits alone
			// it refused what an ACL grants.
			EnableAcl: true,
		},
		NullPermissions: true,
		RootStableAttr:  &fs.StableAttr{Ino: fuse.FUSE_ROOT_ID},
	}
	m.locks = &lockReleasingFS{RawFileSystem: &umaskFS{RawFileSystem: fs.NewNodeFS(m.root, opts), umasks: &m.umasks}}
	server, err := newFUSEServer(m.locks, cfg.Path, &opts.MountOptions)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("mount the cluster tree at %q: %w (the agent must run as root with /dev/fuse)", cfg.Path, err)
	}
	go server.Serve()
	if err := server.WaitMount(); err != nil {
		cancel()
		server.Unmount()
		return nil, fmt.Errorf("mount the cluster tree at %q: %w", cfg.Path, err)
	}
	m.server = server
	var st unix.Stat_t
	if err := unix.Stat(cfg.Path, &st); err == nil {
		m.dev = st.Dev
	}
	m.raiseReadahead()
	return m, nil
}

// newFUSEServer mounts like fuse.NewServer, without leaking the FUSE device into children.
// go-fuse's direct mount opens /dev/fuse without O_CLOEXEC, so every process the agent
// started afterwards (ssi run, job tasks) held the mount's device: any user's job could read
// other users' file requests off it and answer them, and when the agent died the connection
// was not aborted, leaving those processes stuck for good (in D state) on their own open
// files in /ssi. The device is marked close-on-exec while syscall.ForkLock keeps every fork
// out, as the syscall package asks of fds made without O_CLOEXEC. The mount must then not
// fork itself (fusermount would wait for the lock), so it is tried direct-only first; the
// fusermount fallback, when the direct mount fails, gets close-on-exec from go-fuse.
func newFUSEServer(fsys fuse.RawFileSystem, path string, opts *fuse.MountOptions) (*fuse.Server, error) {
	direct := *opts
	direct.DirectMountStrict = true
	syscall.ForkLock.Lock()
	server, err := fuse.NewServer(fsys, path, &direct)
	if err == nil {
		closeOnExecFUSEDevices()
	}
	syscall.ForkLock.Unlock()
	if err == nil {
		return server, nil
	}
	return fuse.NewServer(fsys, path, opts)
}

// closeOnExecFUSEDevices marks every /dev/fuse descriptor of this process close-on-exec.
// None of them is ever meant for a child.
func closeOnExecFUSEDevices() {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && target == "/dev/fuse" {
			syscall.CloseOnExec(fd)
		}
	}
}

// raiseReadahead lets the kernel read ahead 1 MiB at a time: each read is a network round
// trip, so fewer, larger ones stream faster.
func (m *Mounted) raiseReadahead() {
	var st unix.Stat_t
	if err := unix.Stat(m.cfg.Path, &st); err != nil {
		return
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	if err := os.WriteFile(p, []byte("1024"), 0); err != nil {
		m.log.Debug("cannot raise the cluster tree's read-ahead", "file", p, "err", err)
	}
}

// abortAfter is how long Close waits for the kernel to end the FUSE connection once the tree
// is unmounted here, before it ends it itself.
const abortAfter = 2 * time.Second

// Close unmounts the tree, lazily if it is busy: processes still using it keep it until they
// let go, and their calls fail once the agent is gone.
func (m *Mounted) Close() error {
	m.releaseAll()
	m.cancel()
	unmounted := make(chan error, 1)
	go func() { unmounted <- m.server.Unmount() }()
	var err error
	select {
	case err = <-unmounted:
	case <-time.After(abortAfter):
		// Unmounted here, but a mount namespace made while the tree was mounted (a simulated
		// host, unshare -m) still holds a copy: the kernel keeps the connection for it, and
		// go-fuse waits for the connection's end. Its processes' requests would hang with no
		// one to answer them; aborting fails them (ENOTCONN) and lets go-fuse stop.
		if aerr := abortFUSE(m.dev); aerr != nil {
			m.log.Warn("cannot abort the cluster tree's FUSE connection; unmounting waits for the other mount namespaces that hold it", "err", aerr)
		}
		err = <-unmounted
	}
	if err != nil {
		if derr := unix.Unmount(m.cfg.Path, unix.MNT_DETACH); derr != nil {
			return fmt.Errorf("unmount the cluster tree at %q: %w", m.cfg.Path, err)
		}
		err = nil
	} else {
		m.server.Wait()
	}
	m.wg.Wait()
	return err
}

// releaseAll closes on their owners the files still open through the mount, as it goes: the
// processes that hold them can no longer use them, and an owner would otherwise keep them, with
// their locks, for the session's grace period (30 s), other nodes' lock requests waiting.
func (m *Mounted) releaseAll() {
	m.mu.Lock()
	peers := make([]*peer, 0, len(m.peers))
	for _, p := range m.peers {
		peers = append(peers, p)
	}
	m.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range peers {
		var handles []uint64
		p.mu.Lock()
		for f := range p.handles {
			f.mu.Lock()
			if !f.released && !f.lost {
				handles = append(handles, f.h)
			}
			f.mu.Unlock()
		}
		p.mu.Unlock()
		p.releaseMu.Lock()
		handles = append(append(handles, p.releases...), p.unreleased...)
		p.releases, p.unreleased = nil, nil
		p.releaseMu.Unlock()
		if len(handles) == 0 {
			continue
		}
		wg.Go(func() {
			for batch := range slices.Chunk(handles, maxReleaseBatch) {
				if p.sendReleases(batch) != 0 {
					return // the owner expires the session instead
				}
			}
		})
	}
	wg.Wait()
}

// Stats reports the mount's counters and the state of each owner.
func (m *Mounted) Stats() Stats {
	st := Stats{
		Path:          m.cfg.Path,
		Ops:           m.stats.ops.Load(),
		BytesRead:     m.stats.bytesRead.Load(),
		BytesWritten:  m.stats.bytesWritten.Load(),
		Invalidations: m.stats.invalidations.Load(),
		Flushes:       m.stats.flushes.Load(),
		Failures:      m.stats.failures.Load(),
	}
	m.inodesMu.Lock()
	st.CachedInodes = len(m.inodes)
	m.inodesMu.Unlock()
	m.mu.Lock()
	for _, p := range m.peers {
		st.Nodes = append(st.Nodes, NodeState{Name: p.name, Connected: p.isConnected()})
	}
	m.mu.Unlock()
	slices.SortFunc(st.Nodes, func(a, b NodeState) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return st
}

// knownNode reports whether name is a node of the cluster.
func (m *Mounted) knownNode(name string) bool {
	if name == m.cfg.LocalNode && name != "" {
		return true
	}
	return slices.Contains(m.cfg.Nodes.Names(), name)
}

// peer returns the client state for an owner, starting its invalidation stream on first use.
func (m *Mounted) peer(name string) *peer {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p := m.peers[name]; p != nil {
		return p
	}
	p := &peer{m: m, name: name, local: name == m.cfg.LocalNode && m.cfg.Local != nil}
	p.down, p.firstTry = make(chan struct{}), make(chan struct{})
	m.peers[name] = p
	m.wg.Add(1)
	go p.watchLoop()
	return p
}

// inoOf gives every object of every owner a stable inode number in the mount.
func inoOf(peer string, id fileID) uint64 {
	h := fnv.New64a()
	h.Write([]byte(peer))
	var b [25]byte
	putUint64(b[1:], id.dev)
	putUint64(b[9:], id.ino)
	putUint64(b[17:], uint64(id.btime))
	h.Write(b[:])
	ino := h.Sum64()
	if ino <= fuse.FUSE_ROOT_ID || ino == ^uint64(0) {
		ino += 2
	}
	return ino
}

// register makes n the node that invalidations for its object reach, unless one is there
// already: go-fuse keeps the first inode made for an object and drops later duplicates.
func (m *Mounted) register(n *node) {
	id := n.identity()
	if id == (fileID{}) {
		return
	}
	m.inodesMu.Lock()
	if m.inodes[inodeKey{n.p.name, id}] == nil {
		m.inodes[inodeKey{n.p.name, id}] = n
	}
	m.inodesMu.Unlock()
}

// claim makes n, which the kernel is using, the node for its object: if two were made at once,
// the one registered first may be the duplicate go-fuse dropped.
func (m *Mounted) claim(n *node) {
	id := n.identity()
	if id == (fileID{}) {
		return
	}
	key := inodeKey{n.p.name, id}
	m.inodesMu.Lock()
	if m.inodes[key] != n {
		m.inodes[key] = n
	}
	m.inodesMu.Unlock()
}

func (m *Mounted) unregister(n *node) {
	key := inodeKey{n.p.name, n.identity()}
	m.inodesMu.Lock()
	if m.inodes[key] == n {
		delete(m.inodes, key)
	}
	m.inodesMu.Unlock()
}

func (m *Mounted) lookupInode(peer string, id fileID) *node {
	m.inodesMu.Lock()
	defer m.inodesMu.Unlock()
	return m.inodes[inodeKey{peer, id}]
}

func (m *Mounted) inodesOf(peer string) []*node {
	m.inodesMu.Lock()
	defer m.inodesMu.Unlock()
	var out []*node
	for k, n := range m.inodes {
		if k.peer == peer {
			out = append(out, n)
		}
	}
	return out
}

// peer is the mount's link to one owner.
type peer struct {
	m     *Mounted
	name  string
	local bool

	mu        sync.Mutex
	up        bool
	instance  []byte
	down      chan struct{} // closed while disconnected: ends device I/O waiting on the owner
	rootInode *fs.Inode

	// firstTry is closed once the first Watch stream is up or has failed. Until then calls
	// wait for it (a while): pages a shared mapping reads before the owner knows this node
	// would miss the invalidations of writes made meanwhile, and would stay stale until the
	// stream's flush.
	firstTry     chan struct{}
	firstTryOnce sync.Once

	// heard is when the owner last answered or spoke on its Watch stream, silent when a
	// request to it last timed out with nothing heard since it was sent (Unix nanoseconds;
	// see mayCall).
	heard, silent atomic.Int64

	// epoch changes whenever the stream connects or drops: an answer that straddles a change
	// may predate the flush and must not be cached.
	epoch atomic.Uint64

	// invalSeq counts invalidations received. Those for objects the client had no node for
	// (yet: its lookup may be on the way back) are kept a while in stray.
	invalSeq atomic.Uint64
	strayMu  sync.Mutex
	stray    map[fileID]strayInvalidation

	// applied is the sequence number of the last message of the current Watch stream this
	// client has applied; appliedSig, when made, is closed when it moves (awaitApplied).
	applied    atomic.Uint64
	appliedMu  sync.Mutex
	appliedSig chan struct{}

	// calls is the file wire or Calls stream to the owner, if open; while wireRetry
	// (callsRetry) is ahead, the owner is known not to serve the wire (the Calls stream).
	calls      *callStream
	wireRetry  time.Time
	callsRetry time.Time

	// releases are handles closed here and not yet on the owner (see fileHandle.Release).
	releaseMu sync.Mutex
	releases  []uint64
	// unreleased are handles whose close did not reach the owner, sent again by one goroutine
	// while releaseRetrying (retryReleases).
	unreleased      []uint64
	releaseRetrying bool

	// handles are the files open on the owner through this mount, opened again should its
	// file server restart (reclaim.go); reclaimed, when made, is closed at the end of the next
	// reclaim. Under mu. reclaiming is closed when the reclaim under way (if any) is done; it
	// is read by every call on an open file, so without a lock, but changed under mu.
	handles    map[*fileHandle]struct{}
	reclaimed  chan struct{}
	reclaiming atomic.Pointer[chan struct{}]
}

// An owner that let a request time out without a word from it meanwhile (no reply to any
// request, no message on its Watch stream, which carries a heartbeat every 2 s, for longer
// than two of those) is silent: frozen, or cut off without a refusal.
// Until something is heard from it, its calls fail at once with EIO, but for one at a time,
// once per timeout, which tries it. Without this, a call the kernel makes again when the first
// attempt failed (a read after its read-ahead failed, a lookup after a revalidation) waited
// for a second timeout, and the kernel's background requests to a silent owner (read-ahead,
// closes) filled the queue they share with every other node's.

// heardFrom notes that the owner answered.
func (p *peer) heardFrom() { p.heard.Store(time.Now().UnixNano()) }

// timedOut notes a request sent at sent through api that the owner did not answer within the
// timeout. If the owner was heard from meanwhile, the fault is the request's connection: a
// file wire that carried no answer since the request went out is stuck (a connection a
// middlebox lost, while the Watch stream's lives), and is given up, so that the next call
// opens a new one instead of each waiting for the timeout for as long as it stays open.
func (p *peer) timedOut(sent time.Time, api filesAPI) {
	if heard := p.heard.Load(); heard < sent.UnixNano() {
		// Silent only if its Watch stream, were it up, would have spoken twice meanwhile: an
		// owner that is merely slow to answer (a timeout shorter than that, a loaded machine)
		// is not cut off from every call for it.
		if time.Since(time.Unix(0, heard)) > 2*heartbeat {
			p.silent.Store(time.Now().UnixNano())
		}
		return
	}
	r, ok := api.(remoteFiles)
	if !ok || r.calls == nil {
		return
	}
	select {
	case <-r.calls.ready:
	default:
		return // still dialling: the dial has its own timeout
	}
	if w := r.calls.wire; w != nil && w.lastReply().Before(sent) {
		p.m.log.Info("file wire to node carries no answers while the node is heard from; opening a new one", "node", p.name)
		r.calls.close()
	}
}

// mayCall tells whether a call may go to the owner: it is not silent, or this call is the
// one that tries it.
func (p *peer) mayCall() bool {
	silent := p.silent.Load()
	if silent == 0 || p.heard.Load() > silent {
		return true
	}
	if time.Since(time.Unix(0, silent)) < p.m.cfg.Timeout {
		return false
	}
	// Tried once more by this call, as one that timed out now: the next try is a timeout on.
	return p.silent.CompareAndSwap(silent, time.Now().UnixNano())
}

type strayInvalidation struct {
	seq uint64
	at  time.Time
}

// strayLife is how long an invalidation for an unknown object is remembered: longer than any
// request takes to come back.
const strayLife = 10 * time.Second

func (p *peer) noteStray(id fileID, seq uint64) {
	p.strayMu.Lock()
	defer p.strayMu.Unlock()
	if p.stray == nil {
		p.stray = make(map[fileID]strayInvalidation)
	}
	now := time.Now()
	if len(p.stray) >= 4096 {
		for k, v := range p.stray {
			if now.Sub(v.at) > strayLife {
				delete(p.stray, k)
			}
		}
	}
	p.stray[id] = strayInvalidation{seq: seq, at: now}
}

// invalidatedSince reports whether id was invalidated after the invalidation count was seq,
// while the client had no node for it.
func (p *peer) invalidatedSince(id fileID, seq uint64) bool {
	if p.invalSeq.Load() == seq {
		return false
	}
	p.strayMu.Lock()
	defer p.strayMu.Unlock()
	s, ok := p.stray[id]
	return ok && s.seq > seq
}

func (p *peer) isConnected() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.up
}

// api returns the way to call the owner. Bounded calls go on the Calls stream; the others
// (lock waits, device I/O) may take long and are unary calls of their own.
func (p *peer) api(bounded bool) (filesAPI, error) {
	if p.local {
		return p.m.cfg.Local, nil
	}
	conn, err := p.m.cfg.Nodes.Conn(p.name)
	if err != nil {
		return nil, err
	}
	var calls *callStream
	if bounded {
		calls = p.callStreamFor(conn)
	}
	return newRemoteFiles(conn, calls), nil
}

// callCtx bounds one request to the owner. Bounded calls run to their end or the timeout even
// if the caller is interrupted: the change may already be made on the owner, and a process
// that retries an interrupted call (Go's runtime interrupts its threads all the time) must not
// find it half done. A process being killed sees nothing more: its calls end at once.
// Unbounded calls (lock waits, device I/O) end when the caller is interrupted or the owner is
// found down.
func (p *peer) callCtx(parent context.Context, bounded bool) (context.Context, context.CancelFunc) {
	ctx := context.Context(p.m.ctx)
	var cancel context.CancelFunc
	if bounded {
		ctx, cancel = context.WithTimeout(ctx, p.m.cfg.Timeout)
	} else {
		ctx, cancel = context.WithCancel(ctx)
		p.mu.Lock()
		down := p.down
		p.mu.Unlock()
		go func() {
			select {
			case <-down:
				cancel()
			case <-ctx.Done():
			}
		}()
	}
	if parent != nil && parent.Done() != nil {
		// inner, not cancel, in what runs on its own: cancel is replaced below.
		inner := cancel
		end := inner
		if bounded {
			// Only for a process being killed: the kernel waits for the answer before it lets
			// it die, and no one will see the call's outcome.
			end = func() {
				if callerDying(parent) {
					inner()
				}
			}
		}
		stop := context.AfterFunc(parent, end)
		cancel = func() { stop(); inner() }
	}
	if p.local {
		ctx = withOwnMount(withCallerNode(ctx, p.m.cfg.LocalNode))
	}
	return ctx, cancel
}

// callerDying tells whether the process behind a FUSE request that the kernel interrupted is
// being killed: a fatal signal puts SIGKILL among the pending signals of each of its threads,
// the one that made the request included (FUSE names that thread).
func callerDying(ctx context.Context) bool {
	fc, ok := ctx.(*fuse.Context)
	if !ok || fc.Pid == 0 {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.FormatUint(uint64(fc.Pid), 10) + "/status")
	if err != nil {
		return errors.Is(err, os.ErrNotExist) // gone already
	}
	return pendingKill(b)
}

// pendingKill tells whether a /proc/<pid>/status shows SIGKILL pending.
func pendingKill(status []byte) bool {
	for line := range bytes.SplitSeq(status, []byte("\n")) {
		for _, field := range []string{"SigPnd:", "ShdPnd:"} {
			if rest, ok := bytes.CutPrefix(line, []byte(field)); ok {
				mask, err := strconv.ParseUint(string(bytes.TrimSpace(rest)), 16, 64)
				if err == nil && mask&(1<<(syscall.SIGKILL-1)) != 0 {
					return true
				}
			}
		}
	}
	return false
}

// failure turns a transport error into the errno a process sees.
func (p *peer) failure(parent context.Context, bounded bool, err error) syscall.Errno {
	if parent != nil {
		select {
		case <-parent.Done():
			if !bounded || callerDying(parent) {
				return syscall.EINTR
			}
		default:
		}
	}
	p.m.stats.failures.Add(1)
	switch status.Code(err) {
	case codes.Unavailable:
		return syscall.ENOTCONN
	default:
		return syscall.EIO
	}
}

// maxWatchBackoff is the longest wait between attempts to open the Watch stream again.
const maxWatchBackoff = 2 * time.Second

func (p *peer) watchLoop() {
	defer p.m.wg.Done()
	backoff := 50 * time.Millisecond
	for {
		connectedFor, err := p.watchOnce()
		p.endFirstTry()
		p.onDisconnect()
		if p.m.ctx.Err() != nil {
			return
		}
		if connectedFor > 10*time.Second {
			backoff = 50 * time.Millisecond
		}
		p.m.log.Debug("file invalidation stream to node ended; retrying", "node", p.name, "err", err, "retry_in", backoff)
		select {
		case <-time.After(backoff):
		case <-p.m.ctx.Done():
			return
		}
		backoff = min(2*backoff, maxWatchBackoff)
	}
}

// watchOnce runs one Watch stream until it fails, applying invalidations as they come.
func (p *peer) watchOnce() (time.Duration, error) {
	ctx, cancel := context.WithCancel(p.m.ctx)
	defer cancel()
	var stream clientWatch
	if p.local {
		stream = p.m.cfg.Local.openLocalWatch(ctx, p.m.cfg.LocalNode)
	} else {
		conn, err := p.m.cfg.Nodes.Conn(p.name)
		if err != nil {
			return 0, err
		}
		s, err := fspb.NewFilesClient(conn).Watch(ctx)
		if err != nil {
			return 0, err
		}
		stream = s
	}
	// Silence for too long means the owner or the network is gone.
	alive := make(chan struct{}, 1)
	go func() {
		limit := time.NewTimer(max(heartbeat*heartbeatMisses, p.m.cfg.Timeout))
		defer limit.Stop()
		for {
			select {
			case <-alive:
				limit.Reset(heartbeat * heartbeatMisses)
			case <-limit.C:
				cancel()
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	if err := stream.Send(&fspb.WatchUp{Session: p.m.session}); err != nil {
		return 0, err
	}
	hello, err := stream.Recv()
	if err != nil {
		return 0, err
	}
	p.heardFrom()
	// An empty message tells the owner at once that this client answers its heartbeats, so
	// that it drops the stream if this node goes silent.
	if err := stream.Send(&fspb.WatchUp{}); err != nil {
		return 0, err
	}
	start := time.Now()
	p.noteApplied(0) // a new stream numbers its messages from 1
	p.onConnect(hello.Instance)
	for {
		msg, err := stream.Recv()
		if err != nil {
			return time.Since(start), err
		}
		p.heardFrom()
		select {
		case alive <- struct{}{}:
		default:
		}
		if msg.Seq == 0 {
			// A heartbeat: answered, so that the owner knows this node is alive and keeps its
			// locks.
			if err := stream.Send(&fspb.WatchUp{}); err != nil {
				return time.Since(start), err
			}
			continue
		}
		if msg.FlushAll {
			// Answers to requests made before the flush must not be cached after it: the
			// owner may forget that this client holds what they carry once it has the
			// acknowledgement.
			p.epoch.Add(1)
			p.flush()
		} else {
			p.apply(msg.Items)
		}
		p.noteApplied(msg.Seq)
		if err := stream.Send(&fspb.WatchUp{Ack: msg.Seq}); err != nil {
			return time.Since(start), err
		}
	}
}

// noteApplied records that the current Watch stream's message seq is applied, and wakes the
// calls waiting for it.
func (p *peer) noteApplied(seq uint64) {
	p.applied.Store(seq)
	p.appliedMu.Lock()
	if p.appliedSig != nil {
		close(p.appliedSig)
		p.appliedSig = nil
	}
	p.appliedMu.Unlock()
}

// maxAppliedWait bounds a wait for the owner's watch stream to catch up with a call's answer:
// its messages are applied within milliseconds, or the stream is about to be dropped.
const maxAppliedWait = time.Second

// awaitApplied waits until this client has applied the Watch stream's message seq, which the
// owner had sent when it answered a call (EntryReply.watch_seq): a lookup that found nothing
// because another node's rename moved its directory may then be made again by the new path.
// A stream that reconnected meanwhile numbers its messages anew: the wait is bounded.
func (p *peer) awaitApplied(ctx context.Context, seq uint64) {
	if p.applied.Load() >= seq {
		return
	}
	timer := time.NewTimer(maxAppliedWait)
	defer timer.Stop()
	for {
		p.appliedMu.Lock()
		if p.applied.Load() >= seq {
			p.appliedMu.Unlock()
			return
		}
		if p.appliedSig == nil {
			p.appliedSig = make(chan struct{})
		}
		sig := p.appliedSig
		p.appliedMu.Unlock()
		select {
		case <-sig:
		case <-timer.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

func (p *peer) onConnect(instance []byte) {
	// Whatever was cached before the stream existed may be stale.
	p.flush()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.instance != nil && !bytes.Equal(p.instance, instance) {
		p.m.log.Info("node's file server restarted: opening the files open there again", "node", p.name)
	}
	p.instance = instance
	// Files opened on an earlier instance (known from their open's answer, not from
	// p.instance: the file wire may have reached a new instance before this stream did).
	p.startReclaim(instance)
	p.up = true
	p.epoch.Add(1)
	p.endFirstTry()
}

func (p *peer) endFirstTry() { p.firstTryOnce.Do(func() { close(p.firstTry) }) }

// firstTryWait bounds how long calls wait for an owner's first Watch stream; an owner that
// does not answer by then is served uncached, as one whose stream dropped.
const firstTryWait = 2 * time.Second

// awaitFirstTry waits for the first Watch stream to come up or fail (see firstTry).
func (p *peer) awaitFirstTry(ctx context.Context) {
	select {
	case <-p.firstTry:
		return
	default:
	}
	t := time.NewTimer(firstTryWait)
	defer t.Stop()
	select {
	case <-p.firstTry:
	case <-t.C:
	case <-ctx.Done():
	}
}

func (p *peer) onDisconnect() {
	p.mu.Lock()
	was := p.up
	p.up = false
	p.epoch.Add(1)
	if was {
		close(p.down)
		p.down = make(chan struct{})
	}
	p.mu.Unlock()
	if was {
		p.dropCalls()
		p.flush()
	}
}

// cacheable reports whether an answer obtained in epoch may be cached.
func (p *peer) cacheable(epoch uint64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.up && p.epoch.Load() == epoch
}

// apply drops what the owner says changed from the kernel's caches.
func (p *peer) apply(items []*fspb.Invalidation) {
	for _, it := range items {
		p.m.stats.invalidations.Add(1)
		seq := p.invalSeq.Add(1)
		id := idFromPB(it.Id)
		n := p.m.lookupInode(p.name, id)
		if n == nil {
			p.noteStray(id, seq)
			continue
		}
		n.changed()
		if n.busy.Load() > 0 {
			// A change of this node from here is in flight: the kernel holds the locks the
			// invalidation needs until the owner answers, and the owner may be waiting for this
			// very acknowledgement. Two nodes changing one object at once see each other's
			// change once their own call returns.
			go p.invalidate(n, it)
			continue
		}
		p.invalidate(n, it)
	}
}

func (p *peer) invalidate(n *node, it *fspb.Invalidation) {
	if len(it.Name) > 0 {
		name := string(it.Name)
		p.follow(n, name, it)
		if it.Child {
			if child := n.GetChild(name); child != nil {
				if ch, ok := child.Operations().(*node); ok {
					ch.changed()
				}
				child.NotifyContent(0, 0)
			}
		}
		n.notifyEntry(name)
	}
	if it.Data {
		n.NotifyContent(0, 0)
	} else {
		n.NotifyContent(-1, 0)
	}
}

// follow moves the node named name in dir to where another node's rename put it, when this
// client knows the new directory too. Nodes are named to the owner by their path in the tree:
// without the move, a directory the kernel keeps (a process's working directory) would go on
// being named by its old path, and every call on it and below it would fail with ENOENT, where
// locally the process follows the directory. The kernel's own dentries are dropped as usual;
// its next lookup of the new name finds this node there.
//
// A name that is gone (removed, replaced or moved where this client cannot follow) is dropped
// from the names this client knows a file by, as a removal through this mount does: a
// hard-linked file would otherwise go on being named to the owner by a name that no longer
// exists, and every call on it fail with ENOENT, through its other names too. Directories
// keep theirs: they have one name, and a working directory is better left where it was than
// without any.
func (p *peer) follow(dir *node, name string, it *fspb.Invalidation) {
	if it.MovedTo != nil && idFromPB(it.MovedTo) == dir.identity() && string(it.MovedName) == name {
		return // renamed onto itself
	}
	child := dir.GetChild(name)
	if child == nil {
		return
	}
	if _, ok := child.Operations().(*node); !ok {
		return
	}
	forget := func() {
		if it.Gone && !child.IsDir() {
			dir.RmChild(name)
		}
	}
	if it.MovedTo == nil || len(it.MovedName) == 0 {
		forget()
		return
	}
	to := p.m.lookupInode(p.name, idFromPB(it.MovedTo))
	if to == nil || (to == dir && string(it.MovedName) == name) {
		forget()
		return
	}
	// A tree that is behind the owner's could put the new directory below the moved node:
	// moving it there would make a loop, so the names are only dropped.
	if below(to.EmbeddedInode(), child) {
		forget()
		return
	}
	if it.Exchanged {
		if other := to.GetChild(string(it.MovedName)); other == nil || !below(dir.EmbeddedInode(), other) {
			dir.ExchangeChild(name, to.EmbeddedInode(), string(it.MovedName))
			p.m.moves.Add(1)
		}
		return
	}
	dir.MvChild(name, to.EmbeddedInode(), string(it.MovedName), true)
	p.m.moves.Add(1)
}

// below reports whether in is ancestor or lies below it in the client's tree.
func below(in, ancestor *fs.Inode) bool {
	for ; in != nil; _, in = in.Parent() {
		if in == ancestor {
			return true
		}
	}
	return false
}

// flush drops everything the kernel caches from this owner.
func (p *peer) flush() {
	p.m.stats.flushes.Add(1)
	for _, n := range p.m.inodesOf(p.name) {
		n.changed()
		if n.busy.Load() > 0 {
			// As in apply: the kernel holds what the invalidation needs (a write in flight
			// holds its pages) until the change ends, which may wait for this very flush (a
			// write waiting for the reclaim that follows it on a reconnection).
			go n.dropKernelCaches()
			continue
		}
		n.dropKernelCaches()
	}
	// Negative entries are nowhere in the tree: drop the node's whole directory entry.
	p.mu.Lock()
	known := p.rootInode != nil
	p.mu.Unlock()
	if known {
		p.m.root.NotifyEntry(p.name)
	}
}

// dropKernelCaches drops what the kernel caches of n: its pages and attributes, and its
// children's entries.
func (n *node) dropKernelCaches() {
	n.NotifyContent(0, 0)
	if n.IsDir() {
		for name := range n.Children() {
			n.NotifyEntry(name)
		}
	}
}

// abortFUSE ends the FUSE connection of the mount whose device is dev through the fusectl file
// system, mounting it for the moment if it is not at its usual place.
func abortFUSE(dev uint64) error {
	if dev == 0 {
		return errors.New("the mount's device is unknown")
	}
	// The connection is named by the kernel's encoding of the device number.
	conn := strconv.FormatUint(uint64(unix.Major(dev))<<20|uint64(unix.Minor(dev)), 10)
	abort := func(dir string) error {
		return os.WriteFile(filepath.Join(dir, conn, "abort"), []byte("1"), 0)
	}
	if err := abort("/sys/fs/fuse/connections"); err == nil {
		return nil
	}
	dir, err := os.MkdirTemp("", "ssi-fusectl-")
	if err != nil {
		return fmt.Errorf("abort FUSE connection %s: %w", conn, err)
	}
	defer os.Remove(dir)
	if err := unix.Mount("fusectl", dir, "fusectl", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("abort FUSE connection %s: mount fusectl: %w", conn, err)
	}
	defer unix.Unmount(dir, unix.MNT_DETACH)
	if err := abort(dir); err != nil {
		return fmt.Errorf("abort FUSE connection %s: %w", conn, err)
	}
	return nil
}
