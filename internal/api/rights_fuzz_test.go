package api

import (
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// FuzzParseRights decodes the control data that comes with a client's output preamble: no
// panic on any bytes, and descriptors sent as SCM_RIGHTS, in one message or several, all come
// back, so that receiveOutput can close every one it refuses.
func FuzzParseRights(f *testing.F) {
	f.Add([]byte{}, int32(5), int32(6), uint8(0))
	f.Add(unix.UnixRights(3), int32(7), int32(-1), uint8(1))
	f.Add(unix.UnixCredentials(&unix.Ucred{Pid: 1, Uid: 0, Gid: 0}), int32(0), int32(1), uint8(2))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0}, int32(1), int32(2), uint8(3))
	f.Add([]byte{16, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9}, int32(1), int32(2), uint8(4))
	f.Fuzz(func(t *testing.T, raw []byte, a, b int32, shape uint8) {
		// Any bytes: no panic.
		_, _ = parseRights(raw)

		// Well-formed rights: exactly the descriptors sent.
		var oob []byte
		var want []int
		switch shape % 3 {
		case 0:
			oob, want = unix.UnixRights(int(a), int(b)), []int{int(a), int(b)}
		case 1:
			oob, want = append(unix.UnixRights(int(a)), unix.UnixRights(int(b))...), []int{int(a), int(b)}
		case 2:
			oob, want = unix.UnixRights(int(a)), []int{int(a)}
		}
		got, err := parseRights(oob)
		if err != nil || !slices.Equal(got, want) {
			t.Fatalf("rights %v: %v, %v", want, got, err)
		}
		// Followed by a message of another kind: still every descriptor, and an error.
		got, err = parseRights(append(oob, unix.UnixCredentials(&unix.Ucred{Pid: a, Uid: uint32(b)})...))
		if err == nil || !slices.Equal(got, want) {
			t.Fatalf("rights %v then credentials: %v, %v", want, got, err)
		}
	})
}
