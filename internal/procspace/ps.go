package procspace

import (
	"context"
	"errors"
	"fmt"
	osuser "os/user"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ssi-cluster/ssi/internal/api/ssipb"
	"github.com/ssi-cluster/ssi/internal/gpid"
	"github.com/ssi-cluster/ssi/internal/proc"
)

// psDeadline bounds how long `ssi ps` waits for a node: one that does not answer is reported,
// not waited for.
const psDeadline = 2 * time.Second

// LocalPs lists this node's processes with their global ids. A process ssi started has the
// GPID of the process that asked for it as its parent, wherever that one runs.
func (s *Service) LocalPs(_ context.Context, req *ssipb.PsRequest) (*ssipb.PsResponse, error) {
	infos, err := proc.Scan(s.cfg.ProcRoot)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "listing processes: %v", err)
	}
	name, index := s.self()
	resp := &ssipb.PsResponse{Procs: make([]*ssipb.ProcInfo, 0, len(infos))}
	for _, in := range infos {
		if req.User != "" && in.User != req.User && fmt.Sprint(in.UID) != req.User {
			continue
		}
		pi := &ssipb.ProcInfo{
			Gpid: gpid.Make(int(index), in.PID), Node: name, Pid: int32(in.PID),
			User: in.User, Uid: in.UID, State: in.State, CpuPercent: in.CPUPercent,
			RssBytes: in.RSSBytes, StartUnixMs: in.StartTime.UnixMilli(),
			CpuTimeMs: in.CPUTime.Milliseconds(), Command: printable(in.Command),
		}
		if in.PPID > 0 {
			pi.PpidGpid = gpid.Make(int(index), in.PPID)
		}
		if r := s.lookup(in.PID); r != nil && r.parentGPID != 0 && r.running() {
			pi.PpidGpid, pi.SsiStarted = r.parentGPID, true
		}
		resp.Procs = append(resp.Procs, pi)
	}
	return resp, nil
}

// Ps asks every alive node (or the one named) in parallel and merges the answers, sorted by
// GPID. Nodes that do not answer within the deadline, and those gossip shows dead, are listed
// as unreachable.
func (s *Service) Ps(ctx context.Context, req *ssipb.PsRequest) (*ssipb.PsResponse, error) {
	// Here rather than in the CLI, which links no user database (NSS) of its own.
	if err := checkPsUser(req.User, osuser.Lookup); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	var nodes, down []string
	if req.Node != "" {
		name, ok := s.cfg.Cluster.Resolve(req.Node)
		if !ok {
			return nil, status.Errorf(codes.NotFound, "unknown node %q: see \"ssi nodes\" for the names", req.Node)
		}
		nodes = []string{name}
	} else {
		for _, c := range s.cfg.Cluster.Candidates() {
			switch {
			case c.Alive:
				nodes = append(nodes, c.Name)
			case !c.Left:
				// Not asked, but said: its processes (perhaps still running, if only its
				// agent died) are missing from the list. A node that left on purpose is not.
				down = append(down, c.Name)
			}
		}
	}
	self, _ := s.self()
	ctx, cancel := context.WithTimeout(ctx, psDeadline)
	defer cancel()
	results := make([]*ssipb.PsResponse, len(nodes))
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Go(func() {
			if n == self {
				results[i], errs[i] = s.LocalPs(ctx, &ssipb.PsRequest{User: req.User})
				return
			}
			peer, err := s.cfg.Cluster.Peer(n)
			if err != nil {
				errs[i] = err
				return
			}
			results[i], errs[i] = peer.Ps(ctx, &ssipb.PsRequest{User: req.User})
		})
	}
	wg.Wait()
	out := &ssipb.PsResponse{Unreachable: down}
	for i, r := range results {
		if errs[i] != nil {
			out.Unreachable = append(out.Unreachable, nodes[i])
			continue
		}
		out.Procs = append(out.Procs, r.Procs...)
	}
	sort.Slice(out.Procs, func(i, j int) bool { return out.Procs[i].Gpid < out.Procs[j].Gpid })
	return out, nil
}

// checkPsUser refuses a -u that names no user, as ps(1) does: an empty listing would read as
// "that user runs nothing" when the name is mistyped. A uid is taken as given, since a uid
// need not have an entry in the user database to own processes.
func checkPsUser(name string, lookup func(string) (*osuser.User, error)) error {
	if name == "" {
		return nil
	}
	if _, err := strconv.ParseUint(name, 10, 32); err == nil {
		return nil
	}
	if _, err := lookup(name); err != nil {
		var unknown osuser.UnknownUserError
		if errors.As(err, &unknown) {
			return fmt.Errorf("-u %s: no such user: give a user name or a numeric uid", name)
		}
		return fmt.Errorf("-u %s: looking the user up: %w", name, err)
	}
	return nil
}

// printable shows a command line as ps(1) does: every byte that is not part of a printable
// character (a control character such as a tab or newline, or a byte that is not UTF-8) is
// a '?', so that a line stays one line and a terminal is not sent escapes by a process.
// proto3 would also refuse the invalid UTF-8, failing the whole listing.
func printable(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for len(s) > 0 {
		r, n := utf8.DecodeRuneInString(s)
		if (r == utf8.RuneError && n <= 1) || !unicode.IsPrint(r) {
			b.WriteByte('?')
		} else {
			b.WriteString(s[:n])
		}
		s = s[n:]
	}
	return b.String()
}
