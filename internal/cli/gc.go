package cli

import "runtime/debug"

// clientMemoryLimit is how large a client command's heap may grow before the garbage
// collector first runs.
const clientMemoryLimit = 64 << 20

// asShortLivedClient tunes the runtime for a client command, which lives for milliseconds:
// a collection there (the gRPC connection's buffers alone pass the runtime's first 4 MB goal)
// costs ~1.5 ms of a 12 ms `ssi run` and frees nothing that matters. The collector still
// runs once the heap reaches clientMemoryLimit, so a long `ssi run` stays bounded.
func asShortLivedClient() {
	debug.SetGCPercent(-1)
	debug.SetMemoryLimit(clientMemoryLimit)
}
