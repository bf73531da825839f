// Package cluster is each agent's live view of the cluster: SWIM gossip membership
// (hashicorp/memberlist, encrypted with the cluster key) carrying every node's load vector, so
// that placement decides locally, without a round trip to a central server, as MOSIX does.
// Gossip is advisory and fast; the durable registry lives in etcd (package store).
package cluster
