package api

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/ssi-cluster/ssi/internal/localrpc"
)

// LocalServer serves gRPC service implementations over localrpc's lean protocol, so that a
// CLI need not link gRPC: the same handlers and interceptors run, with the same identity
// (CallerFrom) and passed output (TakeOutput) in their context. Register services on it as on
// a grpc.Server, and serve it with ServeLocal.
type LocalServer struct {
	unaryInt  grpc.UnaryServerInterceptor
	streamInt grpc.StreamServerInterceptor

	// base is the parent of every call's context; Stop cancels it, so that even a call whose
	// reader is not reading (see enqueue) ends.
	base    context.Context
	stopAll context.CancelFunc

	mu        sync.Mutex
	methods   map[string]localMethod // by full method name
	conns     map[net.Conn]struct{}  // accepted and not yet handed to gRPC or done
	listeners map[net.Listener]struct{}
	// handling counts the connections' goroutines, for tests to wait for them to end.
	handling sync.WaitGroup

	draining bool          // GracefulStop: no new connections
	idle     chan struct{} // closed once draining and no connection is left
	stopped  bool
}

type localMethod struct {
	impl   any
	unary  *grpc.MethodDesc
	stream *grpc.StreamDesc
}

var _ grpc.ServiceRegistrar = (*LocalServer)(nil)

// NewLocalServer makes a server whose calls go through the interceptors (either may be nil),
// as a grpc.Server's would.
func NewLocalServer(unary grpc.UnaryServerInterceptor, stream grpc.StreamServerInterceptor) *LocalServer {
	base, stopAll := context.WithCancel(context.Background())
	return &LocalServer{
		base:      base,
		stopAll:   stopAll,
		unaryInt:  unary,
		streamInt: stream,
		methods:   map[string]localMethod{},
		conns:     map[net.Conn]struct{}{},
		listeners: map[net.Listener]struct{}{},
	}
}

// RegisterService registers a service and its implementation, as grpc.Server does (and with
// its checks: a mismatch is a programming error).
func (l *LocalServer) RegisterService(sd *grpc.ServiceDesc, impl any) {
	if impl != nil {
		ht := reflect.TypeOf(sd.HandlerType).Elem()
		if st := reflect.TypeOf(impl); !st.Implements(ht) {
			panic(fmt.Sprintf("api: LocalServer.RegisterService: %v does not satisfy %v", st, ht))
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := range sd.Methods {
		l.add("/"+sd.ServiceName+"/"+sd.Methods[i].MethodName, localMethod{impl: impl, unary: &sd.Methods[i]})
	}
	for i := range sd.Streams {
		l.add("/"+sd.ServiceName+"/"+sd.Streams[i].StreamName, localMethod{impl: impl, stream: &sd.Streams[i]})
	}
}

func (l *LocalServer) add(name string, m localMethod) {
	if _, ok := l.methods[name]; ok {
		panic("api: LocalServer.RegisterService: duplicate method " + name)
	}
	l.methods[name] = m
}

// Stop closes the listeners ServeLocal serves, and every connection not handed to gRPC: calls
// in progress see their context cancelled. It does not wait for handlers to return.
func (l *LocalServer) Stop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stopped = true
	l.stopAll()
	for lis := range l.listeners {
		lis.Close()
	}
	for c := range l.conns {
		c.Close()
	}
	clear(l.conns)
	l.noteIdle()
}

// GracefulStop closes the listeners, lets the calls in progress end for up to grace, as
// grpc.Server.GracefulStop would, and then stops.
func (l *LocalServer) GracefulStop(grace time.Duration) {
	l.mu.Lock()
	l.draining = true
	for lis := range l.listeners {
		lis.Close()
	}
	if l.idle == nil {
		l.idle = make(chan struct{})
	}
	idle := l.idle
	l.noteIdle()
	l.mu.Unlock()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-idle:
	case <-t.C:
	}
	l.Stop()
}

// noteIdle wakes GracefulStop when no connection is left; l.mu is held.
func (l *LocalServer) noteIdle() {
	if l.draining && len(l.conns) == 0 && l.idle != nil {
		select {
		case <-l.idle:
		default:
			close(l.idle)
		}
	}
}

// track records a connection for Stop; it reports false (and closes it) once stopping.
func (l *LocalServer) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped || l.draining {
		c.Close()
		return false
	}
	l.conns[c] = struct{}{}
	return true
}

func (l *LocalServer) untrack(c net.Conn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.noteIdle()
	l.mu.Unlock()
}

// handshakeTimeout bounds the identity, output preamble and hello (or, for lean calls, the
// header): a client that says nothing must not hold a goroutine and a descriptor for long.
const handshakeTimeout = 5 * time.Second

// ServeLocal accepts connections on lis, a Unix socket listener, and serves each with l if
// its client speaks localrpc, else with g, which must use PeerCredentials: one socket for
// both protocols. The handshake runs on the connection's own goroutine, never in the accept
// loop. ServeLocal returns when lis fails or l is stopping (grpc.ErrServerStopped); stopping g
// does not end it, so stop both.
func ServeLocal(lis net.Listener, g *grpc.Server, l *LocalServer) error {
	l.mu.Lock()
	if l.stopped || l.draining {
		l.mu.Unlock()
		lis.Close()
		return grpc.ErrServerStopped
	}
	l.listeners[lis] = struct{}{}
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		delete(l.listeners, lis)
		l.mu.Unlock()
	}()

	forGRPC := newChanListener(lis.Addr())
	defer forGRPC.Close()
	go func() { _ = g.Serve(forGRPC) }()

	var delay time.Duration
	for {
		conn, err := lis.Accept()
		if err != nil {
			l.mu.Lock()
			stopped := l.stopped || l.draining
			l.mu.Unlock()
			if stopped {
				return grpc.ErrServerStopped
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				// Out of descriptors, say: wait for some to be freed, as net/http does.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("accepting on the control socket: %w", err)
		}
		delay = 0
		l.handling.Go(func() { l.handle(conn, forGRPC) })
	}
}

// handle identifies a connection's client and protocol, and serves it or hands it to gRPC.
func (l *LocalServer) handle(conn net.Conn, forGRPC *chanListener) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		conn.Close()
		return
	}
	if !l.track(uc) {
		return
	}
	_ = uc.SetDeadline(time.Now().Add(handshakeTimeout))
	c, info, lean, err := localHandshake(uc)
	if err != nil {
		l.untrack(uc)
		uc.Close()
		return
	}
	if lean {
		defer l.untrack(uc)
		l.serveConn(c, uc, info)
		return
	}
	l.untrack(uc)
	_ = uc.SetDeadline(time.Time{})
	forGRPC.hand(&handshakenConn{Conn: c, info: info})
}

// localHandshake reads the client's identity and output preamble, and tells which protocol it
// speaks: localrpc (lean) after its hello, else gRPC, whose bytes are left unread. The
// returned connection closes untaken output files.
func localHandshake(uc *net.UnixConn) (net.Conn, callerAuthInfo, bool, error) {
	caller, err := peerCaller(uc)
	if err != nil {
		return nil, callerAuthInfo{}, false, err
	}
	info := callerAuthInfo{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		caller:         caller,
	}
	var conn net.Conn = uc
	for range 2 { // at most an output preamble, then the hello
		first, err := peekFirst(uc)
		if err != nil {
			conn.Close()
			return nil, info, false, err
		}
		if first < 0 {
			conn.Close()
			return nil, info, false, io.EOF
		}
		if first != 0 {
			return conn, info, false, nil // gRPC's preface
		}
		pre, fds, err := readPrefix(uc)
		if err != nil {
			conn.Close()
			return nil, info, false, err
		}
		if pre == localrpc.Hello {
			if len(fds) > 0 {
				closeFds(fds)
				conn.Close()
				return nil, info, false, errors.New("descriptors sent with the hello")
			}
			return conn, info, true, nil
		}
		if info.passed != nil {
			closeFds(fds)
			conn.Close()
			return nil, info, false, errors.New("a second output preamble")
		}
		out, err := acceptOutput(uc, pre, fds)
		if err != nil {
			conn.Close()
			return nil, info, false, err
		}
		info.passed = &passedOutput{out: out}
		conn = &outputConn{UnixConn: uc, passed: info.passed}
	}
	conn.Close()
	return nil, info, false, errors.New("a second output preamble")
}

// handshakenConn is a connection ServeLocal identified, for PeerCredentials to take as is.
type handshakenConn struct {
	net.Conn
	info callerAuthInfo
}

// chanListener is the listener gRPC serves: it accepts what ServeLocal hands it.
type chanListener struct {
	addr  net.Addr
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newChanListener(addr net.Addr) *chanListener {
	return &chanListener{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

// hand gives conn to gRPC, or closes it if gRPC no longer accepts.
func (c *chanListener) hand(conn net.Conn) {
	select {
	case c.conns <- conn:
	case <-c.done:
		conn.Close()
	}
}

func (c *chanListener) Accept() (net.Conn, error) {
	select {
	case conn := <-c.conns:
		return conn, nil
	case <-c.done:
		return nil, net.ErrClosed
	}
}

func (c *chanListener) Close() error {
	c.once.Do(func() { close(c.done) })
	return nil
}

func (c *chanListener) Addr() net.Addr { return c.addr }

// serveConn serves the one call of a lean connection, and closes it.
func (l *LocalServer) serveConn(conn net.Conn, raw syscall.Conn, info callerAuthInfo) {
	defer conn.Close()
	br := bufio.NewReaderSize(conn, 4<<10)
	timeout, method, err := readCallHeader(br)
	if err != nil {
		return // garbage, or a client gone: nothing to answer
	}
	_ = conn.SetDeadline(time.Time{})

	ctx, cancel := context.WithCancel(l.base)
	defer cancel()
	if timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	ctx = peer.NewContext(ctx, &peer.Peer{Addr: conn.RemoteAddr(), LocalAddr: conn.LocalAddr(), AuthInfo: info})
	// So that grpc.Method(ctx) works in handlers and interceptors, as on gRPC.
	ctx = grpc.NewContextWithServerTransportStream(ctx, localTransportStream(method))
	call := &localCall{
		conn:   conn,
		raw:    raw,
		br:     br,
		ctx:    ctx,
		cancel: cancel,
		method: method,
		qready: make(chan struct{}, 1),
		qspace: make(chan struct{}, 1),
	}
	l.mu.Lock()
	m, ok := l.methods[method]
	l.mu.Unlock()
	if !ok {
		call.finish(status.Errorf(codes.Unimplemented, "unknown method %s", method))
		return
	}
	go call.readLoop()
	defer call.end()
	var herr error
	if m.unary != nil {
		var resp any
		resp, herr = m.unary.Handler(m.impl, ctx, call.decodeRequest, l.unaryInt)
		if herr == nil {
			herr = call.SendMsg(resp)
		}
	} else {
		sinfo := &grpc.StreamServerInfo{FullMethod: method, IsClientStream: m.stream.ClientStreams, IsServerStream: m.stream.ServerStreams}
		if l.streamInt != nil {
			herr = l.streamInt(m.impl, call, sinfo, m.stream.Handler)
		} else {
			herr = m.stream.Handler(m.impl, call)
		}
	}
	call.finish(herr)
}

// readCallHeader reads the 'H' frame that starts a call.
func readCallHeader(br *bufio.Reader) (time.Duration, string, error) {
	typ, n, err := localrpc.ReadFrameHeader(br, localrpc.MaxHeaderPayload)
	if err != nil {
		return 0, "", err
	}
	if typ != localrpc.FrameHeader {
		return 0, "", fmt.Errorf("%w: call starts with frame %q", localrpc.ErrMalformed, typ)
	}
	var buf [localrpc.MaxHeaderPayload]byte
	p := buf[:n]
	if _, err := io.ReadFull(br, p); err != nil {
		return 0, "", err
	}
	return localrpc.ParseHeaderPayload(p)
}

// localCall is a call on a lean connection, and its grpc.ServerStream.
type localCall struct {
	conn   net.Conn
	raw    syscall.Conn // conn's socket, watched for a hang-up while nothing reads it
	br     *bufio.Reader
	ctx    context.Context
	cancel context.CancelFunc
	method string

	// The client's messages not yet received, bounded in bytes like gRPC's stream window, so
	// that readLoop keeps reading (and so notices a client hanging up) while the handler is
	// busy, without holding more than a window of a client that sends and sends.
	qmu        sync.Mutex
	queue      []mem.Buffer
	queued     int
	closedSend bool          // the client's close-send came
	finished   bool          // the handler returned: queue no more
	qready     chan struct{} // a message or close-send was queued
	qspace     chan struct{} // a message was taken off the queue

	wmu  sync.Mutex
	hdr  [localrpc.FrameHeaderLen]byte
	bufs [][]byte
	sent bool // the status went out
}

var _ grpc.ServerStream = (*localCall)(nil)

// queueWindow bounds the bytes of messages queued for a handler (with an overhead per
// message, so that tiny messages count too). As gRPC's stream window.
const queueWindow = streamWindow

const queueOverhead = 64

// readLoop reads the client's frames after the header and queues messages for the handler.
// Any end of the connection before the status, whether after close-send or not, and any
// malformed frame, cancels the call: the client is gone or confused.
func (c *localCall) readLoop() {
	defer c.cancel()
	closedSend := false
	for {
		typ, buf, err := readClientFrame(c.br, closedSend)
		if err != nil {
			c.conn.Close()
			return
		}
		if typ == localrpc.FrameCloseSend {
			closedSend = true
			c.qmu.Lock()
			c.closedSend = true
			c.qmu.Unlock()
			signal(c.qready)
			continue
		}
		if !c.enqueue(buf) {
			return
		}
	}
}

// enqueue queues a message, waiting while the queue is full; it reports false (and frees the
// message) once the handler returned.
func (c *localCall) enqueue(buf mem.Buffer) bool {
	size := buf.Len() + queueOverhead
	c.qmu.Lock()
	for !c.finished && len(c.queue) > 0 && c.queued+size > queueWindow {
		c.qmu.Unlock()
		// Not reading now, this loop cannot notice the client hanging up by reading; a
		// handler that takes no message (one blocked writing a command's stdin, which the
		// command does not read) would then serve a client killed meanwhile for ever, and
		// its process tree with it. So the socket is watched for the hang-up meanwhile.
		stop := make(chan struct{})
		hup := watchHangup(c.raw, stop)
		select {
		case <-c.qspace: // end signals it too
			close(stop)
		case <-hup:
			buf.Free()
			c.conn.Close()
			return false
		case <-c.ctx.Done():
			close(stop)
			buf.Free()
			c.conn.Close()
			return false
		}
		c.qmu.Lock()
	}
	if c.finished {
		c.qmu.Unlock()
		buf.Free()
		return false
	}
	c.queue = append(c.queue, buf)
	c.queued += size
	c.qmu.Unlock()
	signal(c.qready)
	return true
}

// end marks the handler returned, and frees what it did not receive.
func (c *localCall) end() {
	c.qmu.Lock()
	c.finished = true
	for i, b := range c.queue {
		b.Free()
		c.queue[i] = nil
	}
	c.queue = nil
	c.qmu.Unlock()
	signal(c.qspace)
}

// signal wakes the waiter on ch, if any, or the next one.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// readClientFrame reads the client's next frame after the header: a message (whose payload,
// bounded before it is allocated, it returns in a pooled buffer that a Frame may keep) or
// close-send. Anything else, or a message after close-send, is an error.
func readClientFrame(br *bufio.Reader, closedSend bool) (byte, mem.Buffer, error) {
	typ, n, err := localrpc.ReadFrameHeader(br, localrpc.MaxMessage)
	if err != nil {
		return 0, nil, err
	}
	switch {
	case closedSend:
		return 0, nil, fmt.Errorf("%w: frame %q after close-send", localrpc.ErrMalformed, typ)
	case typ == localrpc.FrameCloseSend && n == 0:
		return typ, nil, nil
	case typ != localrpc.FrameMessage:
		return 0, nil, fmt.Errorf("%w: frame %q of %d bytes from a client", localrpc.ErrMalformed, typ, n)
	}
	if n == 0 {
		return typ, mem.SliceBuffer(nil), nil
	}
	bp := uncleared.Get(n)
	if _, err := io.ReadFull(br, *bp); err != nil {
		uncleared.Put(bp)
		return 0, nil, err
	}
	return typ, mem.NewBuffer(bp, uncleared), nil
}

// decodeRequest is the unary handler's dec: the call's one request.
func (c *localCall) decodeRequest(v any) error {
	if err := c.RecvMsg(v); err != nil {
		if err == io.EOF {
			return status.Error(codes.Internal, "localrpc: the client sent no request")
		}
		return err
	}
	return nil
}

func (c *localCall) Context() context.Context     { return c.ctx }
func (c *localCall) SetHeader(metadata.MD) error  { return nil }
func (c *localCall) SendHeader(metadata.MD) error { return nil }
func (c *localCall) SetTrailer(metadata.MD)       {}

// RecvMsg receives the client's next message with Codec (so into a *Frame too); io.EOF after
// its close-send.
func (c *localCall) RecvMsg(v any) error {
	for {
		c.qmu.Lock()
		if len(c.queue) > 0 {
			buf := c.queue[0]
			c.queue[0] = nil
			c.queue = c.queue[1:]
			c.queued -= buf.Len() + queueOverhead
			c.qmu.Unlock()
			signal(c.qspace)
			err := Codec{}.Unmarshal(mem.BufferSlice{buf}, v)
			buf.Free()
			if err != nil {
				return status.Errorf(codes.Internal, "localrpc: decoding the request: %v", err)
			}
			return nil
		}
		closed := c.closedSend
		c.qmu.Unlock()
		if closed {
			return io.EOF
		}
		select {
		case <-c.qready:
		case <-c.ctx.Done():
			return status.FromContextError(c.ctx.Err()).Err()
		}
	}
}

// SendMsg sends a message, encoded with Codec (so a *Frame as it is), in one write.
func (c *localCall) SendMsg(v any) error {
	data, err := Codec{}.Marshal(v)
	if err != nil {
		return status.Errorf(codes.Internal, "localrpc: encoding the response: %v", err)
	}
	defer data.Free()
	n := data.Len()
	if n > localrpc.MaxMessage {
		return status.Errorf(codes.ResourceExhausted, "localrpc: response of %d bytes is larger than %d", n, localrpc.MaxMessage)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.sent {
		return status.Error(codes.Internal, "localrpc: SendMsg after the call ended")
	}
	bufs := append(c.bufs[:0], localrpc.AppendFrameHeader(c.hdr[:0], localrpc.FrameMessage, n))
	for _, b := range data {
		if d := b.ReadOnlyData(); len(d) > 0 {
			bufs = append(bufs, d)
		}
	}
	nb := net.Buffers(bufs)
	_, err = nb.WriteTo(c.conn)
	clear(bufs)
	c.bufs = bufs[:0]
	if err != nil {
		if c.ctx.Err() != nil {
			return status.FromContextError(c.ctx.Err()).Err()
		}
		return status.Errorf(codes.Unavailable, "localrpc: sending: %v", err)
	}
	return nil
}

// finish sends the call's status, as gRPC makes it from the handler's error.
func (c *localCall) finish(err error) {
	st, ok := status.FromError(err)
	if !ok {
		st = status.FromContextError(err)
	}
	p := localrpc.AppendFrameHeader(make([]byte, 0, 64), localrpc.FrameStatus, 0)
	p = localrpc.AppendStatusPayload(p, localrpc.Code(st.Code()), st.Message())
	binary.BigEndian.PutUint32(p[1:], uint32(len(p)-localrpc.FrameHeaderLen))
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.sent = true
	_, _ = c.conn.Write(p)
}

// localTransportStream is what grpc.Method and grpc.SetHeader find in a lean call's context.
// Headers and trailers do not travel on localrpc: setting them does nothing.
type localTransportStream string

func (m localTransportStream) Method() string             { return string(m) }
func (localTransportStream) SetHeader(metadata.MD) error  { return nil }
func (localTransportStream) SendHeader(metadata.MD) error { return nil }
func (localTransportStream) SetTrailer(metadata.MD) error { return nil }

// hangupPoll is how long one look for a hang-up blocks its thread.
const hangupPoll = 200 // ms

// watchHangup returns a channel closed once the peer of raw hangs up (shuts down its sending
// side, or the socket fails), until stop is closed. Data the peer sent and nobody read yet
// does not hide a hang-up: POLLRDHUP reports it all the same.
func watchHangup(raw syscall.Conn, stop <-chan struct{}) <-chan struct{} {
	hup := make(chan struct{})
	if raw == nil {
		return hup
	}
	rc, err := raw.SyscallConn()
	if err != nil {
		return hup
	}
	go func() {
		for {
			hungUp := false
			err := rc.Control(func(fd uintptr) {
				fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
				if n, err := unix.Poll(fds, hangupPoll); err == nil && n > 0 {
					hungUp = fds[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0
				}
			})
			if hungUp || err != nil {
				close(hup)
				return
			}
			select {
			case <-stop:
				return
			default:
			}
		}
	}()
	return hup
}
