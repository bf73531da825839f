package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/ssi-cluster/ssi/internal/api/jobspb"
	"github.com/ssi-cluster/ssi/internal/api/jobsrpc"
	"github.com/ssi-cluster/ssi/internal/proc/cgroup"
)

// The test binary doubles as a client run as another user (see runAs): the kernel then
// reports that user's uid on the agent socket, as it would for a real CLI.
const (
	envClientOp     = "JOBS_TEST_CLIENT_OP"
	envClientSocket = "JOBS_TEST_CLIENT_SOCKET"
	envClientArg    = "JOBS_TEST_CLIENT_ARG"
	envClientUmask  = "JOBS_TEST_CLIENT_UMASK" // octal; the client's umask is the job's
	// resource:soft:hard,... (numbers); the client's limits are the job's
	envClientRlimits = "JOBS_TEST_CLIENT_RLIMITS"
)

var helperDir string

func TestMain(m *testing.M) {
	if op := os.Getenv(envClientOp); op != "" {
		if u, err := strconv.ParseUint(os.Getenv(envClientUmask), 8, 32); err == nil {
			syscall.Umask(int(u))
		}
		if err := setClientRlimits(os.Getenv(envClientRlimits)); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		os.Exit(clientMain(op, os.Getenv(envClientSocket), os.Getenv(envClientArg)))
	}
	code := m.Run()
	if helperDir != "" {
		os.RemoveAll(helperDir)
	}
	if os.Geteuid() == 0 {
		if mount, err := cgroup.Mount(); err == nil {
			_ = cgroup.Open(mount, testCgroupParent).Remove()
		}
	}
	os.Exit(code)
}

// setClientRlimits sets the limits listed as resource:soft:hard,...
func setClientRlimits(list string) error {
	for item := range strings.SplitSeq(list, ",") {
		if item == "" {
			continue
		}
		var res int
		var l syscall.Rlimit
		if _, err := fmt.Sscanf(item, "%d:%d:%d", &res, &l.Cur, &l.Max); err != nil {
			return fmt.Errorf("limit %q: %w", item, err)
		}
		if err := syscall.Setrlimit(res, &l); err != nil {
			return fmt.Errorf("limit %q: %w", item, err)
		}
	}
	return nil
}

// clientMain performs one call and prints its result as JSON, or "error: message".
func clientMain(op, socket, arg string) int {
	cc, err := grpc.NewClient("passthrough:///agent", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}))
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := jobsrpc.NewJobsClient(cc)
	var resp any
	switch op {
	case "submit":
		req := &jobspb.SubmitRequest{}
		if err = protojson.Unmarshal([]byte(arg), req); err == nil {
			resp, err = c.Submit(ctx, req)
		}
	case "cancel":
		resp, err = c.Cancel(ctx, &jobspb.ControlRequest{Ids: []string{arg}})
	case "hold":
		resp, err = c.Hold(ctx, &jobspb.ControlRequest{Ids: []string{arg}})
	case "drain":
		resp, err = c.Drain(ctx, &jobspb.DrainRequest{Node: arg, Reason: "test"})
	default:
		err = fmt.Errorf("unknown op %s", op)
	}
	if err != nil {
		fmt.Println("error:", status.Convert(err).Message())
		return 1
	}
	b, _ := json.Marshal(resp)
	fmt.Println(string(b))
	return 0
}

var helperOnce sync.Once

// runAs performs op as uid/gid through a copy of the test binary that user may execute.
func runAs(t *testing.T, uid, gid uint32, socket, op, arg string) (string, error) {
	t.Helper()
	return runAsWithUmask(t, uid, gid, "", socket, op, arg)
}

// runAsWithUmask is runAs with the client's umask (octal) set, when not empty, and env added.
func runAsWithUmask(t *testing.T, uid, gid uint32, umask, socket, op, arg string, env ...string) (string, error) {
	t.Helper()
	helperOnce.Do(func() {
		dir, err := os.MkdirTemp("", "jobs-helper-")
		if err != nil {
			t.Fatal(err)
		}
		helperDir = dir
		_ = os.Chmod(dir, 0o755)
		self, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		in, err := os.Open(self)
		if err != nil {
			t.Fatal(err)
		}
		defer in.Close()
		out, err := os.OpenFile(filepath.Join(dir, "client"), os.O_CREATE|os.O_WRONLY, 0o755)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(out, in); err != nil {
			t.Fatal(err)
		}
		out.Close()
	})
	for try := 0; ; try++ {
		c := exec.Command(filepath.Join(helperDir, "client"))
		c.Env = append([]string{envClientOp + "=" + op, envClientSocket + "=" + socket, envClientArg + "=" + arg, envClientUmask + "=" + umask}, env...)
		c.Dir = "/"
		c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
		b, err := c.Output()
		// A process forked elsewhere in this test binary while the copy was open for writing
		// can hold it briefly: exec then fails with ETXTBSY (golang.org/issue/22315).
		if errors.Is(err, syscall.ETXTBSY) && try < 50 {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		text := strings.TrimSpace(string(b))
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("%s", strings.TrimPrefix(text, "error: "))
		}
		if err != nil {
			return "", err
		}
		return text, nil
	}
}
