package fs

import (
	"sync"

	"golang.org/x/sys/unix"
)

// maxCallsPerUser bounds the calls one user may have under way on an owner at once. A call
// may wait in the kernel for ever (a read of a pty of /dev/ptmx, which everyone may open,
// without input; a lookup in a FUSE mount of the user's own whose daemon never answers; a
// hard NFS mount gone), holding an OS thread of the agent meanwhile, and the Go runtime ends
// the whole process at 10,000 threads. Without a bound, any user could stop an owner's agent
// by making a few thousand such calls at once through the tree. Past the bound, a user's call
// waits for one of their others to end, holding no thread.
const maxCallsPerUser = 256

// userCallSlots counts each user's calls under way.
type userCallSlots struct {
	limit int
	mu    sync.Mutex
	users map[uint32]*userSlots
}

type userSlots struct {
	slots chan struct{}
	users int // calls holding or waiting for a slot, so that the entry goes when unused
}

func newUserCallSlots(limit int) *userCallSlots {
	if limit <= 0 {
		limit = maxCallsPerUser
	}
	return &userCallSlots{limit: limit, users: make(map[uint32]*userSlots)}
}

// acquire waits for one of uid's slots; release gives it back. A call must not acquire a
// second slot while it holds one: calls that all hold one and wait for another would wait for
// ever.
func (u *userCallSlots) acquire(uid uint32) (release func()) {
	u.mu.Lock()
	s := u.users[uid]
	if s == nil {
		s = &userSlots{slots: make(chan struct{}, u.limit)}
		u.users[uid] = s
	}
	s.users++
	u.mu.Unlock()
	s.slots <- struct{}{}
	return func() {
		<-s.slots
		u.mu.Lock()
		if s.users--; s.users == 0 {
			delete(u.users, uid)
		}
		u.mu.Unlock()
	}
}

// userHandles counts each user's files open on an owner. The owner's descriptors are one
// table for every user of every node (the agent's RLIMIT_NOFILE), where locally each process
// has its own: without a bound, one user opening files through the tree until the agent ran
// out would make every other user's opens fail, and the agent's own sockets.
type userHandles struct {
	limit int
	mu    sync.Mutex
	open  map[uint32]int
}

// handlesPerUserShare is the share of the agent's descriptors one user may hold open.
const handlesPerUserShare = 4

func newUserHandles(limit int) *userHandles {
	if limit <= 0 {
		limit = 1024
		var rl unix.Rlimit
		if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) == nil && rl.Cur/handlesPerUserShare > uint64(limit) {
			limit = int(min(rl.Cur/handlesPerUserShare, 1<<30))
		}
	}
	return &userHandles{limit: limit, open: make(map[uint32]int)}
}

// take counts one more file open by uid, or reports false if uid has its share open.
func (u *userHandles) take(uid uint32) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.open[uid] >= u.limit {
		return false
	}
	u.open[uid]++
	return true
}

// full reports whether uid has its share open, to refuse a create before it makes the file.
func (u *userHandles) full(uid uint32) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.open[uid] >= u.limit
}

// put counts one file of uid's closed.
func (u *userHandles) put(uid uint32) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.open[uid]--; u.open[uid] <= 0 {
		delete(u.open, uid)
	}
}
