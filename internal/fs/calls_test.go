package fs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ssi-cluster/ssi/internal/fs/fspb"
)

// serverWithoutCalls is a file server of an agent from before the Calls stream.
type serverWithoutCalls struct{ *Server }

func (serverWithoutCalls) Calls(fspb.Files_CallsServer) error {
	return status.Error(codes.Unimplemented, "unknown method Calls")
}

// smallFileRoundTrip creates, reads, stats and removes a few files through the mount.
func smallFileRoundTrip(t *testing.T, n *testNode, owner, prefix string) {
	t.Helper()
	for i := range 5 {
		p := n.path(owner, fmt.Sprint(prefix, i))
		data := []byte(fmt.Sprint("file ", i))
		must(t, os.WriteFile(p, data, 0o644))
		got, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read %s: %q, %v; want %q", p, got, err, data)
		}
		if st, err := os.Stat(p); err != nil || st.Size() != int64(len(data)) {
			t.Fatalf("stat %s: %v", p, err)
		}
		must(t, os.Remove(p))
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("stat of removed %s: %v", p, err)
		}
	}
}

// pathTo makes a small-file round trip from n to owner and returns n's way to the owner
// afterwards: its open stream (the file wire or the Calls stream, nil if none) and until when
// it leaves the wire and the Calls stream alone.
func pathTo(t *testing.T, n *testNode, owner string) (cs *callStream, wireRetry, callsRetry time.Time) {
	t.Helper()
	smallFileRoundTrip(t, n, owner, "f")
	p := n.mount.peer(owner)
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls, p.wireRetry, p.callsRetry
}

func TestOwnerWithoutCallsStreamIsCalledUnary(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	n1, n2 := c.node("n1"), c.node("n2")
	n2.noCalls = true
	n2.restart(ServerConfig{})
	n1.mountTree(5 * time.Second)
	cs, _, retry := pathTo(t, n1, "n2")
	if cs != nil && !errors.Is(cs.failed(), errNoCalls) || time.Until(retry) <= 0 {
		t.Fatalf("client did not settle on unary calls: stream %v, retry at %v", cs, retry)
	}
}

// TestConcurrentRequestsOnOneStream runs many requests at once on the one stream: each must
// get its own answer.
func TestConcurrentRequestsOnOneStream(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	n1 := c.node("n1")
	n1.mountTree(5 * time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 30 {
				p := n1.path("n2", fmt.Sprintf("g%d-%d", g, i))
				data := bytes.Repeat([]byte{byte(g)}, 100+i)
				if err := os.WriteFile(p, data, 0o644); err != nil {
					errs <- err
					return
				}
				got, err := os.ReadFile(p)
				if err != nil || !bytes.Equal(got, data) {
					errs <- fmt.Errorf("read %s: %d bytes, %v", p, len(got), err)
					return
				}
				if err := os.Remove(p); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// FuzzCalls feeds random requests of the Calls stream to a read-only server: none may crash it,
// and each gets an answer of its own id that is either a status or a reply of its method.
func FuzzCalls(f *testing.F) {
	if os.Geteuid() != 0 {
		f.Skip("needs root (the server takes on callers' credentials)")
	}
	root := f.TempDir()
	if err := os.WriteFile(root+"/f", []byte("x"), 0o644); err != nil {
		f.Fatal(err)
	}
	s, err := NewServer(ServerConfig{Root: root, ReadOnly: true, identify: testIdentify})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	ctx := withCallerNode(context.Background(), "fuzzer")
	lookup, _ := proto.Marshal(&fspb.LookupRequest{Session: []byte("s"), Caller: &fspb.Caller{}, Dir: &fspb.NodeRef{}, Name: []byte("f")})
	f.Add(uint64(1), "Lookup", lookup)
	f.Add(uint64(2), "Create", lookup)
	f.Add(uint64(3), "Watch", []byte{0xff})
	f.Add(uint64(4), "Status", []byte(nil))
	f.Fuzz(func(t *testing.T, id uint64, method string, request []byte) {
		res := s.serveCall(ctx, &fspb.Call{Id: id, Method: method, Request: request})
		if res.Id != id {
			t.Fatalf("answer to call %d has id %d", id, res.Id)
		}
		if res.Code != uint32(codes.OK) {
			if len(res.Reply) > 0 {
				t.Fatalf("failed call %q (%d) carries a reply too", method, res.Code)
			}
			return
		}
		if streamedMethods[method] == nil {
			t.Fatalf("unknown method %q answered", method)
		}
	})
}
