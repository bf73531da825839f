package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ssi-cluster/ssi/internal/api/ssipb"
	"github.com/ssi-cluster/ssi/internal/api/ssirpc"
	"github.com/ssi-cluster/ssi/internal/localrpc"
)

// fakeControl answers Ps with what the test's function returns, and Run with an echo or what
// the test's function does. Other methods are unimplemented.
type fakeControl struct {
	ssirpc.UnimplementedControlServer
	ps  func(context.Context, *ssipb.PsRequest) (*ssipb.PsResponse, error)
	run func(ssirpc.Control_RunServer) error
}

func (f *fakeControl) Ps(ctx context.Context, req *ssipb.PsRequest) (*ssipb.PsResponse, error) {
	return f.ps(ctx, req)
}

func (f *fakeControl) Run(stream ssirpc.Control_RunServer) error { return f.run(stream) }

// echoRun answers each stdin message with a stdout frame of the same bytes, sent as a Frame,
// and the end of input with an exit.
func echoRun(stream ssirpc.Control_RunServer) error {
	for {
		in, err := stream.Recv()
		if err == io.EOF {
			return stream.Send(&ssipb.RunOutput{Msg: &ssipb.RunOutput_Exit{Exit: &ssipb.RunExit{Code: 7}}})
		}
		if err != nil {
			return err
		}
		if err := stream.SendMsg(NewBytesFrame(RunOutputStdout, in.GetStdin())); err != nil {
			return err
		}
	}
}

// testServer is a control socket served by ServeLocal with fake's Control on both protocols.
type testServer struct {
	path   string
	local  *LocalServer
	grpc   *grpc.Server
	served chan error
	// calls counts the interceptors' calls (unary, stream).
	unaryCalls, streamCalls chan string
}

func startServer(t *testing.T, fake *fakeControl) *testServer {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ssi.sock")
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	s := &testServer{path: path, served: make(chan error, 1), unaryCalls: make(chan string, 100), streamCalls: make(chan string, 100)}
	unary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		s.unaryCalls <- info.FullMethod
		return handler(ctx, req)
	}
	stream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		s.streamCalls <- info.FullMethod
		return handler(srv, ss)
	}
	s.grpc = grpc.NewServer(append(ServerOptions(), grpc.Creds(PeerCredentials()),
		grpc.ChainUnaryInterceptor(unary), grpc.ChainStreamInterceptor(stream))...)
	s.local = NewLocalServer(unary, stream)
	ssirpc.RegisterControlServer(s.grpc, fake)
	ssirpc.RegisterControlServer(s.local, fake)
	go func() { s.served <- ServeLocal(lis, s.grpc, s.local) }()
	t.Cleanup(func() {
		s.local.Stop()
		s.grpc.Stop()
		if err := <-s.served; !errors.Is(err, grpc.ErrServerStopped) {
			t.Errorf("ServeLocal returned %v", err)
		}
		// Every connection is closed by now, so that tests that count descriptors can.
		s.local.handling.Wait()
	})
	return s
}

func dial(t *testing.T, path string, stdout *os.File) *localrpc.Conn {
	t.Helper()
	c, err := localrpc.Dial(context.Background(), path, stdout, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestLocalUnary(t *testing.T) {
	fake := &fakeControl{ps: func(ctx context.Context, req *ssipb.PsRequest) (*ssipb.PsResponse, error) {
		switch req.User {
		case "status":
			return nil, status.Error(codes.NotFound, "no such process")
		case "plain":
			return nil, errors.New("plain failure")
		case "whoami":
			c, err := CallerFrom(ctx)
			if err != nil {
				return nil, err
			}
			return &ssipb.PsResponse{Unreachable: []string{strconv.Itoa(int(c.UID)), strconv.Itoa(int(c.PID))}}, nil
		case "method":
			m, _ := grpc.Method(ctx)
			return &ssipb.PsResponse{Unreachable: []string{m}}, nil
		case "deadline":
			d, ok := ctx.Deadline()
			return &ssipb.PsResponse{Unreachable: []string{strconv.FormatBool(ok && time.Until(d) > 9*time.Second)}}, nil
		}
		return &ssipb.PsResponse{Unreachable: []string{"echo " + req.User}}, nil
	}}
	s := startServer(t, fake)
	for _, tc := range []struct {
		name, method, user string
		timeout            time.Duration
		code               localrpc.Code
		msg                string
		want               []string
	}{
		{name: "ok", method: ssirpc.Control_Ps_FullMethodName, user: "x", want: []string{"echo x"}},
		{name: "status error", method: ssirpc.Control_Ps_FullMethodName, user: "status", code: localrpc.NotFound, msg: "no such process"},
		{name: "plain error", method: ssirpc.Control_Ps_FullMethodName, user: "plain", code: localrpc.Unknown, msg: "plain failure"},
		{name: "unknown method", method: "/ssi.v1.Control/Nope", code: localrpc.Unimplemented, msg: "unknown method /ssi.v1.Control/Nope"},
		{name: "unimplemented by the service", method: ssirpc.Control_Kill_FullMethodName, code: localrpc.Unimplemented, msg: "method Kill not implemented"},
		{name: "kernel identity", method: ssirpc.Control_Ps_FullMethodName, user: "whoami", want: []string{strconv.Itoa(os.Getuid()), strconv.Itoa(os.Getpid())}},
		{name: "grpc.Method", method: ssirpc.Control_Ps_FullMethodName, user: "method", want: []string{ssirpc.Control_Ps_FullMethodName}},
		{name: "timeout carried", method: ssirpc.Control_Ps_FullMethodName, user: "deadline", timeout: 10 * time.Second, want: []string{"true"}},
		{name: "no timeout", method: ssirpc.Control_Ps_FullMethodName, user: "deadline", want: []string{"false"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			if tc.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.timeout)
				defer cancel()
			}
			var resp ssipb.PsResponse
			err := dial(t, s.path, nil).Call(ctx, tc.method, &ssipb.PsRequest{User: tc.user}, &resp)
			if got := localrpc.CodeOf(err); got != tc.code {
				t.Fatalf("code %v (%v), want %v", got, err, tc.code)
			}
			if err != nil {
				if err.Error() != tc.msg {
					t.Errorf("message %q, want %q", err.Error(), tc.msg)
				}
				return
			}
			if !equalStrings(resp.Unreachable, tc.want) {
				t.Errorf("response %q, want %q", resp.Unreachable, tc.want)
			}
		})
	}
	// Every Ps call, and Kill (which the service refuses, not the server), went through the
	// interceptor; the unknown method did not.
	if got := len(s.unaryCalls); got != 8 {
		t.Errorf("the unary interceptor saw %d calls, want 8", got)
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestLocalStreamWithHalfClose(t *testing.T) {
	s := startServer(t, &fakeControl{run: echoRun})
	c := dial(t, s.path, nil)
	st, err := c.Stream(context.Background(), ssirpc.Control_Run_FullMethodName)
	if err != nil {
		t.Fatal(err)
	}
	inputs := []string{"one", "", "three"}
	for _, in := range inputs {
		if err := st.Send(&ssipb.RunInput{Msg: &ssipb.RunInput_Stdin{Stdin: []byte(in)}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	for _, in := range inputs {
		raw, err := st.RecvRaw()
		if err != nil {
			t.Fatal(err)
		}
		var out ssipb.RunOutput
		if err := proto.Unmarshal(raw, &out); err != nil {
			t.Fatal(err)
		}
		if _, ok := out.Msg.(*ssipb.RunOutput_Stdout); !ok || string(out.GetStdout()) != in {
			t.Fatalf("got %v, want stdout %q", &out, in)
		}
	}
	var out ssipb.RunOutput
	if err := st.Recv(&out); err != nil || out.GetExit().GetCode() != 7 {
		t.Fatalf("got %v, %v; want the exit", &out, err)
	}
	if err := st.Recv(&out); err != io.EOF {
		t.Fatalf("after the exit: %v, want io.EOF", err)
	}
	if got := <-s.streamCalls; got != ssirpc.Control_Run_FullMethodName {
		t.Errorf("stream interceptor saw %q", got)
	}
}

func TestLocalStreamReceivesFrames(t *testing.T) {
	got := make(chan string, 1)
	s := startServer(t, &fakeControl{run: func(stream ssirpc.Control_RunServer) error {
		var f Frame
		if err := stream.RecvMsg(&f); err != nil {
			return err
		}
		b, err := payloadOf(&f)
		if err != nil {
			return err
		}
		got <- string(b)
		return status.Error(codes.FailedPrecondition, "done")
	}})
	st, err := dial(t, s.path, nil).Stream(context.Background(), ssirpc.Control_Run_FullMethodName)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&ssipb.RunInput{Msg: &ssipb.RunInput_Stdin{Stdin: []byte("framed")}}); err != nil {
		t.Fatal(err)
	}
	var out ssipb.RunOutput
	if err := st.Recv(&out); localrpc.CodeOf(err) != localrpc.FailedPrecondition || err.Error() != "done" {
		t.Fatalf("got %v, want FailedPrecondition done", err)
	}
	if g := <-got; g != "framed" {
		t.Errorf("handler got %q", g)
	}
}

// TestLocalHangUpCancels checks that a client that goes away ends the handler's context,
// before close-send and after it.
func TestLocalHangUpCancels(t *testing.T) {
	for _, closeSend := range []bool{false, true} {
		t.Run("close-send "+strconv.FormatBool(closeSend), func(t *testing.T) {
			started := make(chan struct{})
			ended := make(chan error, 1)
			s := startServer(t, &fakeControl{run: func(stream ssirpc.Control_RunServer) error {
				close(started)
				<-stream.Context().Done()
				ended <- stream.Context().Err()
				return stream.Context().Err()
			}})
			c := dial(t, s.path, nil)
			st, err := c.Stream(context.Background(), ssirpc.Control_Run_FullMethodName)
			if err != nil {
				t.Fatal(err)
			}
			if closeSend {
				err = st.CloseSend()
			} else {
				err = st.Send(&ssipb.RunInput{})
			}
			if err != nil {
				t.Fatal(err)
			}
			<-started
			c.Close()
			select {
			case err := <-ended:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("handler's context ended with %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the handler's context was not cancelled")
			}
		})
	}
}

func TestLocalClientContext(t *testing.T) {
	handlerDone := make(chan error, 1)
	s := startServer(t, &fakeControl{ps: func(ctx context.Context, _ *ssipb.PsRequest) (*ssipb.PsResponse, error) {
		<-ctx.Done()
		handlerDone <- ctx.Err()
		return nil, ctx.Err()
	}})
	for _, tc := range []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		want localrpc.Code
	}{
		{"timeout", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 50*time.Millisecond)
		}, localrpc.DeadlineExceeded},
		{"cancel", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(50*time.Millisecond, cancel)
			return ctx, cancel
		}, localrpc.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := tc.ctx()
			defer cancel()
			start := time.Now()
			err := dial(t, s.path, nil).Call(ctx, ssirpc.Control_Ps_FullMethodName, &ssipb.PsRequest{}, &ssipb.PsResponse{})
			if got := localrpc.CodeOf(err); got != tc.want {
				t.Fatalf("got %v (%v), want %v", got, err, tc.want)
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("the call returned after %v", d)
			}
			select {
			case <-handlerDone:
			case <-time.After(5 * time.Second):
				t.Fatal("the handler's context did not end")
			}
		})
	}
}

func TestLocalTakeOutput(t *testing.T) {
	s := startServer(t, &fakeControl{ps: func(ctx context.Context, _ *ssipb.PsRequest) (*ssipb.PsResponse, error) {
		out := TakeOutput(ctx)
		if out == nil || out.Stdout == nil || out.Stderr != nil {
			return nil, status.Error(codes.Internal, "files not passed as sent")
		}
		defer out.Close()
		if TakeOutput(ctx) != nil {
			return nil, status.Error(codes.Internal, "taken twice")
		}
		return &ssipb.PsResponse{}, out.Stdout.Writev([][]byte{[]byte("written by the agent")})
	}})
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	c := dial(t, s.path, w)
	w.Close()
	if err := c.Call(context.Background(), ssirpc.Control_Ps_FullMethodName, &ssipb.PsRequest{}, &ssipb.PsResponse{}); err != nil {
		t.Fatal(err)
	}
	c.Close()
	got, err := io.ReadAll(r)
	if err != nil || string(got) != "written by the agent" {
		t.Fatalf("read %q, %v", got, err)
	}
}

// rawCall connects, writes the bytes, and returns everything the server answers until it
// hangs up (which it must within a few seconds).
func rawCall(t *testing.T, path string, b []byte) []byte {
	t.Helper()
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write(b); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(4 * time.Second))
	got, err := io.ReadAll(conn)
	// A server that hangs up on unread input resets the connection: a hang-up too.
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the server did not hang up: %v", err)
	}
	return got
}

func frame(typ byte, payload []byte) []byte {
	return append(localrpc.AppendFrameHeader(nil, typ, len(payload)), payload...)
}

func header(method string) []byte {
	return frame(localrpc.FrameHeader, localrpc.AppendHeaderPayload(nil, 0, method))
}

// TestLocalRefusesBadInput checks that malformed input closes the connection without an
// answer, and that a call already running is cancelled.
func TestLocalRefusesBadInput(t *testing.T) {
	cancelled := make(chan struct{}, 10)
	s := startServer(t, &fakeControl{run: func(stream ssirpc.Control_RunServer) error {
		<-stream.Context().Done()
		cancelled <- struct{}{}
		return nil
	}})
	hello := localrpc.Hello[:]
	run := header(ssirpc.Control_Run_FullMethodName)
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	tooLong := binary.BigEndian.AppendUint32([]byte{localrpc.FrameMessage}, localrpc.MaxMessage+1)
	for _, tc := range []struct {
		name    string
		in      []byte
		running bool // the call started before the bad input
	}{
		{"garbage after the hello", cat(hello, []byte("GET / HTTP/1.1\r\n\r\n")), false},
		{"message before the header", cat(hello, frame(localrpc.FrameMessage, nil)), false},
		{"header too long", cat(hello, binary.BigEndian.AppendUint32([]byte{localrpc.FrameHeader}, localrpc.MaxHeaderPayload+1)), false},
		{"bad method name", cat(hello, frame(localrpc.FrameHeader, []byte{0, 'x'})), false},
		{"unknown hello version", cat(hello[:7], []byte{9}, run), false},
		{"zero byte then junk", []byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, false},
		{"message over the limit", cat(hello, run, tooLong), true},
		{"largest length", cat(hello, run, []byte{localrpc.FrameMessage, 0xff, 0xff, 0xff, 0xff}), true},
		{"unknown frame type", cat(hello, run, frame('Z', nil)), true},
		{"server frame from the client", cat(hello, run, frame(localrpc.FrameStatus, []byte{0})), true},
		{"close-send with a payload", cat(hello, run, frame(localrpc.FrameCloseSend, []byte{1})), true},
		{"message after close-send", cat(hello, run, frame(localrpc.FrameCloseSend, nil), frame(localrpc.FrameMessage, nil)), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before runtime.MemStats
			runtime.ReadMemStats(&before)
			got := rawCall(t, s.path, tc.in)
			var after runtime.MemStats
			runtime.ReadMemStats(&after)
			if tc.running {
				select {
				case <-cancelled:
				case <-time.After(4 * time.Second):
					t.Fatal("the call was not cancelled")
				}
				// The handler returned nil, but the status could not be sent: the connection
				// was closed on the bad frame. At most, a status raced out.
				if len(got) > 0 && got[0] != localrpc.FrameStatus {
					t.Errorf("answered %q", got)
				}
			} else if len(got) > 0 {
				t.Errorf("answered %q, want a hang-up", got)
			}
			// A frame over the limit is refused on its header, not read into memory.
			if grew := after.TotalAlloc - before.TotalAlloc; grew > 4<<20 {
				t.Errorf("allocated %d bytes", grew)
			}
		})
	}
}

// TestLocalSilentClient checks that a client that connects and says nothing is dropped after
// the handshake timeout, and does not keep others from being served.
func TestLocalSilentClient(t *testing.T) {
	s := startServer(t, &fakeControl{ps: func(context.Context, *ssipb.PsRequest) (*ssipb.PsResponse, error) {
		return &ssipb.PsResponse{}, nil
	}})
	silent, err := net.Dial("unix", s.path)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	if err := dial(t, s.path, nil).Call(context.Background(), ssirpc.Control_Ps_FullMethodName, &ssipb.PsRequest{}, &ssipb.PsResponse{}); err != nil {
		t.Fatalf("a call beside a silent client: %v", err)
	}
	_ = silent.SetReadDeadline(time.Now().Add(handshakeTimeout + 3*time.Second))
	if _, err := silent.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("the silent client got %v, want a hang-up", err)
	}
}

func TestLocalStop(t *testing.T) {
	started := make(chan struct{})
	s := startServer(t, &fakeControl{run: func(stream ssirpc.Control_RunServer) error {
		close(started)
		<-stream.Context().Done()
		return stream.Context().Err()
	}})
	st, err := dial(t, s.path, nil).Stream(context.Background(), ssirpc.Control_Run_FullMethodName)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	<-started
	s.local.Stop()
	// The handler's context ends, and the connection closes: whichever the client sees first.
	if err := st.Recv(&ssipb.RunOutput{}); localrpc.CodeOf(err) != localrpc.Unavailable && localrpc.CodeOf(err) != localrpc.Canceled {
		t.Fatalf("a call at Stop got %v, want Unavailable or Canceled", err)
	}
	select {
	case err := <-s.served:
		s.served <- err // for the cleanup
	case <-time.After(5 * time.Second):
		t.Fatal("ServeLocal did not return")
	}
	// Nothing accepts any more, and Dial says so in a way the CLI can tell.
	if _, err := localrpc.Dial(context.Background(), s.path, nil, nil); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Dial after Stop: %v, want ErrNotExist (the listener removed its socket)", err)
	}
}

// TestGRPCOnTheSameSocket checks that gRPC clients, with and without output passing, are
// served as before beside lean ones.
func TestGRPCOnTheSameSocket(t *testing.T) {
	s := startServer(t, &fakeControl{
		ps: func(ctx context.Context, req *ssipb.PsRequest) (*ssipb.PsResponse, error) {
			c, err := CallerFrom(ctx)
			if err != nil {
				return nil, err
			}
			resp := &ssipb.PsResponse{Unreachable: []string{strconv.Itoa(int(c.UID))}}
			if out := TakeOutput(ctx); out != nil {
				defer out.Close()
				if err := out.Stdout.Writev([][]byte{[]byte("via grpc")}); err != nil {
					return nil, err
				}
			}
			return resp, nil
		},
		run: echoRun,
	})
	for _, passFiles := range []bool{false, true} {
		t.Run("output passed "+strconv.FormatBool(passFiles), func(t *testing.T) {
			var r, w *os.File
			if passFiles {
				var err error
				if r, w, err = os.Pipe(); err != nil {
					t.Fatal(err)
				}
				defer r.Close()
			}
			cc, err := grpc.NewClient("passthrough:///agent", append(DialOptions(),
				grpc.WithTransportCredentials(insecure.NewCredentials()),
				DialPassingOutput(s.path, w, nil))...)
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			client := ssirpc.NewControlClient(cc)
			resp, err := client.Ps(context.Background(), &ssipb.PsRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if want := strconv.Itoa(os.Getuid()); !equalStrings(resp.Unreachable, []string{want}) {
				t.Errorf("caller %q, want uid %s", resp.Unreachable, want)
			}
			stream, err := client.Run(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if err := stream.Send(&ssipb.RunInput{Msg: &ssipb.RunInput_Stdin{Stdin: []byte("hi")}}); err != nil {
				t.Fatal(err)
			}
			if err := stream.CloseSend(); err != nil {
				t.Fatal(err)
			}
			if out, err := stream.Recv(); err != nil || string(out.GetStdout()) != "hi" {
				t.Fatalf("got %v, %v", out, err)
			}
			if passFiles {
				w.Close()
				cc.Close()
				got, err := io.ReadAll(r)
				if err != nil || string(got) != "via grpc" {
					t.Fatalf("read %q, %v", got, err)
				}
			}
		})
	}
}

// FuzzLocalFrames feeds the server's frame decoder arbitrary client input after the hello:
// it must never panic, never allocate more than the limit, and stop at the first bad frame.
func FuzzLocalFrames(f *testing.F) {
	run := header(ssirpc.Control_Run_FullMethodName)
	f.Add(run)
	f.Add(bytes.Join([][]byte{run, frame(localrpc.FrameMessage, []byte{0x12, 2, 'h', 'i'}), frame(localrpc.FrameCloseSend, nil)}, nil))
	f.Add(bytes.Join([][]byte{header("/a/b"), frame(localrpc.FrameMessage, nil), frame('X', []byte{1})}, nil))
	f.Add(frame(localrpc.FrameHeader, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, '/', 'a', '/'}))
	f.Add([]byte{localrpc.FrameHeader, 0xff, 0xff, 0xff, 0xff})
	f.Add(append(append([]byte{}, run...), localrpc.FrameMessage, 0x01, 0, 0, 0))
	f.Fuzz(func(t *testing.T, data []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(data), 4<<10)
		timeout, method, err := readCallHeader(br)
		if err != nil {
			return
		}
		if timeout < 0 || method == "" || method[0] != '/' {
			t.Fatalf("header parsed as %v %q", timeout, method)
		}
		closedSend := false
		for {
			typ, buf, err := readClientFrame(br, closedSend)
			if err != nil {
				return
			}
			if typ == localrpc.FrameCloseSend {
				closedSend = true
				continue
			}
			if buf.Len() > localrpc.MaxMessage || buf.Len() > len(data) {
				t.Fatalf("a message of %d bytes from %d of input", buf.Len(), len(data))
			}
			var in ssipb.RunInput
			_ = Codec{}.Unmarshal(mem.BufferSlice{buf}, &in)
			buf.Free()
		}
	})
}

// BenchmarkLocalCall measures a CLI's whole exchange: connect, call, hang up.
func BenchmarkLocalCall(b *testing.B) {
	path := filepath.Join(b.TempDir(), "ssi.sock")
	lis, err := net.Listen("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(PeerCredentials()))
	l := NewLocalServer(nil, nil)
	fake := &fakeControl{ps: func(context.Context, *ssipb.PsRequest) (*ssipb.PsResponse, error) {
		return &ssipb.PsResponse{Unreachable: []string{"n2"}}, nil
	}}
	ssirpc.RegisterControlServer(l, fake)
	done := make(chan error, 1)
	go func() { done <- ServeLocal(lis, g, l) }()
	defer func() { l.Stop(); g.Stop(); <-done }()
	b.ReportAllocs()
	for b.Loop() {
		c, err := localrpc.Dial(context.Background(), path, nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		var resp ssipb.PsResponse
		if err := c.Call(context.Background(), ssirpc.Control_Ps_FullMethodName, &ssipb.PsRequest{User: "u"}, &resp); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

// TestLocalGracefulStop checks that a call in progress may finish within the grace, and is
// cancelled after it, while nothing new is accepted.
func TestLocalGracefulStop(t *testing.T) {
	for _, tc := range []struct {
		name    string
		finish  bool // the client lets the call end during the grace
		grace   time.Duration
		maxWait time.Duration
		code    localrpc.Code
	}{
		{"call ends within the grace", true, 10 * time.Second, 5 * time.Second, localrpc.OK},
		{"grace runs out", false, 200 * time.Millisecond, 5 * time.Second, localrpc.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			started := make(chan struct{})
			s := startServer(t, &fakeControl{run: func(stream ssirpc.Control_RunServer) error {
				close(started)
				for {
					if _, err := stream.Recv(); err == io.EOF {
						return nil
					} else if err != nil {
						return err
					}
				}
			}})
			st, err := dial(t, s.path, nil).Stream(context.Background(), ssirpc.Control_Run_FullMethodName)
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Send(&ssipb.RunInput{}); err != nil {
				t.Fatal(err)
			}
			<-started
			stopped := make(chan struct{})
			start := time.Now()
			go func() { s.local.GracefulStop(tc.grace); close(stopped) }()
			// Wait for the listener to close: then nothing new is accepted.
			for {
				c, err := localrpc.Dial(context.Background(), s.path, nil, nil)
				if err != nil {
					break
				}
				c.Close()
				if time.Since(start) > 5*time.Second {
					t.Fatal("still accepting while stopping")
				}
				time.Sleep(time.Millisecond)
			}
			if tc.finish {
				if err := st.CloseSend(); err != nil {
					t.Fatal(err)
				}
			}
			err = st.Recv(&ssipb.RunOutput{})
			if err == io.EOF {
				err = nil
			}
			if got := localrpc.CodeOf(err); got != tc.code && !(tc.code == localrpc.Canceled && got == localrpc.Unavailable) {
				t.Fatalf("the call ended with %v (%v), want %v", got, err, tc.code)
			}
			select {
			case <-stopped:
			case <-time.After(tc.maxWait):
				t.Fatal("GracefulStop did not return")
			}
		})
	}
}
