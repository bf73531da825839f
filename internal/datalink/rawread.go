package datalink

import (
	"io"
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawReader reads a socket in the runtime's poller (non-blocking) without telling the
// runtime it is in a system call, which such a read need not: it never sleeps in the kernel.
// When a goroutine of a process whose goroutines were all parked enters a system call, the
// runtime wakes its monitor thread (sysmon), which then polls every 20 µs for a millisecond or
// more, and the receiving agent parks for almost every record. This is safe only on a
// descriptor whose flags no one else controls: the link's socket is this agent's own. (The
// client's stdout pipe keeps ordinary writes: the client shares that file description and
// could make it blocking, and a raw write that blocks would hold one of the agent's
// processors for as long as the client's reader pleases.)
type rawReader struct{ rc syscall.RawConn }

// newRawReader returns a rawReader for conn, or conn itself if it has no descriptor.
func newRawReader(conn net.Conn) io.Reader {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return conn
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return conn
	}
	return rawReader{rc}
}

func (r rawReader) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	var n uintptr
	var errno syscall.Errno
	err := r.rc.Read(func(fd uintptr) bool {
		for {
			n, _, errno = unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
			if errno != unix.EINTR {
				// EAGAIN: wait in the poller.
				return errno != unix.EAGAIN
			}
		}
	})
	switch {
	case err != nil:
		return 0, err
	case errno != 0:
		return 0, errno
	case n == 0:
		return 0, io.EOF
	}
	return int(n), nil
}
