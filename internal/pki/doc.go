// Package pki is the cluster's identity layer: the cluster certificate authority, node
// certificates, join tokens that pin the CA, and the TLS configurations every node-to-node
// connection (gRPC, etcd peer and client) uses.
//
// Trust model. The first server creates the CA. A join token carries the hash of the CA's public
// key (as kubeadm does), so a joining node that has nothing but the token can tell the real cluster
// from an impostor before it sends the token's secret. Once joined, a node holds a certificate
// whose subject says who it is (CN = node name) and what it is (OU = "server" or "client");
// Organization "ssi-node" marks it as a node certificate. Names in a certificate request are never
// trusted: the signing server decides them.
//
// Connections are dialled by address, not by name, so clients check that the peer holds a valid
// node certificate from the cluster CA instead of matching a host name.
package pki
