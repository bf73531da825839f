package datalink

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The record layer. Once both nodes have authenticated each other with TLS, the stream leaves
// crypto/tls: its records carry at most 16 KiB, each a write system call, a copy into TLS's
// buffer and another out of it (64 k writes and 33 k reads per GiB in the agents). The link
// seals each chunk as one AES-128-GCM record instead, in place, with a key only the two ends
// of this TLS connection can derive (the TLS exporter, RFC 8446 §7.5, bound to the session's
// token), so that the record layer has the connection's authentication and secrecy:
//
//	header: 4 bytes big-endian, the top bit marks the last record, the rest the length n
//	body:   n bytes of ciphertext and the 16-byte GCM tag; the header is the additional data
//
// The nonce is the record's sequence number, so records cannot be replayed, reordered or
// dropped unnoticed; the last record is sealed too, so a cut-off stream never passes for a
// finished one. The key changes every recordsPerKey records (at most 64 GiB), far inside
// AES-GCM's usage limits.

// MaxChunk is the largest chunk: one read of a 1 MiB pipe. It bounds the receiver's buffer.
const MaxChunk = 1 << 20

const (
	headerLen = 4
	tagLen    = 16
	lastFlag  = 1 << 31
	// recordsPerKey bounds what one key seals: 2^16 records of at most 1 MiB.
	recordsPerKey = 1 << 16
	// exporterLabel names the link's keys in the TLS key schedule.
	exporterLabel = "EXPORTER-ssi-output-link"
	secretLen     = 32
)

// errTruncated means the stream ended without its end marker.
var errTruncated = errors.New("data link ended without its end marker (the sending node failed or was cut off)")

// errForged means a record failed authentication: not what the sending node sealed.
var errForged = errors.New("data link record failed authentication")

// keys derives the AES-GCM key of each record from the connection's exported secret.
type keys struct {
	secret []byte
	epoch  uint64
	aead   cipher.AEAD
}

// forRecord returns the AEAD and nonce that seal record seq.
func (k *keys) forRecord(seq uint64) (cipher.AEAD, [12]byte, error) {
	var nonce [12]byte
	binary.BigEndian.PutUint64(nonce[4:], seq)
	if epoch := seq / recordsPerKey; k.aead == nil || epoch != k.epoch {
		var info [8]byte
		binary.BigEndian.PutUint64(info[:], epoch)
		key, err := hkdf.Expand(sha256.New, k.secret, "ssi-output-link key "+string(info[:]), 16)
		if err != nil {
			return nil, nonce, fmt.Errorf("deriving a data link key: %w", err)
		}
		block, err := aes.NewCipher(key)
		if err != nil {
			return nil, nonce, fmt.Errorf("data link key: %w", err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, nonce, fmt.Errorf("data link key: %w", err)
		}
		k.aead, k.epoch = aead, epoch
	}
	return k.aead, nonce, nil
}

// sealer makes the records of a stream.
type sealer struct {
	keys keys
	seq  uint64
	// buf holds one record; the chunk to seal is read into payload().
	buf []byte
}

func newSealer(secret []byte) *sealer {
	return &sealer{keys: keys{secret: secret}, buf: make([]byte, headerLen+MaxChunk+tagLen)}
}

// payload is where the next chunk goes before seal.
func (s *sealer) payload() []byte { return s.buf[headerLen : headerLen+MaxChunk] }

// seal seals the n bytes in payload() (the last record when last, with n 0) in place and
// returns the record.
func (s *sealer) seal(n int, last bool) ([]byte, error) {
	h := uint32(n)
	if last {
		h |= lastFlag
	}
	binary.BigEndian.PutUint32(s.buf, h)
	aead, nonce, err := s.keys.forRecord(s.seq)
	if err != nil {
		return nil, err
	}
	s.seq++
	sealed := aead.Seal(s.buf[headerLen:headerLen], nonce[:], s.buf[headerLen:headerLen+n], s.buf[:headerLen])
	return s.buf[:headerLen+len(sealed)], nil
}

// decoder reads the chunks of a stream from the network.
type decoder struct {
	r    io.Reader
	keys keys
	seq  uint64
	// hdr holds the next record's header, ahead bytes of it already read with the previous
	// record's body: a record's body and the next header cost one read when both have come.
	hdr   [headerLen]byte
	ahead int
	buf   []byte
	done  bool
}

func newDecoder(r io.Reader, secret []byte) *decoder {
	return &decoder{r: r, keys: keys{secret: secret}}
}

// next returns the next chunk (a view of the decoder's buffer, valid until the next call) or
// io.EOF after the end marker.
func (d *decoder) next() ([]byte, error) {
	if d.done {
		return nil, io.EOF
	}
	if d.ahead < headerLen {
		n, err := io.ReadAtLeast(d.r, d.hdr[d.ahead:], headerLen-d.ahead)
		d.ahead += n
		if err != nil {
			return nil, streamErr(err)
		}
	}
	hdr := d.hdr
	d.ahead = 0
	h := binary.BigEndian.Uint32(hdr[:])
	last, n := h&lastFlag != 0, int(h&^lastFlag)
	switch {
	case n > MaxChunk:
		return nil, fmt.Errorf("data link chunk of %d bytes, more than %d", n, MaxChunk)
	case last && n != 0:
		return nil, errors.New("data link end marker with data")
	case !last && n == 0:
		return nil, errors.New("empty data link chunk")
	}
	body := n + tagLen
	limit := body
	if !last {
		limit += headerLen
	}
	if cap(d.buf) < limit {
		// Grown to what the sender uses, at most one full record and a header: the memory of
		// a link is bounded.
		d.buf = make([]byte, max(limit, min(2*cap(d.buf), headerLen+MaxChunk+tagLen)))
	}
	got, err := io.ReadAtLeast(d.r, d.buf[:limit], body)
	if err != nil {
		return nil, streamErr(err)
	}
	aead, nonce, err := d.keys.forRecord(d.seq)
	if err != nil {
		return nil, err
	}
	chunk, err := aead.Open(d.buf[:0], nonce[:], d.buf[:body], hdr[:])
	if err != nil {
		return nil, errForged
	}
	d.seq++
	d.ahead = copy(d.hdr[:], d.buf[body:got])
	if last {
		d.done = true
		return nil, io.EOF
	}
	return chunk, nil
}

func streamErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errTruncated
	}
	return fmt.Errorf("reading the data link: %w", err)
}
