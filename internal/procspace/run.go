package procspace

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ssi-cluster/ssi/internal/api"
	"github.com/ssi-cluster/ssi/internal/api/ssipb"
	"github.com/ssi-cluster/ssi/internal/api/ssirpc"
	"github.com/ssi-cluster/ssi/internal/gpid"
	"github.com/ssi-cluster/ssi/internal/proc"
)

// CallerOf returns the identity a local client's requests run as: uid and gid as the kernel
// reported them on the socket, supplementary groups and umask from the client process itself.
func (s *Service) CallerOf(ctx context.Context) (*ssipb.Caller, int, error) {
	c, err := api.CallerFrom(ctx)
	if err != nil {
		return nil, 0, status.Error(codes.Unauthenticated, err.Error())
	}
	self, _ := s.self()
	if c.PID == 0 {
		// The client lives outside this node's PID namespace (e.g. on the machine hosting
		// simulated nodes): the kernel vouches for uid and gid only, so the groups come from
		// the user database and the umask is the usual default.
		groups, err := proc.Groups(c.UID, c.GID)
		if err != nil {
			return nil, 0, status.Errorf(codes.PermissionDenied, "looking up the groups of uid %d: %v", c.UID, err)
		}
		return &ssipb.Caller{Uid: c.UID, Gid: c.GID, Groups: groups, Umask: 0o022, Node: self}, 0, nil
	}
	id, err := proc.IdentityOf(int(c.PID))
	if err != nil {
		return nil, 0, status.Errorf(codes.Unauthenticated, "reading the identity of client pid %d: %v", c.PID, err)
	}
	if id.UID != c.UID || id.GID != c.GID {
		return nil, 0, status.Errorf(codes.PermissionDenied, "client pid %d changed identity since it connected: reconnect", c.PID)
	}
	groups := make([]uint32, len(id.Groups))
	copy(groups, id.Groups)
	return &ssipb.Caller{Uid: c.UID, Gid: c.GID, Groups: groups, Umask: uint32(id.Umask), Node: self}, int(c.PID), nil
}

// addInherited adds to caller what a command it starts inherits from the calling process pid,
// as a local child would: its nice value and resource limits. Both are read from the kernel,
// not asked: a caller must not get a lower nice value than its own. Without pid (a client
// outside this node's PID namespace) the command gets the agent's.
func (s *Service) addInherited(caller *ssipb.Caller, pid int) error {
	if pid == 0 {
		return nil
	}
	nice, err := proc.NiceOf(pid)
	if err != nil {
		return status.Errorf(codes.Unauthenticated, "reading the nice value of client pid %d: %v", pid, err)
	}
	caller.Nice = int32(nice)
	limits, err := proc.RlimitsOf(pid)
	if err != nil {
		// A kernel without the file, say: the agent's limits, as before.
		s.log.Debug("reading the resource limits of a client", "pid", pid, "err", err)
	}
	caller.Rlimits = rlimitsPB(limits)
	return nil
}

// rlimitsPB and rlimitsOfPB carry proc's limits in messages and back.
func rlimitsPB(limits []proc.Rlimit) []*ssipb.Rlimit {
	out := make([]*ssipb.Rlimit, 0, len(limits))
	for _, l := range limits {
		out = append(out, &ssipb.Rlimit{Resource: int32(l.Resource), Cur: l.Cur, Max: l.Max, CurUnknown: l.CurUnknown})
	}
	return out
}

func rlimitsOfPB(limits []*ssipb.Rlimit) []proc.Rlimit {
	out := make([]proc.Rlimit, 0, len(limits))
	for _, l := range limits {
		out = append(out, proc.Rlimit{Resource: int(l.Resource), Cur: l.Cur, Max: l.Max, CurUnknown: l.CurUnknown})
	}
	return out
}

// Run serves Control.Run for a local client: it fixes the caller's identity, places the
// command, and runs it here or relays the session to the chosen node.
func (s *Service) Run(stream ssirpc.Control_RunServer) error {
	ctx := stream.Context()
	// Taken first, so that every way out of this call closes them.
	out := api.TakeOutput(ctx)
	defer out.Close()
	var client runStream = stream
	if out != nil {
		client = &outputStream{runStream: stream, out: out}
		stop := context.AfterFunc(ctx, out.Interrupt)
		defer stop()
	}
	caller, pid, err := s.CallerOf(ctx)
	if err != nil {
		return err
	}
	if err := s.addInherited(caller, pid); err != nil {
		return err
	}
	in, err := client.Recv()
	if err != nil {
		return err
	}
	start := in.GetStart()
	if start == nil {
		return status.Error(codes.InvalidArgument, "the first message must be a start")
	}
	self, index := s.self()
	// Identity comes from the kernel, never from the request.
	start.Caller = caller
	if pid > 0 {
		start.ParentGpid = gpid.Make(int(index), pid)
	}
	start.HomeNode = self

	target, explanation := "", ""
	if start.Node != "" {
		name, ok := s.cfg.Cluster.Resolve(start.Node)
		if !ok {
			return status.Errorf(codes.NotFound, "unknown node %q: see \"ssi nodes\" for the names", start.Node)
		}
		// A named node is tried even if gossip doubts it: under heavy load gossip can briefly
		// misjudge a live node, and a node that is really gone fails the relay with 255.
		target, explanation = name, "node named with -n"
	} else {
		d, err := s.place()
		if err != nil {
			return status.Error(codes.Unavailable, err.Error())
		}
		target, explanation = d.Node, d.Reason
	}
	if !start.Explain {
		explanation = ""
	}
	if target == self {
		return s.execute(client, start, explanation, nil)
	}
	return s.relay(client, target, start, explanation)
}

func (s *Service) alive(name string) bool {
	for _, c := range s.cfg.Cluster.Candidates() {
		if c.Name == name {
			return c.Alive
		}
	}
	return false
}

// lostAfter is how long gossip must show a node dead before its sessions are given up,
// unless the node still answers a ping within pingTimeout.
const (
	lostAfter = 2 * time.Second
	// startTimeoutDown bounds the start of a command on a node gossip shows down.
	startTimeoutDown = 3 * time.Second
	pingTimeout      = 5 * time.Second // long: a saturated node (1,000 sessions starting at once) answers late
)

// answers reports whether the node behind peer answers a ping.
func (s *Service) answers(ctx context.Context, peer ssirpc.PeerClient) bool {
	ctx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()
	_, err := peer.Ping(ctx, &ssipb.PingRequest{})
	return err == nil
}

// relay carries a session between the local client and the node that runs the command. If
// that node is lost, the client gets exit status 255 and a message naming it.
func (s *Service) relay(client runStream, node string, start *ssipb.RunStart, explanation string) error {
	peer, err := s.cfg.Cluster.Peer(node)
	if err != nil {
		return s.lost(client, node, err)
	}
	ctx, cancel := context.WithCancel(client.Context())
	callCtx, bulk := s.expectBulk(ctx, client, node)
	if bulk != nil {
		defer bulk.Close()
	}
	// bulkDone, once stdout moved to the link, gives how its copy into the client's stdout
	// ended; it must have ended before the exit status goes out.
	var bulkDone chan error
	bulkEnd := func() error {
		if bulkDone == nil {
			return nil
		}
		err := <-bulkDone
		bulkDone = nil
		return err
	}
	// On every path the copy ends before Run closes the client's stdout.
	defer func() {
		cancel()
		_ = bulkEnd()
	}()
	// A node gossip shows down (dead, or gone from the cluster) is still tried, since gossip
	// can misjudge a busy one, but only for startTimeoutDown: a live node confirms the start in
	// milliseconds, while a connection to one that is gone waits for TCP to give up (13 s).
	// One that gossip shows alive again by then was misjudged (a saturated machine makes its
	// nodes flap): its start goes on, as any.
	var startTimer *time.Timer
	startTimedOut := make(chan struct{})
	if !s.alive(node) {
		startTimer = time.AfterFunc(startTimeoutDown, func() {
			if s.alive(node) {
				return
			}
			close(startTimedOut)
			cancel()
		})
		defer startTimer.Stop()
	}
	lost := func(err error) error {
		select {
		case <-startTimedOut:
			err = fmt.Errorf("no answer within %v", startTimeoutDown)
		default:
		}
		return s.lost(client, node, err)
	}
	// Output frames pass through without being decoded (see api.Frame).
	remote, err := peer.Exec(callCtx, grpc.ForceCodecV2(api.Codec{}))
	if err != nil {
		return lost(err)
	}
	if err := remote.Send(&ssipb.RunInput{Msg: &ssipb.RunInput_Start{Start: start}}); err != nil {
		return lost(err)
	}
	// Gossip notices a dead node within seconds, long before TCP would. A node must stay
	// dead for a while: on a saturated machine gossip can briefly misjudge a live one, and
	// ending a healthy session would be worse than noticing a lost node a little later.
	nodeDied := make(chan struct{})
	go func() {
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		var deadSince time.Time
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-t.C:
				switch {
				case s.alive(node):
					deadSince = time.Time{}
				case deadSince.IsZero():
					deadSince = now
				case now.Sub(deadSince) >= lostAfter:
					// Gossip can misjudge a node on a saturated machine: ask the node itself,
					// over the connection the session uses, before giving up on it. A node
					// too busy to answer in time that gossip shows alive again meanwhile was
					// misjudged too.
					if s.answers(ctx, peer) || s.alive(node) {
						deadSince = time.Time{}
						continue
					}
					close(nodeDied)
					cancel()
					return
				}
			}
		}
	}()
	// Client → remote. When the client goes away, cancelling ctx ends the remote session,
	// whose node then ends the process tree.
	go func() {
		for {
			in, err := client.Recv()
			if err != nil {
				cancel()
				return
			}
			if err := remote.Send(in); err != nil {
				return
			}
		}
	}()
	for {
		var frame api.Frame
		err := remote.RecvMsg(&frame)
		if err != nil {
			cancel()
			switch berr := bulkEnd(); {
			case errors.Is(berr, errOutputFailed):
				return client.Send(outputFailedExit(berr))
			case berr != nil && !errors.Is(berr, context.Canceled):
				err = berr // the link failed first, and ended the session
			}
			if client.Context().Err() != nil {
				return client.Context().Err()
			}
			select {
			case <-nodeDied:
				return s.lost(client, node, errors.New("the node stopped answering (it is dead or cut off)"))
			default:
			}
			if errors.Is(err, io.EOF) {
				return s.lost(client, node, errors.New("the session ended without an exit status"))
			}
			return lost(err)
		}
		if startTimer != nil {
			startTimer.Stop() // the node answers
			startTimer = nil
		}
		if bulk != nil && frame.Field() == api.RunOutputStdout && (bulkDone != nil || isBulkMarker(&frame)) {
			frame.Free()
			if bulkDone != nil {
				cancel()
				_ = bulkEnd() // no more writes into the client's stdout once it has the status
				return s.lost(client, node, errors.New("stdout came on the stream after it had moved to the data link"))
			}
			bulkDone = make(chan error, 1)
			go func() {
				err := receiveBulk(ctx, bulk, client.(*outputStream))
				if err != nil {
					cancel() // wakes the receive below, and ends the remote session
				}
				bulkDone <- err
			}()
			continue
		}
		if f := frame.Field(); f == api.RunOutputStdout || f == api.RunOutputStderr {
			if err := client.SendMsg(&frame); err != nil {
				if errors.Is(err, errOutputFailed) {
					// As a local writer would die of SIGPIPE: the remote tree ends with this
					// session (the deferred cancel), and the client learns why.
					return client.Send(outputFailedExit(err))
				}
				return err
			}
			continue
		}
		var out ssipb.RunOutput
		if err := frame.Decode(&out); err != nil {
			return s.lost(client, node, fmt.Errorf("unreadable message: %w", err))
		}
		if st := out.GetStarted(); st != nil && explanation != "" {
			st.Explanation = explanation
		}
		if out.GetExit() != nil {
			// All of stdout is written before the client learns the status.
			if err := bulkEnd(); errors.Is(err, errOutputFailed) {
				return client.Send(outputFailedExit(err))
			} else if err != nil {
				return s.lost(client, node, err)
			}
		}
		if err := client.Send(&out); err != nil {
			return err
		}
		if out.GetExit() != nil {
			return nil
		}
	}
}

// lost ends the client's session with ExitLostNode and a line naming node and why.
func (s *Service) lost(client runStream, node string, err error) error {
	return client.Send(&ssipb.RunOutput{Msg: &ssipb.RunOutput_Exit{Exit: &ssipb.RunExit{
		Code: ExitLostNode, Message: s.lostMessage(node, err),
	}}})
}

// peerErrorText is the text of an error from a call to another node for users: the status's
// message, and of a failed connection the dial's own error without gRPC's wrapping
// ("connection error: desc = \"transport: Error while dialing: dial tcp ...: no route to host\"").
func peerErrorText(err error) string {
	msg := err.Error()
	if st, ok := status.FromError(err); ok {
		msg = st.Message()
	}
	if _, dial, ok := strings.Cut(msg, "Error while dialing: "); ok {
		msg = strings.TrimSuffix(dial, `"`)
	}
	return msg
}

// lostMessage says that node was lost and why, in words for the user: whether gossip shows it
// down, and what went wrong (see peerErrorText).
func (s *Service) lostMessage(node string, err error) string {
	msg := peerErrorText(err)
	state := ""
	if !s.alive(node) {
		state = " (it is down, see ssi nodes)"
	}
	return fmt.Sprintf("lost connection to node %s%s: %s", node, state, msg)
}
