package api

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	protov2 "google.golang.org/protobuf/proto"

	"github.com/ssi-cluster/ssi/internal/api/ssipb"
)

// Frame is a message kept in its encoded form. Bulk output (a process's stdout) travels as
// frames so that the agents in between and the CLI neither decode nor encode its bytes: the
// buffers gRPC received are handed on as they are. A frame holds one message whose first
// field says what it is, such as the oneof of RunOutput.
type Frame struct {
	data mem.BufferSlice
}

// Codec is gRPC's protobuf codec, except that it passes Frames through untouched. Servers and
// calls that relay or produce frames use it (grpc.ForceServerCodecV2, grpc.ForceCodecV2); on
// the wire nothing changes, so the other side may use the plain protobuf codec.
type Codec struct{}

var _ encoding.CodecV2 = Codec{}

func (Codec) Name() string { return proto.Name }

func (Codec) Marshal(v any) (mem.BufferSlice, error) {
	if f, ok := v.(*Frame); ok {
		// gRPC frees what Marshal returns once it is written: the frame's reference goes with it.
		data := f.data
		f.data = nil
		return data, nil
	}
	return encoding.GetCodecV2(proto.Name).Marshal(v)
}

func (Codec) Unmarshal(data mem.BufferSlice, v any) error {
	if f, ok := v.(*Frame); ok {
		data.Ref() // gRPC frees its own reference when Unmarshal returns
		f.data = data
		return nil
	}
	return encoding.GetCodecV2(proto.Name).Unmarshal(data, v)
}

// Field is the number of the frame's first field (0 if it has none).
func (f *Frame) Field() protowire.Number {
	head := f.head(binaryVarintMax)
	num, _, n := protowire.ConsumeTag(head)
	if n < 0 {
		return 0
	}
	return num
}

// Len is the size of the encoded message.
func (f *Frame) Len() int { return f.data.Len() }

// head returns up to n bytes from the start of the frame.
func (f *Frame) head(n int) []byte {
	var out []byte
	for _, b := range f.data {
		d := b.ReadOnlyData()
		if len(out) == 0 && len(d) >= n {
			return d[:n]
		}
		out = append(out, d[:min(len(d), n-len(out))]...)
		if len(out) == n {
			break
		}
	}
	return out
}

// Decode decodes the frame into m and releases it.
func (f *Frame) Decode(m protov2.Message) error {
	defer f.Free()
	buf := f.data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	return protov2.Unmarshal(buf.ReadOnlyData(), m)
}

// bytesPayload returns the payload of the frame's only field, which must be a bytes field, as
// views of the frame's buffers (valid until it is freed).
func (f *Frame) bytesPayload() ([][]byte, error) {
	head := f.head(2 * binaryVarintMax)
	_, typ, n := protowire.ConsumeTag(head)
	if n < 0 || typ != protowire.BytesType {
		return nil, fmt.Errorf("frame does not start with a bytes field")
	}
	size, m := protowire.ConsumeVarint(head[n:])
	if m < 0 || int(size) != f.data.Len()-n-m {
		return nil, fmt.Errorf("frame holds more than one bytes field")
	}
	skip := n + m
	views := make([][]byte, 0, len(f.data))
	for _, b := range f.data {
		d := b.ReadOnlyData()
		if skip >= len(d) {
			skip -= len(d)
			continue
		}
		views = append(views, d[skip:])
		skip = 0
	}
	return views, nil
}

// Free releases the frame's buffers (a frame that was sent needs no Free).
func (f *Frame) Free() {
	f.data.Free()
	f.data = nil
}

const binaryVarintMax = 10

// Fields of ssipb.RunOutput that carry output, as frames see them (frame_test checks them).
const (
	RunOutputStdout protowire.Number = ssipb.RunOutputStdoutField
	RunOutputStderr protowire.Number = ssipb.RunOutputStderrField
)

// BytesFramer makes frames of one bytes field from data read into pooled buffers, so that
// bulk output is read straight into the buffer gRPC writes from.
type BytesFramer struct {
	*Buffers
}

// NewBytesFramer makes frames of up to size bytes of payload.
func NewBytesFramer(size int) *BytesFramer {
	return &BytesFramer{NewBuffers(size)}
}

// Read reads once from r into a fresh buffer and returns a frame holding what was read as
// field num, or nil when nothing was read, together with the read's error.
func (b *BytesFramer) Read(r io.Reader, num protowire.Number) (*Frame, error) {
	bp := b.Get(b.size)
	n, err := r.Read(*bp)
	if n <= 0 {
		b.Put(bp)
		return nil, err
	}
	*bp = (*bp)[:n]
	return &Frame{data: mem.BufferSlice{mem.SliceBuffer(appendBytesHead(nil, num, n)), mem.NewBuffer(bp, b)}}, err
}

// NewBytesFrame makes a frame of payload as field num; the frame refers to payload, which must
// stay unchanged until the frame is sent or freed.
func NewBytesFrame(num protowire.Number, payload []byte) *Frame {
	data := mem.BufferSlice{mem.SliceBuffer(appendBytesHead(nil, num, len(payload)))}
	if len(payload) > 0 {
		data = append(data, mem.SliceBuffer(payload))
	}
	return &Frame{data: data}
}

// Buffers is a pool of buffers of one size for payloads of frames (mem.NewBuffer), which
// return to it once gRPC wrote them. Unlike gRPC's own pool it does not clear them: what fills
// a buffer sends only the part it filled.
type Buffers struct {
	size int
	pool sync.Pool
}

// NewBuffers makes a pool of buffers of size bytes.
func NewBuffers(size int) *Buffers {
	return &Buffers{size: size}
}

// Get returns a buffer of length bytes, from the pool if it is no longer than the pool's size.
func (b *Buffers) Get(length int) *[]byte {
	if length > b.size {
		buf := make([]byte, length)
		return &buf
	}
	bp, _ := b.pool.Get().(*[]byte)
	if bp == nil {
		buf := make([]byte, b.size)
		bp = &buf
	}
	*bp = (*bp)[:length]
	return bp
}

// Put returns a buffer to the pool.
func (b *Buffers) Put(bp *[]byte) {
	if cap(*bp) >= b.size {
		b.pool.Put(bp)
	}
}

// appendBytesHead appends the tag and length of a bytes field num of n bytes to b.
func appendBytesHead(b []byte, num protowire.Number, n int) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendVarint(b, uint64(n))
}

// NewMessageFrame makes a frame of m followed by payload as its bytes field num, which m must
// leave unset: the payload is sent from where it is, not copied into an encoded message. The
// frame takes over the payload's reference (gRPC frees it once written; Free, if not sent).
func NewMessageFrame(m protov2.Message, num protowire.Number, payload mem.Buffer) (*Frame, error) {
	head, err := protov2.Marshal(m)
	if err != nil {
		payload.Free()
		return nil, err
	}
	head = appendBytesHead(head, num, payload.Len())
	return &Frame{data: mem.BufferSlice{mem.SliceBuffer(head), payload}}, nil
}

// DecodeSplit decodes the frame into m, except for its bytes field num, whose payload it
// returns as it lies in the frame's buffers, not copied: the slices are valid until the frame
// is freed, which the caller must do. If the field occurs more than once the last counts, as
// when protobuf decodes it; a field num of another wire type is left to m, as protobuf does.
func (f *Frame) DecodeSplit(m protov2.Message, num protowire.Number) ([][]byte, error) {
	r := frameReader{bufs: make([][]byte, 0, len(f.data))}
	for _, b := range f.data {
		if d := b.ReadOnlyData(); len(d) > 0 {
			r.bufs = append(r.bufs, d)
		}
	}
	var rest []byte
	var payload [][]byte
	for !r.eof() {
		start := len(rest)
		tag, err := r.varint(&rest)
		if err != nil {
			return nil, err
		}
		n, typ := protowire.DecodeTag(tag)
		if n == num && typ == protowire.BytesType {
			rest = rest[:start]
			size, err := r.varint(nil)
			if err != nil {
				return nil, err
			}
			if payload, err = r.take(size, nil); err != nil {
				return nil, err
			}
			continue
		}
		if n < protowire.MinValidNumber {
			return nil, errFrameInvalid
		}
		if err := r.value(&rest, n, typ, 0); err != nil {
			return nil, err
		}
	}
	if err := protov2.Unmarshal(rest, m); err != nil {
		return nil, err
	}
	return payload, nil
}

var errFrameInvalid = errors.New("frame holds an invalid message")

// frameReader reads the encoded message of a frame across its buffers.
type frameReader struct {
	bufs [][]byte
}

func (r *frameReader) eof() bool { return len(r.bufs) == 0 }

func (r *frameReader) byte() (byte, error) {
	if len(r.bufs) == 0 {
		return 0, errFrameInvalid
	}
	c := r.bufs[0][0]
	if r.bufs[0] = r.bufs[0][1:]; len(r.bufs[0]) == 0 {
		r.bufs = r.bufs[1:]
	}
	return c, nil
}

// varint reads a varint, appending its encoding to *raw if raw is not nil.
func (r *frameReader) varint(raw *[]byte) (uint64, error) {
	var v uint64
	for i := 0; i < binaryVarintMax; i++ {
		c, err := r.byte()
		if err != nil {
			return 0, err
		}
		if raw != nil {
			*raw = append(*raw, c)
		}
		if i == binaryVarintMax-1 && c > 1 {
			return 0, errFrameInvalid
		}
		v |= uint64(c&0x7f) << (7 * i)
		if c < 0x80 {
			return v, nil
		}
	}
	return 0, errFrameInvalid
}

// take reads n bytes: appended to *raw if raw is not nil, else returned as views.
func (r *frameReader) take(n uint64, raw *[]byte) ([][]byte, error) {
	var views [][]byte
	for n > 0 {
		if len(r.bufs) == 0 {
			return nil, errFrameInvalid
		}
		d := r.bufs[0]
		k := len(d)
		if uint64(k) > n {
			k = int(n)
		}
		if raw != nil {
			*raw = append(*raw, d[:k]...)
		} else {
			views = append(views, d[:k])
		}
		if r.bufs[0] = d[k:]; len(r.bufs[0]) == 0 {
			r.bufs = r.bufs[1:]
		}
		n -= uint64(k)
	}
	return views, nil
}

// value copies the value of a field of wire type typ to *raw; groups are copied whole, up to
// protobuf's nesting limit.
func (r *frameReader) value(raw *[]byte, num protowire.Number, typ protowire.Type, depth int) error {
	switch typ {
	case protowire.VarintType:
		_, err := r.varint(raw)
		return err
	case protowire.Fixed32Type:
		_, err := r.take(4, raw)
		return err
	case protowire.Fixed64Type:
		_, err := r.take(8, raw)
		return err
	case protowire.BytesType:
		size, err := r.varint(raw)
		if err != nil {
			return err
		}
		_, err = r.take(size, raw)
		return err
	case protowire.StartGroupType:
		if depth >= protowire.DefaultRecursionLimit {
			return errFrameInvalid
		}
		for {
			tag, err := r.varint(raw)
			if err != nil {
				return err
			}
			n, t := protowire.DecodeTag(tag)
			if n < protowire.MinValidNumber {
				return errFrameInvalid
			}
			if t == protowire.EndGroupType {
				if n != num {
					return errFrameInvalid
				}
				return nil
			}
			if err := r.value(raw, n, t, depth+1); err != nil {
				return err
			}
		}
	}
	return errFrameInvalid
}
