// Package jobsrpc holds the gRPC service of the job system, served by every agent on its Unix
// socket, and its generated Go code; the messages are in jobspb.
package jobsrpc

//go:generate protoc -I. -I../jobspb --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative jobs_service.proto
