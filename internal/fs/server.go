package fs

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"

	"github.com/ssi-cluster/ssi/internal/api"
	"github.com/ssi-cluster/ssi/internal/fs/fspb"
)

// ServerConfig says what a node exports to the rest of the cluster.
type ServerConfig struct {
	// Root is the directory clients see as /ssi/<node>; "/" normally.
	Root string
	// ReadOnly refuses every change with EROFS.
	ReadOnly bool
	// RootSquash runs requests from uid 0 (and gid 0) as nobody (65534).
	RootSquash bool
	// Exports, if not empty, limits what is visible to these absolute paths (as seen on this
	// node) and what lies below them; the directories leading to them can be looked at but not
	// changed.
	Exports []string
	Logger  *slog.Logger
	// StateDir keeps what the server must know after a restart: whether clients may have
	// held locks when it stopped, which decides whether it has a grace period for their
	// reclaims (reclaim.go). Empty: nothing is kept, and every start has one.
	StateDir string

	// identify names the calling node; nil means from its mTLS certificate. Tests replace it.
	identify func(context.Context) (string, error)
	// identifyConn names the node at the other end of a file wire connection; nil means from
	// its mTLS certificate. Tests replace it.
	identifyConn func(net.Conn) (string, error)
	// grace replaces sessionGrace when not zero. Tests shorten it.
	grace time.Duration
	// reclaimGrace replaces reclaimGracePeriod when not zero; negative means none. Tests
	// shorten it.
	reclaimGrace time.Duration
	// cacheLimit replaces defaultCacheLimit when not zero. Tests lower it.
	cacheLimit int
	// callsPerUser replaces maxCallsPerUser when not zero. Tests lower it.
	callsPerUser int
	// handlesPerUser replaces the share of the agent's descriptors a user may hold open
	// (userHandles) when not zero. Tests lower it.
	handlesPerUser int
	// afterOpen, when a test sets it, runs when an open or create has been made, before it
	// is answered: a slow owner.
	afterOpen func()
}

// Server serves this node's files to the other agents' FUSE clients (and, without gRPC, to the
// local one). Each request runs on a thread that has the calling user's file system
// credentials, with every path resolved inside the exported tree.
type Server struct {
	fspb.UnimplementedFilesServer

	cfg      ServerConfig
	log      *slog.Logger
	rootFD   int
	exports  []export
	creds    *creds
	watcher  *diskWatcher
	cache    *cacheTable
	kinds    devKinds
	instance []byte
	// graceEnd ends the grace period that holds lock requests back for reclaims (reclaim.go).
	graceEnd time.Time
	// marked says this instance has recorded on disk that clients may hold locks
	// (reclaim.go).
	marked   atomic.Bool
	markMu   sync.Mutex
	identify func(context.Context) (string, error)

	identifyConn  func(net.Conn) (string, error)
	wireMu        sync.Mutex
	wireListeners map[net.Listener]struct{}
	wireConns     map[net.Conn]struct{}

	mu       sync.Mutex
	sessions map[string]*session
	byIdx    map[uint32]*session
	nextIdx  uint32

	// renames are the renames between moving a name and queueing their invalidations
	// (watchSeq).
	renames inflight

	// lockGraph holds the POSIX locks and waits of all sessions, for deadlock detection.
	lockGraph *lockGraph
	// calls bounds each user's calls under way (blocking.go).
	calls *userCallSlots
	// handles counts each user's open files (blocking.go).
	handles *userHandles
	// running counts the files clients run, whose writes the owner refuses (running.go).
	running *runningFiles

	stats serverStats
	// lastTrim is when trimCache last had a client flush (unix nanoseconds); trimPending
	// says a later check is scheduled.
	lastTrim    atomic.Int64
	trimPending atomic.Bool
	closed      chan struct{}
	closeOnce   sync.Once
	// life is held (read) by every request while it uses the server's descriptors, so that
	// Close does not close them, and let their numbers be reused, under a request.
	life sync.RWMutex
}

// NewServer opens the exported tree and starts watching it for direct changes.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Root == "" {
		cfg.Root = "/"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	rootFD, exports, err := openExports(cfg.Root, cfg.Exports)
	if err != nil {
		return nil, err
	}
	creds, err := newCreds()
	if err != nil {
		closeExports(rootFD, exports)
		return nil, err
	}
	instance := make([]byte, 16)
	rand.Read(instance)
	s := &Server{
		cfg:           cfg,
		log:           cfg.Logger,
		rootFD:        rootFD,
		exports:       exports,
		creds:         creds,
		cache:         newCacheTable(cfg.cacheLimit),
		instance:      instance,
		graceEnd:      graceEnd(cfg),
		identify:      cfg.identify,
		identifyConn:  cfg.identifyConn,
		wireListeners: make(map[net.Listener]struct{}),
		wireConns:     make(map[net.Conn]struct{}),
		sessions:      make(map[string]*session),
		byIdx:         make(map[uint32]*session),
		lockGraph:     newLockGraph(),
		calls:         newUserCallSlots(cfg.callsPerUser),
		handles:       newUserHandles(cfg.handlesPerUser),
		running:       newRunningFiles(),
		closed:        make(chan struct{}),
	}
	if s.identify == nil {
		s.identify = nodeFromCert
	}
	if s.identifyConn == nil {
		s.identifyConn = wireNode
	}
	if !creds.switchable {
		s.log.Warn("file server lacks CAP_SETUID/CAP_SETGID: every request runs as the agent's own user; run the agent as root")
	}
	s.watcher, err = newDiskWatcher(s.log, s.diskChanged)
	if err != nil {
		s.log.Warn("cannot watch this node's disk for direct changes; clients will not cache its files for long (run the agent as root on Linux 5.9 or later)",
			"err", err)
		s.watcher = nil
	}
	return s, nil
}

// Register adds the Files service to an agent's peer gRPC server, which must authenticate
// callers with node certificates and use api.Codec (api.ServerOptions do): large reads and
// writes are served as frames.
func (s *Server) Register(g *grpc.Server) { g.RegisterService(&filesService, s) }

// filesService is the Files service with the file data of Read and Write passed as frames
// (api.Frame): a read's data is sent from the buffer it was read into, a write's written from
// the buffers gRPC received it in (see writeRequestData).
var filesService = func() grpc.ServiceDesc {
	d := fspb.Files_ServiceDesc
	d.Methods = slices.Clone(d.Methods)
	for i, m := range d.Methods {
		switch m.MethodName {
		case "Read":
			d.Methods[i].Handler = framedHandler(fspb.Files_Read_FullMethodName, func(dec func(any) error) (*fspb.ReadRequest, error) {
				in := new(fspb.ReadRequest)
				return in, dec(in)
			}, (*Server).readFrame)
		case "Write":
			d.Methods[i].Handler = framedHandler(fspb.Files_Write_FullMethodName, func(dec func(any) error) (*api.Frame, error) {
				in := new(api.Frame)
				return in, dec(in)
			}, (*Server).writeFrame)
		}
	}
	return d
}()

// framedHandler is a unary handler as generated, but decoding its request with decode and
// serving it with serve.
func framedHandler[Req any](method string, decode func(dec func(any) error) (Req, error), serve func(*Server, context.Context, Req) (any, error)) grpc.MethodHandler {
	return func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
		in, err := decode(dec)
		if err != nil {
			return nil, err
		}
		handler := func(ctx context.Context, req any) (any, error) {
			return serve(srv.(*Server), ctx, req.(Req))
		}
		if interceptor == nil {
			return handler(ctx, in)
		}
		return interceptor(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: method}, handler)
	}
}

// readBuffers hold the data of reads until gRPC has sent it.
var readBuffers = api.NewBuffers(maxIO)

// readFrame serves a Read, its data as a frame.
func (s *Server) readFrame(ctx context.Context, req *fspb.ReadRequest) (any, error) {
	bp := readBuffers.Get(min(int(req.Size), maxIO))
	reply, err := s.read(ctx, req, *bp)
	if err != nil || len(reply.Data) == 0 {
		readBuffers.Put(bp)
		if reply != nil {
			reply.Data = nil
		}
		return reply, err
	}
	*bp = (*bp)[:len(reply.Data)]
	reply.Data = nil
	frame, err := api.NewMessageFrame(reply, readReplyData, mem.NewBuffer(bp, readBuffers))
	if err != nil {
		return nil, status.Errorf(codes.Internal, "encode a Read reply: %v", err)
	}
	return frame, nil
}

// writeFrame serves a Write whose data is left where gRPC received it.
func (s *Server) writeFrame(ctx context.Context, frame *api.Frame) (any, error) {
	defer frame.Free()
	req := new(fspb.WriteRequest)
	data, err := frame.DecodeSplit(req, writeRequestData)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "decode a Write request: %v", err)
	}
	return s.write(ctx, req, data)
}

// Close stops serving: watch streams end, every client's files close and locks go.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		close(s.closed)
		s.closeWire()
		s.life.Lock()
		defer s.life.Unlock()
		if s.watcher != nil {
			s.watcher.close()
		}
		locked := false
		for _, sess := range s.allSessions() {
			sess.mu.Lock()
			sess.gone = true
			handles, locks := sess.handles, sess.locks
			locked = locked || len(locks) > 0 || anyFlocked(handles)
			sess.handles, sess.locks = map[uint64]*openFile{}, map[lockKey]*lockFile{}
			sess.mu.Unlock()
			s.lockGraph.dropSession(sess.idx)
			for _, lf := range locks {
				unix.Close(lf.fd)
			}
			for _, f := range handles {
				f.close()
			}
		}
		closeExports(s.rootFD, s.exports)
		if !locked {
			s.unmarkLocks()
		}
	})
	return nil
}

// ServerStats is what `ssi fs` shows about a node's exports.
type ServerStats struct {
	Root              string
	Exports           []string
	ReadOnly          bool
	RootSquash        bool
	Sessions          int
	OpenFiles         int
	WatchedDirs       int
	Ops               uint64
	BytesRead         uint64
	BytesWritten      uint64
	InvalidationsSent uint64
	DiskEvents        uint64
	// CacheEntries counts the (object, client) pairs whose cached copies the server tracks.
	CacheEntries int
}

// Stats reports the server's configuration and counters.
func (s *Server) Stats() ServerStats {
	st := ServerStats{
		Root:              s.cfg.Root,
		Exports:           append([]string(nil), s.cfg.Exports...),
		ReadOnly:          s.cfg.ReadOnly,
		RootSquash:        s.cfg.RootSquash,
		Ops:               s.stats.ops.Load(),
		BytesRead:         s.stats.bytesRead.Load(),
		BytesWritten:      s.stats.bytesWritten.Load(),
		InvalidationsSent: s.stats.invalidations.Load(),
		DiskEvents:        s.stats.diskEvents.Load(),
		CacheEntries:      s.cache.size(),
	}
	for _, sess := range s.allSessions() {
		st.Sessions++
		sess.mu.Lock()
		st.OpenFiles += len(sess.handles)
		sess.mu.Unlock()
	}
	if s.watcher != nil {
		st.WatchedDirs = s.watcher.count()
	}
	return st
}

// callerNode marks contexts of calls whose node is known without gRPC: this node's own mount,
// and file wire connections, named by their certificate when they were accepted.
type callerNode struct{}

func withCallerNode(ctx context.Context, node string) context.Context {
	return context.WithValue(ctx, callerNode{}, node)
}

// ownMount marks the contexts of calls from this node's own mount, which no other node can
// make: the caller is a user of this very node.
type ownMount struct{}

func withOwnMount(ctx context.Context) context.Context {
	return context.WithValue(ctx, ownMount{}, true)
}

func fromOwnMount(ctx context.Context) bool {
	own, _ := ctx.Value(ownMount{}).(bool)
	return own
}

func nodeFromCert(ctx context.Context) (string, error) {
	if node, ok := ctx.Value(callerNode{}).(string); ok {
		return node, nil
	}
	n, err := api.NodeFrom(ctx)
	if err != nil {
		return "", err
	}
	return n.Name, nil
}

// call is one request being served: its session and the user it runs as.
type call struct {
	s    *Server
	sess *session
	who  identity
}

// begin starts serving a request; the caller must call end when done with it.
func (s *Server) begin(ctx context.Context, sessionID []byte, caller *fspb.Caller) (*call, error) {
	s.stats.ops.Add(1)
	s.life.RLock()
	select {
	case <-s.closed:
		s.life.RUnlock()
		return nil, status.Error(codes.Unavailable, "file server is shutting down")
	default:
	}
	sess, err := s.session(ctx, sessionID)
	if err != nil {
		s.life.RUnlock()
		return nil, err
	}
	c := &call{s: s, sess: sess}
	if caller != nil {
		c.who, err = s.identityOf(caller, !fromOwnMount(ctx))
		if err != nil {
			s.life.RUnlock()
			return nil, err
		}
	}
	return c, nil
}

func (c *call) end() { c.s.life.RUnlock() }

// identityOf maps the caller to who the owner acts as: their uid, gid, groups and
// capabilities; root keeps its privileges unless squashed. Root squash is for other
// nodes' root (squashable): this node's own root, through its own mount, is root here anyway.
func (s *Server) identityOf(c *fspb.Caller, squashable bool) (identity, error) {
	if len(c.Groups) > 65536 {
		return identity{}, status.Errorf(codes.InvalidArgument, "caller has %d supplementary groups, more than Linux allows (65536)", len(c.Groups))
	}
	who := identity{uid: c.Uid, gid: c.Gid, groups: c.Groups}
	if s.cfg.RootSquash && squashable {
		if who.uid == 0 {
			who.uid = nobodyID
		}
		if who.gid == 0 {
			who.gid = nobodyID
		}
		kept := make([]uint32, 0, len(who.groups))
		for _, g := range who.groups {
			if g != 0 {
				kept = append(kept, g)
			}
		}
		who.groups = kept
	}
	switch {
	case s.cfg.RootSquash && squashable:
		// Root of other nodes is nobody here, and so is whatever a capability would let them do.
		who.caps = 0
	case c.Capabilities != nil:
		who.caps = *c.Capabilities
		if all := s.creds.permitted(); who.caps&all == all {
			// Root, as a rule: nothing to take away (and no thread to switch for it).
			who.caps = allCaps
		}
	case who.uid == 0:
		who.caps = allCaps
	}
	return who, nil
}

// look runs fn, which changes nothing on disk, with the caller's credentials, in one of the
// caller's slots.
func (c *call) look(fn func() syscall.Errno) syscall.Errno {
	defer c.s.calls.acquire(c.who.uid)()
	var errno syscall.Errno
	if err := c.s.creds.run(c.who, false, func() { errno = fn() }); err != nil {
		c.s.log.Error("file server could not take on a caller's credentials", "err", err)
		return syscall.EIO
	}
	return errno
}

// change runs fn, which changes the disk, with the caller's credentials, in one of the
// caller's slots, telling the disk watcher that what this thread does meanwhile is published
// already.
func (c *call) change(fn func() syscall.Errno) syscall.Errno {
	defer c.s.calls.acquire(c.who.uid)()
	var errno syscall.Errno
	err := c.s.creds.run(c.who, true, func() {
		if w := c.s.watcher; w != nil {
			tid := int32(unix.Gettid())
			w.enter(tid)
			defer w.leave(tid)
		}
		errno = fn()
	})
	if err != nil {
		c.s.log.Error("file server could not take on a caller's credentials", "err", err)
		return syscall.EIO
	}
	return errno
}

// watchDir starts watching the directory fd (identity id) for direct changes, as the agent.
func (s *Server) watchDir(fd int, id fileID) bool {
	if s.watcher == nil {
		return false
	}
	if watched, known := s.watcher.known(id); known {
		return watched
	}
	done := make(chan bool)
	// A new goroutine runs on an ordinary thread, with the agent's credentials, not the user's.
	go func() { done <- s.watcher.watch(fd, id) }()
	return <-done
}

// describe fills the attributes of an object from its statx, learning its file system's kind
// through fd (the object itself or, if it is not a mount point, its directory) when needed.
func (s *Server) describe(st *unix.Statx_t, objectFD func() (int, bool), at objectAt) (*fspb.Attr, bool) {
	a := attrFromStatx(st)
	if acl, ok := aclsOf(at, a.Mode); ok {
		a.Acl = &acl
	}
	info, ok := s.kinds.get(a.Id.Dev)
	if !ok {
		fd, closeIt := objectFD()
		if fd >= 0 {
			info = s.kinds.learn(a.Id.Dev, fd)
			if closeIt {
				unix.Close(fd)
			}
		}
	}
	a.Direct = isDevice(a.Mode) || pseudoFS[info.ftype]
	return a, info.cluster
}

// devInfo is what the server knows about one mounted file system.
type devInfo struct {
	ftype int64
	// cluster: it is an ssi mount; the server does not look into it, or a request could loop
	// back through the cluster to itself.
	cluster bool
}

// devKinds remembers, per device number, what kind of file system is mounted there.
type devKinds struct {
	mu    sync.Mutex
	kinds map[uint64]devInfo
}

func (d *devKinds) get(dev uint64) (devInfo, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	info, ok := d.kinds[dev]
	return info, ok
}

func (d *devKinds) learn(dev uint64, fd int) devInfo {
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		return devInfo{}
	}
	info := devInfo{ftype: sfs.Type}
	if sfs.Type == unix.FUSE_SUPER_MAGIC {
		// FUSE mounts come and go on reused device numbers: look each time.
		info.cluster = isClusterMount(dev)
		return info
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.kinds == nil {
		d.kinds = make(map[uint64]devInfo)
	}
	d.kinds[dev] = info
	return info
}

// fuseType is the file system type of the cluster tree's mounts in /proc/self/mountinfo.
const fuseType = "fuse.ssi"

// isClusterMount reports whether dev is one of the cluster tree's own FUSE mounts.
func isClusterMount(dev uint64) bool {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		// Unknown: refusing is the safe side, a loop through the cluster would hang requests.
		return true
	}
	defer f.Close()
	want := fmt.Sprintf("%d:%d", unix.Major(dev), unix.Minor(dev))
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 || fields[2] != want {
			continue
		}
		for i, field := range fields {
			if field == "-" && i+1 < len(fields) {
				if fields[i+1] == fuseType {
					return true
				}
			}
		}
	}
	return false
}

// newHandleID returns an unguessable, non-zero handle number.
func newHandleID() uint64 {
	var b [8]byte
	for {
		rand.Read(b[:])
		if h := binary.LittleEndian.Uint64(b[:]); h != 0 {
			return h
		}
	}
}
