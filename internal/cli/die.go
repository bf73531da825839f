package cli

import (
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// dieOfSignal ends this process by sig, as the remote command ended, so that its parent sees
// what it would see of a local child: death by that signal, not an exit status. A shell tells
// them apart (bash prints "Terminated" and ends a loop whose command died of Ctrl-C's INT,
// but not one whose command exited 130). It returns, leaving the exit status to the caller,
// for a signal that does not end a process by default.
func dieOfSignal(sig unix.Signal) {
	switch sig {
	case unix.SIGCHLD, unix.SIGCONT, unix.SIGSTOP, unix.SIGTSTP, unix.SIGTTIN, unix.SIGTTOU,
		unix.SIGURG, unix.SIGWINCH:
		return
	}
	if sig < 1 || sig > 64 {
		return
	}
	// The command's core, if any, was dumped where it ran: none of this process.
	_ = unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{})
	// The Go runtime handles every signal itself, and turns some (QUIT, SEGV, ABRT…) into a
	// stack dump and exit status 2: the kernel's default action is restored underneath it.
	// The zero sigaction is SIG_DFL, without flags or mask, on every architecture.
	// KILL has no other action (and refuses to be given one).
	var dfl [4]uintptr
	if sig != unix.SIGKILL {
		if _, _, errno := unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(sig), uintptr(unsafe.Pointer(&dfl)), 0, 8, 0, 0); errno != 0 {
			return
		}
	}
	// Sent to this very thread with sig unblocked in it, the signal is delivered before the
	// call returns.
	runtime.LockOSThread()
	var set unix.Sigset_t
	set.Val[(sig-1)/64] |= 1 << ((uint(sig) - 1) % 64)
	_ = unix.PthreadSigmask(unix.SIG_UNBLOCK, &set, nil)
	_ = unix.Tgkill(unix.Getpid(), unix.Gettid(), sig)
	runtime.UnlockOSThread()
}
