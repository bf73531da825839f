package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/ssi-cluster/ssi/internal/api"
	"github.com/ssi-cluster/ssi/internal/api/ssirpc"
)

// callTimeout bounds a simple request to the local agent.
const callTimeout = 15 * time.Second

// dialAgent connects to the local agent's socket. The connection is local, and the agent
// learns who we are from the kernel, so no transport security is involved.
func (g *globals) dialAgent() (*grpc.ClientConn, error) {
	path := g.socketPath()
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("no ssi agent at %s: start one with \"ssi agent\" (or \"ssi dev\"), or point --socket / SSI_SOCKET at it", path)
		}
		return nil, fmt.Errorf("cannot use the agent socket %s: %w", path, err)
	}
	return grpc.NewClient("passthrough:///agent", append(api.DialOptions(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}),
	)...)
}

func (g *globals) control() (ssirpc.ControlClient, func(), error) {
	cc, err := g.dialAgent()
	if err != nil {
		return nil, nil, err
	}
	return ssirpc.NewControlClient(cc), func() { cc.Close() }, nil
}

// callControl checks the output format, then makes one call to the local agent, bounded by
// callTimeout, and turns a failure into the line users see.
func callControl[T any](g *globals, cmd *cobra.Command, format string, call func(context.Context, ssirpc.ControlClient) (T, error)) (T, error) {
	var zero T
	if err := checkFormat(format); err != nil {
		return zero, err
	}
	ctl, closeConn, err := g.control()
	if err != nil {
		return zero, err
	}
	defer closeConn()
	ctx, cancel := context.WithTimeout(cmd.Context(), callTimeout)
	defer cancel()
	resp, err := call(ctx, ctl)
	if err != nil {
		return zero, g.rpcError(err)
	}
	return resp, nil
}

// rpcError turns a gRPC failure into the one-line message users see.
func (g *globals) rpcError(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("the ssi agent at %s is not running (connection refused): start it, or point --socket / SSI_SOCKET at a running one", g.socketPath())
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	msg := st.Message()
	if st.Code() == codes.Unavailable && containsAny(msg, "connection refused", "no such file") {
		return fmt.Errorf("the ssi agent at %s is not running: start it, or point --socket / SSI_SOCKET at a running one", g.socketPath())
	}
	return errors.New(msg)
}

func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}
