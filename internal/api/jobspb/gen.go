// Package jobspb holds the protobuf definition of the job service (ssi submit, jobs, cancel,
// hold, release, history, queue, node drain) and its generated Go code. The CLI calls it on the
// local agent's Unix socket; the caller's identity is the kernel's, never a field of a message.
package jobspb

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative jobs.proto
