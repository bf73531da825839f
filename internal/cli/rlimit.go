package cli

import (
	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/api/ssipb"
)

// callerRlimits returns this process's limits on every resource, which are its caller's
// (inherited), for the command it starts elsewhere. The soft limit on open files is marked
// unknown when it equals the hard one: the Go runtime raised it there as ssi started and does
// not tell what it was.
func callerRlimits() []*ssipb.Rlimit {
	var out []*ssipb.Rlimit
	for res := range unix.RLIMIT_RTTIME + 1 {
		var l unix.Rlimit
		if err := unix.Getrlimit(res, &l); err != nil {
			continue
		}
		out = append(out, &ssipb.Rlimit{Resource: int32(res), Cur: l.Cur, Max: l.Max,
			CurUnknown: res == unix.RLIMIT_NOFILE && l.Cur == l.Max})
	}
	return out
}
