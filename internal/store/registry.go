package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// NodeRecord is a node's durable registry entry.
type NodeRecord struct {
	Name       string    `json:"name"`
	NodeID     string    `json:"node_id"`
	Index      uint32    `json:"index"`
	Role       string    `json:"role"`
	Addr       string    `json:"addr"`        // gRPC cluster address host:port
	GossipAddr string    `json:"gossip_addr"` // memberlist host:port
	EtcdClient string    `json:"etcd_client,omitempty"`
	EtcdPeer   string    `json:"etcd_peer,omitempty"`
	State      string    `json:"state"` // up | left
	Updated    time.Time `json:"updated"`
}

// Registry states. Liveness comes from gossip; the registry only knows whether a node said goodbye.
const (
	RecordUp   = "up"
	RecordLeft = "left"
)

// TokenRecord is a join token as stored: the secret only as a hash.
type TokenRecord struct {
	SecretHash string    `json:"secret_sha256"`
	Expires    time.Time `json:"expires"`
	Created    time.Time `json:"created"`
	CreatedBy  string    `json:"created_by"`
}

// ClusterSecrets are the values every node receives when it joins.
type ClusterSecrets struct {
	ClusterID string
	GossipKey []byte
	CACert    []byte
	CAKey     []byte
}

// ErrClusterExists means the etcd cluster already belongs to an ssi cluster.
var ErrClusterExists = errors.New("etcd already holds an ssi cluster")

// InitCluster writes a new cluster's secrets, unless etcd already holds a cluster, in which case
// it returns the existing id with ErrClusterExists and writes nothing.
func InitCluster(ctx context.Context, cli *clientv3.Client, s ClusterSecrets) (string, error) {
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(KeyClusterID), "=", 0)).
		Then(
			clientv3.OpPut(KeyClusterID, s.ClusterID),
			clientv3.OpPut(KeyGossipKey, string(s.GossipKey)),
			clientv3.OpPut(KeyCACert, string(s.CACert)),
			clientv3.OpPut(KeyCAKey, string(s.CAKey)),
		).
		Else(clientv3.OpGet(KeyClusterID)).
		Commit()
	if err != nil {
		return "", fmt.Errorf("writing the new cluster's identity to etcd: %w", err)
	}
	if !resp.Succeeded {
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 1 {
			return string(kvs[0].Value), ErrClusterExists
		}
		return "", ErrClusterExists
	}
	return s.ClusterID, nil
}

// ReadClusterSecrets reads what InitCluster wrote.
func ReadClusterSecrets(ctx context.Context, cli *clientv3.Client) (ClusterSecrets, error) {
	resp, err := cli.Txn(ctx).Then(
		clientv3.OpGet(KeyClusterID), clientv3.OpGet(KeyGossipKey),
		clientv3.OpGet(KeyCACert), clientv3.OpGet(KeyCAKey),
	).Commit()
	if err != nil {
		return ClusterSecrets{}, fmt.Errorf("reading cluster identity from etcd: %w", err)
	}
	val := func(i int) []byte {
		kvs := resp.Responses[i].GetResponseRange().Kvs
		if len(kvs) == 0 {
			return nil
		}
		return kvs[0].Value
	}
	s := ClusterSecrets{ClusterID: string(val(0)), GossipKey: val(1), CACert: val(2), CAKey: val(3)}
	if s.ClusterID == "" || len(s.GossipKey) == 0 || len(s.CACert) == 0 {
		return s, errors.New("etcd holds no ssi cluster identity: bootstrap a server first")
	}
	return s, nil
}

// AllocateIndex returns the stable index of the named node, allocating the next free one the
// first time a name is seen. Concurrent callers never receive the same index.
func AllocateIndex(ctx context.Context, cli *clientv3.Client, name string) (uint32, error) {
	for {
		resp, err := cli.Txn(ctx).Then(clientv3.OpGet(NodeIndexKey(name)), clientv3.OpGet(KeyNodeIndexNext)).Commit()
		if err != nil {
			return 0, fmt.Errorf("reading node index of %s: %w", name, err)
		}
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) == 1 {
			return parseIndex(kvs[0].Value)
		}
		next := uint32(1)
		var rev int64
		if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) == 1 {
			if next, err = parseIndex(kvs[0].Value); err != nil {
				return 0, err
			}
			rev = kvs[0].ModRevision
		}
		put, err := cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(KeyNodeIndexNext), "=", rev),
				clientv3.Compare(clientv3.CreateRevision(NodeIndexKey(name)), "=", 0)).
			Then(clientv3.OpPut(KeyNodeIndexNext, strconv.FormatUint(uint64(next+1), 10)),
				clientv3.OpPut(NodeIndexKey(name), strconv.FormatUint(uint64(next), 10))).
			Commit()
		if err != nil {
			return 0, fmt.Errorf("allocating node index of %s: %w", name, err)
		}
		if put.Succeeded {
			return next, nil
		}
		// Someone else allocated concurrently: read again.
	}
}

func parseIndex(b []byte) (uint32, error) {
	n, err := strconv.ParseUint(string(b), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("corrupt node index %q in etcd: %w", b, err)
	}
	return uint32(n), nil
}

// PutNode writes a node's registry entry.
func PutNode(ctx context.Context, cli *clientv3.Client, rec NodeRecord) error {
	rec.Updated = time.Now().UTC()
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if _, err := cli.Put(ctx, NodeKey(rec.Name), string(b)); err != nil {
		return fmt.Errorf("registering node %s: %w", rec.Name, err)
	}
	return nil
}

// GetNode reads one registry entry; ok is false when the node was never registered.
func GetNode(ctx context.Context, cli *clientv3.Client, name string) (rec NodeRecord, ok bool, err error) {
	resp, err := cli.Get(ctx, NodeKey(name))
	if err != nil {
		return rec, false, fmt.Errorf("reading node %s: %w", name, err)
	}
	if len(resp.Kvs) == 0 {
		return rec, false, nil
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, &rec); err != nil {
		return rec, false, fmt.Errorf("corrupt registry entry for %s: %w", name, err)
	}
	return rec, true, nil
}

// ListNodes returns every registered node. opts may add read options, such as
// clientv3.WithSerializable() for a read the contacted member answers from its own copy, which
// needs no leader (so it answers during an election) at the cost of possibly missing a join
// that member has not applied yet.
func ListNodes(ctx context.Context, cli *clientv3.Client, opts ...clientv3.OpOption) ([]NodeRecord, error) {
	resp, err := cli.Get(ctx, PrefixNodes, append([]clientv3.OpOption{clientv3.WithPrefix()}, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("listing nodes: %w", err)
	}
	out := make([]NodeRecord, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var rec NodeRecord
		if err := json.Unmarshal(kv.Value, &rec); err != nil {
			return nil, fmt.Errorf("corrupt registry entry %s: %w", kv.Key, err)
		}
		out = append(out, rec)
	}
	return out, nil
}

// PutToken stores a join token. It is kept a day past expiry so that a late use is reported as
// expired rather than unknown, then etcd drops it.
func PutToken(ctx context.Context, cli *clientv3.Client, id string, rec TokenRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	ttl := int64(time.Until(rec.Expires)/time.Second) + 24*3600
	lease, err := cli.Grant(ctx, ttl)
	if err != nil {
		return fmt.Errorf("storing join token: %w", err)
	}
	if _, err := cli.Put(ctx, TokenKey(id), string(b), clientv3.WithLease(lease.ID)); err != nil {
		return fmt.Errorf("storing join token: %w", err)
	}
	return nil
}

// GetToken reads a join token; ok is false when there is none with that id.
func GetToken(ctx context.Context, cli *clientv3.Client, id string) (rec TokenRecord, ok bool, err error) {
	resp, err := cli.Get(ctx, TokenKey(id))
	if err != nil {
		return rec, false, fmt.Errorf("reading join token: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return rec, false, nil
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, &rec); err != nil {
		return rec, false, fmt.Errorf("corrupt join token record: %w", err)
	}
	return rec, true, nil
}
