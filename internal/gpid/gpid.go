// Package gpid implements the cluster-wide process id scheme of the single process space.
//
// A GPID is node index × PerNode + local pid, written in decimal, so its last seven digits
// are the pid on that node: 20001234 is pid 1234 on node 2. Every process on every node has
// one for its whole life. PerNode (10,000,000) exceeds Linux's largest pid_max (4,194,304),
// so any local pid fits.
package gpid

import (
	"fmt"
	"math"
	"strconv"
)

// PerNode is the size of each node's block of GPIDs.
const PerNode = 10_000_000

// example is the GPID quoted in parse errors so users see the expected shape.
const example = "want a number like 20001234 (node 2, pid 1234)"

// Make returns the GPID of pid on the node with index nodeIndex.
// It panics if nodeIndex is negative or pid is outside [0, PerNode): both are programming
// errors, since kernel pids never reach PerNode.
func Make(nodeIndex int, pid int) int64 {
	if nodeIndex < 0 || pid < 0 || pid >= PerNode {
		panic(fmt.Sprintf("gpid.Make(%d, %d): node index must be >= 0 and pid in [0, %d)", nodeIndex, pid, PerNode))
	}
	return int64(nodeIndex)*PerNode + int64(pid)
}

// Split returns the node index and local pid of g. g must not be negative.
func Split(g int64) (nodeIndex int, pid int) {
	return int(g / PerNode), int(g % PerNode)
}

// Format returns the decimal text of g, the form Parse accepts.
func Format(g int64) string {
	return strconv.FormatInt(g, 10)
}

// Parse reads a GPID written in decimal digits. It rejects signs, spaces, values that do not
// fit in an int64 and GPIDs whose pid part is 0 (no process has pid 0).
func Parse(s string) (int64, error) {
	if s == "" {
		return 0, fmt.Errorf("an empty string is not a GPID: %s", example)
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%q is not a GPID: %s", s, example)
		}
	}
	g, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a GPID: it is too large; %s", s, example)
	}
	if g%PerNode == 0 {
		return 0, fmt.Errorf("%q is not a GPID: its last seven digits (the pid) are all zero; %s", s, example)
	}
	if err := Check(g); err != nil {
		return 0, fmt.Errorf("%q is not a GPID: %w; %s", s, err, example)
	}
	return g, nil
}

// MaxNodeIndex is the largest node index: indexes are uint32 on the wire and in etcd.
const MaxNodeIndex = math.MaxUint32

// Check reports whether g can name a process: a pid above zero on a node index that fits
// in a uint32. Servers check GPIDs from requests with it, since a larger node index cut to
// 32 bits would name another node's process.
func Check(g int64) error {
	if g <= 0 || g%PerNode == 0 {
		return fmt.Errorf("GPID %d has no pid in its last seven digits", g)
	}
	if idx := g / PerNode; idx > MaxNodeIndex {
		return fmt.Errorf("no node can have index %d (the most is %d)", idx, uint32(MaxNodeIndex))
	}
	return nil
}
