// Package localrpc is the lean protocol between ssi's command-line client and the agent on the
// same machine. It exists so that the CLI need not link gRPC, which costs every command about
// 3 ms of start-up; the agent serves the very same gRPC service implementations over it (see
// api.LocalServer), on the same Unix socket as gRPC.
//
// # Wire format
//
// A client connects to the agent's Unix socket. The agent learns who it is from SO_PEERCRED
// only; nothing the client writes names an identity. The client may first pass its stdout and
// stderr (PassOutput): 8 bytes "\x00ssifd", version 1, and a mask (bit 0 stdout, bit 1
// stderr), sent together with the descriptors (SCM_RIGHTS), which the agent acknowledges with
// "ssi-ok\n". Then the client writes the 8-byte hello "\x00ssirpc" followed by version byte 1.
// (A gRPC client instead starts with HTTP/2's "PRI * HTTP/2.0" preface, which is how the agent
// tells the two apart.)
//
// After the hello both sides exchange frames: 1 type byte, a 4-byte big-endian payload
// length, and the payload, of at most MaxMessage bytes.
//
// Client to agent:
//
//	'H' header: uvarint timeout in milliseconds (0: none), then the full method name,
//	    such as "/ssi.v1.Control/Run". Exactly once, first; at most MaxHeaderPayload bytes.
//	'M' a request message (protobuf).
//	'C' close-send, empty: the client sends no more messages.
//
// Agent to client:
//
//	'M' a response message (protobuf).
//	'T' the call's status: uvarint code (gRPC's numbering), then the UTF-8 message. The agent
//	    closes the connection after it.
//
// One call per connection. A client that hangs up before 'C' (end of file) cancels the call,
// as does one that hangs up later, before the status. A malformed frame makes the agent hang
// up without a status. There is no flow control beyond the socket's: the agent queues up to
// a window of the client's messages for a handler that is busy, then stops reading.
//
// Nothing else of gRPC travels: no metadata, no status details. Dial sends the hello with the
// call's first frames, so that a unary call costs the client one write: hello, 'H', 'M', 'C'.
package localrpc

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"time"
	"unicode/utf8"
)

// MaxMessage is the largest payload of a frame, and the largest message either side
// accepts (api.MaxMessage is the same for gRPC).
const MaxMessage = 16 << 20

// Version is the protocol version carried in the hello.
const Version = 1

// Hello is what a client writes after any output preamble to speak this protocol. Its first
// byte is zero like the output preamble's, which gRPC's preface never starts with.
var Hello = [8]byte{0, 's', 's', 'i', 'r', 'p', 'c', Version}

// Frame types.
const (
	FrameHeader    byte = 'H'
	FrameMessage   byte = 'M'
	FrameCloseSend byte = 'C'
	FrameStatus    byte = 'T'
)

// FrameHeaderLen is the size of a frame's type and length.
const FrameHeaderLen = 5

// MaxHeaderPayload bounds an 'H' frame: a timeout and a method name need no more, and an
// agent reading a header should not have to hold a message-sized one.
const MaxHeaderPayload = 1024

// ErrFrameTooLarge is returned for a frame longer than allowed; its payload is not read.
var ErrFrameTooLarge = errors.New("localrpc: frame larger than allowed")

// ErrMalformed is returned for a frame whose payload does not parse.
var ErrMalformed = errors.New("localrpc: malformed frame")

// AppendFrameHeader appends a frame's type and payload length to b.
func AppendFrameHeader(b []byte, typ byte, n int) []byte {
	return binary.BigEndian.AppendUint32(append(b, typ), uint32(n))
}

// ReadFrameHeader reads a frame's type and payload length, refusing lengths over max before
// anything is allocated for them. The payload is left to the caller.
func ReadFrameHeader(r *bufio.Reader, max int) (typ byte, n int, err error) {
	hdr, err := r.Peek(FrameHeaderLen)
	if err != nil {
		if err == io.EOF && len(hdr) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return 0, 0, err
	}
	typ = hdr[0]
	size := binary.BigEndian.Uint32(hdr[1:])
	if _, err := r.Discard(FrameHeaderLen); err != nil {
		return 0, 0, err
	}
	if uint64(size) > uint64(max) {
		return typ, 0, fmt.Errorf("%w: %d bytes (at most %d)", ErrFrameTooLarge, size, max)
	}
	return typ, int(size), nil
}

// AppendHeaderPayload appends the payload of an 'H' frame.
func AppendHeaderPayload(b []byte, timeout time.Duration, method string) []byte {
	var ms uint64
	if timeout > 0 {
		// Rounded up: a timeout of a fraction of a millisecond must not read as none.
		ms = uint64((timeout + time.Millisecond - 1) / time.Millisecond)
	}
	return append(binary.AppendUvarint(b, ms), method...)
}

// ParseHeaderPayload parses the payload of an 'H' frame. The method must be a full method
// name ("/service/method"); a timeout too large to represent counts as none.
func ParseHeaderPayload(p []byte) (timeout time.Duration, method string, err error) {
	ms, n := binary.Uvarint(p)
	if n <= 0 {
		return 0, "", fmt.Errorf("%w: header timeout", ErrMalformed)
	}
	m := p[n:]
	if len(m) < 3 || m[0] != '/' || !utf8.Valid(m) {
		return 0, "", fmt.Errorf("%w: method name %q", ErrMalformed, m)
	}
	if ms > uint64(math.MaxInt64/int64(time.Millisecond)) {
		ms = 0
	}
	return time.Duration(ms) * time.Millisecond, string(m), nil
}

// AppendStatusPayload appends the payload of a 'T' frame. The message is cut to fit a frame
// (at a rune boundary).
func AppendStatusPayload(b []byte, code Code, msg string) []byte {
	if room := MaxMessage - binary.MaxVarintLen64; len(msg) > room {
		msg = msg[:room]
		for i := 0; i < utf8.UTFMax && !utf8.ValidString(msg[max(0, len(msg)-utf8.UTFMax):]); i++ {
			msg = msg[:len(msg)-1] // a rune cut in two
		}
	}
	return append(binary.AppendUvarint(b, uint64(code)), msg...)
}

// ParseStatusPayload parses the payload of a 'T' frame.
func ParseStatusPayload(p []byte) (Code, string, error) {
	code, n := binary.Uvarint(p)
	if n <= 0 || code > math.MaxUint32 {
		return 0, "", fmt.Errorf("%w: status code", ErrMalformed)
	}
	return Code(code), string(p[n:]), nil
}
