package fs

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// identity is the user an operation runs as on the owner.
type identity struct {
	uid, gid uint32
	groups   []uint32
	// caps are the capabilities it keeps of the agent's (bit n: capability n): all for a root
	// caller without root squash, those the caller has for others.
	caps uint64
}

// allCaps keeps every capability the agent has.
const allCaps = ^uint64(0)

func (a identity) equal(b identity) bool {
	return a.uid == b.uid && a.gid == b.gid && a.caps == b.caps && slices.Equal(a.groups, b.groups)
}

const nobodyID = 65534

// creds switches the calling thread to a caller's file system credentials (fsuid, fsgid,
// supplementary groups, and no capabilities unless the caller is root) for the length of one
// operation. Only the thread changes, never the process: the goroutine is locked to its thread
// meanwhile, and the thread gets the agent's credentials back before it returns to the Go
// scheduler. A thread whose credentials cannot be restored stays locked and dies with its
// goroutine.
type creds struct {
	// switchable is false when the process lacks CAP_SETUID/CAP_SETGID: every call then runs as
	// the agent itself (tests as an ordinary user).
	switchable bool
	caps       [2]unix.CapUserData
	// process is the agent's own file system identity, which threads return to.
	process identity
	// umask is the agent's; new files get the mode the client's kernel computed by setting
	// back what it removed.
	umask uint32
}

func newCreds() (*creds, error) {
	c := &creds{}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	if err := unix.Capget(&hdr, &c.caps[0]); err != nil {
		return nil, fmt.Errorf("read the agent's capabilities: %w", err)
	}
	const setuid, setgid = 7, 6 // CAP_SETUID, CAP_SETGID
	c.switchable = c.caps[0].Permitted&(1<<setuid) != 0 && c.caps[0].Permitted&(1<<setgid) != 0
	groups, err := unix.Getgroups()
	if err != nil {
		return nil, fmt.Errorf("read the agent's groups: %w", err)
	}
	c.process = identity{uid: uint32(os.Getuid()), gid: uint32(os.Getgid()), caps: allCaps}
	for _, g := range groups {
		c.process.groups = append(c.process.groups, uint32(g))
	}
	c.umask = processUmask()
	return c, nil
}

// processUmask reads the umask without changing it (umask(2) can only set it).
func processUmask() uint32 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0o022
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if rest, ok := bytes.CutPrefix(sc.Bytes(), []byte("Umask:")); ok {
			if v, err := strconv.ParseUint(string(bytes.TrimSpace(rest)), 8, 32); err == nil {
				return uint32(v)
			}
		}
	}
	return 0o022
}

// permitted are the capabilities the agent may hand on (bit n: capability n).
func (c *creds) permitted() uint64 {
	return uint64(c.caps[0].Permitted) | uint64(c.caps[1].Permitted)<<32
}

// asAgent reports whether who is the agent itself: nothing to switch.
func (c *creds) asAgent(who identity) bool {
	return !c.switchable || who.caps == allCaps && who.uid == c.process.uid && who.gid == c.process.gid
}

// run calls fn on the calling goroutine's thread with who's credentials. With lock, the
// goroutine stays on one thread even when no switch is needed (the disk watcher tells its
// changes by thread id).
func (c *creds) run(who identity, lock bool, fn func()) error {
	if c.asAgent(who) {
		if lock {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
		}
		fn()
		return nil
	}
	runtime.LockOSThread()
	current := c.process
	if err := c.become(&current, who); err != nil {
		if c.become(&current, c.process) == nil {
			runtime.UnlockOSThread()
		}
		return err
	}
	fn()
	if err := c.become(&current, c.process); err != nil {
		return err
	}
	runtime.UnlockOSThread()
	return nil
}

// become switches the calling (locked) thread from current to want.
func (c *creds) become(current *identity, want identity) error {
	if current.equal(want) {
		return nil
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	full := c.caps
	full[0].Effective, full[1].Effective = full[0].Permitted, full[1].Permitted
	if err := unix.Capset(&hdr, &full[0]); err != nil {
		return fmt.Errorf("raise thread capabilities: %w", err)
	}
	if err := setThreadGroups(want.groups); err != nil {
		return err
	}
	unix.Setfsgid(int(want.gid))
	unix.Setfsuid(int(want.uid))
	// setfs*id report failure only through the previous value: read the ids back.
	if got, _ := unix.SetfsuidRetUid(-1); got != int(want.uid) {
		return fmt.Errorf("set thread fsuid to %d: still %d", want.uid, got)
	}
	if got, _ := unix.SetfsgidRetGid(-1); got != int(want.gid) {
		return fmt.Errorf("set thread fsgid to %d: still %d", want.gid, got)
	}
	if want.caps != allCaps {
		// After the fsuid: a change of it from 0 clears the file system capabilities, which
		// a caller that has them gets back here.
		kept := c.caps
		kept[0].Effective = kept[0].Permitted & uint32(want.caps)
		kept[1].Effective = kept[1].Permitted & uint32(want.caps>>32)
		if err := unix.Capset(&hdr, &kept[0]); err != nil {
			return fmt.Errorf("set thread capabilities to %#x: %w", want.caps, err)
		}
	}
	*current = identity{uid: want.uid, gid: want.gid, groups: slices.Clone(want.groups), caps: want.caps}
	return nil
}

// setThreadGroups sets the supplementary groups of the calling thread only. syscall.Setgroups
// would change every thread of the process.
func setThreadGroups(groups []uint32) error {
	var ptr unsafe.Pointer
	if len(groups) > 0 {
		ptr = unsafe.Pointer(&groups[0])
	}
	if _, _, errno := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(groups)), uintptr(ptr), 0); errno != 0 {
		return fmt.Errorf("set thread supplementary groups: %w", syscall.Errno(errno))
	}
	return nil
}
