package fs

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
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
	if cs == nil || !cs.wire || cs.failed() != nil {
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
	if cs == nil || cs.wire || cs.failed() != nil || time.Until(retry) <= 0 {
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
