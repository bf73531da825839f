package store

import (
	"crypto/tls"
	"fmt"
	"net"
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
	return cli, nil
}

func hostPort(host, port string) string { return net.JoinHostPort(host, port) }
