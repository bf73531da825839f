// Package ssirpc holds the gRPC services of the ssi wire protocol (Control on the agent's Unix
// socket, Peer between agents) and their generated Go code; the messages are in ssipb.
package ssirpc

//go:generate protoc -I. -I../ssipb --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative ssi_service.proto
