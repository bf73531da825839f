// Package fs is the cluster's single file hierarchy and single I/O space: every node's files
// and devices under /ssi/<node>/<path> on every node, as coherent as one machine's.
//
// A Server on each node serves that node's tree to the others over the Files gRPC service
// (fspb). Each request runs on the owning node as the calling user (fsuid, fsgid, groups, no
// capabilities) with every path resolved inside the exported tree, so the owner's Unix
// permissions decide and nothing escapes through ".." or symlinks. Locks are held on the
// owner, so they hold cluster-wide.
//
// Mount puts the tree in place with FUSE. The kernel caches entries, attributes, listings and
// file pages; owners keep those caches coherent by pushing invalidations over a Watch stream
// and waiting for them to be applied before a change returns. See docs/fs.md for the
// guarantees and their limits.
package fs
