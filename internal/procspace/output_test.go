package procspace

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/ssi-cluster/ssi/internal/api"
	"github.com/ssi-cluster/ssi/internal/api/ssipb"
	"github.com/ssi-cluster/ssi/internal/api/ssirpc"
	"github.com/ssi-cluster/ssi/internal/place"
)

// The tests below run the agent's side of `ssi run` in this process: a Control server whose
// client passes its stdout and stderr (as the CLI does), relaying to a fake remote node.

type fakeCluster struct {
	peer    ssirpc.PeerClient
	peerErr error
	n2Down  bool // gossip shows n2 dead
	n2Left  bool // gossip shows that n2 left
	// n2Back, when set, shows n2 alive again whatever n2Down says.
	n2Back *atomic.Bool
}

func (fakeCluster) Self() (string, uint32) { return "n1", 1 }
func (c fakeCluster) Candidates() []place.Candidate {
	alive := !c.n2Down && !c.n2Left || c.n2Back != nil && c.n2Back.Load()
	return []place.Candidate{{Name: "n1", Index: 1, Alive: true}, {Name: "n2", Index: 2, Alive: alive, Left: c.n2Left}}
}
func (fakeCluster) Resolve(n string) (string, bool) { return n, n == "n1" || n == "n2" }
func (fakeCluster) NameOf(i uint32) (string, bool)  { return fmt.Sprintf("n%d", i), i == 1 || i == 2 }
func (c fakeCluster) Peer(string) (ssirpc.PeerClient, error) {
	return c.peer, c.peerErr
}

// fakePeer answers Exec with script, after the start message.
type fakePeer struct {
	ssirpc.UnimplementedPeerServer
	script func(ssirpc.Peer_ExecServer) error
	ping   func(context.Context) error // nil: answered at once
}

func (p *fakePeer) Exec(stream ssirpc.Peer_ExecServer) error {
	if _, err := stream.Recv(); err != nil {
		return err
	}
	return p.script(stream)
}

func (p *fakePeer) Ping(ctx context.Context, _ *ssipb.PingRequest) (*ssipb.PingResponse, error) {
	if p.ping != nil {
		if err := p.ping(ctx); err != nil {
			return nil, err
		}
	}
	return &ssipb.PingResponse{}, nil
}

// control serves Run and reports each call's end on done.
type control struct {
	ssirpc.UnimplementedControlServer
	s    *Service
	done chan error
}

func (c *control) Run(stream ssirpc.Control_RunServer) error {
	err := c.s.Run(stream)
	c.done <- err
	return err
}

func serve(t *testing.T, srv *grpc.Server) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sock")
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return path
}

// session is one test's agent, fake remote node and client.
type session struct {
	ctl    *control
	socket string
}

func newSession(t *testing.T, script func(ssirpc.Peer_ExecServer) error, peerErr error) *session {
	t.Helper()
	return newSessionWith(t, &fakePeer{script: script}, peerErr)
}

func newSessionWith(t *testing.T, peer *fakePeer, peerErr error) *session {
	t.Helper()
	peerSrv := grpc.NewServer(api.ServerOptions()...)
	ssirpc.RegisterPeerServer(peerSrv, peer)
	peerSock := serve(t, peerSrv)
	cc, err := grpc.NewClient("unix://"+peerSock, append(api.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	s := &Service{
		cfg:     Config{Cluster: fakeCluster{peer: ssirpc.NewPeerClient(cc), peerErr: peerErr}, Grace: 1},
		log:     slog.New(slog.DiscardHandler),
		framer:  api.NewBytesFramer(chunkSize),
		started: map[int]*record{}, recent: map[string][]time.Time{},
	}
	ctl := &control{s: s, done: make(chan error, 1)}
	ctlSrv := grpc.NewServer(append(api.ServerOptions(), grpc.Creds(api.PeerCredentials()))...)
	ssirpc.RegisterControlServer(ctlSrv, ctl)
	return &session{ctl: ctl, socket: serve(t, ctlSrv)}
}

// run starts `ssi run -n node` over gRPC, passing stdout and stderr as CLIs older than
// localrpc did (the lean protocol carries the same call to the same handler).
func (ss *session) run(t *testing.T, ctx context.Context, node string, stdout, stderr *os.File) ssirpc.Control_RunClient {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///agent", append(api.DialOptions(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		api.DialPassingOutput(ss.socket, stdout, stderr))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	stream, err := ssirpc.NewControlClient(cc).Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&ssipb.RunInput{Msg: &ssipb.RunInput_Start{Start: &ssipb.RunStart{Args: [][]byte{[]byte("x")}, Node: node}}}); err != nil {
		t.Fatal(err)
	}
	return stream
}

func identity(t *testing.T, f *os.File) syscall.Stat_t {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// copies counts this process's descriptors open on the pipe or file want identifies.
func copies(t *testing.T, want syscall.Stat_t) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		var st syscall.Stat_t
		if syscall.Stat("/proc/self/fd/"+e.Name(), &st) == nil && st.Dev == want.Dev && st.Ino == want.Ino {
			n++
		}
	}
	return n
}

func exitOf(t *testing.T, stream ssirpc.Control_RunClient) *ssipb.RunExit {
	t.Helper()
	for {
		out, err := stream.Recv()
		if err != nil {
			t.Fatalf("no exit status: %v", err)
		}
		switch m := out.Msg.(type) {
		case *ssipb.RunOutput_Exit:
			return m.Exit
		case *ssipb.RunOutput_Stdout, *ssipb.RunOutput_Stderr:
			t.Fatalf("output came over the stream although the files were passed: %v", out)
		}
	}
}

func TestRelayWritesIntoPassedFiles(t *testing.T) {
	big := bytes.Repeat([]byte("ssi\x00\xff"), 600000) // 3 MB: several chunks, more than a pipe holds
	ss := newSession(t, func(stream ssirpc.Peer_ExecServer) error {
		for _, m := range []*ssipb.RunOutput{
			{Msg: &ssipb.RunOutput_Started{Started: &ssipb.RunStarted{Gpid: 20000001, Node: "n2"}}},
			{Msg: &ssipb.RunOutput_Stdout{Stdout: []byte("out 1\n")}},
			{Msg: &ssipb.RunOutput_Stderr{Stderr: []byte("err 1\n")}},
			{Msg: &ssipb.RunOutput_Stdout{Stdout: big}},
			{Msg: &ssipb.RunOutput_Stderr{Stderr: []byte("err 2\n")}},
			{Msg: &ssipb.RunOutput_Exit{Exit: &ssipb.RunExit{Code: 3}}},
		} {
			if err := stream.Send(m); err != nil {
				return err
			}
		}
		return nil
	}, nil)
	// stdout and stderr are one pipe, as with 2>&1: what is read shows the order of writes.
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	got := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(pr)
		got <- b
	}()
	stream := ss.run(t, context.Background(), "n2", pw, pw)
	if ex := exitOf(t, stream); ex.Code != 3 {
		t.Fatalf("exit %v, want 3", ex)
	}
	// The agent closed its copies before sending the status: the client's own closing is
	// all the reader waits for.
	pw.Close()
	want := append(append([]byte("out 1\nerr 1\n"), big...), "err 2\n"...)
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("read %d bytes, not the %d written in order", len(b), len(want))
	}
	if err := <-ss.ctl.done; err != nil {
		t.Fatal(err)
	}
}

// Every way a session ends early closes the files it was passed.
func TestPassedFilesClosedOnEveryPath(t *testing.T) {
	endless := func(stream ssirpc.Peer_ExecServer) error {
		if err := stream.Send(&ssipb.RunOutput{Msg: &ssipb.RunOutput_Started{Started: &ssipb.RunStarted{Gpid: 20000001}}}); err != nil {
			return err
		}
		chunk := make([]byte, 256<<10)
		for {
			if err := stream.Send(&ssipb.RunOutput{Msg: &ssipb.RunOutput_Stdout{Stdout: chunk}}); err != nil {
				return nil
			}
		}
	}
	tests := []struct {
		name    string
		node    string
		script  func(ssirpc.Peer_ExecServer) error
		peerErr error
		// what happens on the client side once the session runs
		act func(t *testing.T, pr *os.File, stream ssirpc.Control_RunClient, cancel func())
	}{
		{"unknown node", "n9", endless, nil, func(t *testing.T, _ *os.File, stream ssirpc.Control_RunClient, _ func()) {
			if _, err := stream.Recv(); status.Code(err) != codes.NotFound {
				t.Errorf("got %v, want NotFound", err)
			}
		}},
		{"node unreachable", "n2", endless, errors.New("no route"), func(t *testing.T, _ *os.File, stream ssirpc.Control_RunClient, _ func()) {
			if ex := exitOf(t, stream); ex.Code != ExitLostNode {
				t.Errorf("exit %v, want %d", ex, ExitLostNode)
			}
		}},
		{"session ends without a status", "n2", func(ssirpc.Peer_ExecServer) error { return nil }, nil,
			func(t *testing.T, _ *os.File, stream ssirpc.Control_RunClient, _ func()) {
				if ex := exitOf(t, stream); ex.Code != ExitLostNode {
					t.Errorf("exit %v, want %d", ex, ExitLostNode)
				}
			}},
		{"reader gone", "n2", endless, nil, func(t *testing.T, pr *os.File, stream ssirpc.Control_RunClient, _ func()) {
			pr.Close()
			if ex := exitOf(t, stream); ex.Code != int32(ExitOutputFailed) || ex.Message != "" {
				t.Errorf("exit %v, want %d without a message", ex, ExitOutputFailed)
			}
		}},
		{"client gone while the reader stalls", "n2", endless, nil, func(t *testing.T, pr *os.File, stream ssirpc.Control_RunClient, cancel func()) {
			// Nobody reads: the agent blocks writing into the full pipe until the client goes.
			if _, err := stream.Recv(); err != nil {
				t.Fatal(err)
			}
			cancel()
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ss := newSession(t, tt.script, tt.peerErr)
			pr, pw, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer pr.Close()
			pipe := identity(t, pr)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			stream := ss.run(t, ctx, tt.node, pw, pw)
			pw.Close()
			tt.act(t, pr, stream, cancel)
			<-ss.ctl.done
			readers := 1
			if tt.name == "reader gone" {
				readers = 0
			}
			if n := copies(t, pipe); n != readers {
				t.Fatalf("%d descriptors open on the client's pipe after the session; want %d (the reader's)", n, readers)
			}
		})
	}
}

// TestOutputFailedExitReportsTheError checks the status and message a client gets when
// writing its stdout failed: silent SIGPIPE status for a reader gone, one line and status 1
// otherwise, as local commands behave.
func TestOutputFailedExitReportsTheError(t *testing.T) {
	pathErr := func(errno syscall.Errno) error {
		return errors.Join(errOutputFailed, &os.PathError{Op: "write", Path: "/dev/full", Err: errno})
	}
	tests := []struct {
		name string
		err  error
		code int32
		msg  string
	}{
		{"reader gone", pathErr(syscall.EPIPE), int32(ExitOutputFailed), ""},
		{"device full", pathErr(syscall.ENOSPC), ExitOutputError, "writing standard output: no space left on device"},
		{"i/o error", pathErr(syscall.EIO), ExitOutputError, "writing standard output: input/output error"},
		{"no errno", errOutputFailed, int32(ExitOutputFailed), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ex := outputFailedExit(tt.err).GetExit()
			if ex.Code != tt.code || ex.Message != tt.msg {
				t.Errorf("exit %d %q, want %d %q", ex.Code, ex.Message, tt.code, tt.msg)
			}
		})
	}
}

// A command for a node gossip shows down is given up after startTimeoutDown, not after TCP's
// own timeout, with a line that says the node is down; one that answers runs as usual, and so
// does one that answers late if gossip shows the node alive again by then (it flapped).
func TestRunOnNodeShownDown(t *testing.T) {
	hang := func(stream ssirpc.Peer_ExecServer) error { <-stream.Context().Done(); return nil }
	answer := func(stream ssirpc.Peer_ExecServer) error {
		return stream.Send(&ssipb.RunOutput{Msg: &ssipb.RunOutput_Exit{Exit: &ssipb.RunExit{Code: 7}}})
	}
	late := func(stream ssirpc.Peer_ExecServer) error {
		select {
		case <-time.After(startTimeoutDown + time.Second):
		case <-stream.Context().Done():
			return nil
		}
		return answer(stream)
	}
	for _, tt := range []struct {
		name   string
		script func(ssirpc.Peer_ExecServer) error
		back   bool
		code   int32
		msg    string
	}{
		{"no answer", hang, false, ExitLostNode, "lost connection to node n2 (it is down, see ssi nodes): no answer within 3s"},
		{"misjudged by gossip", answer, false, 7, ""},
		{"alive again before the timeout", late, true, 7, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ss := newSession(t, tt.script, nil)
			fc := ss.ctl.s.cfg.Cluster.(fakeCluster)
			fc.n2Down = true
			if tt.back {
				fc.n2Back = new(atomic.Bool)
				time.AfterFunc(startTimeoutDown/3, func() { fc.n2Back.Store(true) })
			}
			ss.ctl.s.cfg.Cluster = fc
			pr, pw, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer pr.Close()
			begin := time.Now()
			stream := ss.run(t, context.Background(), "n2", pw, pw)
			pw.Close()
			ex := exitOf(t, stream)
			if took := time.Since(begin); ex.Code != tt.code || ex.Message != tt.msg || took > startTimeoutDown+2*time.Second {
				t.Fatalf("exit %d %q after %v; want %d %q within %v", ex.Code, ex.Message, took, tt.code, tt.msg, startTimeoutDown)
			}
			<-ss.ctl.done
		})
	}
}

func TestLostMessage(t *testing.T) {
	s := &Service{cfg: Config{Cluster: fakeCluster{n2Down: true}}}
	dial := status.Error(codes.Unavailable, `connection error: desc = "transport: Error while dialing: dial tcp 10.0.0.3:7700: connect: no route to host"`)
	for _, tt := range []struct {
		node string
		err  error
		want string
	}{
		{"n2", dial, "lost connection to node n2 (it is down, see ssi nodes): dial tcp 10.0.0.3:7700: connect: no route to host"},
		{"n1", errors.New("the session ended without an exit status"), "lost connection to node n1: the session ended without an exit status"},
	} {
		if got := s.lostMessage(tt.node, tt.err); got != tt.want {
			t.Errorf("lostMessage(%s, %v) = %q, want %q", tt.node, tt.err, got, tt.want)
		}
	}
}

// A session with a node gossip shows dead for longer than lostAfter is given up only if the node
// does not answer a ping either, and not if gossip shows it alive again while the ping waited
// (a saturated node answers late: 81 of 1,000 concurrent sessions ended so in CI).
func TestSessionOnNodeShownDeadForAWhile(t *testing.T) {
	for _, tt := range []struct {
		name string
		back bool
		code int32
	}{
		{"dead", false, ExitLostNode},
		{"alive again while the ping waited", true, 7},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var pinged sync.Once
			pingStarted := make(chan struct{})
			down := make(chan struct{})
			peer := &fakePeer{
				// The command ends once the node was judged, either way.
				script: func(stream ssirpc.Peer_ExecServer) error {
					<-down
					select {
					case <-time.After(lostAfter + 3*time.Second):
					case <-stream.Context().Done():
						return nil
					}
					return stream.Send(&ssipb.RunOutput{Msg: &ssipb.RunOutput_Exit{Exit: &ssipb.RunExit{Code: 7}}})
				},
				ping: func(ctx context.Context) error {
					pinged.Do(func() { close(pingStarted) })
					select {
					case <-time.After(time.Second):
					case <-ctx.Done():
					}
					return errors.New("too busy")
				},
			}
			ss := newSessionWith(t, peer, nil)
			fc := ss.ctl.s.cfg.Cluster.(fakeCluster)
			fc.n2Back = new(atomic.Bool)
			fc.n2Back.Store(true) // alive at the start
			fc.n2Down = true      // and, once n2Back drops, dead
			ss.ctl.s.cfg.Cluster = fc
			pr, pw, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer pr.Close()
			stream := ss.run(t, context.Background(), "n2", pw, pw)
			pw.Close()
			fc.n2Back.Store(false)
			close(down)
			if tt.back {
				go func() {
					<-pingStarted
					fc.n2Back.Store(true)
				}()
			}
			if ex := exitOf(t, stream); ex.Code != tt.code {
				t.Fatalf("exit %d %q, want %d", ex.Code, ex.Message, tt.code)
			}
			<-ss.ctl.done
		})
	}
}
