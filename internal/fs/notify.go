package fs

import (
	"context"
	"errors"
	"hash/maphash"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ssi-cluster/ssi/internal/fs/fspb"
	"golang.org/x/sys/unix"
)

// How the owner keeps client caches coherent (see docs/fs.md):
//
//   - Every reply that lets a client cache something (attributes, a directory entry, a page of
//     data) first records the client session as a cacher of that object.
//   - A change made through the file server takes the object's cachers and sends each of them an
//     invalidation over its Watch stream, and waits for the acknowledgement (sent once the
//     client's kernel dropped the entry) before answering the writer. A client that does not
//     acknowledge in time loses its stream, which makes it drop everything it cached here.
//   - A reply computed while the object changed concurrently is marked not cacheable, so the
//     race between reading an object and recording the reader as a cacher cannot leave a stale
//     entry behind.
//   - Changes made directly on the owner's disk arrive from the disk watcher and are sent to every
//     session without waiting.

// ackTimeout bounds how long a change waits for one client to drop its cached copy.
const ackTimeout = 2 * time.Second

// cacheTable records which sessions may cache which objects, and when each object last changed.
//
// It is bounded: past its limit, the session holding the most entries is made to drop its
// whole cache of this owner, and its entries from before go once it acknowledges (trimCache,
// forget). Without that it would grow with every object any client ever looked at, and with
// every client session that came and went.
type cacheTable struct {
	mu sync.Mutex
	// holders are the sessions that may cache an object's attributes or data. An invalidation
	// makes the client drop all of that, so a change takes them off the list.
	holders map[fileID][]held
	// entries are the sessions that may cache names (found or not found) in a directory, or
	// its listing. An invalidation drops one name only and the client keeps the others, so a
	// change leaves them on the list.
	entries map[fileID][]held
	// count is the number of entries (in holders and entries) of each session.
	count  map[uint32]int
	total  int
	limit  int
	clock  uint64
	stamps [4096]uint64 // per hash bucket of fileID: clock of the last change
	seed   maphash.Seed
}

// held is one session's entry for an object: at is the clock when it last held it, which
// tells a hold from before the session last dropped its cache from one after.
type held struct {
	idx uint32
	at  uint64
}

// defaultCacheLimit bounds the entries of the cache table: ~100 bytes each, so ~100 MiB.
const defaultCacheLimit = 1 << 20

func newCacheTable(limit int) *cacheTable {
	if limit <= 0 {
		limit = defaultCacheLimit
	}
	return &cacheTable{
		holders: make(map[fileID][]held), entries: make(map[fileID][]held), count: make(map[uint32]int),
		limit: limit, seed: maphash.MakeSeed(),
	}
}

func (c *cacheTable) bucket(id fileID) int {
	var h maphash.Hash
	h.SetSeed(c.seed)
	var b [24]byte
	putUint64(b[0:], id.dev)
	putUint64(b[8:], id.ino)
	putUint64(b[16:], uint64(id.btime))
	h.Write(b[:])
	return int(h.Sum64() % uint64(len(c.stamps)))
}

func putUint64(b []byte, v uint64) {
	for i := range 8 {
		b[i] = byte(v >> (8 * i))
	}
}

// now is read before an object's state is read; see hold.
func (c *cacheTable) now() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.clock
}

// hold records session idx as a cacher of the objects ids and of the names in the directories
// dirs, and reports whether none of them changed since the clock read start: only then may the
// client cache what it was told. over says the table is past its limit (see heaviest).
func (c *cacheTable) hold(idx uint32, start uint64, ids, dirs []fileID) (stable, over bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	stable = true
	for _, set := range []struct {
		table map[fileID][]held
		ids   []fileID
	}{{c.holders, ids}, {c.entries, dirs}} {
		for _, id := range set.ids {
			if id == (fileID{}) {
				continue
			}
			h := set.table[id]
			if i := slices.IndexFunc(h, func(x held) bool { return x.idx == idx }); i >= 0 {
				h[i].at = c.clock
			} else {
				set.table[id] = append(h, held{idx: idx, at: c.clock})
				c.count[idx]++
				c.total++
			}
			if c.stamps[c.bucket(id)] > start {
				stable = false
			}
		}
	}
	return stable, c.total > c.limit
}

// take stamps id as changed and returns its cachers other than except: those of its
// attributes and data, which it removes, and, for a change of a name in directory id (entry),
// those of its names, which it keeps.
func (c *cacheTable) take(id fileID, entry bool, except uint32) []uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.clock++
	c.stamps[c.bucket(id)] = c.clock
	var out []uint32
	if h := c.holders[id]; len(h) > 0 {
		var keep []held
		for _, x := range h {
			if x.idx == except {
				keep = append(keep, x)
			} else {
				out = append(out, x.idx)
				c.uncount(x.idx)
			}
		}
		if len(keep) == 0 {
			delete(c.holders, id)
		} else {
			c.holders[id] = keep
		}
	}
	if entry {
		for _, x := range c.entries[id] {
			if x.idx != except && !slices.Contains(out, x.idx) {
				out = append(out, x.idx)
			}
		}
	}
	return out
}

func (c *cacheTable) uncount(idx uint32) {
	c.total--
	if c.count[idx]--; c.count[idx] <= 0 {
		delete(c.count, idx)
	}
}

// mark advances the clock and returns it: a session's holds from before a mark made when it
// reattached are of a cache it has since dropped (forget).
func (c *cacheTable) mark() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.clock++
	return c.clock
}

// forget removes session idx's entries held before the clock read before.
func (c *cacheTable) forget(idx uint32, before uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.count[idx] == 0 {
		return
	}
	for _, table := range []map[fileID][]held{c.holders, c.entries} {
		for id, h := range table {
			kept := slices.DeleteFunc(h, func(x held) bool {
				if x.idx == idx && x.at < before {
					c.uncount(idx)
					return true
				}
				return false
			})
			if len(kept) == 0 {
				delete(table, id)
			} else {
				table[id] = kept
			}
		}
	}
}

// heaviest returns the session with the most entries and their number.
func (c *cacheTable) heaviest() (idx uint32, n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, k := range c.count {
		if k > n {
			idx, n = i, k
		}
	}
	return idx, n
}

// size returns the number of entries.
func (c *cacheTable) size() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.total
}

// hold records sess as a cacher (cacheTable.hold) and keeps the table within its limit.
func (s *Server) hold(sess *session, start uint64, ids, dirs []fileID) (stable bool) {
	stable, over := s.cache.hold(sess.idx, start, ids, dirs)
	if over {
		s.trimCache()
	}
	return stable
}

// trimCache makes the session with the most cache entries drop its whole cache of this owner
// (a FlushAll on its Watch stream), and forgets the entries it held before, once the client
// acknowledges. At most once a second; a call within that second checks again when it is over.
func (s *Server) trimCache() {
	now := time.Now().UnixNano()
	last := s.lastTrim.Load()
	if wait := time.Duration(last + int64(time.Second) - now); wait > 0 {
		if s.trimPending.CompareAndSwap(false, true) {
			time.AfterFunc(wait, func() {
				s.trimPending.Store(false)
				if s.cache.size() > s.cache.limit {
					s.trimCache()
				}
			})
		}
		return
	}
	if !s.lastTrim.CompareAndSwap(last, now) {
		return
	}
	idx, n := s.cache.heaviest()
	sess := s.sessionByIndex(idx)
	var stream *watchStream
	if sess != nil {
		stream = sess.currentStream()
	}
	if stream == nil {
		// Gone, or not connected: it caches nothing from here until it reattaches, and
		// flushes then.
		s.cache.forget(idx, math.MaxUint64)
		return
	}
	// The client caches, after the flush, only answers to requests it makes after it: those
	// reach this owner after the mark, and their holds are newer than it.
	mark := s.cache.mark()
	seq, ok := stream.send(&fspb.WatchDown{FlushAll: true})
	if !ok {
		return // the stream is gone; its entries go when the client reattaches
	}
	s.log.Info("client caches too many of this node's files; making it drop its cache here",
		"client", sess.node, "entries", n, "limit", s.cache.limit)
	go func() {
		if stream.wait(seq, ackTimeout) {
			s.cache.forget(idx, mark)
		}
	}()
}

// watchStream is the downward half of one session's attached Watch stream.
type watchStream struct {
	out  chan *fspb.WatchDown
	done chan struct{}
	once sync.Once

	mu     sync.Mutex
	seq    uint64
	acked  uint64
	ackSig chan struct{} // closed and replaced on every acknowledgement
}

func newWatchStream() *watchStream {
	return &watchStream{out: make(chan *fspb.WatchDown, 1024), done: make(chan struct{}), ackSig: make(chan struct{})}
}

func (w *watchStream) stop() { w.once.Do(func() { close(w.done) }) }

// sentSeq is the sequence number of the last message queued.
func (w *watchStream) sentSeq() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.seq
}

// send queues a message without blocking. A client that cannot keep up loses its stream.
func (w *watchStream) send(m *fspb.WatchDown) (uint64, bool) {
	w.mu.Lock()
	w.seq++
	m.Seq = w.seq
	seq := w.seq
	w.mu.Unlock()
	select {
	case w.out <- m:
		return seq, true
	default:
		w.stop()
		return seq, false
	}
}

func (w *watchStream) ack(seq uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if seq > w.acked && seq <= w.seq {
		w.acked = seq
		close(w.ackSig)
		w.ackSig = make(chan struct{})
	}
}

// wait reports whether seq was acknowledged within the timeout.
func (w *watchStream) wait(seq uint64, timeout time.Duration) bool {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		w.mu.Lock()
		if w.acked >= seq {
			w.mu.Unlock()
			return true
		}
		sig := w.ackSig
		w.mu.Unlock()
		select {
		case <-sig:
		case <-w.done:
			return false
		case <-timer.C:
			return false
		}
	}
}

// change is one invalidation and the object whose cachers receive it.
type change struct {
	holder fileID
	entry  bool // a name in directory holder changed
	item   *fspb.Invalidation
}

func entryChange(dir fileID, name string) change {
	return change{holder: dir, entry: true, item: &fspb.Invalidation{Id: dir.pb(), Name: []byte(name), Data: true}}
}

func attrChange(id fileID, data bool) change {
	return change{holder: id, item: &fspb.Invalidation{Id: id.pb(), Data: data}}
}

// publish sends changes made by session from to every other session caching the objects, and
// waits until they have dropped them. A session that is itself in the middle of changing one of
// the objects is not waited for: its kernel may hold the very lock its invalidation needs.
func (s *Server) publish(from *session, changes ...change) {
	s.queue(from, changes...)()
}

// queue sends changes as publish does, and returns the wait for their acknowledgements.
func (s *Server) queue(from *session, changes ...change) (wait func()) {
	type batch struct {
		items   []*fspb.Invalidation
		holders []fileID
	}
	targets := map[*session]*batch{}
	for _, ch := range changes {
		if ch.holder == (fileID{}) {
			continue
		}
		for _, idx := range s.cache.take(ch.holder, ch.entry, from.idx) {
			t := s.sessionByIndex(idx)
			if t == nil {
				continue
			}
			b := targets[t]
			if b == nil {
				b = &batch{}
				targets[t] = b
			}
			b.items = append(b.items, ch.item)
			b.holders = append(b.holders, ch.holder)
		}
	}
	if len(targets) == 0 {
		return func() {}
	}
	var wg sync.WaitGroup
	for t, b := range targets {
		stream := t.currentStream()
		if stream == nil {
			// Not connected: the client drops everything when it reconnects.
			continue
		}
		seq, ok := stream.send(&fspb.WatchDown{Items: b.items})
		s.stats.invalidations.Add(uint64(len(b.items)))
		if !ok || t.busyWith(b.holders) {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !stream.wait(seq, ackTimeout) {
				select {
				case <-stream.done:
				default:
					s.log.Warn("client did not acknowledge a cache invalidation in time; dropping its watch so that it discards its cache",
						"client", t.node, "timeout", ackTimeout)
					stream.stop()
				}
			}
		}()
	}
	return wg.Wait
}

// watchSeq is what a lookup or open that found nothing tells the client (EntryReply.watch_seq):
// the last message queued on its watch stream, once the renames under way have queued their
// invalidations, so that one that moved the directory is among them. A rename stuck on its disk
// holds the answer back for maxRenameWait at most.
func (s *Server) watchSeq(sess *session) uint64 {
	s.renames.await(maxRenameWait)
	if w := sess.currentStream(); w != nil {
		return w.sentSeq()
	}
	return 0
}

// maxRenameWait bounds watchSeq's wait for the renames under way.
const maxRenameWait = 100 * time.Millisecond

// inflight tracks operations under way, for those that must wait for the ones begun before
// them, not for later ones.
type inflight struct {
	count atomic.Int32
	mu    sync.Mutex
	next  uint64
	ops   map[uint64]chan struct{}
}

// begin records an operation; the returned end, which may be called more than once, ends it.
func (f *inflight) begin() (end func()) {
	f.count.Add(1)
	f.mu.Lock()
	if f.ops == nil {
		f.ops = make(map[uint64]chan struct{})
	}
	id, done := f.next, make(chan struct{})
	f.next++
	f.ops[id] = done
	f.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			f.mu.Lock()
			delete(f.ops, id)
			f.mu.Unlock()
			close(done)
			f.count.Add(-1)
		})
	}
}

// await waits, at most timeout, until the operations under way now have ended.
func (f *inflight) await(timeout time.Duration) {
	if f.count.Load() == 0 {
		return
	}
	f.mu.Lock()
	pending := make([]chan struct{}, 0, len(f.ops))
	for _, done := range f.ops {
		pending = append(pending, done)
	}
	f.mu.Unlock()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for _, done := range pending {
		select {
		case <-done:
		case <-timer.C:
			return
		}
	}
}

// diskChanged turns changes seen on the owner's disk into invalidations for every session.
func (s *Server) diskChanged(events []diskEvent, overflow bool) {
	s.stats.diskEvents.Add(uint64(len(events)))
	var items []*fspb.Invalidation
	seen := map[diskEvent]*fspb.Invalidation{}
	moved := diskMoves(events)
	for _, e := range events {
		if e.mask&unix.FAN_RENAME != 0 {
			continue // the name's MOVED_FROM event makes its invalidation
		}
		key := diskEvent{dir: e.dir, name: e.name}
		// A name removed or moved away no longer leads to what clients know by it, even if
		// something took its place since (see Invalidation.gone).
		gone := e.name != "" && e.mask&(unix.FAN_DELETE|unix.FAN_MOVED_FROM) != 0
		if item := seen[key]; item != nil {
			item.Gone = item.Gone || gone
			continue
		}
		s.cache.take(e.dir, e.name != "", ^uint32(0))
		item := &fspb.Invalidation{Id: e.dir.pb(), Data: true, Gone: gone}
		if e.name != "" {
			item.Name = []byte(e.name)
			item.Child = true
		}
		if to, ok := moved[key]; ok {
			// As for a rename made through the tree: clients move their node, so a process
			// working in the directory follows it.
			item.MovedTo, item.MovedName = to.to.pb(), []byte(to.toName)
		}
		seen[key] = item
		items = append(items, item)
	}
	msg := func() *fspb.WatchDown {
		if overflow {
			return &fspb.WatchDown{FlushAll: true}
		}
		return &fspb.WatchDown{Items: items}
	}
	for _, t := range s.allSessions() {
		if stream := t.currentStream(); stream != nil {
			stream.send(msg())
		}
	}
}

// diskMoves gives, by old directory and name, the renames seen on the disk whose new directory
// is watched too. An exchange (RENAME_EXCHANGE) shows as two renames, each undoing the other's
// names; those are left out, as fanotify cannot tell them from a move and its move back: their
// names are only dropped.
func diskMoves(events []diskEvent) map[diskEvent]diskEvent {
	moved := map[diskEvent]diskEvent{}
	for _, e := range events {
		if e.mask&unix.FAN_RENAME != 0 && e.toName != "" {
			moved[diskEvent{dir: e.dir, name: e.name}] = e
		}
	}
	for key, e := range moved {
		back, ok := moved[diskEvent{dir: e.to, name: e.toName}]
		if ok && back.to == key.dir && back.toName == key.name {
			delete(moved, key)
			delete(moved, diskEvent{dir: e.to, name: e.toName})
		}
	}
	return moved
}

// watchConn is the server side of a Watch stream: gRPC's, or the in-process one of the local
// mount.
type watchConn interface {
	Send(*fspb.WatchDown) error
	Recv() (*fspb.WatchUp, error)
	Context() context.Context
}

// Watch attaches a client session's invalidation stream.
func (s *Server) Watch(stream fspb.Files_WatchServer) error {
	return s.serveWatch(stream)
}

func (s *Server) serveWatch(conn watchConn) error {
	first, err := conn.Recv()
	if err != nil {
		return err
	}
	sess, err := s.session(conn.Context(), first.Session)
	if err != nil {
		return err
	}
	ws := newWatchStream()
	sess.attach(ws)
	defer s.detach(sess, ws)
	// The client drops its whole cache of this owner when it gets the first message, and
	// caches only answers to requests it makes after that: entries held before now are of a
	// cache it no longer has.
	s.cache.forget(sess.idx, s.cache.mark())

	if err := conn.Send(&fspb.WatchDown{Instance: s.instance}); err != nil {
		return err
	}
	// A client that went silent (its node died or was cut off without its connection
	// closing) must lose its stream: only then does the grace period after which its locks
	// and files go begin. Clients answer heartbeats with an empty message; one that never
	// did (an agent from before) is only dropped when its connection fails. The watch is
	// detached here rather than by this function's return: a send to a client that stopped
	// reading may block until its connection fails, hours later.
	var heard atomic.Int64
	var answers atomic.Bool
	heard.Store(time.Now().UnixNano())
	go func() {
		tick := time.NewTicker(heartbeat)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				silent := time.Since(time.Unix(0, heard.Load()))
				if !answers.Load() || silent <= heartbeat*heartbeatMisses {
					continue
				}
				s.log.Warn("client stopped answering on its invalidation stream; dropping it, its files and locks go if it does not come back",
					"client", sess.node, "silent_for", silent.Round(time.Second), "grace", s.grace())
			case <-ws.done:
			}
			s.detach(sess, ws)
			return
		}
	}()
	recvErr := make(chan error, 1)
	go func() {
		for {
			up, err := conn.Recv()
			if err != nil {
				recvErr <- err
				ws.stop()
				return
			}
			heard.Store(time.Now().UnixNano())
			if up.Ack == 0 {
				answers.Store(true)
			}
			ws.ack(up.Ack)
		}
	}()
	beat := time.NewTicker(heartbeat)
	defer beat.Stop()
	for {
		select {
		case <-beat.C:
			if err := conn.Send(&fspb.WatchDown{}); err != nil {
				ws.stop()
				return err
			}
		case m := <-ws.out:
			if err := conn.Send(m); err != nil {
				ws.stop()
				return err
			}
		case <-ws.done:
			select {
			case err := <-recvErr:
				return err
			default:
				return errors.New("watch stream dropped: the client fell behind, did not acknowledge invalidations or went silent")
			}
		case <-s.closed:
			ws.stop()
			return errors.New("file server is shutting down")
		}
	}
}

type serverStats struct {
	ops, bytesRead, bytesWritten, invalidations, diskEvents atomic.Uint64
}
