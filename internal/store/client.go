package store

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
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
	})
	if err != nil {
		return nil, fmt.Errorf("connecting to etcd at %v: %w", endpoints, err)
	}
	// As namespace.NewKV does: every user of the client, the concurrency package included,
	// reads through these.
	cli.KV = boundedKV{KV: cli.KV, first: ReadTryTimeout}
	cli.Cluster = boundedCluster{Cluster: cli.Cluster, first: ReadTryTimeout}
	return cli, nil
}

// ReadTryTimeout bounds the first try of a read. gRPC does not ping a connection more often
// than every ten seconds whatever DialKeepAliveTime says, so a read balanced onto a server that
// is stopped (or cut off without a reset) would otherwise hang for ten seconds or until the
// caller's deadline; ended at this bound, it is tried again, and the client balances the new
// try onto the next server. A healthy read takes milliseconds, so the bound costs nothing when
// the cluster is well; each further try gets twice as long, so a read that is merely large
// still completes.
const ReadTryTimeout = time.Second

// boundedKV is the client's KV with Get and read-only transactions tried under readTries. Writes are left alone: a write
// that timed out may still have been applied.
type boundedKV struct {
	clientv3.KV
	first time.Duration
}

func (k boundedKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	return readTries(ctx, k.first, func(ctx context.Context) (*clientv3.GetResponse, error) {
		return k.KV.Get(ctx, key, opts...)
	})
}

// Txn returns a transaction that, if it only reads, is tried under readTries when committed:
// the job system reads its state in read-only transactions.
func (k boundedKV) Txn(ctx context.Context) clientv3.Txn {
	return &boundedTxn{kv: k.KV, ctx: ctx, first: k.first}
}

// boundedTxn collects a transaction, to build it anew for each try.
type boundedTxn struct {
	kv               clientv3.KV
	ctx              context.Context
	first            time.Duration
	cmps             []clientv3.Cmp
	thenOps, elseOps []clientv3.Op
}

func (t *boundedTxn) If(cs ...clientv3.Cmp) clientv3.Txn {
	t.cmps = append(t.cmps, cs...)
	return t
}

func (t *boundedTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	t.thenOps = append(t.thenOps, ops...)
	return t
}

func (t *boundedTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	t.elseOps = append(t.elseOps, ops...)
	return t
}

func (t *boundedTxn) Commit() (*clientv3.TxnResponse, error) {
	commit := func(ctx context.Context) (*clientv3.TxnResponse, error) {
		return t.kv.Txn(ctx).If(t.cmps...).Then(t.thenOps...).Else(t.elseOps...).Commit()
	}
	for _, op := range append(slices.Clip(t.thenOps), t.elseOps...) {
		if !op.IsGet() {
			return commit(t.ctx)
		}
	}
	return readTries(t.ctx, t.first, commit)
}

// boundedCluster is the client's Cluster with MemberList tried under readTries.
type boundedCluster struct {
	clientv3.Cluster
	first time.Duration
}

func (c boundedCluster) MemberList(ctx context.Context, opts ...clientv3.OpOption) (*clientv3.MemberListResponse, error) {
	return readTries(ctx, c.first, func(ctx context.Context) (*clientv3.MemberListResponse, error) {
		return c.Cluster.MemberList(ctx, opts...)
	})
}

// readTries runs read with a deadline of first for its first try, doubling for each further
// try, while ctx lives. A try that ends otherwise than at its own deadline is the answer.
func readTries[T any](ctx context.Context, first time.Duration, read func(context.Context) (T, error)) (T, error) {
	for d := first; ; d *= 2 {
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= d {
			return read(ctx)
		}
		tctx, cancel := context.WithTimeout(ctx, d)
		resp, err := read(tctx)
		hung := err != nil && tctx.Err() != nil && ctx.Err() == nil
		cancel()
		if !hung {
			return resp, err
		}
	}
}

func hostPort(host, port string) string { return net.JoinHostPort(host, port) }
