package proc

import (
	"bytes"
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// TypeKeys writes b to the terminal as keys typed on it. A local terminal's suspend key
// (VSUSP, Ctrl-Z) stops its foreground job; but the command leads a session of its own, so
// while its own process group is the terminal's foreground the kernel would discard the TSTP
// the key sends (the group is orphaned, see SignalJob) and the key would do nothing. There,
// while the terminal turns keys into signals (ISIG), the key is taken out and the job gets
// what SignalJob(SIGTSTP) delivers: a stop. The groups a shell on the terminal makes for its
// jobs are not orphaned: keys for them go through untouched. Input typed ahead and not yet
// read is kept, where the kernel would drop it with the key (unless NOFLSH). procRoot is
// where /proc is mounted.
func (p *Process) TypeKeys(b []byte, procRoot string) error {
	if p.tty == nil {
		return errors.New("type keys: the process has no terminal; start it with Spec.TTY")
	}
	for len(b) > 0 {
		i := p.suspendKeyAt(b)
		if i < 0 {
			break
		}
		if _, err := p.tty.Write(b[:i]); err != nil {
			return fmt.Errorf("type keys: %w", err)
		}
		if err := p.SignalJob(syscall.SIGTSTP, procRoot); err != nil {
			return fmt.Errorf("type the suspend key: %w", err)
		}
		b = b[i+1:]
	}
	if len(b) == 0 {
		return nil
	}
	if _, err := p.tty.Write(b); err != nil {
		return fmt.Errorf("type keys: %w", err)
	}
	return nil
}

// suspendKeyAt returns the index in b of the first suspend key that the terminal would turn
// into a TSTP for the command's own process group, or -1.
func (p *Process) suspendKeyAt(b []byte) int {
	conn, err := p.tty.SyscallConn()
	if err != nil {
		return -1
	}
	at := -1
	_ = conn.Control(func(fd uintptr) {
		// On the master, both ioctls answer for the terminal's other side, the command's.
		tio, err := unix.IoctlGetTermios(int(fd), unix.TCGETS)
		// A zero key is a disabled one (_POSIX_VDISABLE).
		if err != nil || tio.Lflag&unix.ISIG == 0 || tio.Cc[unix.VSUSP] == 0 {
			return
		}
		i := bytes.IndexByte(b, tio.Cc[unix.VSUSP])
		if i < 0 {
			return
		}
		if fg, err := unix.IoctlGetInt(int(fd), unix.TIOCGPGRP); err == nil && fg == p.pid {
			at = i
		}
	})
	return at
}
