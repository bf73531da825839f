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
	idx, _ := gpid.Split(req.Gpid)
	name, ok := s.cfg.Cluster.NameOf(uint32(idx))
	if !ok {
		return nil, status.Errorf(codes.NotFound, "GPID %d: no node has index %d", req.Gpid, idx)
	}
	sub := &ssipb.WaitRequest{Gpid: req.Gpid, Caller: caller}
	if self, _ := s.self(); name == self {
		return s.PeerWait(ctx, sub)
	}
	peer, err := s.cfg.Cluster.Peer(name)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "node %s: %v", name, err)
	}
	return peer.Wait(ctx, sub)
}

// PeerWait waits for a process this node started through ssi and returns its exit status.
func (s *Service) PeerWait(ctx context.Context, req *ssipb.WaitRequest) (*ssipb.WaitResponse, error) {
	if req.Caller == nil {
		return nil, status.Error(codes.InvalidArgument, "wait request without a caller")
	}
	_, pid := gpid.Split(req.Gpid)
	r := s.lookup(pid)
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
