package localrpc

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
)

// Conn is a connection to the agent for one call.
type Conn struct {
	conn *net.UnixConn
	br   *bufio.Reader
	// wbuf holds what is to be written next: the hello, until the call's first frames go
	// with it in one write.
	wbuf []byte
	used bool
	stop func() bool // ends the watch on the call's context
	// ackPending: the output preamble's acknowledgement is still to be read.
	ackPending bool
	in         *ackReader // under br
}

// readBufferSize fits the small messages of most calls in one read; large payloads bypass
// it (bufio reads them straight into the destination).
const readBufferSize = 16 << 10

// Dial connects to the agent socket at path, passing stdout/stderr (either may be nil) as
// PassOutput does but without waiting for the acknowledgement, and writes the hello. The
// hello goes out with the call's first frames, in one write. Errors wrap the underlying one, so that errors.Is(err, syscall.ECONNREFUSED) or
// fs.ErrNotExist tell an agent that is not running.
func Dial(ctx context.Context, path string, stdout, stderr *os.File) (*Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("connecting to the agent: %w", err)
	}
	uc := nc.(*net.UnixConn)
	// The call follows the output preamble without waiting for the agent's acknowledgement,
	// which is read before the call's first frame (ackReader).
	passed, err := sendOutput(uc, stdout, stderr)
	if err != nil {
		uc.Close()
		return nil, err
	}
	c := &Conn{conn: uc, wbuf: make([]byte, 0, 512), ackPending: passed}
	c.wbuf = append(c.wbuf, Hello[:]...)
	return c, nil
}

// Close closes the connection; a call still running ends with Canceled on the agent.
func (c *Conn) Close() error {
	if c.stop != nil {
		c.stop()
	}
	return c.conn.Close()
}

// begin starts the one call of the connection: it appends the header to the pending write
// and ties the connection to ctx, closing it when ctx ends so that blocked reads and writes
// return.
func (c *Conn) begin(ctx context.Context, method string) error {
	if c.used {
		return &Error{Code: FailedPrecondition, Message: "localrpc: one call per connection"}
	}
	c.used = true
	if err := ctx.Err(); err != nil {
		return contextError(err)
	}
	var timeout time.Duration
	if d, ok := ctx.Deadline(); ok {
		if timeout = time.Until(d); timeout <= 0 {
			return contextError(context.DeadlineExceeded)
		}
	}
	start := len(c.wbuf)
	c.wbuf = AppendFrameHeader(c.wbuf, FrameHeader, 0)
	c.wbuf = AppendHeaderPayload(c.wbuf, timeout, method)
	if n := len(c.wbuf) - start - FrameHeaderLen; n > MaxHeaderPayload {
		return &Error{Code: InvalidArgument, Message: "localrpc: method name too long"}
	} else {
		binary.BigEndian.PutUint32(c.wbuf[start+1:], uint32(n))
	}
	c.in = &ackReader{r: c.conn, pending: c.ackPending}
	c.br = bufio.NewReaderSize(c.in, readBufferSize)
	c.stop = context.AfterFunc(ctx, func() { c.conn.Close() })
	return nil
}

// appendMessage appends an 'M' frame of m to b.
func appendMessage(b []byte, m proto.Message) ([]byte, error) {
	start := len(b)
	b = AppendFrameHeader(b, FrameMessage, 0)
	b, err := proto.MarshalOptions{}.MarshalAppend(b, m)
	if err != nil {
		return b[:start], &Error{Code: Internal, Message: fmt.Sprintf("localrpc: encoding %T: %v", m, err)}
	}
	n := len(b) - start - FrameHeaderLen
	if n > MaxMessage {
		return b[:start], &Error{Code: ResourceExhausted, Message: fmt.Sprintf("localrpc: message of %d bytes is larger than %d", n, MaxMessage)}
	}
	binary.BigEndian.PutUint32(b[start+1:], uint32(n))
	return b, nil
}

// Call makes a unary call (one request, one response) and closes nothing: the Conn is spent
// afterwards (one call per connection). The header, request and close-send go out in one
// write.
func (c *Conn) Call(ctx context.Context, method string, req, resp proto.Message) error {
	if err := c.begin(ctx, method); err != nil {
		return err
	}
	defer c.stop()
	var err error
	if c.wbuf, err = appendMessage(c.wbuf, req); err != nil {
		return err
	}
	c.wbuf = AppendFrameHeader(c.wbuf, FrameCloseSend, 0)
	if _, err := c.conn.Write(c.wbuf); err != nil {
		// The agent may have answered before hanging up (it refuses a method, say).
		if st := c.readStatusAfterWriteError(ctx); st != nil {
			return st
		}
		return c.transportError(ctx, "sending the request", err)
	}
	s := Stream{c: c, ctx: ctx}
	got := false
	for {
		p, err := s.RecvRaw()
		if err == io.EOF {
			if !got {
				return &Error{Code: Internal, Message: "localrpc: the agent sent no response"}
			}
			return nil
		}
		if err != nil {
			return err
		}
		if got {
			return &Error{Code: Internal, Message: "localrpc: the agent sent more than one response"}
		}
		got = true
		if err := proto.Unmarshal(p, resp); err != nil {
			return &Error{Code: Internal, Message: fmt.Sprintf("localrpc: decoding %T: %v", resp, err)}
		}
	}
}

// readStatusAfterWriteError returns the status the agent sent before it stopped reading, if
// any.
func (c *Conn) readStatusAfterWriteError(ctx context.Context) error {
	if ctx.Err() != nil {
		return nil
	}
	s := Stream{c: c, ctx: ctx}
	for {
		_, err := s.RecvRaw()
		if err == io.EOF {
			return nil
		}
		var e *Error
		if errors.As(err, &e) && s.gotStatus {
			return err
		}
		if err != nil {
			return nil
		}
	}
}

// transportError is the status of a failed read or write: the context's, if it ended (that
// closed the connection), else Unavailable.
func (c *Conn) transportError(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return contextError(ctx.Err())
	}
	switch {
	case errors.Is(err, errNotSpoken):
		return &Error{Code: Unavailable, Message: "the agent answered in an older protocol than this client's: upgrade the agent (ssid) to this client's version"}
	case c.in != nil && !c.in.answered && !errors.Is(err, ErrOutputNotPassed):
		return &Error{Code: Unavailable, Message: fmt.Sprintf("the agent hung up without answering (%v): if it is older than this client, upgrade it; otherwise see its log", err)}
	}
	return &Error{Code: Unavailable, Message: fmt.Sprintf("localrpc: %s: %v", what, err)}
}

// Stream is a streaming call.
type Stream struct {
	c   *Conn
	ctx context.Context

	wmu    sync.Mutex
	wbuf   []byte
	closed bool // close-send written

	rbuf      []byte
	end       error // io.EOF or *Error, once the call is over
	gotStatus bool
}

// Stream opens a streaming call. The header goes out with the first Send or CloseSend.
func (c *Conn) Stream(ctx context.Context, method string) (*Stream, error) {
	if err := c.begin(ctx, method); err != nil {
		return nil, err
	}
	s := &Stream{c: c, ctx: ctx, wbuf: c.wbuf}
	c.wbuf = nil
	return s, nil
}

// Send sends a message. It is safe for concurrent use. As with gRPC, io.EOF means the agent
// ended the call: Recv returns its status.
func (s *Stream) Send(m proto.Message) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closed {
		return &Error{Code: Internal, Message: "localrpc: Send after CloseSend"}
	}
	var err error
	if s.wbuf, err = appendMessage(s.wbuf, m); err != nil {
		return err
	}
	return s.flush()
}

// CloseSend tells the agent that no more messages follow. It is safe for concurrent use with
// Send.
func (s *Stream) CloseSend() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.wbuf = AppendFrameHeader(s.wbuf, FrameCloseSend, 0)
	return s.flush()
}

// flush writes and empties the pending frames; s.wmu is held.
func (s *Stream) flush() error {
	_, err := s.c.conn.Write(s.wbuf)
	// Large messages are not kept: the buffer would pin them for the life of the stream.
	if cap(s.wbuf) > 64<<10 {
		s.wbuf = nil
	} else {
		s.wbuf = s.wbuf[:0]
	}
	if err != nil {
		if s.ctx.Err() != nil {
			return contextError(s.ctx.Err())
		}
		return io.EOF
	}
	return nil
}

// Recv receives the next message into m. It returns io.EOF after the agent's OK status, and
// an *Error for any other status or failure.
func (s *Stream) Recv(m proto.Message) error {
	p, err := s.RecvRaw()
	if err != nil {
		return err
	}
	if err := proto.Unmarshal(p, m); err != nil {
		return &Error{Code: Internal, Message: fmt.Sprintf("localrpc: decoding %T: %v", m, err)}
	}
	return nil
}

// RecvRaw returns the next message's bytes undecoded, valid until the next Recv or RecvRaw,
// so that a client can write stdout payloads without decoding whole messages. Its errors are
// those of Recv.
func (s *Stream) RecvRaw() ([]byte, error) {
	if s.end != nil {
		return nil, s.end
	}
	// A call whose client receives before it sends has its header still pending.
	s.wmu.Lock()
	var err error
	if len(s.wbuf) > 0 {
		err = s.flush()
	}
	s.wmu.Unlock()
	if err != nil && err != io.EOF {
		s.end = err
		return nil, err
	}
	p, err := s.recv()
	if err != nil {
		s.end = err
		if s.c.stop != nil {
			s.c.stop()
		}
		return nil, err
	}
	return p, nil
}

func (s *Stream) recv() ([]byte, error) {
	typ, n, err := ReadFrameHeader(s.c.br, MaxMessage)
	if err != nil {
		if errors.Is(err, ErrFrameTooLarge) {
			return nil, &Error{Code: ResourceExhausted, Message: err.Error()}
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF // before the status
		}
		return nil, s.c.transportError(s.ctx, "receiving", err)
	}
	if cap(s.rbuf) < n {
		s.rbuf = make([]byte, n)
	}
	p := s.rbuf[:n]
	if _, err := io.ReadFull(s.c.br, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, s.c.transportError(s.ctx, "receiving", err)
	}
	switch typ {
	case FrameMessage:
		return p, nil
	case FrameStatus:
		code, msg, err := ParseStatusPayload(p)
		if err != nil {
			return nil, &Error{Code: Internal, Message: err.Error()}
		}
		s.gotStatus = true
		if code == OK {
			return nil, io.EOF
		}
		return nil, &Error{Code: code, Message: msg}
	}
	return nil, &Error{Code: Internal, Message: fmt.Sprintf("localrpc: unknown frame type %q from the agent", typ)}
}
