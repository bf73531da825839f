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
	creds    statusCreds
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
		caps := uint64(0)
		if creds, ok := g.creds(fc.Pid, fc.Uid, fc.Gid); ok {
			c.Groups = creds.groups
			caps = creds.caps
		}
		// A process the client cannot look at (gone, killed while its request was on its
		// way, or no longer with the request's ids) holds no capability: the owner gives a
		// root caller with none named every capability, which a root process that gave them
		// up (a container's root, a daemon dropping privileges) would get back by dying in
		// time. Requests of no process (pid 0: the kernel's own, or from a pid namespace the
		// mount cannot see) name none.
		c.Capabilities = &caps
	}
	return c
}

// statusCreds is what a caller's /proc/<pid>/status tells beyond the FUSE request.
type statusCreds struct {
	groups []uint32
	caps   uint64 // effective capabilities
	ok     bool   // read, and still the caller's
}

func (g *groupCache) creds(pid, uid, gid uint32) (statusCreds, bool) {
	now := time.Now()
	g.mu.Lock()
	e, ok := g.entries[pid]
	g.mu.Unlock()
	if ok && e.uid == uid && e.gid == gid && now.Before(e.expires) {
		return e.creds, e.creds.ok
	}
	creds := readCreds(pid, uid, gid)
	if !creds.ok {
		// Not kept: a new process that takes the pid soon must not be refused its own.
		return creds, false
	}
	g.mu.Lock()
	if len(g.entries) >= maxGroupCache {
		g.entries = make(map[uint32]groupEntry)
	}
	g.entries[pid] = groupEntry{uid: uid, gid: gid, creds: creds, expires: now.Add(g.ttl)}
	g.mu.Unlock()
	return creds, true
}

// readCreds returns the supplementary groups and capabilities of pid, or nothing if it is
// gone or is no longer the caller: they count only if its file system ids are still those of
// the request (fsuid, fsgid), so that a process that took the pid meanwhile, or ids changed
// since, do not lend the request their groups.
func readCreds(pid, uid, gid uint32) statusCreds {
	b, err := os.ReadFile("/proc/" + strconv.FormatUint(uint64(pid), 10) + "/status")
	if err != nil {
		return statusCreds{}
	}
	return parseStatus(b, uid, gid)
}

// parseStatus reads a /proc/<pid>/status: its groups and effective capabilities, if its fsuid
// and fsgid (the fourth fields of Uid: and Gid:) are uid and gid.
func parseStatus(status []byte, uid, gid uint32) statusCreds {
	var c statusCreds
	// seen counts the Uid: and Gid: lines: each must be there once, so that one cannot stand
	// for the other.
	var seen [2]int
	capsRead := false
	for line := range bytes.SplitSeq(status, []byte("\n")) {
		if rest, ok := bytes.CutPrefix(line, []byte("Groups:")); ok {
			c.groups = parseGroups(rest)
			continue
		}
		if rest, ok := bytes.CutPrefix(line, []byte("CapEff:")); ok {
			caps, err := strconv.ParseUint(string(bytes.TrimSpace(rest)), 16, 64)
			if err != nil {
				return statusCreds{}
			}
			c.caps, capsRead = caps, true
			continue
		}
		for i, id := range []struct {
			prefix string
			want   uint32
		}{{"Uid:", uid}, {"Gid:", gid}} {
			rest, ok := bytes.CutPrefix(line, []byte(id.prefix))
			if !ok {
				continue
			}
			fields := bytes.Fields(rest)
			if len(fields) != 4 {
				return statusCreds{}
			}
			fs, err := strconv.ParseUint(string(fields[3]), 10, 32)
			if err != nil || uint32(fs) != id.want {
				return statusCreds{}
			}
			seen[i]++
		}
	}
	if seen != [2]int{1, 1} || !capsRead {
		return statusCreds{}
	}
	c.ok = true
	return c
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
