package procspace

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ssi-cluster/ssi/internal/api/ssipb"
	"github.com/ssi-cluster/ssi/internal/gpid"
)

// Wait serves Control.Wait: it asks the node the process lives on.
func (s *Service) Wait(ctx context.Context, req *ssipb.WaitRequest) (*ssipb.WaitResponse, error) {
	caller, _, err := s.CallerOf(ctx)
	if err != nil {
		return nil, err
	}
	if err := gpid.Check(req.Gpid); err != nil {
		return nil, status.Errorf(codes.NotFound, "%v", err)
	}
	idx, _ := gpid.Split(req.Gpid)
	name, ok := s.cfg.Cluster.NameOf(uint32(idx))
	if !ok {
		return nil, status.Errorf(codes.NotFound, "GPID %d: no node has index %d", req.Gpid, idx)
	}
	sub := &ssipb.WaitRequest{Gpid: req.Gpid, Caller: caller}
	if self, _ := s.self(); name == self {
		return s.PeerWait(ctx, sub)
	}
	if !s.alive(name) {
		// Its agent kept the status in memory: gone with the node.
		return nil, status.Errorf(codes.Unavailable, "node %s is down (see ssi nodes): GPID %d's status is lost with it", name, req.Gpid)
	}
	peer, err := s.cfg.Cluster.Peer(name)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "node %s: %v", name, err)
	}
	resp, err := peer.Wait(ctx, sub)
	if code := status.Code(err); err != nil && ctx.Err() == nil && (code == codes.Unavailable || code == codes.DeadlineExceeded || code == codes.Canceled) {
		// The node, not the process, went away, as "ssi run" reports a lost node.
		return nil, status.Errorf(codes.Unavailable, "node %s was lost while waiting for GPID %d: %s", name, req.Gpid, status.Convert(err).Message())
	}
	return resp, err
}

// PeerWait waits for a process this node started through ssi and returns its exit status.
func (s *Service) PeerWait(ctx context.Context, req *ssipb.WaitRequest) (*ssipb.WaitResponse, error) {
	if req.Caller == nil {
		return nil, status.Error(codes.InvalidArgument, "wait request without a caller")
	}
	idx, pid := gpid.Split(req.Gpid)
	var r *record
	if _, index := s.self(); gpid.Check(req.Gpid) == nil && int64(idx) == int64(index) {
		r = s.lookup(pid)
	}
	if r == nil {
		return nil, status.Errorf(codes.NotFound, "GPID %d is not a process ssi started (or its status was collected more than %s ago)", req.Gpid, keepExited)
	}
	if req.Caller.Uid != 0 && req.Caller.Uid != r.uid {
		return nil, status.Errorf(codes.PermissionDenied, "GPID %d belongs to another user", req.Gpid)
	}
	select {
	case <-r.done:
		return &ssipb.WaitResponse{Code: int32(r.code), Message: r.message}, nil
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}
