package fs

import (
	"context"
	"sync"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// The mount asks the kernel not to apply the caller's umask (CAP_DONT_MASK): locally the umask
// is not applied in a directory with a default ACL, which only the owner knows of. The kernel
// sends the umask with each create, mkdir and mknod instead, but go-fuse's node API passes on
// only the mode; umasks carries it from the raw request to the node, keyed by the request's
// cancel channel, which go-fuse hands on in the node's context and no other request in flight
// shares.
type umasks struct {
	m sync.Map // <-chan struct{} → uint32
}

// defaultUmask stands in for a caller's umask the mount did not receive (a call not from the
// kernel): the common one, rather than none.
const defaultUmask = 0o022

func (u *umasks) during(cancel <-chan struct{}, umask uint32, fn func() fuse.Status) fuse.Status {
	u.m.Store(cancel, umask)
	defer u.m.Delete(cancel)
	return fn()
}

// of returns the umask of the request behind ctx.
func (u *umasks) of(ctx context.Context) uint32 {
	if fc, ok := ctx.(*fuse.Context); ok {
		if v, ok := u.m.Load(fc.Cancel); ok {
			return v.(uint32)
		}
	}
	return defaultUmask
}

// umaskFS records the umask of the requests that make objects.
type umaskFS struct {
	fuse.RawFileSystem
	umasks *umasks
}

func (w *umaskFS) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	return w.umasks.during(cancel, in.Umask, func() fuse.Status { return w.RawFileSystem.Create(cancel, in, name, out) })
}

func (w *umaskFS) Mkdir(cancel <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	return w.umasks.during(cancel, in.Umask, func() fuse.Status { return w.RawFileSystem.Mkdir(cancel, in, name, out) })
}

func (w *umaskFS) Mknod(cancel <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	return w.umasks.during(cancel, in.Umask, func() fuse.Status { return w.RawFileSystem.Mknod(cancel, in, name, out) })
}

// modes returns the mode a create asked for with the caller's umask applied (what owners that
// predate unmasked_mode expect) and as asked.
func (u *umasks) modes(ctx context.Context, mode uint32) (masked uint32, unmasked *uint32) {
	asked := mode
	return mode &^ (u.of(ctx) & 0o777), &asked
}
