package api

import "google.golang.org/grpc"

// Stream tuning for stdio and file data. gRPC's defaults (64 KiB windows, 32 KiB buffers)
// stall a bulk stream on every window round trip; these let a stream run at memory speed while
// still bounding what is in flight per stream.
const (
	streamWindow = 8 << 20
	connWindow   = 16 << 20
	ioBuffer     = 512 << 10
	// MaxMessage is the largest message either side accepts.
	MaxMessage = 16 << 20
)

// DialOptions tune a client connection for bulk streams.
func DialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithInitialWindowSize(streamWindow),
		grpc.WithInitialConnWindowSize(connWindow),
		grpc.WithWriteBufferSize(ioBuffer),
		grpc.WithReadBufferSize(ioBuffer),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessage), grpc.MaxCallSendMsgSize(MaxMessage)),
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
	}
}
