package fs

import "sync"

// maxWaitingIOPerUser bounds the reads and writes of devices (and other files that are not
// regular: fifos) that one user may have under way on an owner at once. Such a call may wait
// in the kernel for ever (a pty without input, a serial line), holding an OS thread of the
// agent meanwhile; the Go runtime ends the whole process at 10,000 threads. Without a bound,
// any user who may open /dev/ptmx (everyone) could stop an owner's agent by reading a few
// thousand ptys at once through the tree. Past the bound, a user's call waits for one of their
// others to end, holding no thread.
const maxWaitingIOPerUser = 256

// userIOSlots counts each user's calls that may wait in the kernel.
type userIOSlots struct {
	limit int
	mu    sync.Mutex
	users map[uint32]*userSlots
}

type userSlots struct {
	slots chan struct{}
	users int // calls holding or waiting for a slot, so that the entry goes when unused
}

func newUserIOSlots(limit int) *userIOSlots {
	if limit <= 0 {
		limit = maxWaitingIOPerUser
	}
	return &userIOSlots{limit: limit, users: make(map[uint32]*userSlots)}
}

// acquire waits for one of uid's slots; release gives it back.
func (u *userIOSlots) acquire(uid uint32) (release func()) {
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
