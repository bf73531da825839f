package datalink

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// MaxChunk is the largest chunk: one read of a 1 MiB pipe. It bounds the receiver's buffer.
const MaxChunk = 1 << 20

const headerLen = 4

func putHeader(b []byte, n int) { binary.BigEndian.PutUint32(b, uint32(n)) }

// errTruncated means the stream ended without its end marker.
var errTruncated = errors.New("data link ended without its end marker (the sending node failed or was cut off)")

// decoder reads the chunks of a stream from the network.
type decoder struct {
	r    io.Reader
	buf  []byte
	done bool
}

// next returns the next chunk (a view of the decoder's buffer, valid until the next call) or
// io.EOF after the end marker.
func (d *decoder) next() ([]byte, error) {
	if d.done {
		return nil, io.EOF
	}
	var h [headerLen]byte
	if _, err := io.ReadFull(d.r, h[:]); err != nil {
		return nil, streamErr(err)
	}
	n := binary.BigEndian.Uint32(h[:])
	if n == 0 {
		d.done = true
		return nil, io.EOF
	}
	if n > MaxChunk {
		return nil, fmt.Errorf("data link chunk of %d bytes, more than %d", n, MaxChunk)
	}
	if cap(d.buf) < int(n) {
		// Grown to what the sender uses, at most MaxChunk: the memory of a link is bounded.
		d.buf = make([]byte, max(int(n), min(2*cap(d.buf), MaxChunk)))
	}
	b := d.buf[:n]
	if _, err := io.ReadFull(d.r, b); err != nil {
		return nil, streamErr(err)
	}
	return b, nil
}

func streamErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errTruncated
	}
	return fmt.Errorf("reading the data link: %w", err)
}
