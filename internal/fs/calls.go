package fs

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ssi-cluster/ssi/internal/fs/fspb"
)

// The Calls stream carries a client's requests to one owner on one long-lived gRPC stream
// instead of a unary call each. On the 2-core machine a unary call over loopback TLS took
// 150-200 µs when the process had been idle for a moment (each call sets up an HTTP/2 stream
// and wakes a handful of goroutines), a request on the stream about half that; a small-file
// create makes two such requests. Calls that may block for long (device I/O) or carry much data
// (which would hold up the others behind it on one stream) stay unary.

// maxStreamedData is the most file data a read or write sends on the Calls stream.
const maxStreamedData = 64 << 10

// retryCallsAfter is how long a client keeps using unary calls with an owner that did not know
// the Calls stream (an older agent), or the Calls stream with one that did not serve the file
// wire, before it tries again.
const retryCallsAfter = time.Minute

// wireIdle is how long after its last reply a file wire counts as idle (idleAndClosed).
const wireIdle = 100 * time.Millisecond

// errNoCalls reports that the owner does not serve the stream asked for (the Calls stream, or
// the file wire, wrapped): the request was not made, and goes unary.
var errNoCalls = errors.New("owner does not serve the Calls stream")

// callCarrier carries a callStream's requests and replies: a gRPC Calls stream or a file wire
// connection. Send is never called concurrently, nor Recv.
type callCarrier interface {
	Send(*fspb.Call) error
	Recv() (*fspb.Result, error)
}

// callStream is the client side of one Calls stream or file wire connection.
//
// A Calls stream has a goroutine of its own that receives the replies and hands each to its
// caller. A file wire has none: a caller waiting for its reply takes the read token and reads
// the connection itself until its reply comes, handing the others' to their callers, then
// passes the token on to one of those still waiting. With one request at a time (a shell's
// creates) the caller reads its own reply, and no other goroutine has to be woken to hand it
// over: on this kind of VM each wake-up of a sleeping thread is dear.
type callStream struct {
	conn   grpc.ClientConnInterface
	wire   *wireClient // set on the file wire, once open
	isWire bool        // on the file wire, not gRPC
	cancel context.CancelFunc
	ready  chan struct{} // closed once the stream is open or failed to open
	stream callCarrier
	send   chan struct{} // held (one token) while sending: Send is not safe concurrently
	read   chan struct{} // on the file wire, held (one token) by the caller reading replies
	done   chan struct{} // closed when the stream failed; err says why

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan *fspb.Result
	err     error
	// abandoned are the opens and creates whose callers gave up before the reply came; a
	// reply that comes later still opened the file on the owner, and lateOpen closes it there.
	abandoned map[uint64]bool
	lateOpen  func(handle uint64)
}

// maxAbandoned bounds the abandoned opens a stream remembers: an owner that answers none of
// them is not going to.
const maxAbandoned = 4096

// opensFile tells the methods whose reply carries a handle the owner opened.
func opensFile(method string) bool { return method == "Open" || method == "Create" }

// late handles a reply no caller waits for: one to an abandoned open is closed on the owner.
func (cs *callStream) late(res *fspb.Result) {
	cs.mu.Lock()
	abandoned, lateOpen := cs.abandoned[res.Id], cs.lateOpen
	delete(cs.abandoned, res.Id)
	cs.mu.Unlock()
	if !abandoned || lateOpen == nil || res.Code != uint32(codes.OK) {
		return
	}
	var reply fspb.OpenReply
	if proto.Unmarshal(res.Reply, &reply) == nil && reply.Errno == 0 && reply.Handle != 0 {
		go lateOpen(reply.Handle)
	}
}

// abandon notes that the caller of open id gave up before its reply came.
func (cs *callStream) abandon(id uint64) {
	if len(cs.abandoned) >= maxAbandoned {
		return
	}
	if cs.abandoned == nil {
		cs.abandoned = make(map[uint64]bool)
	}
	cs.abandoned[id] = true
}

// openCallStream starts opening a Calls stream on conn; calls wait for it.
func openCallStream(parent context.Context, conn grpc.ClientConnInterface) *callStream {
	return openStream(parent, conn, false, func(ctx context.Context) (callCarrier, error) {
		return fspb.NewFilesClient(conn).Calls(ctx)
	})
}

// openWireStream starts dialling the file wire to node; calls wait for it. If the owner cannot
// be reached on it within timeout, the calls waiting fail with errNoCalls (they were not made).
func openWireStream(parent context.Context, conn grpc.ClientConnInterface, d WireDialer, node string, timeout time.Duration) *callStream {
	return openStream(parent, conn, true, func(ctx context.Context) (callCarrier, error) {
		w, err := dialWire(ctx, d, node, timeout)
		if err != nil {
			return nil, fmt.Errorf("%w: file wire: %w", errNoCalls, err)
		}
		return w, nil
	})
}

func openStream(parent context.Context, conn grpc.ClientConnInterface, wire bool, open func(context.Context) (callCarrier, error)) *callStream {
	ctx, cancel := context.WithCancel(parent)
	cs := &callStream{conn: conn, isWire: wire, cancel: cancel, ready: make(chan struct{}), send: make(chan struct{}, 1),
		read: make(chan struct{}, 1), done: make(chan struct{}), pending: make(map[uint64]chan *fspb.Result)}
	go func() {
		stream, err := open(ctx)
		if err != nil {
			cs.fail(err)
			close(cs.ready)
			return
		}
		cs.stream = stream
		if w, ok := stream.(*wireClient); ok {
			cs.wire = w
			close(cs.ready)
			return // its callers read it
		}
		close(cs.ready)
		for {
			res, err := stream.Recv()
			if err != nil {
				cs.fail(err)
				return
			}
			cs.deliver(res)
		}
	}()
	return cs
}

// deliver hands a reply to the caller waiting for it, if it still is.
func (cs *callStream) deliver(res *fspb.Result) {
	cs.mu.Lock()
	ch := cs.pending[res.Id]
	delete(cs.pending, res.Id)
	cs.mu.Unlock()
	if ch != nil {
		ch <- res
		return
	}
	cs.late(res)
}

// fail ends the stream: calls waiting on it fail with err, or go unary if the owner does not
// know the method (then none of them was made).
func (cs *callStream) fail(err error) {
	if status.Code(err) == codes.Unimplemented {
		err = errNoCalls
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.err != nil {
		return
	}
	cs.err = err
	cs.cancel()
	close(cs.done)
}

// failed returns why the stream ended, or nil while it works.
func (cs *callStream) failed() error {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.err
}

// close ends the stream; requests in flight fail as if the connection broke.
func (cs *callStream) close() {
	cs.fail(status.Error(codes.Unavailable, "file request stream closed"))
}

// call makes one request and decodes its reply into out. It fails with a gRPC status as a
// unary call would: the context's on timeout, the stream's when it breaks.
func (cs *callStream) call(ctx context.Context, method string, in, out proto.Message) error {
	select {
	case <-cs.ready:
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
	if err := cs.failed(); err != nil {
		return err
	}
	body, err := proto.Marshal(in)
	if err != nil {
		return status.Errorf(codes.Internal, "encode a %s request: %v", method, err)
	}
	ch := make(chan *fspb.Result, 1)
	cs.mu.Lock()
	if cs.err != nil {
		cs.mu.Unlock()
		return cs.err
	}
	cs.nextID++
	id := cs.nextID
	cs.pending[id] = ch
	cs.mu.Unlock()
	answered := false
	defer func() {
		cs.mu.Lock()
		_, waiting := cs.pending[id]
		delete(cs.pending, id)
		abandoned := !answered && opensFile(method)
		if abandoned {
			// Gave up (a timeout) without the reply: should it come, the file it opened is
			// closed (late); it may have come just now.
			cs.abandon(id)
		}
		cs.mu.Unlock()
		if abandoned && !waiting {
			select {
			case res := <-ch:
				cs.late(res)
			default:
			}
		}
	}()
	if err := cs.sendCall(ctx, &fspb.Call{Id: id, Method: method, Request: body}); err != nil {
		return err
	}
	var res *fspb.Result
	var lead chan struct{} // nil (never ready) but on the file wire
	if cs.wire != nil {
		lead = cs.read
	}
	select {
	case res = <-ch:
	case lead <- struct{}{}:
		res, err = cs.readReplies(ctx, id, ch)
		<-cs.read
		if err != nil {
			return err
		}
	case <-cs.done:
		select {
		case res = <-ch: // answered just before the stream ended
		default:
			if errors.Is(cs.failed(), errNoCalls) {
				// Not made: the owner refused the stream before serving anything on it.
				return errNoCalls
			}
			return cs.failed()
		}
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
	answered = true
	if res.Code != uint32(codes.OK) {
		return status.Error(codes.Code(res.Code), res.Message)
	}
	if err := proto.Unmarshal(res.Reply, out); err != nil {
		return status.Errorf(codes.Internal, "decode the owner's %s reply: %v", method, err)
	}
	return nil
}

// readReplies reads the file wire, holding its read token, until the reply to request id
// comes; the others' it hands to their callers. It ends early when ctx does.
func (cs *callStream) readReplies(ctx context.Context, id uint64, ch chan *fspb.Result) (*fspb.Result, error) {
	// The previous reader may have handed this reply over just before it let go.
	select {
	case res := <-ch:
		return res, nil
	default:
	}
	w := cs.wire
	stop := context.AfterFunc(ctx, w.interrupt)
	defer stop()
	for {
		if err := ctx.Err(); err != nil {
			return nil, status.FromContextError(err).Err()
		}
		res, err := w.Recv()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// ctx ended, or an earlier reader's ended late. Cleared before ctx is looked at:
				// ctx ends before its interrupt is set, so one for ctx is never lost.
				w.clearInterrupt()
				continue
			}
			cs.fail(err)
			select {
			case res := <-ch: // answered just before the stream ended
				return res, nil
			default:
			}
			return nil, cs.failed()
		}
		if res.Id == id {
			cs.mu.Lock()
			delete(cs.pending, id)
			cs.mu.Unlock()
			return res, nil
		}
		cs.deliver(res)
	}
}

// idleAndClosed reports whether the file wire was closed by the owner while no caller read it.
// A reply read within the last wireIdle needs no look: an owner that went away since then
// cannot be back yet (an agent takes longer than that to start), so no request made meanwhile
// could succeed on another connection either.
func (cs *callStream) idleAndClosed() bool {
	select {
	case <-cs.ready:
	default:
		return false
	}
	if cs.wire == nil || time.Since(cs.wire.lastReply()) < wireIdle {
		return false
	}
	select {
	case cs.read <- struct{}{}:
		defer func() { <-cs.read }()
	default:
		return false // a caller reads it and would see that
	}
	w := cs.wire
	for {
		switch w.peek() {
		case peekEmpty:
			return false
		case peekClosed:
			return true
		}
		// Bytes are there: replies to calls that gave up, or the owner's TLS closing alert,
		// which only a read tells apart. They are there already, so the read does not wait
		// (but for the rest of a record cut in two: then the wire counts as open).
		w.conn.SetReadDeadline(time.Now().Add(time.Millisecond))
		res, err := w.Recv()
		w.clearInterrupt()
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			return false
		case err != nil:
			return true
		}
		cs.deliver(res)
	}
}

// sendCall sends one request. A stream that cannot take it within the caller's time is stuck
// (an owner gone without a word): it is ended, so that every call on it fails and the next one
// opens a new stream.
func (cs *callStream) sendCall(ctx context.Context, c *fspb.Call) error {
	select {
	case cs.send <- struct{}{}:
	case <-cs.done:
		return cs.failed()
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
	defer func() { <-cs.send }()
	stop := context.AfterFunc(ctx, cs.close)
	err := cs.stream.Send(c)
	stop()
	if err != nil {
		if cs.wire == nil {
			// gRPC's Send only says io.EOF; the reason is what Recv sees, and the stream's reader
			// records it. An owner that does not know the Calls stream refuses it with
			// Unimplemented, and then the request goes unary: failing it here instead (as
			// Unavailable, ENOTCONN to the process) lost that race about one time in ten.
			select {
			case <-cs.done:
			case <-ctx.Done():
			}
		}
		cs.fail(status.Error(codes.Unavailable, "file request stream broke"))
		return cs.failed()
	}
	return nil
}

// callStreamFor returns the stream to use with the owner reached on conn, opening one if
// needed: the file wire if the mount can dial it and the owner serves it, else the Calls stream,
// or nil if the owner serves neither.
func (p *peer) callStreamFor(conn grpc.ClientConnInterface) *callStream {
	p.mu.Lock()
	defer p.mu.Unlock()
	if cs := p.calls; cs != nil {
		err := cs.failed()
		if err == nil && cs.idleAndClosed() {
			cs.close()
			err = cs.failed()
		}
		switch {
		case err == nil && cs.conn == conn:
			return cs
		case errors.Is(err, errNoCalls) && cs.isWire:
			p.wireRetry = time.Now().Add(retryCallsAfter)
		case errors.Is(err, errNoCalls):
			p.callsRetry = time.Now().Add(retryCallsAfter)
		case err == nil:
			cs.close() // the connection was replaced
		}
		p.calls = nil
	}
	now := time.Now()
	if d, ok := p.m.cfg.Nodes.(WireDialer); ok && !now.Before(p.wireRetry) {
		p.calls = openWireStream(p.m.ctx, conn, d, p.name, p.m.cfg.Timeout)
	} else if now.Before(p.callsRetry) {
		return nil
	} else {
		p.calls = openCallStream(p.m.ctx, conn)
	}
	p.calls.mu.Lock()
	p.calls.lateOpen = func(h uint64) { p.releaseNow([]uint64{h}) }
	p.calls.mu.Unlock()
	return p.calls
}

// dropCalls ends the Calls stream, after the owner was found gone.
func (p *peer) dropCalls() {
	p.mu.Lock()
	cs := p.calls
	p.calls = nil
	p.mu.Unlock()
	if cs != nil {
		cs.close()
	}
}

// viaCalls makes a request on the Calls stream if there is one, else (or if the owner turns out
// not to serve it) as a unary call.
func viaCalls[Req proto.Message, Reply any, PReply interface {
	*Reply
	proto.Message
}](ctx context.Context, r remoteFiles, method string, in Req, unary func(context.Context, Req, ...grpc.CallOption) (PReply, error)) (PReply, error) {
	if r.calls == nil {
		return unary(ctx, in)
	}
	out := PReply(new(Reply))
	err := r.calls.call(ctx, method, in, out)
	if errors.Is(err, errNoCalls) {
		return unary(ctx, in)
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Calls serves a client's Calls stream: each request runs concurrently, as a unary call would,
// with the stream's credentials.
func (s *Server) Calls(stream fspb.Files_CallsServer) error {
	ctx := stream.Context()
	if _, err := s.identify(ctx); err != nil {
		return err
	}
	var sendMu sync.Mutex
	var wg sync.WaitGroup
	defer wg.Wait() // nothing may be sent once this returns
	for {
		c, err := stream.Recv()
		if err != nil {
			return nil
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := s.serveCall(ctx, c)
			sendMu.Lock()
			defer sendMu.Unlock()
			stream.Send(res)
		}()
	}
}

// serveCall runs one request of a Calls stream.
func (s *Server) serveCall(ctx context.Context, c *fspb.Call) *fspb.Result {
	res := &fspb.Result{Id: c.Id}
	var reply proto.Message
	var err error
	if h := streamedMethods[c.Method]; h != nil {
		reply, err = h(s, ctx, c.Request)
	} else {
		err = status.Errorf(codes.Unimplemented, "no file method %q on the request stream", c.Method)
	}
	if err == nil {
		res.Reply, err = proto.Marshal(reply)
	}
	if err != nil {
		st := status.Convert(err)
		res.Code, res.Message, res.Reply = uint32(st.Code()), st.Message(), nil
	}
	return res
}

type streamedMethod func(s *Server, ctx context.Context, request []byte) (proto.Message, error)

// streamed adapts a unary method of the Server to the Calls stream.
func streamed[Req any, PReq interface {
	*Req
	proto.Message
}, Reply proto.Message](m func(*Server, context.Context, PReq) (Reply, error)) streamedMethod {
	return func(s *Server, ctx context.Context, request []byte) (proto.Message, error) {
		in := PReq(new(Req))
		if err := proto.Unmarshal(request, in); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "decode a file request: %v", err)
		}
		return m(s, ctx, in)
	}
}

// streamedMethods are the methods a Calls stream serves: every unary one but Status.
var streamedMethods = map[string]streamedMethod{
	"Lookup":   streamed((*Server).Lookup),
	"Getattr":  streamed((*Server).Getattr),
	"Setattr":  streamed((*Server).Setattr),
	"Readlink": streamed((*Server).Readlink),
	"Readdir":  streamed((*Server).Readdir),
	"Open":     streamed((*Server).Open),
	"Create":   streamed((*Server).Create),
	"Read":     streamed((*Server).Read),
	"Write":    streamed((*Server).Write),
	"Release":  streamed((*Server).Release),
	"Fsync":    streamed((*Server).Fsync),
	"Allocate": streamed((*Server).Allocate),
	"Lseek":    streamed((*Server).Lseek),
	"Mknod":    streamed((*Server).Mknod),
	"Symlink":  streamed((*Server).Symlink),
	"Link":     streamed((*Server).Link),
	"Remove":   streamed((*Server).Remove),
	"Rename":   streamed((*Server).Rename),
	"Statfs":   streamed((*Server).Statfs),
	"Xattr":    streamed((*Server).Xattr),
	"Lock":     streamed((*Server).Lock),
}
