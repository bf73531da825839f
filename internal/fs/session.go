package fs

import (
	"context"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// sessionGrace is how long an owner keeps a client session's open files and locks after its
// Watch stream went away. A client agent that does not come back within it loses them.
const sessionGrace = 30 * time.Second

func (s *Server) grace() time.Duration {
	if s.cfg.grace != 0 {
		return s.cfg.grace
	}
	return sessionGrace
}

const maxSessionIDLen = 64

// session is one client mount's state on this owner: its open files, its locks, and its
// invalidation stream.
type session struct {
	key   string
	node  string
	idx   uint32
	graph *lockGraph // the server's

	mu       sync.Mutex
	handles  map[uint64]*openFile
	locks    map[lockKey]*lockFile
	inflight map[fileID]int
	stream   *watchStream
	expiry   *time.Timer
	gone     bool
}

// openFile is a file a client opened on this owner.
type openFile struct {
	fd      int
	id      fileID
	flags   int
	watched bool
	regular bool
	// exported: the object is exported, not a directory on the way to the exports, which
	// may be opened (to be listed) but not changed.
	exported bool
	// reader, for pseudo files, devices and fifos, is who opened it: reads of those run as them,
	// since some check the reader at each read rather than at open (/proc/<pid>/stat hides
	// a process's addresses from those who may not trace it). Nil for others, read as the
	// agent: a read of an ordinary file checks nothing.
	reader *identity
	// opener is who opened it: writes the kernel makes with no process behind them (a shared
	// mapping's pages written back) are theirs.
	opener identity
	// counted is where the file counts as one of uid's open files, until it closes.
	counted *userHandles
	uid     uint32
	// running, for a file a client opened to execute it, is where the owner counts it as
	// running until the handle closes.
	running *runningFiles

	// use is held (read) while the descriptor is used and (write) to close it.
	use    sync.RWMutex
	closed bool
	// flocks says a client took an flock on the descriptor and has not released it.
	flocks atomic.Bool
}

func anyFlocked(handles map[uint64]*openFile) bool {
	for _, f := range handles {
		if f.flocks.Load() {
			return true
		}
	}
	return false
}

func (s *Server) session(ctx context.Context, id []byte) (*session, error) {
	node, err := s.identify(ctx)
	if err != nil {
		return nil, err
	}
	if len(id) == 0 || len(id) > maxSessionIDLen {
		return nil, status.Errorf(codes.InvalidArgument, "file session id must be 1 to %d bytes, got %d: the client is broken", maxSessionIDLen, len(id))
	}
	key := node + "\x00" + string(id)
	s.mu.Lock()
	defer s.mu.Unlock()
	if sess := s.sessions[key]; sess != nil {
		return sess, nil
	}
	s.nextIdx++
	sess := &session{
		key:      key,
		node:     node,
		idx:      s.nextIdx,
		graph:    s.lockGraph,
		handles:  make(map[uint64]*openFile),
		locks:    make(map[lockKey]*lockFile),
		inflight: make(map[fileID]int),
	}
	sess.expiry = time.AfterFunc(s.grace(), func() { s.expire(sess) })
	s.sessions[key] = sess
	s.byIdx[sess.idx] = sess
	return sess, nil
}

func (s *Server) sessionByIndex(idx uint32) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byIdx[idx]
}

func (s *Server) allSessions() []*session {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*session, 0, len(s.sessions))
	for _, sess := range s.sessions {
		out = append(out, sess)
	}
	return out
}

func (sess *session) attach(ws *watchStream) {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	if sess.stream != nil {
		sess.stream.stop()
	}
	sess.stream = ws
	sess.expiry.Stop()
}

func (s *Server) detach(sess *session, ws *watchStream) {
	ws.stop()
	sess.mu.Lock()
	defer sess.mu.Unlock()
	if sess.stream == ws {
		sess.stream = nil
		sess.expiry.Reset(s.grace())
	}
}

func (sess *session) currentStream() *watchStream {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	return sess.stream
}

// expire forgets a session whose client did not come back: its files close, its locks go.
func (s *Server) expire(sess *session) {
	s.mu.Lock()
	sess.mu.Lock()
	if sess.stream != nil || sess.gone {
		sess.mu.Unlock()
		s.mu.Unlock()
		return
	}
	sess.gone = true
	delete(s.sessions, sess.key)
	delete(s.byIdx, sess.idx)
	handles, locks := sess.handles, sess.locks
	sess.handles, sess.locks = map[uint64]*openFile{}, map[lockKey]*lockFile{}
	sess.mu.Unlock()
	s.mu.Unlock()
	s.cache.forget(sess.idx, math.MaxUint64)
	s.lockGraph.dropSession(sess.idx)
	if len(handles) > 0 || len(locks) > 0 {
		s.log.Info("client session expired; closing its files and releasing its locks",
			"client", sess.node, "files", len(handles), "lock_owners", len(locks))
	}
	for _, lf := range locks {
		unix.Close(lf.fd)
	}
	for _, f := range handles {
		f.close()
	}
}

// begin and end bracket a change by this session to objects: while it lasts, invalidations of
// those objects sent to this session are not waited for.
func (sess *session) begin(ids ...fileID) {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	for _, id := range ids {
		if id != (fileID{}) {
			sess.inflight[id]++
		}
	}
}

func (sess *session) end(ids ...fileID) {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	for _, id := range ids {
		if id == (fileID{}) {
			continue
		}
		if sess.inflight[id]--; sess.inflight[id] <= 0 {
			delete(sess.inflight, id)
		}
	}
}

func (sess *session) busyWith(ids []fileID) bool {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	for _, id := range ids {
		if sess.inflight[id] > 0 {
			return true
		}
	}
	return false
}

func (sess *session) addHandle(h uint64, f *openFile) syscall.Errno {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	if sess.gone {
		return syscall.ESTALE
	}
	sess.handles[h] = f
	return 0
}

// handle returns the open file h with its descriptor held for use; call release when done.
func (sess *session) handle(h uint64) (*openFile, syscall.Errno) {
	sess.mu.Lock()
	f := sess.handles[h]
	sess.mu.Unlock()
	if f == nil {
		return nil, syscall.EBADF
	}
	f.use.RLock()
	if f.closed {
		f.use.RUnlock()
		return nil, syscall.EBADF
	}
	return f, 0
}

func (f *openFile) release() { f.use.RUnlock() }

func (f *openFile) close() {
	f.use.Lock()
	defer f.use.Unlock()
	if !f.closed {
		f.closed = true
		unix.Close(f.fd)
		if f.counted != nil {
			f.counted.put(f.uid)
		}
		if f.running != nil {
			f.running.done(f.id)
		}
	}
}

func (sess *session) removeHandle(h uint64) *openFile {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	f := sess.handles[h]
	delete(sess.handles, h)
	return f
}

func (sess *session) String() string { return fmt.Sprintf("session %d of %s", sess.idx, sess.node) }
