// Package api holds what both ends of ssi's gRPC connections agree on: the protocol version, the
// kernel-derived caller identity on the local Unix socket, and the interceptors that enforce who
// may call what. The messages and services themselves live in the ssipb subpackage.
package api

// ProtocolVersion is the node-to-node capability number. Bump it when agents must behave
// differently towards older peers, and add a line to the history below, so that mixed versions
// during a rolling upgrade are handled on purpose.
//
//	1 (2026-11-25): Join, Ping; gossip metadata carries the load vector.
const ProtocolVersion = 1
