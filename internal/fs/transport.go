package fs

import (
	"context"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/ssi-cluster/ssi/internal/api"
	"github.com/ssi-cluster/ssi/internal/fs/fspb"
)

// filesAPI is the Files service as the client uses it: over gRPC for other nodes, as direct
// method calls on the local Server for this node (which *Server satisfies as it is).
type filesAPI interface {
	Lookup(context.Context, *fspb.LookupRequest) (*fspb.EntryReply, error)
	Getattr(context.Context, *fspb.NodeRequest) (*fspb.EntryReply, error)
	Setattr(context.Context, *fspb.SetattrRequest) (*fspb.EntryReply, error)
	Readlink(context.Context, *fspb.NodeRequest) (*fspb.ReadlinkReply, error)
	Readdir(context.Context, *fspb.ReaddirRequest) (*fspb.ReaddirReply, error)
	Open(context.Context, *fspb.OpenRequest) (*fspb.OpenReply, error)
	Create(context.Context, *fspb.CreateRequest) (*fspb.OpenReply, error)
	// ReadInto is Read with the data put into dest (at least in.Size bytes): the reply's
	// Data is the part of dest read.
	ReadInto(ctx context.Context, in *fspb.ReadRequest, dest []byte) (*fspb.ReadReply, error)
	Write(context.Context, *fspb.WriteRequest) (*fspb.WriteReply, error)
	Release(context.Context, *fspb.HandleRequest) (*fspb.ErrnoReply, error)
	Fsync(context.Context, *fspb.FsyncRequest) (*fspb.ErrnoReply, error)
	Allocate(context.Context, *fspb.AllocateRequest) (*fspb.ErrnoReply, error)
	Lseek(context.Context, *fspb.LseekRequest) (*fspb.LseekReply, error)
	Mknod(context.Context, *fspb.MknodRequest) (*fspb.EntryReply, error)
	Symlink(context.Context, *fspb.SymlinkRequest) (*fspb.EntryReply, error)
	Link(context.Context, *fspb.LinkRequest) (*fspb.EntryReply, error)
	Remove(context.Context, *fspb.RemoveRequest) (*fspb.ChangeReply, error)
	Rename(context.Context, *fspb.RenameRequest) (*fspb.ChangeReply, error)
	Statfs(context.Context, *fspb.NodeRequest) (*fspb.StatfsReply, error)
	Xattr(context.Context, *fspb.XattrRequest) (*fspb.XattrReply, error)
	Lock(context.Context, *fspb.LockRequest) (*fspb.LockReply, error)
}

var _ filesAPI = (*Server)(nil)
var _ filesAPI = remoteFiles{}

// remoteFiles calls another node's Files service: on its Calls stream when there is one, else
// as unary calls.
type remoteFiles struct {
	conn  grpc.ClientConnInterface
	c     fspb.FilesClient
	calls *callStream
}

func newRemoteFiles(conn grpc.ClientConnInterface, calls *callStream) remoteFiles {
	return remoteFiles{conn: conn, c: fspb.NewFilesClient(conn), calls: calls}
}

// The file data of large reads and writes travels as frames (api.Frame): sent from where it
// lies and received into the buffers gRPC read it into, instead of being copied into and out
// of encoded messages on each side (two or three copies of every byte, each dear on this kind
// of machine). On the wire they are the ordinary messages, so either side may be older.
const (
	writeRequestData protowire.Number = 4 // fspb.WriteRequest.data
	readReplyData    protowire.Number = 2 // fspb.ReadReply.data
)

func (r remoteFiles) Lookup(ctx context.Context, in *fspb.LookupRequest) (*fspb.EntryReply, error) {
	return viaCalls(ctx, r, "Lookup", in, r.c.Lookup)
}
func (r remoteFiles) Getattr(ctx context.Context, in *fspb.NodeRequest) (*fspb.EntryReply, error) {
	return viaCalls(ctx, r, "Getattr", in, r.c.Getattr)
}
func (r remoteFiles) Setattr(ctx context.Context, in *fspb.SetattrRequest) (*fspb.EntryReply, error) {
	return viaCalls(ctx, r, "Setattr", in, r.c.Setattr)
}
func (r remoteFiles) Readlink(ctx context.Context, in *fspb.NodeRequest) (*fspb.ReadlinkReply, error) {
	return viaCalls(ctx, r, "Readlink", in, r.c.Readlink)
}
func (r remoteFiles) Readdir(ctx context.Context, in *fspb.ReaddirRequest) (*fspb.ReaddirReply, error) {
	// A listing batch is large: on the stream it would hold up the requests behind it.
	return r.c.Readdir(ctx, in)
}
func (r remoteFiles) Open(ctx context.Context, in *fspb.OpenRequest) (*fspb.OpenReply, error) {
	return viaCalls(ctx, r, "Open", in, r.c.Open)
}
func (r remoteFiles) Create(ctx context.Context, in *fspb.CreateRequest) (*fspb.OpenReply, error) {
	return viaCalls(ctx, r, "Create", in, r.c.Create)
}
func (r remoteFiles) ReadInto(ctx context.Context, in *fspb.ReadRequest, dest []byte) (*fspb.ReadReply, error) {
	if in.Size <= maxStreamedData {
		reply, err := viaCalls(ctx, r, "Read", in, r.c.Read)
		if err == nil {
			reply.Data = dest[:copy(dest, reply.Data)]
		}
		return reply, err
	}
	var frame api.Frame
	if err := r.conn.Invoke(ctx, fspb.Files_Read_FullMethodName, in, &frame, grpc.ForceCodecV2(api.Codec{})); err != nil {
		return nil, err
	}
	defer frame.Free()
	reply := new(fspb.ReadReply)
	parts, err := frame.DecodeSplit(reply, readReplyData)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "decode the owner's Read reply: %v", err)
	}
	n := 0
	for _, p := range parts {
		n += copy(dest[n:], p)
	}
	reply.Data = dest[:n]
	return reply, nil
}

// writeBuffers hold the data of writes until gRPC has sent it.
var writeBuffers = api.NewBuffers(maxIO)

func (r remoteFiles) Write(ctx context.Context, in *fspb.WriteRequest) (*fspb.WriteReply, error) {
	if len(in.Data) <= maxStreamedData {
		return viaCalls(ctx, r, "Write", in, r.c.Write)
	}
	// The data is copied once, into a pooled buffer that gRPC frees once written, not sent from
	// the kernel's buffer: that goes back to the FUSE server when the call returns, and a call
	// that timed out returns while gRPC may still be reading it (another write's bytes could go
	// out in its place).
	data := in.Data
	bp := writeBuffers.Get(len(data))
	copy(*bp, data)
	in.Data = nil
	frame, err := api.NewMessageFrame(in, writeRequestData, mem.NewBuffer(bp, writeBuffers))
	in.Data = data
	if err != nil {
		return nil, status.Errorf(codes.Internal, "encode a Write request: %v", err)
	}
	reply := new(fspb.WriteReply)
	if err := r.conn.Invoke(ctx, fspb.Files_Write_FullMethodName, frame, reply, grpc.ForceCodecV2(api.Codec{})); err != nil {
		return nil, err
	}
	return reply, nil
}
func (r remoteFiles) Release(ctx context.Context, in *fspb.HandleRequest) (*fspb.ErrnoReply, error) {
	return viaCalls(ctx, r, "Release", in, r.c.Release)
}
func (r remoteFiles) Fsync(ctx context.Context, in *fspb.FsyncRequest) (*fspb.ErrnoReply, error) {
	return viaCalls(ctx, r, "Fsync", in, r.c.Fsync)
}
func (r remoteFiles) Allocate(ctx context.Context, in *fspb.AllocateRequest) (*fspb.ErrnoReply, error) {
	return viaCalls(ctx, r, "Allocate", in, r.c.Allocate)
}
func (r remoteFiles) Lseek(ctx context.Context, in *fspb.LseekRequest) (*fspb.LseekReply, error) {
	return viaCalls(ctx, r, "Lseek", in, r.c.Lseek)
}
func (r remoteFiles) Mknod(ctx context.Context, in *fspb.MknodRequest) (*fspb.EntryReply, error) {
	return viaCalls(ctx, r, "Mknod", in, r.c.Mknod)
}
func (r remoteFiles) Symlink(ctx context.Context, in *fspb.SymlinkRequest) (*fspb.EntryReply, error) {
	return viaCalls(ctx, r, "Symlink", in, r.c.Symlink)
}
func (r remoteFiles) Link(ctx context.Context, in *fspb.LinkRequest) (*fspb.EntryReply, error) {
	return viaCalls(ctx, r, "Link", in, r.c.Link)
}
func (r remoteFiles) Remove(ctx context.Context, in *fspb.RemoveRequest) (*fspb.ChangeReply, error) {
	return viaCalls(ctx, r, "Remove", in, r.c.Remove)
}
func (r remoteFiles) Rename(ctx context.Context, in *fspb.RenameRequest) (*fspb.ChangeReply, error) {
	return viaCalls(ctx, r, "Rename", in, r.c.Rename)
}
func (r remoteFiles) Statfs(ctx context.Context, in *fspb.NodeRequest) (*fspb.StatfsReply, error) {
	return viaCalls(ctx, r, "Statfs", in, r.c.Statfs)
}
func (r remoteFiles) Xattr(ctx context.Context, in *fspb.XattrRequest) (*fspb.XattrReply, error) {
	return viaCalls(ctx, r, "Xattr", in, r.c.Xattr)
}
func (r remoteFiles) Lock(ctx context.Context, in *fspb.LockRequest) (*fspb.LockReply, error) {
	return viaCalls(ctx, r, "Lock", in, r.c.Lock)
}

// clientWatch is the client side of a Watch stream.
type clientWatch interface {
	Send(*fspb.WatchUp) error
	Recv() (*fspb.WatchDown, error)
}

// localWatch connects the local mount's Watch stream to the local Server without gRPC.
type localWatch struct {
	ctx  context.Context
	up   chan *fspb.WatchUp
	down chan *fspb.WatchDown
}

// openLocalWatch starts serving a Watch stream for this node's own mount; it ends with ctx.
func (s *Server) openLocalWatch(ctx context.Context, node string) clientWatch {
	w := &localWatch{ctx: withCallerNode(ctx, node), up: make(chan *fspb.WatchUp, 64), down: make(chan *fspb.WatchDown, 64)}
	go s.serveWatch(localWatchServer{w})
	return w
}

func (w *localWatch) Send(m *fspb.WatchUp) error {
	select {
	case w.up <- m:
		return nil
	case <-w.ctx.Done():
		return io.EOF
	}
}

func (w *localWatch) Recv() (*fspb.WatchDown, error) {
	select {
	case m := <-w.down:
		return m, nil
	case <-w.ctx.Done():
		return nil, io.EOF
	}
}

// localWatchServer is the server's end of a localWatch.
type localWatchServer struct{ w *localWatch }

func (s localWatchServer) Context() context.Context { return s.w.ctx }

func (s localWatchServer) Send(m *fspb.WatchDown) error {
	select {
	case s.w.down <- m:
		return nil
	case <-s.w.ctx.Done():
		return io.EOF
	}
}

func (s localWatchServer) Recv() (*fspb.WatchUp, error) {
	select {
	case m := <-s.w.up:
		return m, nil
	case <-s.w.ctx.Done():
		return nil, io.EOF
	}
}
