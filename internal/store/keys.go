package store

import "strings"

// Prefix is the root of every key ssi writes.
const Prefix = "/ssi/"

// Keys of the cluster-wide singletons.
const (
	KeyClusterID     = Prefix + "cluster/id"
	KeyGossipKey     = Prefix + "cluster/gossip-key"
	KeyCACert        = Prefix + "pki/ca.crt"
	KeyCAKey         = Prefix + "pki/ca.key"
	KeyNodeIndexNext = Prefix + "node-index-next"
	PrefixTokens     = Prefix + "tokens/"
	PrefixNodes      = Prefix + "nodes/"
	PrefixNodeIndex  = Prefix + "node-index/"
)

// TokenKey is where the join token with the given id is kept.
func TokenKey(id string) string { return PrefixTokens + id }

// NodeKey is the registry entry of the named node.
func NodeKey(name string) string { return PrefixNodes + name }

// NodeIndexKey holds the stable index allocated to the named node.
func NodeIndexKey(name string) string { return PrefixNodeIndex + name }

// NameFromKey returns the last element of a key under prefix, or "" if key is not under it.
func NameFromKey(prefix, key string) string {
	name, ok := strings.CutPrefix(key, prefix)
	if !ok || name == "" || strings.Contains(name, "/") {
		return ""
	}
	return name
}
