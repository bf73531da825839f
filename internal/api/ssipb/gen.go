// Package ssipb holds the protobuf definitions of the ssi wire protocol and their generated Go code.
package ssipb

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative ssi.proto
