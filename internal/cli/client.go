package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/ssi-cluster/ssi/internal/api/jobspb"
	"github.com/ssi-cluster/ssi/internal/api/ssipb"
	"github.com/ssi-cluster/ssi/internal/localrpc"
)

// callTimeout bounds a simple request to the local agent.
const callTimeout = 15 * time.Second

// The methods the CLI calls on its local agent, by their full gRPC names (the agent serves
// the same handlers over gRPC and over localrpc; a test checks these against the services).
const (
	methodNodes       = "/ssi.v1.Control/Nodes"
	methodStatus      = "/ssi.v1.Control/Status"
	methodCreateToken = "/ssi.v1.Control/CreateToken"
	methodRun         = "/ssi.v1.Control/Run"
	methodPs          = "/ssi.v1.Control/Ps"
	methodKill        = "/ssi.v1.Control/Kill"
	methodWait        = "/ssi.v1.Control/Wait"
	methodFiles       = "/ssi.v1.Control/Files"

	methodSubmit      = "/ssi.jobs.v1.Jobs/Submit"
	methodInteractive = "/ssi.jobs.v1.Jobs/Interactive"
	methodList        = "/ssi.jobs.v1.Jobs/List"
	methodShow        = "/ssi.jobs.v1.Jobs/Show"
	methodHistory     = "/ssi.jobs.v1.Jobs/History"
	methodCancel      = "/ssi.jobs.v1.Jobs/Cancel"
	methodHold        = "/ssi.jobs.v1.Jobs/Hold"
	methodRelease     = "/ssi.jobs.v1.Jobs/Release"
	methodCreateQueue = "/ssi.jobs.v1.Jobs/CreateQueue"
	methodListQueues  = "/ssi.jobs.v1.Jobs/ListQueues"
	methodRemoveQueue = "/ssi.jobs.v1.Jobs/RemoveQueue"
	methodDrain       = "/ssi.jobs.v1.Jobs/Drain"
	methodResume      = "/ssi.jobs.v1.Jobs/Resume"
)

// dialAgent connects to the local agent's socket, handing it stdout and stderr if not nil
// (see localrpc.PassOutput). The connection is local, and the agent learns who we are from
// the kernel, so no transport security is involved.
func (g *Globals) dialAgent(ctx context.Context, stdout, stderr *os.File) (*localrpc.Conn, error) {
	path := g.socketPath()
	st, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("no ssi agent at %s: start one with \"ssi agent\" (or \"ssi dev\"), or point --socket / SSI_SOCKET at it", path)
		}
		return nil, fmt.Errorf("cannot use the agent socket %s: %w", path, err)
	}
	if st.Mode().Type() != fs.ModeSocket {
		// Connecting would fail with "connection refused", which reads as an agent that is down.
		return nil, fmt.Errorf("%s is not a socket but a %s: point --socket / SSI_SOCKET at the agent's socket (e.g. %s)", path, fileKind(st.Mode()), localrpc.DefaultSocket)
	}
	if len(path) > maxSocketPath {
		// Past what a socket address holds (ssi dev under a deep --dir), connect() fails with
		// "invalid argument": the socket is reached through its directory instead.
		dir, err := os.OpenFile(filepath.Dir(path), unix.O_PATH|unix.O_DIRECTORY, 0)
		if err != nil {
			return nil, fmt.Errorf("cannot use the agent socket %s: %w", path, err)
		}
		defer dir.Close()
		path = fmt.Sprintf("/proc/self/fd/%d/%s", dir.Fd(), filepath.Base(path))
	}
	return localrpc.Dial(ctx, path, stdout, stderr) // callers turn errors into lines (rpcError)
}

// maxSocketPath is the longest path a Unix socket address holds: sun_path's 108 bytes, one
// of them the terminating NUL.
const maxSocketPath = 107

// fileKind names the type of a file that should have been a socket.
func fileKind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m.IsRegular():
		return "regular file"
	}
	return "file of type " + m.Type().String()
}

// call makes one unary call on a connection of its own.
func call[Resp any, PResp interface {
	*Resp
	proto.Message
}](ctx context.Context, g *Globals, method string, req proto.Message) (*Resp, error) {
	conn, err := g.dialAgent(ctx, nil, nil)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	resp := PResp(new(Resp))
	if err := conn.Call(ctx, method, req, resp); err != nil {
		return nil, err
	}
	return resp, nil
}

// control is the Control service of the local agent.
type control struct{ g *Globals }

func (g *Globals) control() control { return control{g} }

func (c control) Nodes(ctx context.Context, req *ssipb.NodesRequest) (*ssipb.NodesResponse, error) {
	return call[ssipb.NodesResponse](ctx, c.g, methodNodes, req)
}

func (c control) Status(ctx context.Context, req *ssipb.StatusRequest) (*ssipb.StatusResponse, error) {
	return call[ssipb.StatusResponse](ctx, c.g, methodStatus, req)
}

func (c control) CreateToken(ctx context.Context, req *ssipb.CreateTokenRequest) (*ssipb.CreateTokenResponse, error) {
	return call[ssipb.CreateTokenResponse](ctx, c.g, methodCreateToken, req)
}

func (c control) Ps(ctx context.Context, req *ssipb.PsRequest) (*ssipb.PsResponse, error) {
	return call[ssipb.PsResponse](ctx, c.g, methodPs, req)
}

func (c control) Kill(ctx context.Context, req *ssipb.KillRequest) (*ssipb.KillResponse, error) {
	return call[ssipb.KillResponse](ctx, c.g, methodKill, req)
}

func (c control) Wait(ctx context.Context, req *ssipb.WaitRequest) (*ssipb.WaitResponse, error) {
	return call[ssipb.WaitResponse](ctx, c.g, methodWait, req)
}

func (c control) Files(ctx context.Context, req *ssipb.FilesRequest) (*ssipb.FilesResponse, error) {
	return call[ssipb.FilesResponse](ctx, c.g, methodFiles, req)
}

// jobs is the Jobs service of the local agent.
type jobs struct{ g *Globals }

func (g *Globals) jobs() jobs { return jobs{g} }

func (j jobs) Submit(ctx context.Context, req *jobspb.SubmitRequest) (*jobspb.SubmitResponse, error) {
	return call[jobspb.SubmitResponse](ctx, j.g, methodSubmit, req)
}

func (j jobs) List(ctx context.Context, req *jobspb.ListRequest) (*jobspb.ListResponse, error) {
	return call[jobspb.ListResponse](ctx, j.g, methodList, req)
}

func (j jobs) Show(ctx context.Context, req *jobspb.ShowRequest) (*jobspb.ShowResponse, error) {
	return call[jobspb.ShowResponse](ctx, j.g, methodShow, req)
}

func (j jobs) History(ctx context.Context, req *jobspb.HistoryRequest) (*jobspb.ListResponse, error) {
	return call[jobspb.ListResponse](ctx, j.g, methodHistory, req)
}

func (j jobs) Cancel(ctx context.Context, req *jobspb.ControlRequest) (*jobspb.ControlResponse, error) {
	return call[jobspb.ControlResponse](ctx, j.g, methodCancel, req)
}

func (j jobs) Hold(ctx context.Context, req *jobspb.ControlRequest) (*jobspb.ControlResponse, error) {
	return call[jobspb.ControlResponse](ctx, j.g, methodHold, req)
}

func (j jobs) Release(ctx context.Context, req *jobspb.ControlRequest) (*jobspb.ControlResponse, error) {
	return call[jobspb.ControlResponse](ctx, j.g, methodRelease, req)
}

func (j jobs) CreateQueue(ctx context.Context, req *jobspb.CreateQueueRequest) (*jobspb.QueueInfo, error) {
	return call[jobspb.QueueInfo](ctx, j.g, methodCreateQueue, req)
}

func (j jobs) ListQueues(ctx context.Context, req *jobspb.ListQueuesRequest) (*jobspb.ListQueuesResponse, error) {
	return call[jobspb.ListQueuesResponse](ctx, j.g, methodListQueues, req)
}

func (j jobs) RemoveQueue(ctx context.Context, req *jobspb.RemoveQueueRequest) (*jobspb.RemoveQueueResponse, error) {
	return call[jobspb.RemoveQueueResponse](ctx, j.g, methodRemoveQueue, req)
}

func (j jobs) Drain(ctx context.Context, req *jobspb.DrainRequest) (*jobspb.DrainResponse, error) {
	return call[jobspb.DrainResponse](ctx, j.g, methodDrain, req)
}

func (j jobs) Resume(ctx context.Context, req *jobspb.DrainRequest) (*jobspb.DrainResponse, error) {
	return call[jobspb.DrainResponse](ctx, j.g, methodResume, req)
}

// callControl checks the output format, then makes one call to the local agent, bounded by
// callTimeout, and turns a failure into the line users see.
func callControl[T any](g *Globals, cmd *cobra.Command, format string, call func(context.Context, control) (T, error)) (T, error) {
	var zero T
	if err := checkFormat(format); err != nil {
		return zero, err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), callTimeout)
	defer cancel()
	resp, err := call(ctx, g.control())
	if err != nil {
		return zero, g.rpcError(err)
	}
	return resp, nil
}

// rpcError turns a failed call into the one-line message users see.
func (g *Globals) rpcError(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("the ssi agent at %s is not running (connection refused): start it, or point --socket / SSI_SOCKET at a running one", g.socketPath())
	}
	var rerr *localrpc.Error
	if !errors.As(err, &rerr) {
		return err
	}
	if rerr.Code == localrpc.Unavailable && containsAny(rerr.Message, "connection refused", "no such file") {
		return fmt.Errorf("the ssi agent at %s is not running: start it, or point --socket / SSI_SOCKET at a running one", g.socketPath())
	}
	return errors.New(rerr.Message)
}

func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// interactiveCall is a Jobs.Interactive call on a connection of its own.
type interactiveCall struct {
	conn   *localrpc.Conn
	stream *localrpc.Stream
}

func (j jobs) Interactive(ctx context.Context) (*interactiveCall, error) {
	conn, err := j.g.dialAgent(ctx, nil, nil)
	if err != nil {
		return nil, err
	}
	stream, err := conn.Stream(ctx, methodInteractive)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return &interactiveCall{conn: conn, stream: stream}, nil
}

func (c *interactiveCall) Send(in *jobspb.InteractiveInput) error { return c.stream.Send(in) }

func (c *interactiveCall) Recv() (*jobspb.InteractiveOutput, error) {
	out := new(jobspb.InteractiveOutput)
	if err := c.stream.Recv(out); err != nil {
		return nil, err
	}
	return out, nil
}

func (c *interactiveCall) Close() error { return c.conn.Close() }
