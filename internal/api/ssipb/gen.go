// Package ssipb holds the messages of the ssi wire protocol and their generated Go code. The
// services that carry them are in ssirpc, so that a client can use the messages without
// linking gRPC.
package ssipb

//go:generate protoc --go_out=. --go_opt=paths=source_relative ssi.proto
