// Package jobspb holds the messages of the job service (ssi submit, jobs, cancel, hold,
// release, history, queue, node drain) and their generated Go code; the service is in jobsrpc.
// The CLI calls it on the local agent's Unix socket; the caller's identity is the kernel's,
// never a field of a message.
package jobspb

//go:generate protoc --go_out=. --go_opt=paths=source_relative jobs.proto
