// Package store is ssi's durable, consistent cluster state: it runs the embedded etcd member on
// server nodes, connects every node to etcd over mutual TLS, and owns the key schema.
//
// # Key schema
//
// Every key lives under one prefix, so `etcdctl get --prefix /ssi/` shows all of ssi's state.
//
//	/ssi/cluster/id              cluster id, written once by the bootstrapping server
//	/ssi/cluster/gossip-key      base64 memberlist encryption key
//	/ssi/pki/ca.crt              cluster CA certificate (PEM)
//	/ssi/pki/ca.key              cluster CA private key (PEM); servers sign join requests with it
//	/ssi/tokens/<id>             join token: JSON TokenRecord (secret stored as a sha256 hash)
//	/ssi/nodes/<name>            node registry: JSON NodeRecord
//	/ssi/node-index/<name>       the node's stable index (decimal), allocated once per name
//	/ssi/node-index-next         next index to hand out (decimal)
//	/ssi/jobs/...                job system: jobs, allocations per node, history, queues,
//	                             drains, fair-share usage, scheduler election
//	                             (the subtree is documented in internal/jobs/doc.go)
//
// Later capabilities add their own subtrees (jobs, the global process table) here, in this
// comment and in keys.go, and nowhere else.
package store
