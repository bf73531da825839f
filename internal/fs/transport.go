package fs

import (
	"context"
	"io"

	"google.golang.org/grpc"

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
	Read(context.Context, *fspb.ReadRequest) (*fspb.ReadReply, error)
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

// remoteFiles calls another node's Files service.
type remoteFiles struct{ c fspb.FilesClient }

func newRemoteFiles(conn grpc.ClientConnInterface) remoteFiles {
	return remoteFiles{c: fspb.NewFilesClient(conn)}
}

func (r remoteFiles) Lookup(ctx context.Context, in *fspb.LookupRequest) (*fspb.EntryReply, error) {
	return r.c.Lookup(ctx, in)
}
func (r remoteFiles) Getattr(ctx context.Context, in *fspb.NodeRequest) (*fspb.EntryReply, error) {
	return r.c.Getattr(ctx, in)
}
func (r remoteFiles) Setattr(ctx context.Context, in *fspb.SetattrRequest) (*fspb.EntryReply, error) {
	return r.c.Setattr(ctx, in)
}
func (r remoteFiles) Readlink(ctx context.Context, in *fspb.NodeRequest) (*fspb.ReadlinkReply, error) {
	return r.c.Readlink(ctx, in)
}
func (r remoteFiles) Readdir(ctx context.Context, in *fspb.ReaddirRequest) (*fspb.ReaddirReply, error) {
	return r.c.Readdir(ctx, in)
}
func (r remoteFiles) Open(ctx context.Context, in *fspb.OpenRequest) (*fspb.OpenReply, error) {
	return r.c.Open(ctx, in)
}
func (r remoteFiles) Create(ctx context.Context, in *fspb.CreateRequest) (*fspb.OpenReply, error) {
	return r.c.Create(ctx, in)
}
func (r remoteFiles) Read(ctx context.Context, in *fspb.ReadRequest) (*fspb.ReadReply, error) {
	return r.c.Read(ctx, in)
}
func (r remoteFiles) Write(ctx context.Context, in *fspb.WriteRequest) (*fspb.WriteReply, error) {
	return r.c.Write(ctx, in)
}
func (r remoteFiles) Release(ctx context.Context, in *fspb.HandleRequest) (*fspb.ErrnoReply, error) {
	return r.c.Release(ctx, in)
}
func (r remoteFiles) Fsync(ctx context.Context, in *fspb.FsyncRequest) (*fspb.ErrnoReply, error) {
	return r.c.Fsync(ctx, in)
}
func (r remoteFiles) Allocate(ctx context.Context, in *fspb.AllocateRequest) (*fspb.ErrnoReply, error) {
	return r.c.Allocate(ctx, in)
}
func (r remoteFiles) Lseek(ctx context.Context, in *fspb.LseekRequest) (*fspb.LseekReply, error) {
	return r.c.Lseek(ctx, in)
}
func (r remoteFiles) Mknod(ctx context.Context, in *fspb.MknodRequest) (*fspb.EntryReply, error) {
	return r.c.Mknod(ctx, in)
}
func (r remoteFiles) Symlink(ctx context.Context, in *fspb.SymlinkRequest) (*fspb.EntryReply, error) {
	return r.c.Symlink(ctx, in)
}
func (r remoteFiles) Link(ctx context.Context, in *fspb.LinkRequest) (*fspb.EntryReply, error) {
	return r.c.Link(ctx, in)
}
func (r remoteFiles) Remove(ctx context.Context, in *fspb.RemoveRequest) (*fspb.ChangeReply, error) {
	return r.c.Remove(ctx, in)
}
func (r remoteFiles) Rename(ctx context.Context, in *fspb.RenameRequest) (*fspb.ChangeReply, error) {
	return r.c.Rename(ctx, in)
}
func (r remoteFiles) Statfs(ctx context.Context, in *fspb.NodeRequest) (*fspb.StatfsReply, error) {
	return r.c.Statfs(ctx, in)
}
func (r remoteFiles) Xattr(ctx context.Context, in *fspb.XattrRequest) (*fspb.XattrReply, error) {
	return r.c.Xattr(ctx, in)
}
func (r remoteFiles) Lock(ctx context.Context, in *fspb.LockRequest) (*fspb.LockReply, error) {
	return r.c.Lock(ctx, in)
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
	w := &localWatch{ctx: withLocalNode(ctx, node), up: make(chan *fspb.WatchUp, 64), down: make(chan *fspb.WatchDown, 64)}
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
