package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/ssi-cluster/ssi/internal/api/ssipb"
	"github.com/ssi-cluster/ssi/internal/api/ssirpc"
	"github.com/ssi-cluster/ssi/internal/cluster"
	"github.com/ssi-cluster/ssi/internal/fs"
	"github.com/ssi-cluster/ssi/internal/peermux"
	"github.com/ssi-cluster/ssi/internal/pki"
)

// DefaultMount is where the cluster file tree appears on every node.
const DefaultMount = "/ssi"

// files is the node's part of the cluster file tree: the server that exports this node's
// files to the others, and the mount that shows everyone's.
type files struct {
	server *fs.Server

	mu       sync.Mutex
	mounted  *fs.Mounted
	mountErr error // why the tree is not mounted, when it should be
}

// startFileServer opens this node's export. It must run before the peer server starts
// serving, since it registers a service there.
func (a *Agent) startFileServer() error {
	srv, err := fs.NewServer(fs.ServerConfig{
		Root:       "/",
		ReadOnly:   a.cfg.ExportRO,
		RootSquash: a.cfg.RootSquash,
		Exports:    a.cfg.Exports,
		StateDir:   filepath.Join(a.cfg.DataDir, "fs"),
		Logger:     a.log.With("part", "files"),
	})
	if err != nil {
		return fmt.Errorf("exporting this node's files: %w (check --export)", err)
	}
	a.files.server = srv
	return nil
}

// mountTree mounts the cluster tree. A node that cannot mount it (no FUSE, a busy mount
// point) still serves its files and runs processes; `ssi fs` and the log say why.
func (a *Agent) mountTree(ctx context.Context) {
	if a.cfg.NoMount {
		return
	}
	path := a.cfg.Mount
	m, err := mountAt(ctx, path, fs.MountConfig{
		Path:      path,
		LocalNode: a.state.Name,
		Nodes:     fileNodes{a},
		Local:     a.files.server,
		Logger:    a.log.With("part", "mount"),
	})
	a.files.mu.Lock()
	defer a.files.mu.Unlock()
	if err != nil {
		a.files.mountErr = err
		a.log.Error("the cluster file tree is not mounted", "path", path, "err", err)
		return
	}
	a.files.mounted = m
}

// mountAt makes the mount point and clears a mount that a killed agent left behind (its
// calls fail with ENOTCONN) before mounting.
func mountAt(ctx context.Context, path string, cfg fs.MountConfig) (*fs.Mounted, error) {
	if err := os.MkdirAll(path, 0o755); err != nil {
		var errno unix.Errno
		if !errors.As(err, &errno) || errno != unix.ENOTCONN {
			return nil, fmt.Errorf("make the mount point %s: %w (set --mount, or --no-mount)", path, err)
		}
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); errors.Is(err, unix.ENOTCONN) || errors.Is(err, unix.ECONNABORTED) {
		if err := unix.Unmount(path, unix.MNT_DETACH); err != nil {
			return nil, fmt.Errorf("clear the stale mount at %s: %w", path, err)
		}
	}
	return fs.Mount(ctx, cfg)
}

// closeFiles unmounts the tree first, so that no local process waits on a server that is
// going away, then stops serving this node's files.
func (a *Agent) closeFiles() {
	a.files.mu.Lock()
	m := a.files.mounted
	a.files.mounted = nil
	a.files.mu.Unlock()
	if m != nil {
		if err := m.Close(); err != nil {
			a.log.Warn("unmounting the cluster file tree", "path", a.cfg.Mount, "err", err)
		}
	}
	if a.files.server != nil {
		a.files.server.Close()
	}
}

// treePath is where this node's processes find the cluster tree, or "" when it is not mounted.
func (a *Agent) treePath() string {
	a.files.mu.Lock()
	defer a.files.mu.Unlock()
	if a.files.mounted == nil {
		return ""
	}
	return a.cfg.Mount
}

// fileNodes is the cluster as the mount needs it: every registered node, and a cached
// connection to each.
type fileNodes struct{ a *Agent }

func (n fileNodes) Names() []string {
	n.a.mu.Lock()
	names := make([]string, 0, len(n.a.registry)+1)
	for name := range n.a.registry {
		names = append(names, name)
	}
	n.a.mu.Unlock()
	for _, m := range n.a.gossip.Members() {
		if !slices.Contains(names, m.Name) {
			names = append(names, m.Name)
		}
	}
	if !slices.Contains(names, n.a.state.Name) {
		names = append(names, n.a.state.Name)
	}
	slices.Sort(names)
	return names
}

// Gone makes requests to a node gossip has seen fail end at once (fs.Liveness).
func (n fileNodes) Gone(node string) bool { return n.a.gossip.Gone(node) }

// DialFiles opens the file wire to a node, with this node's certificate (fs.WireDialer).
func (n fileNodes) DialFiles(ctx context.Context, node string) (net.Conn, error) {
	addr, ok := n.a.linkAddrOf(node)
	if !ok {
		return nil, fmt.Errorf("node %s is not in the cluster registry", node)
	}
	d := tls.Dialer{Config: peermux.ClientConfig(pki.ClientTLS(n.a.caCert, n.a.keyPair), protoFiles)}
	return d.DialContext(ctx, "tcp", addr)
}

func (n fileNodes) Conn(node string) (grpc.ClientConnInterface, error) {
	addr, ok := n.a.addrOf(node)
	if !ok {
		return nil, fmt.Errorf("node %s is not in the cluster registry", node)
	}
	return n.a.peerConn(addr)
}

// addrOf is a node's cluster address, from the registry or, for a node that joined since it
// was last read, from gossip.
func (a *Agent) addrOf(node string) (string, bool) {
	a.mu.Lock()
	rec, ok := a.registry[node]
	a.mu.Unlock()
	if ok && rec.Addr != "" {
		return rec.Addr, true
	}
	for _, m := range a.gossip.Members() {
		if m.Name == node && m.Meta.Addr != "" {
			return m.Meta.Addr, true
		}
	}
	return "", false
}

// fileStatusTimeout bounds how long `ssi fs` waits for a node's answer.
const fileStatusTimeout = 2 * time.Second

// fileStatus is this node's side of the tree, for `ssi fs`.
func (a *Agent) fileStatus() *ssipb.NodeFiles {
	out := &ssipb.NodeFiles{Node: a.state.Name, Mount: &ssipb.FileMount{Path: a.cfg.Mount}}
	if a.cfg.NoMount {
		out.Mount.Path = ""
	}
	if srv := a.files.server; srv != nil {
		st := srv.Stats()
		out.Export = &ssipb.FileExport{
			Root: st.Root, Exports: st.Exports, ReadOnly: st.ReadOnly, RootSquash: st.RootSquash,
			Sessions: uint64(st.Sessions), OpenFiles: uint64(st.OpenFiles), WatchedDirs: uint64(st.WatchedDirs),
			Ops: st.Ops, BytesRead: st.BytesRead, BytesWritten: st.BytesWritten,
			InvalidationsSent: st.InvalidationsSent, DiskEvents: st.DiskEvents, CacheEntries: uint64(st.CacheEntries),
		}
	}
	a.files.mu.Lock()
	m, mountErr := a.files.mounted, a.files.mountErr
	a.files.mu.Unlock()
	if mountErr != nil {
		out.Mount.Error = mountErr.Error()
	}
	if m != nil {
		st := m.Stats()
		out.Mount.Mounted = true
		out.Mount.Ops, out.Mount.BytesRead, out.Mount.BytesWritten = st.Ops, st.BytesRead, st.BytesWritten
		out.Mount.Invalidations, out.Mount.Flushes, out.Mount.Failures = st.Invalidations, st.Flushes, st.Failures
		out.Mount.CachedInodes = uint64(st.CachedInodes)
		for _, n := range st.Nodes {
			if n.Connected {
				out.Mount.Connected = append(out.Mount.Connected, n.Name)
			}
		}
	}
	return out
}

// clusterFileStatus asks every node for its side of the tree, in parallel; a node that is
// down or does not answer in time is reported, not waited for.
func (a *Agent) clusterFileStatus(ctx context.Context) []*ssipb.NodeFiles {
	nodes, _ := a.nodes(ctx)
	out := make([]*ssipb.NodeFiles, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		switch {
		case n.Name == a.state.Name:
			out[i] = a.fileStatus()
		case n.State == cluster.StateDead || n.State == cluster.StateLeft:
			out[i] = &ssipb.NodeFiles{Node: n.Name, Error: "node is " + n.State}
		default:
			wg.Add(1)
			go func() {
				defer wg.Done()
				out[i] = a.remoteFileStatus(ctx, n.Name, n.Addr)
			}()
		}
	}
	wg.Wait()
	return out
}

func (a *Agent) remoteFileStatus(ctx context.Context, node, addr string) *ssipb.NodeFiles {
	cc, err := a.peerConn(addr)
	if err == nil {
		ctx, cancel := context.WithTimeout(ctx, fileStatusTimeout)
		defer cancel()
		var st *ssipb.NodeFiles
		if st, err = ssirpc.NewPeerClient(cc).FileStatus(ctx, &ssipb.FilesRequest{}); err == nil {
			st.Node = node
			return st
		}
	}
	return &ssipb.NodeFiles{Node: node, Error: "no answer: " + status.Convert(err).Message()}
}

func (p *peerService) FileStatus(context.Context, *ssipb.FilesRequest) (*ssipb.NodeFiles, error) {
	return p.a.fileStatus(), nil
}

func (c *controlService) Files(ctx context.Context, _ *ssipb.FilesRequest) (*ssipb.FilesResponse, error) {
	return &ssipb.FilesResponse{Nodes: c.a.clusterFileStatus(ctx)}, nil
}
