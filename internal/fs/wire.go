package fs

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ssi-cluster/ssi/internal/fs/fspb"
	"github.com/ssi-cluster/ssi/internal/pki"
)

// The file wire: a client's bounded requests to one owner on a mutual-TLS connection of their
// own, beside gRPC. A request on the gRPC Calls stream passes through half a dozen goroutines
// (the caller, gRPC's writer and reader on each side, the stream's handler, the reply's
// sender), and on this kind of VM every wake-up of a sleeping thread is dear: a round trip after
// a moment of idleness took ~100-150 µs, against ~40-60 µs on a connection where the caller
// writes its request itself, the owner's one reader answers it inline and the caller reads the
// reply itself (callStream). A small-file create makes two such round trips.
//
// The connection: TCP to the owner agent's link port (shared with the data links, told apart
// by ALPN: internal/peermux), TLS 1.3 with the node certificates both ways, exactly as gRPC's (the owner requires and verifies the client's
// certificate and takes the calling node's name from it, once per connection). Then frames in
// both directions, each a 4-byte big-endian length and that many bytes of one encoded message:
// fspb.Call from the client, fspb.Result from the owner, matched by their ids; the same
// messages, methods and errors as the Calls stream, so the two serve the same requests the
// same way. There is no other handshake. A client that cannot reach the port (an agent from
// before the wire, or a firewall in between) uses the Calls stream.

// WireDialer is implemented by a Nodes that can open the file wire to a node: bounded requests
// then go on it instead of on the gRPC Calls stream.
type WireDialer interface {
	// DialFiles opens a connection to node's file wire with mutual TLS, handshake done.
	DialFiles(ctx context.Context, node string) (net.Conn, error)
}

// maxWireFrame bounds a frame's body: as gRPC's default receive limit, well above the largest
// request (64 KiB of data or an extended attribute's value, paths, up to 65,536 groups).
const maxWireFrame = 4 << 20

// wireHandshakeTimeout bounds the owner's wait for a new connection's TLS handshake.
const wireHandshakeTimeout = 10 * time.Second

// wireWriteTimeout bounds how long an owner waits for a client to take a reply: one that stops
// reading has its connection closed instead of holding up the reader behind it.
const wireWriteTimeout = time.Minute

// wireSlowRequest is how long a request may hold the reading of its connection: past it (up to
// twice it), another goroutine takes over reading, so that one slow request (a slow disk's
// fsync, a hung network file system below the export) holds up the others no longer.
const wireSlowRequest = 5 * time.Millisecond

// maxKeptWireBuffer is the largest frame buffer a connection keeps for the next frame.
const maxKeptWireBuffer = 128 << 10

// appendFrame appends m as one frame to b.
func appendFrame(b []byte, m proto.Message) ([]byte, error) {
	start := len(b)
	b = append(b, 0, 0, 0, 0)
	b, err := proto.MarshalOptions{}.MarshalAppend(b, m)
	if err != nil {
		return b[:start], err
	}
	n := len(b) - start - 4
	if n > maxWireFrame {
		return b[:start], fmt.Errorf("a frame of %d bytes is over the limit of %d", n, maxWireFrame)
	}
	binary.BigEndian.PutUint32(b[start:], uint32(n))
	return b, nil
}

// readFrame reads one frame's body, into buf if it is large enough.
func readFrame(r *bufio.Reader, buf []byte) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > maxWireFrame {
		return nil, fmt.Errorf("a frame of %d bytes is over the limit of %d", n, maxWireFrame)
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return buf, nil
}

// keep returns buf for reuse by the next frame, unless it grew too large to hold on to.
func keep(buf []byte) []byte {
	if cap(buf) > maxKeptWireBuffer {
		return nil
	}
	return buf
}

// wireClient is the client's end of a file wire, as a callStream uses it: Send is never called
// concurrently (the stream's send token), nor Recv (the stream's read token).
type wireClient struct {
	conn net.Conn
	r    *bufio.Reader
	wbuf []byte
	// raw is the socket under TLS, to look at without reading it (peek); nil when
	// the connection has none.
	raw syscall.RawConn

	// The frame being read, kept across reads that a deadline interrupted: hdr[:hdrN] of its
	// length, then body[:bodyN] of its body.
	hdr         [4]byte
	hdrN, bodyN int
	body        []byte
	haveBody    bool

	// replied is when the last reply was read, in Unix nanoseconds.
	replied atomic.Int64
}

// dialWire opens the file wire to node; it ends with ctx. A dial that takes longer than
// timeout (an owner's host that drops packets) fails, and the calls waiting for it go on gRPC.
func dialWire(ctx context.Context, d WireDialer, node string, timeout time.Duration) (*wireClient, error) {
	dctx, cancel := context.WithTimeout(ctx, timeout)
	conn, err := d.DialFiles(dctx, node)
	cancel()
	if err != nil {
		return nil, err
	}
	// Ending the stream (its context) closes the connection, which ends a blocked Send or Recv.
	context.AfterFunc(ctx, func() { conn.Close() })
	return newWireClient(conn), nil
}

func newWireClient(conn net.Conn) *wireClient {
	w := &wireClient{conn: conn, r: bufio.NewReaderSize(conn, 32<<10)}
	under := conn
	if tc, ok := conn.(*tls.Conn); ok {
		under = tc.NetConn()
	}
	if sc, ok := under.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			w.raw = raw
		}
	}
	return w
}

func (w *wireClient) Send(c *fspb.Call) error {
	b, err := appendFrame(w.wbuf[:0], c)
	if err != nil {
		return status.Errorf(codes.Internal, "encode a %s request: %v", c.Method, err)
	}
	w.wbuf = keep(b)
	if _, err := w.conn.Write(b); err != nil {
		return status.Errorf(codes.Unavailable, "file wire: %v", err)
	}
	return nil
}

// Recv reads the next reply. An error that is a timeout (interrupt) leaves the connection
// usable: the next Recv goes on with the frame where this one stopped.
func (w *wireClient) Recv() (*fspb.Result, error) {
	body, err := w.readFrame()
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil, err
		}
		return nil, status.Errorf(codes.Unavailable, "file wire: %v", err)
	}
	w.replied.Store(time.Now().UnixNano())
	res := new(fspb.Result)
	if err := proto.Unmarshal(body, res); err != nil {
		return nil, status.Errorf(codes.Internal, "file wire: decode the owner's reply: %v", err)
	}
	return res, nil
}

// lastReply is when the last reply was read (the zero time if none was).
func (w *wireClient) lastReply() time.Time {
	if ns := w.replied.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// readFrame reads one frame's body (valid until the next call) as readFrame does, but can be
// resumed after an error.
func (w *wireClient) readFrame() ([]byte, error) {
	for w.hdrN < len(w.hdr) {
		n, err := w.r.Read(w.hdr[w.hdrN:])
		w.hdrN += n
		if err != nil {
			return nil, err
		}
	}
	if !w.haveBody {
		n := binary.BigEndian.Uint32(w.hdr[:])
		if n > maxWireFrame {
			return nil, fmt.Errorf("a frame of %d bytes is over the limit of %d", n, maxWireFrame)
		}
		if cap(w.body) < int(n) {
			w.body = make([]byte, n)
		}
		w.body, w.bodyN, w.haveBody = w.body[:n], 0, true
	}
	for w.bodyN < len(w.body) {
		n, err := w.r.Read(w.body[w.bodyN:])
		w.bodyN += n
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	body := w.body
	w.body = keep(w.body)
	w.hdrN, w.haveBody = 0, false
	return body, nil
}

// interrupt makes a Recv in progress (or the next one) return a timeout error.
func (w *wireClient) interrupt() { w.conn.SetReadDeadline(time.Unix(1, 0)) }

// clearInterrupt undoes interrupt once a Recv returned its timeout.
func (w *wireClient) clearInterrupt() { w.conn.SetReadDeadline(time.Time{}) }

// peekState is what a look at the socket under the wire found.
type peekState int

const (
	peekEmpty  peekState = iota // nothing to read
	peekData                    // bytes to read (a late reply, or TLS's closing alert)
	peekClosed                  // the end of the stream, or an error
)

// peek looks at the socket without reading it; a connection without one looks empty.
func (w *wireClient) peek() peekState {
	if w.r.Buffered() > 0 {
		return peekData
	}
	if w.raw == nil {
		return peekEmpty
	}
	state := peekEmpty
	var b [1]byte
	w.raw.Read(func(fd uintptr) bool {
		n, _, errno := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
			syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		switch {
		case errno == syscall.EAGAIN || errno == syscall.EINTR:
		case errno != 0 || n == 0:
			state = peekClosed
		default:
			state = peekData
		}
		return true
	})
	return state
}

// ServeWire serves the file wire on ln, whose connections must be TLS with verified node
// certificates both ways (pki.StrictServerTLS), until ln or the server is closed.
func (s *Server) ServeWire(ln net.Listener) error {
	s.wireMu.Lock()
	select {
	case <-s.closed:
		s.wireMu.Unlock()
		ln.Close()
		return net.ErrClosed
	default:
	}
	s.wireListeners[ln] = struct{}{}
	s.wireMu.Unlock()
	defer func() {
		s.wireMu.Lock()
		delete(s.wireListeners, ln)
		s.wireMu.Unlock()
	}()
	for {
		conn, err := ln.Accept()
		if err != nil {
			select {
			case <-s.closed:
				return net.ErrClosed
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return fmt.Errorf("file wire: accept: %w", err)
		}
		go s.serveWireConn(conn)
	}
}

// wireNode names the node at the other end of a wire connection from its certificate.
func wireNode(conn net.Conn) (string, error) {
	tc, ok := conn.(*tls.Conn)
	if !ok {
		return "", errors.New("the file wire needs TLS")
	}
	ctx, cancel := context.WithTimeout(context.Background(), wireHandshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		return "", fmt.Errorf("TLS handshake: %w", err)
	}
	name, _, err := pki.PeerNode(tc.ConnectionState())
	return name, err
}

// wireConn is the owner's end of one file wire connection.
type wireConn struct {
	s    *Server
	conn net.Conn
	// ctx carries the calling node and ends with the connection.
	ctx    context.Context
	cancel context.CancelFunc
	r      *bufio.Reader
	// served counts the requests read; only the goroutine reading touches it.
	served uint64
	// busy is the number of the request being served by the goroutine reading, 0 while none
	// is; watching is set while a watch (see watch) is pending.
	busy     atomic.Uint64
	watching atomic.Bool

	wmu  sync.Mutex
	wbuf []byte
}

func (s *Server) serveWireConn(conn net.Conn) {
	node, err := s.identifyConn(conn)
	if err != nil {
		s.log.Warn("refused a file wire connection", "from", conn.RemoteAddr(), "err", err)
		conn.Close()
		return
	}
	if !s.trackWire(conn, true) {
		conn.Close()
		return
	}
	ctx, cancel := context.WithCancel(withCallerNode(context.Background(), node))
	c := &wireConn{s: s, conn: conn, ctx: ctx, cancel: cancel, r: bufio.NewReaderSize(conn, 32<<10)}
	c.read()
}

// trackWire adds (or removes) a connection the server closes when it closes; adding fails
// once it is closed.
func (s *Server) trackWire(conn net.Conn, add bool) bool {
	s.wireMu.Lock()
	defer s.wireMu.Unlock()
	if !add {
		delete(s.wireConns, conn)
		return true
	}
	select {
	case <-s.closed:
		return false
	default:
	}
	s.wireConns[conn] = struct{}{}
	return true
}

// closeWire stops serving the file wire: listeners and connections are closed.
func (s *Server) closeWire() {
	s.wireMu.Lock()
	defer s.wireMu.Unlock()
	for ln := range s.wireListeners {
		ln.Close()
	}
	for conn := range s.wireConns {
		conn.Close()
	}
}

// read serves the connection's requests, each on the goroutine that read it, until the
// connection ends. A request found still running by a watch hands the reading on to a new
// goroutine, and its goroutine ends once it has answered. Only one goroutine reads at a time.
func (c *wireConn) read() {
	var buf []byte
	for {
		body, err := readFrame(c.r, buf)
		if err != nil {
			c.end(err)
			return
		}
		buf = keep(body)
		call := new(fspb.Call)
		if err := proto.Unmarshal(body, call); err != nil {
			c.end(fmt.Errorf("decode a request: %w", err))
			return
		}
		c.served++
		seq := c.served
		c.busy.Store(seq)
		if c.watching.CompareAndSwap(false, true) {
			time.AfterFunc(wireSlowRequest, func() { c.watch(seq) })
		}
		res := c.s.serveCall(c.ctx, call)
		handedOn := !c.busy.CompareAndSwap(seq, 0)
		c.send(res)
		if handedOn {
			return
		}
	}
}

// watch runs wireSlowRequest after request seq was seen in progress: if it still is, the
// reading is handed on to a new goroutine. It watches on while requests are served. One timer
// per busy period rather than one per request: arming a timer wakes an idle thread of the Go
// scheduler, which cost the owner ~6 % of its CPU and a wake-up per request.
func (c *wireConn) watch(seq uint64) {
	if c.busy.CompareAndSwap(seq, 0) {
		go c.read()
	}
	if cur := c.busy.Load(); cur != 0 {
		time.AfterFunc(wireSlowRequest, func() { c.watch(cur) })
		return
	}
	c.watching.Store(false)
	// A request that began meanwhile saw the watch still on and armed none.
	if cur := c.busy.Load(); cur != 0 && c.watching.CompareAndSwap(false, true) {
		time.AfterFunc(wireSlowRequest, func() { c.watch(cur) })
	}
}

// end closes the connection after its reader stopped with err.
func (c *wireConn) end(err error) {
	if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		c.s.log.Warn("file wire connection ended", "from", c.conn.RemoteAddr(), "err", err)
	}
	c.cancel()
	c.conn.Close()
	c.s.trackWire(c.conn, false)
}

// send writes a reply; a connection that cannot take it is closed, which ends its reader.
func (c *wireConn) send(res *fspb.Result) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	b, err := appendFrame(c.wbuf[:0], res)
	if err != nil {
		// Too large to send (a bug): the caller gets the error instead of the reply.
		st := status.Convert(err)
		b, _ = appendFrame(c.wbuf[:0], &fspb.Result{Id: res.Id, Code: uint32(codes.Internal), Message: st.Message()})
	}
	c.wbuf = keep(b)
	c.conn.SetWriteDeadline(time.Now().Add(wireWriteTimeout))
	if _, err := c.conn.Write(b); err != nil {
		c.conn.Close()
	}
}
