// Package fspb holds the protobuf definition of the ssi file protocol (the Files service that
// agents call on each other) and its generated Go code.
package fspb

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative fs.proto
