package fs

import (
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// runningFiles counts, per file, the handles clients opened to execute it: the kernel of the
// node running a program keeps the file it executes open (FMODE_EXEC) while the program runs,
// and pages its code in from it. Locally the kernel refuses to write such a file (ETXTBSY);
// the owner's kernel cannot know of a program running on another node, so the owner refuses
// those writes itself. Without it, `cp new prog` on one node overwrote a program running on
// another, which crashed (SIGSEGV) when it paged in the new code.
type runningFiles struct {
	mu    sync.Mutex
	count map[devIno]int
	// freed is closed, and replaced, whenever a count drops.
	freed chan struct{}
}

// devIno names a file whatever a client knew of its birth time.
type devIno struct{ dev, ino uint64 }

func newRunningFiles() *runningFiles {
	return &runningFiles{count: map[devIno]int{}, freed: make(chan struct{})}
}

func (r *runningFiles) add(id fileID) {
	r.mu.Lock()
	r.count[devIno{id.dev, id.ino}]++
	r.mu.Unlock()
}

func (r *runningFiles) done(id fileID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := devIno{id.dev, id.ino}
	if r.count[k]--; r.count[k] <= 0 {
		delete(r.count, k)
	}
	close(r.freed)
	r.freed = make(chan struct{})
}

// running reports whether a client runs the file, and a channel closed when that may have
// changed.
func (r *runningFiles) running(dev, ino uint64) (bool, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.count[devIno{dev, ino}] > 0, r.freed
}

// releaseWait is how long a write waits for a program that was running on a client to let go
// of its file. A program's exit does not wait for its node's kernel to close the file, which
// it does in the background (FUSE's RELEASE), nor for the client to tell the owner: without
// the wait, `./prog; cp new prog` on one node could fail where locally it does not.
const releaseWait = 250 * time.Millisecond

// waitNotRunning waits, up to releaseWait, until no client runs the file want names.
func (r *runningFiles) waitNotRunning(id fileID) {
	if id == (fileID{}) {
		return
	}
	deadline := time.NewTimer(releaseWait)
	defer deadline.Stop()
	for {
		busy, freed := r.running(id.dev, id.ino)
		if !busy {
			return
		}
		select {
		case <-freed:
		case <-deadline.C:
			return
		}
	}
}

// refuseRunning answers ETXTBSY if a client runs the object at dir/name (name "": dir itself).
func (r *runningFiles) refuseRunning(dir int, name string) syscall.Errno {
	r.mu.Lock()
	none := len(r.count) == 0
	r.mu.Unlock()
	if none {
		return 0
	}
	flags := unix.AT_SYMLINK_NOFOLLOW
	if name == "" {
		flags |= unix.AT_EMPTY_PATH
	}
	var st unix.Statx_t
	if err := unix.Statx(dir, name, flags, unix.STATX_INO, &st); err != nil {
		// Not there: nothing runs it. Other errors are the caller's to meet.
		return 0
	}
	return r.refuseID(statxID(&st))
}

// refuseID answers ETXTBSY if a client runs the file id.
func (r *runningFiles) refuseID(id fileID) syscall.Errno {
	if busy, _ := r.running(id.dev, id.ino); busy {
		return syscall.ETXTBSY
	}
	return 0
}
