package procspace

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ssi-cluster/ssi/internal/api/ssipb"
	"github.com/ssi-cluster/ssi/internal/gpid"
)

// How long a node gets to answer a signal request: well within the CLI's 15 s, and shorter
// for a node gossip says is dead.
const (
	signalTimeout     = 5 * time.Second
	signalTimeoutDead = time.Second
)

// Kill serves Control.Kill: each GPID goes to the agent of the node it lives on, which
// checks permission as kill(2) would for the caller.
func (s *Service) Kill(ctx context.Context, req *ssipb.KillRequest) (*ssipb.KillResponse, error) {
	caller, _, err := s.CallerOf(ctx)
	if err != nil {
		return nil, err
	}
	if req.Signal < 0 || req.Signal > 64 {
		return nil, status.Errorf(codes.InvalidArgument, "signal %d is out of range", req.Signal)
	}
	self, _ := s.self()
	byNode := map[string][]int64{}
	resp := &ssipb.KillResponse{}
	for _, g := range req.Gpids {
		if err := gpid.Check(abs(g)); err != nil {
			resp.Results = append(resp.Results, &ssipb.KillResult{Gpid: g, Error: fmt.Sprintf("(%d) - No such process (%v)", g, err)})
			continue
		}
		idx, _ := gpid.Split(abs(g))
		name, ok := s.cfg.Cluster.NameOf(uint32(idx))
		if !ok {
			resp.Results = append(resp.Results, &ssipb.KillResult{Gpid: g, Error: fmt.Sprintf("(%d) - No such process (no node has index %d)", g, idx)})
			continue
		}
		byNode[name] = append(byNode[name], g)
	}
	for name, gpids := range byNode {
		sub := &ssipb.KillRequest{Gpids: gpids, Signal: req.Signal, Caller: caller, Session: req.Session}
		var r *ssipb.KillResponse
		var err error
		if name == self {
			r, err = s.Signal(ctx, sub)
		} else if peer, perr := s.cfg.Cluster.Peer(name); perr != nil {
			err = perr
		} else {
			// Within the client's own deadline, so that it gets this node's answer, or a
			// line saying the node did not give one, rather than a cancelled call.
			timeout := signalTimeout
			if !s.alive(name) {
				timeout = signalTimeoutDead // tried still: gossip can misjudge a busy node
			}
			pctx, cancel := context.WithTimeout(ctx, timeout)
			r, err = peer.Signal(pctx, sub)
			cancel()
		}
		if err != nil {
			msg := peerErrorText(err)
			state := ""
			if !s.alive(name) {
				state = " (it is down, see ssi nodes)"
			}
			if c := status.Code(err); c == codes.DeadlineExceeded || c == codes.Canceled {
				msg = "no answer in time"
			}
			for _, g := range gpids {
				resp.Results = append(resp.Results, &ssipb.KillResult{Gpid: g, Error: fmt.Sprintf("(%d) - node %s did not answer%s: %s", g, name, state, msg)})
			}
			continue
		}
		resp.Results = append(resp.Results, r.Results...)
	}
	return resp, nil
}

// Signal delivers a signal to processes of this node for a caller, with kill(2)'s rule: root
// may signal anything; others only processes whose real or saved uid is theirs. The process
// is pinned with a pidfd before the check, so a recycled pid cannot be hit.
func (s *Service) Signal(_ context.Context, req *ssipb.KillRequest) (*ssipb.KillResponse, error) {
	if req.Caller == nil {
		return nil, status.Error(codes.InvalidArgument, "signal request without a caller")
	}
	_, index := s.self()
	resp := &ssipb.KillResponse{}
	for _, g := range req.Gpids {
		idx, pid := gpid.Split(abs(g))
		res := &ssipb.KillResult{Gpid: g}
		if gpid.Check(abs(g)) != nil || int64(idx) != int64(index) {
			res.Error = fmt.Sprintf("(%d) - No such process (it is not on this node)", g)
		} else if g < 0 {
			if err := signalGroup(pid, syscall.Signal(req.Signal), req.Caller.Uid); err != nil {
				res.Error = fmt.Sprintf("(%d) - %s", g, errText(err))
			}
		} else if req.Session {
			if err := s.signalSession(pid, syscall.Signal(req.Signal), req.Caller.Uid); err != nil {
				res.Error = fmt.Sprintf("(%d) - %s", g, errText(err))
			}
		} else if err := signalPid(pid, syscall.Signal(req.Signal), req.Caller.Uid); err != nil {
			res.Error = fmt.Sprintf("(%d) - %s", g, errText(err))
		}
		resp.Results = append(resp.Results, res)
	}
	return resp, nil
}

// signalSession passes on a signal that ssi run received for the command it runs attached,
// as the session's stream would (forwardSignal), for its owner or root.
func (s *Service) signalSession(pid int, sig syscall.Signal, uid uint32) error {
	r := s.lookup(pid)
	if r == nil || !r.running() {
		return syscall.ESRCH
	}
	if uid != 0 && uid != r.uid {
		return syscall.EPERM
	}
	if sig == 0 {
		return nil
	}
	return s.forwardSignal(r.proc, sig)
}

func abs(g int64) int64 {
	if g < 0 {
		return -g
	}
	return g
}

// signalGroup delivers a signal to every process of process group pgid for a caller, as
// kill(2) does for -pgid: it succeeds if one process got it, and fails with EPERM if there
// were processes but none the caller may signal.
func signalGroup(pgid int, sig syscall.Signal, uid uint32) error {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return err
	}
	found, sent := false, false
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if g, err := unix.Getpgid(pid); err != nil || g != pgid {
			continue
		}
		found = true
		if signalPid(pid, sig, uid) == nil {
			sent = true
		}
	}
	switch {
	case sent:
		return nil
	case found:
		return syscall.EPERM
	}
	return syscall.ESRCH
}

func signalPid(pid int, sig syscall.Signal, uid uint32) error {
	if pid <= 0 {
		return syscall.ESRCH
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if uid != 0 {
		real, saved, err := uidsOf(pid)
		if err != nil {
			return syscall.ESRCH
		}
		if uid != real && uid != saved {
			return syscall.EPERM
		}
	}
	return unix.PidfdSendSignal(fd, sig, nil, 0)
}

// uidsOf reads the real and saved uid of pid.
func uidsOf(pid int) (real, saved uint32, err error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "Uid:"); ok {
			f := strings.Fields(rest)
			if len(f) < 3 {
				break
			}
			r, err1 := strconv.ParseUint(f[0], 10, 32)
			sv, err2 := strconv.ParseUint(f[2], 10, 32)
			if err := errors.Join(err1, err2); err != nil {
				return 0, 0, err
			}
			return uint32(r), uint32(sv), nil
		}
	}
	return 0, 0, errors.New("no Uid line")
}

// errText renders an errno as kill(1) does ("No such process", "Operation not permitted").
func errText(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		s := errno.Error()
		return strings.ToUpper(s[:1]) + s[1:]
	}
	return err.Error()
}
