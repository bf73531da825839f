package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"

	"github.com/ssi-cluster/ssi/internal/localrpc"
)

// Output passing (see localrpc.PassOutput for the client half and the reasons): the server
// side of PeerCredentials, or ServeLocal, reads the preamble, checks the files, and keeps them
// with the connection until a call takes them (TakeOutput) or the connection closes.

// The preamble, as localrpc defines it.
var outputMagic = localrpc.OutputMagic

const (
	outputVersion  = localrpc.OutputVersion
	preambleLen    = localrpc.OutputPreambleLen
	maskStdout     = localrpc.OutputStdout
	maskStderr     = localrpc.OutputStderr
	outputAck      = localrpc.OutputAck
	maxPassedFiles = 2
)

// DialPassingOutput is the dialer of a gRPC connection to the agent's Unix socket at path that
// hands it stdout and stderr (either may be nil) before gRPC speaks, as CLIs older than
// localrpc did; the agent still serves them, and tests use it to check that it does.
func DialPassingOutput(path string, stdout, stderr *os.File) grpc.DialOption {
	return grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "unix", path)
		if err != nil {
			return nil, err
		}
		if err := localrpc.PassOutput(ctx, conn.(*net.UnixConn), stdout, stderr); err != nil {
			conn.Close()
			return nil, err
		}
		return conn, nil
	})
}

// ClientOutput is the stdout and stderr a client passed; either may be nil (not passed). Its
// holder must Close it on every path: the client's reader sees end of file only once every
// copy of its pipe is closed.
type ClientOutput struct {
	Stdout, Stderr *OutputFile
}

// Close closes the files. It may be called more than once, and on nil.
func (o *ClientOutput) Close() {
	if o == nil {
		return
	}
	o.Stdout.Close()
	o.Stderr.Close()
}

// Interrupt makes writes blocked on a slow reader return, so that a session whose client is
// gone can end.
func (o *ClientOutput) Interrupt() {
	if o == nil {
		return
	}
	o.Stdout.interrupt()
	o.Stderr.interrupt()
}

// TakeOutput returns the files the client passed on the connection of ctx; the first caller
// gets them and must Close them, later callers and clients that passed nothing get nil.
func TakeOutput(ctx context.Context) *ClientOutput {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	info, ok := p.AuthInfo.(callerAuthInfo)
	if !ok || info.passed == nil {
		return nil
	}
	return info.passed.take()
}

// passedOutput keeps the files passed on a connection until a call takes them.
type passedOutput struct {
	mu  sync.Mutex
	out *ClientOutput
}

func (p *passedOutput) take() *ClientOutput {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := p.out
	p.out = nil
	return out
}

// outputConn closes files no call took when the connection closes.
type outputConn struct {
	*net.UnixConn
	passed *passedOutput
}

func (c *outputConn) Close() error {
	c.passed.take().Close()
	return c.UnixConn.Close()
}

// receiveOutput reads the preamble, if the client sent one, at the start of conn. It returns
// nil when the client passed nothing; any descriptor received is closed unless returned.
func receiveOutput(conn *net.UnixConn) (*ClientOutput, error) {
	first, err := peekFirst(conn)
	if err != nil {
		return nil, err
	}
	if first != 0 {
		return nil, nil // a client that passes nothing (or hung up): gRPC reads the rest
	}
	pre, fds, err := readPrefix(conn)
	if err != nil {
		return nil, err
	}
	return acceptOutput(conn, pre, fds)
}

// peekFirst returns the first byte waiting on conn without consuming it, or -1 once the
// client hung up.
func peekFirst(conn *net.UnixConn) (int, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return 0, err
	}
	// Peek without room for control messages: files, if any, stay queued (the kernel installs
	// none) until the real read in readPrefix.
	var first [1]byte
	var n int
	var perr error
	if err := raw.Read(func(fd uintptr) bool {
		n, _, perr = unix.Recvfrom(int(fd), first[:], unix.MSG_PEEK)
		return perr != unix.EAGAIN
	}); err != nil {
		return 0, err
	}
	if perr != nil {
		return 0, perr
	}
	if n == 0 {
		return -1, nil
	}
	return int(first[0]), nil
}

// readPrefix reads the 8 bytes that start with a zero byte (the output preamble or
// localrpc's hello) and any descriptors sent with them. On error it closes what it received.
func readPrefix(conn *net.UnixConn) ([preambleLen]byte, []int, error) {
	var pre [preambleLen]byte
	// Room for one descriptor more than allowed, to notice a client sending too many.
	var oobBuf [64]byte
	oob := oobBuf[:unix.CmsgSpace((maxPassedFiles+1)*4)]
	n, oobn, flags, _, err := conn.ReadMsgUnix(pre[:], oob)
	fds, perr := parseRights(oob[:oobn])
	if err == nil && (perr != nil || flags&unix.MSG_CTRUNC != 0) {
		err = errors.New("malformed or too many descriptors")
	}
	if err == nil && n < len(pre) {
		// The client wrote the 8 bytes in one call; a short read is all there is so far.
		_, err = io.ReadFull(conn, pre[n:])
	}
	if err != nil {
		closeFds(fds)
		return pre, nil, fmt.Errorf("reading the output preamble: %w", err)
	}
	return pre, fds, nil
}

func closeFds(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// acceptOutput checks an output preamble and the descriptors that came with it, takes them
// over and acknowledges them. Any descriptor not returned is closed.
func acceptOutput(conn *net.UnixConn, pre [preambleLen]byte, fds []int) (*ClientOutput, error) {
	mask := pre[len(pre)-1]
	if [6]byte(pre[:6]) != outputMagic || pre[6] != outputVersion || mask&^(maskStdout|maskStderr) != 0 ||
		bits.OnesCount8(mask) != len(fds) {
		closeFds(fds)
		return nil, fmt.Errorf("output preamble: unknown version or %d descriptors for mask %#x", len(fds), mask)
	}
	out := &ClientOutput{}
	for i, name := range []string{"stdout", "stderr"} {
		if mask&(1<<i) == 0 {
			continue
		}
		fd := fds[0]
		fds = fds[1:]
		f, err := newOutputFile(fd, "client "+name)
		if err != nil {
			closeFds(fds)
			out.Close()
			return nil, fmt.Errorf("client %s: %w", name, err)
		}
		if i == 0 {
			out.Stdout = f
		} else {
			out.Stderr = f
		}
	}
	if _, err := conn.Write([]byte(outputAck)); err != nil {
		out.Close()
		return nil, fmt.Errorf("acknowledging the output preamble: %w", err)
	}
	return out, nil
}

// parseRights returns the descriptors in SCM_RIGHTS messages.
func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var fds []int
	var bad error
	for _, m := range msgs {
		// unix.ParseUnixRights indexes past the end of rights whose length is not a multiple
		// of 4. The kernel never composes one, but a panic here would take the agent down.
		if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_RIGHTS && len(m.Data)%4 != 0 {
			bad = fmt.Errorf("SCM_RIGHTS message of %d bytes", len(m.Data))
			continue
		}
		got, err := unix.ParseUnixRights(&m)
		if err != nil {
			bad = err
			continue
		}
		fds = append(fds, got...)
	}
	return fds, bad
}

// OutputFile is a client's stdout or stderr that the agent writes into.
type OutputFile struct {
	f  *os.File
	rc syscall.RawConn
}

// newOutputFile checks a received descriptor and takes it over (closing it on error). Only
// files whose writes cannot block for ever on something other than their reader are
// accepted: pipes (written without blocking the agent, see below), regular files, and
// /dev/null, /dev/zero and /dev/full. Terminals, sockets and other devices stay with the
// client.
func newOutputFile(fd int, name string) (*OutputFile, error) {
	fail := func(err error) (*OutputFile, error) {
		unix.Close(fd)
		return nil, err
	}
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return fail(err)
	}
	if acc := fl & unix.O_ACCMODE; acc != unix.O_WRONLY && acc != unix.O_RDWR {
		return fail(errors.New("not open for writing"))
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fail(err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
	case unix.S_IFCHR:
		if !localrpc.IsNullDevice(st.Rdev) {
			return fail(errors.New("a character device other than /dev/null, /dev/zero or /dev/full"))
		}
	case unix.S_IFIFO:
		// A pipe is reopened with a file description of our own that does not block: a
		// reader that stops reading must not hold an agent thread, and a session that ends
		// must be able to abandon a write. Setting O_NONBLOCK on the client's description
		// instead would change it for the shell and every other process sharing it.
		nfd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(fd), unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err == nil {
			unix.Close(fd)
			fd = nfd
		}
		// Else (no reader left: ENXIO) the client's description is kept: its writes fail
		// with EPIPE at once.
	default:
		return fail(fmt.Errorf("unsupported file type %#o", st.Mode&unix.S_IFMT))
	}
	f := os.NewFile(uintptr(fd), name)
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &OutputFile{f: f, rc: rc}, nil
}

// Close closes the file; nil and closed files are fine.
func (o *OutputFile) Close() {
	if o != nil {
		o.f.Close()
	}
}

func (o *OutputFile) interrupt() {
	if o != nil {
		_ = o.f.SetWriteDeadline(time.Unix(1, 0)) // only pipes can block, and only they take deadlines
	}
}

// GrowPipe makes the file's pipe hold size bytes, if it is a pipe and smaller (best effort):
// fewer, larger writes when a bulk writer outpaces its reader.
func (o *OutputFile) GrowPipe(size int) {
	_ = o.rc.Control(func(fd uintptr) {
		if cur, err := unix.FcntlInt(fd, unix.F_GETPIPE_SZ, 0); err == nil && cur < size {
			_, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, size)
		}
	})
}

// WriteFrame writes the payload of a frame of one bytes field (stdout or stderr of
// RunOutput) and releases the frame.
func (o *OutputFile) WriteFrame(f *Frame) error {
	defer f.Free()
	views, err := f.bytesPayload()
	if err != nil {
		return err
	}
	return o.Writev(views)
}

// Writev writes all of bufs, blocking (in the runtime's poller, for pipes) while the reader
// is slower: that is the back-pressure on the command.
func (o *OutputFile) Writev(bufs [][]byte) error {
	const iovMax = 1024
	for len(bufs) > 0 {
		var n int
		var err error
		if rerr := o.rc.Write(func(fd uintptr) bool {
			n, err = unix.Writev(int(fd), bufs[:min(len(bufs), iovMax)])
			return err != unix.EAGAIN
		}); rerr != nil {
			return rerr
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return &os.PathError{Op: "write", Path: o.f.Name(), Err: err}
		}
		if n == 0 {
			return &os.PathError{Op: "write", Path: o.f.Name(), Err: io.ErrShortWrite}
		}
		for n > 0 {
			if n >= len(bufs[0]) {
				n -= len(bufs[0])
				bufs = bufs[1:]
				continue
			}
			bufs[0] = bufs[0][n:]
			n = 0
		}
		for len(bufs) > 0 && len(bufs[0]) == 0 {
			bufs = bufs[1:]
		}
	}
	return nil
}
