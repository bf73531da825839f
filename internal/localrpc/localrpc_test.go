package localrpc

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func TestHeaderPayload(t *testing.T) {
	for _, tc := range []struct {
		name    string
		timeout time.Duration
		want    time.Duration
	}{
		{"none", 0, 0},
		{"negative is none", -time.Second, 0},
		{"a fraction of a millisecond rounds up", time.Microsecond, time.Millisecond},
		{"seconds", 3 * time.Second, 3 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := AppendHeaderPayload(nil, tc.timeout, "/ssi.v1.Control/Run")
			got, method, err := ParseHeaderPayload(p)
			if err != nil || got != tc.want || method != "/ssi.v1.Control/Run" {
				t.Fatalf("got %v %q %v, want %v", got, method, err, tc.want)
			}
		})
	}
	for _, bad := range [][]byte{nil, {0x80}, {0}, {0, 'x', 'y', 'z'}, {0, '/', 0xff, 0xfe}} {
		if _, _, err := ParseHeaderPayload(bad); !errors.Is(err, ErrMalformed) {
			t.Errorf("%q parsed: %v", bad, err)
		}
	}
	huge := append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, "/a/b"...)
	if d, _, err := ParseHeaderPayload(huge); err != nil || d != 0 {
		t.Errorf("an unrepresentable timeout: %v %v, want none", d, err)
	}
}

func TestStatusPayload(t *testing.T) {
	for _, tc := range []struct {
		code Code
		msg  string
	}{{OK, ""}, {NotFound, "no such process"}, {Code(99), "ünïcode"}} {
		code, msg, err := ParseStatusPayload(AppendStatusPayload(nil, tc.code, tc.msg))
		if err != nil || code != tc.code || msg != tc.msg {
			t.Errorf("got %v %q %v, want %v %q", code, msg, err, tc.code, tc.msg)
		}
	}
	long := strings.Repeat("é", MaxMessage)
	p := AppendStatusPayload(nil, Internal, long)
	if len(p) > MaxMessage {
		t.Errorf("a status of %d bytes", len(p))
	}
	if _, msg, _ := ParseStatusPayload(p); !strings.HasPrefix(long, msg) || strings.ContainsRune(msg, '\uFFFD') || msg[len(msg)-2:] != "é" {
		t.Errorf("the message was cut inside a rune")
	}
}

func TestReadFrameHeader(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		typ  byte
		n    int
		err  error
	}{
		{"empty", nil, 0, 0, io.EOF},
		{"short", []byte{'M', 0, 0}, 0, 0, io.ErrUnexpectedEOF},
		{"ok", AppendFrameHeader(nil, 'M', 300), 'M', 300, nil},
		{"at the limit", AppendFrameHeader(nil, 'M', 1000), 'M', 1000, nil},
		{"over the limit", AppendFrameHeader(nil, 'M', 1001), 'M', 0, ErrFrameTooLarge},
		{"largest length", []byte{'M', 0xff, 0xff, 0xff, 0xff}, 'M', 0, ErrFrameTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			typ, n, err := ReadFrameHeader(bufio.NewReader(bytes.NewReader(tc.in)), 1000)
			if typ != tc.typ || n != tc.n || !errors.Is(err, tc.err) {
				t.Fatalf("got %q %d %v, want %q %d %v", typ, n, err, tc.typ, tc.n, tc.err)
			}
		})
	}
}

func TestCodeOf(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want Code
	}{
		{nil, OK},
		{errors.New("x"), Unknown},
		{&Error{Code: NotFound, Message: "gone"}, NotFound},
		{errors.Join(errors.New("wrapped"), &Error{Code: Unavailable}), Unavailable},
	} {
		if got := CodeOf(tc.err); got != tc.want {
			t.Errorf("CodeOf(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
	if got := (&Error{Code: Internal, Message: "boom"}).Error(); got != "boom" {
		t.Errorf("Error() = %q", got)
	}
}

func TestDialErrors(t *testing.T) {
	dir := t.TempDir()
	refused := filepath.Join(dir, "refused")
	lis, err := net.ListenUnix("unix", &net.UnixAddr{Name: refused, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	lis.SetUnlinkOnClose(false)
	lis.Close()
	for _, tc := range []struct {
		path string
		want error
	}{
		{filepath.Join(dir, "missing"), fs.ErrNotExist},
		{refused, syscall.ECONNREFUSED},
	} {
		if _, err := Dial(context.Background(), tc.path, nil, nil); !errors.Is(err, tc.want) {
			t.Errorf("Dial(%s) = %v, want %v", tc.path, err, tc.want)
		}
	}
}

// serveOne listens on a fresh socket, accepts one connection, reads the client's hello and
// hands both to serve; it returns the socket's path.
func serveOne(t *testing.T, serve func(conn net.Conn, br *bufio.Reader, hello [8]byte)) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.sock")
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() {
		conn, err := lis.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		br := bufio.NewReader(conn)
		var hello [8]byte
		if _, err := io.ReadFull(br, hello[:]); err != nil {
			hello = [8]byte{} // no hello: serve sees one that does not match
		}
		serve(conn, br, hello)
	}()
	return path
}

// fakeAgent accepts one connection, checks the hello, reads the client's frames up to its
// close-send, and answers with reply (raw bytes).
func fakeAgent(t *testing.T, reply []byte) (path string, got <-chan []byte) {
	t.Helper()
	ch := make(chan []byte, 1)
	path = serveOne(t, func(conn net.Conn, br *bufio.Reader, hello [8]byte) {
		if hello != Hello {
			ch <- nil
			return
		}
		var frames []byte
		for {
			typ, n, err := ReadFrameHeader(br, MaxMessage)
			if err != nil {
				break
			}
			p := make([]byte, n)
			if _, err := io.ReadFull(br, p); err != nil {
				break
			}
			frames = append(append(frames, AppendFrameHeader(nil, typ, n)...), p...)
			if typ == FrameCloseSend {
				break
			}
		}
		ch <- frames
		conn.Write(reply)
	})
	return path, ch
}

func message(m proto.Message) []byte {
	b, err := appendMessage(nil, m)
	if err != nil {
		panic(err)
	}
	return b
}

func status(code Code, msg string) []byte {
	p := AppendStatusPayload(nil, code, msg)
	return append(AppendFrameHeader(nil, FrameStatus, len(p)), p...)
}

func TestCall(t *testing.T) {
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	for _, tc := range []struct {
		name  string
		reply []byte
		code  Code
		msg   string
	}{
		{"ok", cat(message(wrapperspb.String("pong")), status(OK, "")), OK, ""},
		{"error status", status(PermissionDenied, "not yours"), PermissionDenied, "not yours"},
		{"no response", status(OK, ""), Internal, "localrpc: the agent sent no response"},
		{"two responses", cat(message(wrapperspb.String("a")), message(wrapperspb.String("b")), status(OK, "")), Internal, "localrpc: the agent sent more than one response"},
		{"hang-up before the status", message(wrapperspb.String("pong")), Unavailable, ""},
		{"another protocol (an older agent's gRPC settings)", []byte{0, 0, 6, 4, 0, 0, 0, 0, 0}, Unavailable, "the agent answered in an older protocol than this client's: upgrade the agent (ssid) to this client's version"},
		{"unknown frame", cat(message(wrapperspb.String("a")), AppendFrameHeader(nil, 'Q', 0)), Internal, ""},
		{"bad response", cat(AppendFrameHeader(nil, FrameMessage, 1), []byte{0xff}, status(OK, "")), Internal, ""},
		{"frame over the limit", []byte{FrameMessage, 0xff, 0, 0, 0}, ResourceExhausted, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path, got := fakeAgent(t, tc.reply)
			c, err := Dial(context.Background(), path, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var resp wrapperspb.StringValue
			err = c.Call(context.Background(), "/test.Svc/Ping", wrapperspb.String("ping"), &resp)
			if CodeOf(err) != tc.code || (tc.msg != "" && err.Error() != tc.msg) {
				t.Fatalf("got %v (%v), want %v %q", CodeOf(err), err, tc.code, tc.msg)
			}
			if err == nil && resp.Value != "pong" {
				t.Errorf("response %q", resp.Value)
			}
			hdr := AppendHeaderPayload(nil, 0, "/test.Svc/Ping")
			want := cat(AppendFrameHeader(nil, FrameHeader, len(hdr)), hdr, message(wrapperspb.String("ping")), AppendFrameHeader(nil, FrameCloseSend, 0))
			if g := <-got; !bytes.Equal(g, want) {
				t.Errorf("the agent read %q, want %q", g, want)
			}
			if err := c.Call(context.Background(), "/test.Svc/Ping", wrapperspb.String("ping"), &resp); CodeOf(err) != FailedPrecondition {
				t.Errorf("a second call on the connection: %v", err)
			}
		})
	}
}

func TestCallExpiredContext(t *testing.T) {
	path, _ := fakeAgent(t, nil)
	c, err := Dial(context.Background(), path, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	if err := c.Call(ctx, "/a/b", wrapperspb.String(""), &wrapperspb.StringValue{}); CodeOf(err) != DeadlineExceeded {
		t.Fatalf("got %v, want DeadlineExceeded", err)
	}
}

func TestStreamRecvFlushesTheHeader(t *testing.T) {
	// A client that receives before it sends must not leave the agent waiting for the header.
	path := serveOne(t, func(conn net.Conn, br *bufio.Reader, _ [8]byte) {
		if typ, n, err := ReadFrameHeader(br, MaxHeaderPayload); err != nil || typ != FrameHeader {
			return
		} else if _, err := br.Discard(n); err != nil {
			return
		}
		conn.Write(bytes.Join([][]byte{message(wrapperspb.String("first")), status(OK, "")}, nil))
	})
	c, err := Dial(context.Background(), path, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := c.Stream(ctx, "/a/b")
	if err != nil {
		t.Fatal(err)
	}
	var m wrapperspb.StringValue
	if err := s.Recv(&m); err != nil || m.Value != "first" {
		t.Fatalf("got %q, %v", m.Value, err)
	}
	if err := s.Recv(&m); err != io.EOF {
		t.Fatalf("got %v, want io.EOF", err)
	}
}
