package store

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// DialTimeout bounds how long connecting to etcd may take before an operation fails.
const DialTimeout = 5 * time.Second

// RequestTimeout bounds a single etcd request made on behalf of a user or a peer.
const RequestTimeout = 5 * time.Second

// NewClient connects to etcd at endpoints. tlsConfig is nil for a plain-text external etcd.
func NewClient(endpoints []string, tlsConfig *tls.Config) (*clientv3.Client, error) {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: DialTimeout,
		// A server that dies without closing its connections must be noticed in seconds,
		// or requests balanced onto it wait for their deadline.
		DialKeepAliveTime:    2 * time.Second,
		DialKeepAliveTimeout: time.Second,
		TLS:                  tlsConfig,
		Logger:               zap.NewNop(),
		AutoSyncInterval:     30 * time.Second,
		DialOptions:          []grpc.DialOption{grpc.WithChainUnaryInterceptor(readTryTimeout(ReadTryTimeout))},
	})
	if err != nil {
		return nil, fmt.Errorf("connecting to etcd at %v: %w", endpoints, err)
	}
	return cli, nil
}

// ReadTryTimeout bounds one try of a read. gRPC does not ping a connection more often than
// every ten seconds whatever DialKeepAliveTime says, so a read balanced onto a server that is
// stopped (or cut off without a reset) would otherwise hang for ten seconds or until the
// caller's deadline; ended at this bound, the client's retry sends it to the next server.
// A healthy read takes milliseconds, and one waiting out a leader election is simply tried
// again, so the bound costs nothing when the cluster is well.
const ReadTryTimeout = time.Second

// boundedPerTry tells the read-only calls that readTryTimeout bounds per try. Writes are left
// alone: the client retries a try that ended at its own deadline, and a write that timed out
// may still have been applied.
func boundedPerTry(method string) bool {
	return method == pb.KV_Range_FullMethodName || method == pb.Cluster_MemberList_FullMethodName
}

// readTryTimeout is a gRPC interceptor that sits inside the etcd client's retry interceptor, so
// it runs once per try: it gives each try of a read its own deadline of at most d. The retry
// interceptor then tries again (on the next endpoint) while the caller's context lives.
func readTryTimeout(d time.Duration) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if !boundedPerTry(method) {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= d {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		tctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		return invoker(tctx, method, req, reply, cc, opts...)
	}
}

func hostPort(host, port string) string { return net.JoinHostPort(host, port) }
