package api

import (
	"math/bits"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/mem"

	"github.com/ssi-cluster/ssi/internal/localrpc"
)

// Stream tuning for stdio and file data. gRPC's defaults (64 KiB windows, 32 KiB buffers)
// stall a bulk stream on every window round trip; these let a stream run at memory speed while
// still bounding what is in flight per stream.
const (
	streamWindow = 8 << 20
	connWindow   = 16 << 20
	ioBuffer     = 512 << 10
	// MaxMessage is the largest message either side accepts.
	MaxMessage = localrpc.MaxMessage
)

// DialOptions tune a client connection for bulk streams.
func DialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithInitialWindowSize(streamWindow),
		grpc.WithInitialConnWindowSize(connWindow),
		grpc.WithWriteBufferSize(ioBuffer),
		grpc.WithReadBufferSize(ioBuffer),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessage), grpc.MaxCallSendMsgSize(MaxMessage)),
		experimental.WithBufferPool(uncleared),
	}
}

// ServerOptions tune a server for bulk streams.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.InitialWindowSize(streamWindow),
		grpc.InitialConnWindowSize(connWindow),
		grpc.WriteBufferSize(ioBuffer),
		grpc.ReadBufferSize(ioBuffer),
		grpc.MaxRecvMsgSize(MaxMessage),
		grpc.MaxSendMsgSize(MaxMessage),
		// Lets handlers send and receive frames of process output as they are (see Frame).
		grpc.ForceServerCodecV2(Codec{}),
		experimental.BufferPool(uncleared),
	}
}

// uncleared is the pool gRPC reads messages into and marshals them in. gRPC's default pool
// clears every buffer it hands out, which was ~7 % of an agent's CPU relaying a command's
// output; gRPC fills each buffer it takes before anything reads it (it reads whole frames
// into them, and marshals into them), so clearing buys nothing there. Package-level because
// gRPC's pool is per process in spirit: connections share buffers.
var uncleared = newTieredPool(8, 12, 14, 15, 20)

// tieredPool pools buffers in power-of-two sizes without clearing them.
type tieredPool struct {
	minShift, maxShift int
	pools              []sync.Pool // by shift; sizes not listed fall through to the next
	sizes              []bool
}

// newTieredPool pools buffers of 1<<shift bytes for each shift given, in increasing order.
func newTieredPool(shifts ...int) *tieredPool {
	p := &tieredPool{minShift: shifts[0], maxShift: shifts[len(shifts)-1]}
	p.pools = make([]sync.Pool, p.maxShift+1)
	p.sizes = make([]bool, p.maxShift+1)
	for _, s := range shifts {
		p.sizes[s] = true
	}
	return p
}

// tier is the shift of the smallest pooled size that holds n bytes, or -1.
func (p *tieredPool) tier(n int) int {
	s := max(bits.Len(uint(n-1)), p.minShift)
	if n <= 1 {
		s = p.minShift
	}
	for ; s <= p.maxShift; s++ {
		if p.sizes[s] {
			return s
		}
	}
	return -1
}

func (p *tieredPool) Get(n int) *[]byte {
	s := p.tier(n)
	if s < 0 {
		b := make([]byte, n)
		return &b
	}
	if bp, ok := p.pools[s].Get().(*[]byte); ok {
		*bp = (*bp)[:n]
		return bp
	}
	b := make([]byte, n, 1<<s)
	return &b
}

func (p *tieredPool) Put(bp *[]byte) {
	c := cap(*bp)
	if c == 0 || c&(c-1) != 0 {
		return
	}
	if s := bits.Len(uint(c)) - 1; s <= p.maxShift && p.sizes[s] {
		p.pools[s].Put(bp)
	}
}

var _ mem.BufferPool = (*tieredPool)(nil)
