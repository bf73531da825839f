package fs

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ssi-cluster/ssi/internal/fs/fspb"
)

func TestWireFrames(t *testing.T) {
	header := func(n uint32) []byte { return binary.BigEndian.AppendUint32(nil, n) }
	call, err := appendFrame(nil, &fspb.Call{Id: 3, Method: "Create", Request: []byte("body")})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		in      []byte
		want    *fspb.Call // nil: no frame
		wantErr error      // nil: any error but none for a frame
	}{
		{name: "one call", in: call, want: &fspb.Call{Id: 3, Method: "Create", Request: []byte("body")}},
		{name: "empty message", in: header(0), want: &fspb.Call{}},
		{name: "nothing", in: nil, wantErr: io.EOF},
		{name: "short header", in: []byte{0, 0}, wantErr: io.ErrUnexpectedEOF},
		{name: "short body", in: call[:len(call)-1], wantErr: io.ErrUnexpectedEOF},
		{name: "over the limit", in: append(header(maxWireFrame+1), make([]byte, 16)...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body, err := readFrame(bufio.NewReader(bytes.NewReader(tt.in)), nil)
			if tt.want == nil {
				if err == nil || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
					t.Fatalf("readFrame = %d bytes, %v; want error %v", len(body), err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := new(fspb.Call)
			if err := proto.Unmarshal(body, got); err != nil || !proto.Equal(got, tt.want) {
				t.Fatalf("decoded %v, %v; want %v", got, err, tt.want)
			}
		})
	}
	if _, err := appendFrame(nil, &fspb.Call{Request: make([]byte, maxWireFrame)}); err == nil {
		t.Fatal("appendFrame took a message over the limit")
	}
}

// FuzzWireFrames reads whatever bytes arrive as frames of requests: no input may crash the
// decoder or make it hand out a frame over the limit, and what it decodes encodes back to the
// same request.
func FuzzWireFrames(f *testing.F) {
	for _, c := range []*fspb.Call{{}, {Id: 1, Method: "Lookup", Request: []byte{10, 3, 'a', 'b', 'c'}}, {Id: 1 << 60, Method: "Write"}} {
		b, err := appendFrame(nil, c)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(append(b, b...))
	}
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0, 0, 0, 5, 1, 2})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bufio.NewReader(bytes.NewReader(in))
		var buf []byte
		for {
			body, err := readFrame(r, buf)
			if err != nil {
				return
			}
			if len(body) > maxWireFrame {
				t.Fatalf("a frame of %d bytes", len(body))
			}
			buf = keep(body)
			c := new(fspb.Call)
			if proto.Unmarshal(body, c) != nil {
				continue
			}
			again, err := appendFrame(nil, c)
			if err != nil {
				t.Fatal(err)
			}
			back, err := readFrame(bufio.NewReader(bytes.NewReader(again)), nil)
			if err != nil {
				t.Fatal(err)
			}
			d := new(fspb.Call)
			if err := proto.Unmarshal(back, d); err != nil || !proto.Equal(c, d) {
				t.Fatalf("%v came back as %v, %v", c, d, err)
			}
		}
	})
}

// wireTestServer serves the file wire of a server on root on a loopback port.
func wireTestServer(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (the server takes on callers' credentials)")
	}
	s, err := NewServer(ServerConfig{Root: t.TempDir(), identify: testIdentify, identifyConn: testIdentifyConn})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- s.ServeWire(ln) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; !errors.Is(err, net.ErrClosed) {
			t.Errorf("ServeWire ended with %v", err)
		}
	})
	return ln.Addr().String()
}

func dialTestWire(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte("n1\n")); err != nil {
		t.Fatal(err)
	}
	return conn, bufio.NewReader(conn)
}

// TestWireAnswersAndRefusesGarbage: a request gets the answer of its id; a frame that is not
// a request ends its connection, and only that one.
func TestWireAnswersAndRefusesGarbage(t *testing.T) {
	addr := wireTestServer(t)
	good, goodR := dialTestWire(t, addr)
	bad, badR := dialTestWire(t, addr)
	if _, err := bad.Write([]byte{0, 0, 0, 2, 0xff, 0xff}); err != nil {
		t.Fatal(err)
	}
	if _, err := readFrame(badR, nil); err == nil {
		t.Fatal("the server answered a frame that is not a request")
	}
	for _, id := range []uint64{7, 8} {
		frame, err := appendFrame(nil, &fspb.Call{Id: id, Method: "NoSuchMethod"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := good.Write(frame); err != nil {
			t.Fatal(err)
		}
		body, err := readFrame(goodR, nil)
		if err != nil {
			t.Fatal(err)
		}
		res := new(fspb.Result)
		if err := proto.Unmarshal(body, res); err != nil {
			t.Fatal(err)
		}
		if res.Id != id || codes.Code(res.Code) != codes.Unimplemented {
			t.Fatalf("answer %v to request %d; want its id and Unimplemented", res, id)
		}
	}
}

// TestWireSlowRequestDoesNotHoldUpOthers: a request that takes long hands the reading of its
// connection on, so the requests behind it are answered meanwhile.
func TestWireSlowRequestDoesNotHoldUpOthers(t *testing.T) {
	release := make(chan struct{})
	streamedMethods["testSlow"] = func(*Server, context.Context, []byte) (proto.Message, error) {
		<-release
		return &fspb.ErrnoReply{}, nil
	}
	t.Cleanup(func() { delete(streamedMethods, "testSlow") })
	addr := wireTestServer(t)
	conn, r := dialTestWire(t, addr)
	for _, c := range []*fspb.Call{{Id: 1, Method: "testSlow"}, {Id: 2, Method: "NoSuchMethod"}} {
		frame, err := appendFrame(nil, c)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Write(frame); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []uint64{2, 1} {
		body, err := readFrame(r, nil)
		if err != nil {
			t.Fatal(err)
		}
		res := new(fspb.Result)
		if err := proto.Unmarshal(body, res); err != nil {
			t.Fatal(err)
		}
		if res.Id != want {
			t.Fatalf("answer to request %d, want %d first", res.Id, want)
		}
		if want == 2 {
			close(release)
		}
	}
}

func TestRequestsGoOnTheWire(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	n1 := c.node("n1")
	n1.mountTree(5 * time.Second)
	cs, _, _ := pathTo(t, n1, "n2")
	if cs == nil || !cs.isWire || cs.failed() != nil {
		t.Fatalf("no working file wire to the owner after requests: %+v", cs)
	}
}

func TestOwnerWithoutWireIsCalledOnTheCallsStream(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	n1, n2 := c.node("n1"), c.node("n2")
	n2.noWire = true
	n2.restart(ServerConfig{})
	n1.mountTree(5 * time.Second)
	cs, retry, _ := pathTo(t, n1, "n2")
	if cs == nil || cs.isWire || cs.failed() != nil || time.Until(retry) <= 0 {
		t.Fatalf("client did not settle on the Calls stream: %+v, wire retried at %v", cs, retry)
	}
}

// TestWireOwnerRestart: requests after the owner restarts go on a new connection.
func TestWireOwnerRestart(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	n1, n2 := c.node("n1"), c.node("n2")
	n1.mountTree(5 * time.Second)
	smallFileRoundTrip(t, n1, "n2", "a")
	n2.restart(ServerConfig{})
	eventually(t, 10*time.Second, "requests work again after the owner's restart", func() error {
		return os.WriteFile(n1.path("n2", "b"), []byte("x"), 0o644)
	})
	smallFileRoundTrip(t, n1, "n2", "c")
}

// testWireStream opens a callStream on a file wire connection to addr, as the mount does.
func testWireStream(t *testing.T, addr string) *callStream {
	t.Helper()
	conn, _ := dialTestWire(t, addr)
	conn.SetDeadline(time.Time{})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return openStream(ctx, nil, true, func(context.Context) (callCarrier, error) { return newWireClient(conn), nil })
}

// slowTestMethod registers a method that signals when it starts and answers once release is
// closed.
func slowTestMethod(t *testing.T) (started, release chan struct{}) {
	started, release = make(chan struct{}, 8), make(chan struct{})
	streamedMethods["testSlow"] = func(*Server, context.Context, []byte) (proto.Message, error) {
		started <- struct{}{}
		<-release
		return &fspb.ErrnoReply{Errno: 7}, nil
	}
	t.Cleanup(func() { delete(streamedMethods, "testSlow") })
	return started, release
}

// TestWireCallerGivesUpWhileReading: a caller reading the wire for its reply stops when its
// time is up, and the connection goes on serving the next calls, the late reply going nowhere.
func TestWireCallerGivesUpWhileReading(t *testing.T) {
	started, release := slowTestMethod(t)
	cs := testWireStream(t, wireTestServer(t))
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-started
		// Once the caller holds the read token it has sent its request (a context that ends
		// during a send closes the whole stream, as for an owner that stopped reading).
		for len(cs.read) == 0 {
			time.Sleep(100 * time.Microsecond)
		}
		cancel()
	}()
	err := cs.call(ctx, "testSlow", &fspb.ErrnoReply{}, &fspb.ErrnoReply{})
	if status.Code(err) != codes.Canceled {
		t.Fatalf("call whose context ended = %v, want Canceled", err)
	}
	for _, step := range []string{"before the late reply", "after it"} {
		err := cs.call(context.Background(), "NoSuchMethod", &fspb.ErrnoReply{}, &fspb.ErrnoReply{})
		if status.Code(err) != codes.Unimplemented {
			t.Fatalf("call %s = %v, want Unimplemented from the owner", step, err)
		}
		if step == "before the late reply" {
			close(release)
		}
	}
	if err := cs.failed(); err != nil {
		t.Fatalf("stream failed: %v", err)
	}
}

// TestWireRepliesReachTheirCallers: while one caller waits for a slow reply, another's reply
// comes first; each gets its own, whichever of them reads the connection.
func TestWireRepliesReachTheirCallers(t *testing.T) {
	started, release := slowTestMethod(t)
	cs := testWireStream(t, wireTestServer(t))
	slow := make(chan error, 1)
	go func() {
		out := &fspb.ErrnoReply{}
		err := cs.call(context.Background(), "testSlow", &fspb.ErrnoReply{}, out)
		if err == nil && out.Errno != 7 {
			err = fmt.Errorf("got reply %v, not the slow method's", out)
		}
		slow <- err
	}()
	<-started
	for range 3 {
		err := cs.call(context.Background(), "NoSuchMethod", &fspb.ErrnoReply{}, &fspb.ErrnoReply{})
		if status.Code(err) != codes.Unimplemented {
			t.Fatalf("fast call beside a slow one = %v, want Unimplemented", err)
		}
	}
	close(release)
	if err := <-slow; err != nil {
		t.Fatalf("slow call: %v", err)
	}
}

// TestWireClosedWhileIdle: with no caller reading the connection, the owner's closing it is
// still noticed before the next request is sent on it, behind replies to calls that gave up
// and behind TLS's closing alert; an open connection is not taken for closed.
func TestWireClosedWhileIdle(t *testing.T) {
	tests := []struct {
		name             string
		tls              bool
		lateReply, close bool
	}{
		{name: "open"},
		{name: "closed", close: true},
		{name: "late reply, open", lateReply: true},
		{name: "late reply, closed", lateReply: true, close: true},
		{name: "TLS, open", tls: true},
		{name: "TLS, closed", tls: true, close: true},
		{name: "TLS, late reply, closed", tls: true, lateReply: true, close: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			var conf *testTLS
			if tt.tls {
				conf = newTestTLS(t)
			}
			accepted := make(chan net.Conn, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				if conf != nil {
					c = tls.Server(c, conf.serverConfig)
				}
				accepted <- c
			}()
			conn, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			owner := <-accepted
			defer owner.Close()
			if conf != nil {
				tc := tls.Client(conn, conf.clientConfig)
				handshake := make(chan error, 1)
				go func() { handshake <- owner.(*tls.Conn).Handshake() }()
				if err := tc.Handshake(); err != nil {
					t.Fatal(err)
				}
				if err := <-handshake; err != nil {
					t.Fatal(err)
				}
				conn = tc
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			cs := openStream(ctx, nil, true, func(context.Context) (callCarrier, error) { return newWireClient(conn), nil })
			<-cs.ready
			if cs.idleAndClosed() {
				t.Fatal("a new open connection counts as closed")
			}
			if tt.lateReply {
				frame, err := appendFrame(nil, &fspb.Result{Id: 99})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := owner.Write(frame); err != nil {
					t.Fatal(err)
				}
			}
			if tt.close {
				owner.Close()
			}
			eventually(t, 10*time.Second, "the owner's bytes are seen", func() error {
				closed := cs.idleAndClosed()
				switch {
				case closed && !tt.close:
					t.Fatal("an open connection counts as closed")
				case !closed && tt.close:
					return errors.New("still taken for open")
				case tt.lateReply && !tt.close && cs.wire.lastReply().IsZero():
					return errors.New("the late reply is not read yet")
				}
				return nil
			})
		})
	}
}

// FuzzWireClientFrames reads the owner's bytes as the client does, interrupted once at a given
// point as a caller whose time is up interrupts it: it must find the same frames as readFrame
// in one go, and no input may crash it.
func FuzzWireClientFrames(f *testing.F) {
	for _, r := range []*fspb.Result{{Id: 1}, {Id: 2, Code: 5, Message: "gone"}, {Id: 3, Reply: bytes.Repeat([]byte{1}, 300)}} {
		b, err := appendFrame(nil, r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(append(b, b...), uint16(len(b)+2))
		f.Add(b, uint16(1))
	}
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1}, uint16(2))
	f.Fuzz(func(t *testing.T, data []byte, split uint16) {
		var want [][]byte
		r := bufio.NewReader(bytes.NewReader(data))
		for {
			body, err := readFrame(r, nil)
			if err != nil {
				break
			}
			want = append(want, bytes.Clone(body))
		}
		k := min(int(split), len(data))
		client, owner := net.Pipe()
		defer client.Close()
		w := newWireClient(client)
		timedOut := make(chan struct{})
		go func() {
			defer owner.Close()
			if _, err := owner.Write(data[:k]); err != nil {
				return
			}
			// All of the first part is read: the reader waits for more, or will.
			w.interrupt()
			<-timedOut
			owner.Write(data[k:])
		}()
		var got [][]byte
		interrupted := false
		for {
			body, err := w.readFrame()
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				if interrupted {
					t.Fatal("a second timeout without an interrupt")
				}
				interrupted = true
				w.clearInterrupt()
				close(timedOut)
				continue
			}
			if err != nil {
				break
			}
			got = append(got, bytes.Clone(body))
		}
		if !interrupted {
			close(timedOut) // the reader stopped before the interrupt: a frame over the limit
		}
		if len(got) != len(want) {
			t.Fatalf("read %d frames, want %d", len(got), len(want))
		}
		for i := range got {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("frame %d = %x, want %x", i, got[i], want[i])
			}
		}
	})
}
