package api

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/ssi-cluster/ssi/internal/pki"
)

// Node is the identity of a remote agent, taken from its verified certificate.
type Node struct {
	Name string
	Role string
}

// NodeFrom returns the verified identity of the agent that made the request.
func NodeFrom(ctx context.Context) (Node, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Node{}, status.Error(codes.Unauthenticated, "no peer on this connection")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return Node{}, status.Error(codes.Unauthenticated, "connection is not TLS")
	}
	name, role, err := pki.PeerNode(info.State)
	if err != nil {
		return Node{}, status.Errorf(codes.Unauthenticated, "%v", err)
	}
	return Node{Name: name, Role: role}, nil
}

// RequireNode returns interceptors that refuse every call without a verified node certificate,
// except the methods listed in open (full method names such as "/ssi.v1.Peer/Join").
func RequireNode(open ...string) (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	isOpen := make(map[string]bool, len(open))
	for _, m := range open {
		isOpen[m] = true
	}
	unary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if !isOpen[info.FullMethod] {
			if _, err := NodeFrom(ctx); err != nil {
				return nil, err
			}
		}
		return handler(ctx, req)
	}
	stream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if !isOpen[info.FullMethod] {
			if _, err := NodeFrom(ss.Context()); err != nil {
				return err
			}
		}
		return handler(srv, ss)
	}
	return unary, stream
}
