package localrpc

import "golang.org/x/sys/unix"

// DefaultSocket is where the agent listens, and clients connect, unless told otherwise.
const DefaultSocket = "/run/ssi/ssi.sock"

// IsNullDevice reports whether a character device is /dev/null, /dev/zero or /dev/full:
// the devices whose writes never block, and the only devices a client may pass as its output.
func IsNullDevice(rdev uint64) bool {
	if unix.Major(rdev) != 1 {
		return false
	}
	switch unix.Minor(rdev) {
	case 3, 5, 7:
		return true
	}
	return false
}
