package fs

import (
	"bytes"
	"context"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/ssi-cluster/ssi/internal/fs/fspb"
)

// groupCache remembers the supplementary groups of recent callers. FUSE requests carry the
// caller's fsuid, fsgid and pid only; the groups come from /proc/<pid>/status.
type groupCache struct {
	mu      sync.Mutex
	entries map[uint32]groupEntry
	ttl     time.Duration
}

type groupEntry struct {
	uid, gid uint32
	groups   []uint32
	expires  time.Time
}

const maxGroupCache = 4096

func newGroupCache() *groupCache {
	return &groupCache{entries: make(map[uint32]groupEntry), ttl: 2 * time.Second}
}

// caller describes who makes the FUSE request behind ctx.
func (g *groupCache) caller(ctx context.Context) *fspb.Caller {
	fc, ok := ctx.(*fuse.Context)
	if !ok {
		// Not from the kernel (internal use): act as nobody rather than as the agent.
		return &fspb.Caller{Uid: nobodyID, Gid: nobodyID}
	}
	c := &fspb.Caller{Uid: fc.Uid, Gid: fc.Gid, Pid: fc.Pid}
	if fc.Pid != 0 {
		c.Groups = g.groups(fc.Pid, fc.Uid, fc.Gid)
	}
	return c
}

func (g *groupCache) groups(pid, uid, gid uint32) []uint32 {
	now := time.Now()
	g.mu.Lock()
	e, ok := g.entries[pid]
	g.mu.Unlock()
	if ok && e.uid == uid && e.gid == gid && now.Before(e.expires) {
		return e.groups
	}
	groups := readGroups(pid, uid, gid)
	g.mu.Lock()
	if len(g.entries) >= maxGroupCache {
		g.entries = make(map[uint32]groupEntry)
	}
	g.entries[pid] = groupEntry{uid: uid, gid: gid, groups: groups, expires: now.Add(g.ttl)}
	g.mu.Unlock()
	return groups
}

// readGroups returns the supplementary groups of pid, or none if it is gone or is no longer
// the caller: the groups count only if its file system ids are still those of the request
// (fsuid, fsgid), so that a process that took the pid meanwhile, or ids changed since, do not
// lend the request their groups.
func readGroups(pid, uid, gid uint32) []uint32 {
	b, err := os.ReadFile("/proc/" + strconv.FormatUint(uint64(pid), 10) + "/status")
	if err != nil {
		return nil
	}
	groups, ok := statusGroups(b, uid, gid)
	if !ok {
		return nil
	}
	return groups
}

// statusGroups reads the groups from a /proc/<pid>/status, if its fsuid and fsgid (the fourth
// fields of Uid: and Gid:) are uid and gid.
func statusGroups(status []byte, uid, gid uint32) ([]uint32, bool) {
	var groups []uint32
	matched := 0
	for line := range bytes.SplitSeq(status, []byte("\n")) {
		if rest, ok := bytes.CutPrefix(line, []byte("Groups:")); ok {
			groups = parseGroups(rest)
			continue
		}
		for _, id := range []struct {
			prefix string
			want   uint32
		}{{"Uid:", uid}, {"Gid:", gid}} {
			rest, ok := bytes.CutPrefix(line, []byte(id.prefix))
			if !ok {
				continue
			}
			fields := bytes.Fields(rest)
			if len(fields) != 4 {
				return nil, false
			}
			fs, err := strconv.ParseUint(string(fields[3]), 10, 32)
			if err != nil || uint32(fs) != id.want {
				return nil, false
			}
			matched++
		}
	}
	return groups, matched == 2
}

func parseGroups(b []byte) []uint32 {
	var out []uint32
	for _, f := range bytes.Fields(b) {
		n, err := strconv.ParseUint(string(f), 10, 32)
		if err != nil {
			continue
		}
		out = append(out, uint32(n))
	}
	return out
}
