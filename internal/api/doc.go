// Package api holds what both ends of ssi's gRPC connections agree on: the protocol version, the
// kernel-derived caller identity on the local Unix socket, and the interceptors that enforce who
// may call what. The messages and services themselves live in the ssipb subpackage.
package api

import "github.com/ssi-cluster/ssi/internal/api/ssipb"

// ProtocolVersion is the node-to-node capability number (see ssipb.ProtocolVersion).
const ProtocolVersion = ssipb.ProtocolVersion
