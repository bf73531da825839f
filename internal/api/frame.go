package api

import (
	"fmt"
	"io"
	"sync"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	protov2 "google.golang.org/protobuf/proto"
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

// WriteBytesField writes the payload of the frame's first field, which must be a bytes field,
// to w, and releases the frame.
func (f *Frame) WriteBytesField(w io.Writer) (int64, error) {
	defer f.Free()
	head := f.head(2 * binaryVarintMax)
	_, typ, n := protowire.ConsumeTag(head)
	if n < 0 || typ != protowire.BytesType {
		return 0, fmt.Errorf("frame does not start with a bytes field")
	}
	size, m := protowire.ConsumeVarint(head[n:])
	if m < 0 || int(size) != f.data.Len()-n-m {
		return 0, fmt.Errorf("frame holds more than one bytes field")
	}
	skip, written := n+m, int64(0)
	for _, b := range f.data {
		d := b.ReadOnlyData()
		if skip >= len(d) {
			skip -= len(d)
			continue
		}
		k, err := w.Write(d[skip:])
		written += int64(k)
		if err != nil {
			return written, err
		}
		skip = 0
	}
	return written, nil
}

// Free releases the frame's buffers (a frame that was sent needs no Free).
func (f *Frame) Free() {
	f.data.Free()
	f.data = nil
}

const binaryVarintMax = 10

// Fields of ssipb.RunOutput that carry output, as frames see them (frame_test checks them).
const (
	RunOutputStdout protowire.Number = 2
	RunOutputStderr protowire.Number = 3
)

// BytesFramer makes frames of one bytes field from data read into pooled buffers, so that
// bulk output is read straight into the buffer gRPC writes from.
type BytesFramer struct {
	size int
	pool sync.Pool
}

// NewBytesFramer makes frames of up to size bytes of payload.
func NewBytesFramer(size int) *BytesFramer {
	return &BytesFramer{size: size}
}

// Read reads once from r into a fresh buffer and returns a frame holding what was read as
// field num, or nil when nothing was read, together with the read's error.
func (b *BytesFramer) Read(r io.Reader, num protowire.Number) (*Frame, error) {
	bp, _ := b.pool.Get().(*[]byte)
	if bp == nil {
		buf := make([]byte, b.size)
		bp = &buf
	}
	*bp = (*bp)[:b.size]
	n, err := r.Read(*bp)
	if n <= 0 {
		b.pool.Put(bp)
		return nil, err
	}
	*bp = (*bp)[:n]
	hdr := protowire.AppendTag(make([]byte, 0, 2*binaryVarintMax), num, protowire.BytesType)
	hdr = protowire.AppendVarint(hdr, uint64(n))
	return &Frame{data: mem.BufferSlice{mem.SliceBuffer(hdr), mem.NewBuffer(bp, b)}}, err
}

// Get and Put make BytesFramer the pool its frames' buffers return to once gRPC wrote them.
func (b *BytesFramer) Get(length int) *[]byte {
	buf := make([]byte, length)
	return &buf
}

func (b *BytesFramer) Put(bp *[]byte) {
	if cap(*bp) >= b.size {
		b.pool.Put(bp)
	}
}
