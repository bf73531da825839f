package datalink

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/pki"
	"github.com/ssi-cluster/ssi/internal/pki/pkitest"
)

// testCluster is a CA and a node certificate per name, for links between nodes of one cluster.
type testCluster struct {
	ca *pki.CA
}

func newTestCluster(t testing.TB, id string) *testCluster {
	return &testCluster{ca: pkitest.CA(t, id)}
}

func (c *testCluster) keyPair(t testing.TB, name string) tls.Certificate {
	return pkitest.Node(t, c.ca, name)
}

// testNode is a Link serving on loopback; addrs maps node names to link addresses.
type testNode struct {
	*Link
	addr string
}

func startNode(t testing.TB, c *testCluster, name string, addrs *sync.Map) *testNode {
	t.Helper()
	kp := c.keyPair(t, name)
	l := New(Config{
		ClientTLS: pki.ClientTLS(c.ca.Cert, kp),
		AddrOf: func(node string) (string, bool) {
			a, ok := addrs.Load(node)
			if !ok {
				return "", false
			}
			return a.(string), true
		},
		Logger: slog.New(slog.DiscardHandler),
	})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go l.Serve(tls.NewListener(lis, pki.StrictServerTLS(c.ca.Cert, kp)))
	addrs.Store(name, lis.Addr().String())
	return &testNode{Link: l, addr: lis.Addr().String()}
}

// startPair starts nodes n1 and n2 of one cluster, each with its link.
func startPair(t testing.TB) (home, remote *testNode) {
	t.Helper()
	c := newTestCluster(t, "c1")
	var addrs sync.Map
	return startNode(t, c, "n1", &addrs), startNode(t, c, "n2", &addrs)
}

// sendAll dials node's link from n with token, sends everything src has and ends the stream,
// in a goroutine; the channel gets the outcome. src is closed at the end if it is a Closer.
func sendAll(ctx context.Context, n *testNode, node string, token Token, src io.Reader) <-chan error {
	sendErr := make(chan error, 1)
	go func() {
		if c, ok := src.(io.Closer); ok {
			defer c.Close()
		}
		s, err := n.Dial(ctx, node, token)
		if err != nil {
			sendErr <- err
			return
		}
		if _, err := s.ReadFrom(src); err != nil {
			sendErr <- err
			return
		}
		sendErr <- s.Close()
	}()
	return sendErr
}

func TestLinkCarriesChunksInOrder(t *testing.T) {
	home, remote := startPair(t)
	data := make([]byte, 5<<20+12345) // several full chunks and a partial one
	rand.Read(data)

	// pipe is a pipe its writer fills as a command's stdout would: first bytes, then the rest
	// in pieces of the given size.
	pipe := func(t *testing.T, first, piece int) io.Reader {
		pr, pw, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pr.Close() })
		go func() {
			defer pw.Close()
			if _, err := pw.Write(data[:first]); err != nil {
				return
			}
			for rest := data[first:]; len(rest) > 0; rest = rest[min(piece, len(rest)):] {
				if _, err := pw.Write(rest[:min(piece, len(rest))]); err != nil {
					return
				}
			}
		}()
		return pr
	}
	tests := []struct {
		name   string
		source func(t *testing.T) io.Reader
	}{
		// A reader that returns odd sizes, as a pipe does.
		{"odd reads", func(*testing.T) io.Reader { return &oddReader{r: bytes.NewReader(data)} }},
		{"pipe written 4 KiB at a time", func(t *testing.T) io.Reader { return pipe(t, 4<<10, 4<<10) }},
		{"pipe written 1 byte then 1 MiB at a time", func(t *testing.T) io.Reader { return pipe(t, 1, MaxChunk) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := home.Expect("n2")
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			src := tt.source(t)
			sendErr := sendAll(context.Background(), remote, "n1", p.Token, src)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			r, err := p.Receiver(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			var got []byte
			for {
				chunk, err := r.Next()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, chunk...)
			}
			if err := <-sendErr; err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("received %d bytes, not the %d sent", len(got), len(data))
			}
		})
	}
}

// Output that stops coming is sent without waiting for more, whether the sender's pipe is in
// the runtime's poller or a blocking one: a line a command prints must reach the user at once.
func TestLinkSendsWhatCameWithoutWaitingForMore(t *testing.T) {
	home, remote := startPair(t)
	tests := []struct {
		name     string
		blocking bool
	}{
		{"pipe in the poller", false},
		{"blocking pipe", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var pr, pw *os.File
			if tt.blocking {
				var fds [2]int
				if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
					t.Fatal(err)
				}
				pr, pw = os.NewFile(uintptr(fds[0]), "r"), os.NewFile(uintptr(fds[1]), "w")
			} else {
				var err error
				if pr, pw, err = os.Pipe(); err != nil {
					t.Fatal(err)
				}
			}
			defer pr.Close()
			defer pw.Close()
			p, err := home.Expect("n2")
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			s, err := remote.Dial(ctx, "n1", p.Token)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Abort()
			go func() { _, _ = s.ReadFrom(pr) }()
			r, err := p.Receiver(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			// Closing the receiver when ctx ends turns a hang into a failure.
			stop := context.AfterFunc(ctx, r.Close)
			defer stop()
			// The writer stays open and writes nothing more until the chunk came.
			if _, err := pw.Write([]byte("line\n")); err != nil {
				t.Fatal(err)
			}
			if got, err := r.Next(); err != nil || string(got) != "line\n" {
				t.Fatalf("got %q, %v", got, err)
			}
		})
	}
}

type oddReader struct {
	r io.Reader
	n int
}

func (o *oddReader) Read(b []byte) (int, error) {
	o.n++
	return o.r.Read(b[:min(len(b), 1+(o.n*7919)%(MaxChunk+1))])
}

// Only the node a session expects, with the session's token, gets a link.
func TestLinkRefusesOthers(t *testing.T) {
	c := newTestCluster(t, "c1")
	var addrs sync.Map
	home := startNode(t, c, "n1", &addrs)
	remote := startNode(t, c, "n2", &addrs)
	other := startNode(t, c, "n3", &addrs)
	var otherAddrs sync.Map
	otherAddrs.Store("n1", home.addr)
	stranger := startNode(t, newTestCluster(t, "c2"), "n2", &otherAddrs) // same name, other CA

	p, err := home.Expect("n2")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var wrong Token
	wrong[0] = p.Token[0] + 1
	ctx := context.Background()
	tests := []struct {
		name  string
		from  *testNode
		token Token
		want  string
	}{
		{"another node with the token", other, p.Token, "not accepted"},
		{"the node with another token", remote, wrong, "not accepted"},
		{"another cluster's node", stranger, p.Token, "certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := tt.from.Dial(ctx, "n1", tt.token)
			if err == nil {
				s.Abort()
				t.Fatal("dial succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q, want it to mention %q", err, tt.want)
			}
		})
	}
	// A client without any certificate fails the handshake.
	conn, err := tls.Dial("tcp", home.addr, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	if err == nil {
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = conn.Write(append(magic[:], p.Token[:]...))
		if err == nil {
			_, err = conn.Read(make([]byte, 1))
		}
		conn.Close()
	}
	if err == nil {
		t.Fatal("a client without a certificate got an answer")
	}
	// After all that, the expected node still gets its link, once.
	s, err := remote.Dial(ctx, "n1", p.Token)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Abort()
	if _, err := remote.Dial(ctx, "n1", p.Token); err == nil {
		t.Fatal("a token was accepted twice")
	}
}

// The dialler checks that the server is the node it meant: another node of the cluster at
// that address does not get the output.
func TestDialChecksTheServersName(t *testing.T) {
	c := newTestCluster(t, "c1")
	var addrs sync.Map
	startNode(t, c, "n1", &addrs)
	remote := startNode(t, c, "n2", &addrs)
	impostor := startNode(t, c, "n3", &addrs)
	addrs.Store("n1", impostor.addr)
	p, err := impostor.Expect("n2")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := remote.Dial(context.Background(), "n1", p.Token); err == nil || !strings.Contains(err.Error(), `"n3"`) {
		t.Fatalf("dial to n3 as n1: %v", err)
	}
}

// A link that breaks without its end marker is an error, never a clean end; Close of a pending
// link closes a connection nobody took.
func TestLinkEnds(t *testing.T) {
	home, remote := startPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	t.Run("aborted", func(t *testing.T) {
		p, err := home.Expect("n2")
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		s, err := remote.Dial(ctx, "n1", p.Token)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.ReadFrom(strings.NewReader("partial")); err != nil {
			t.Fatal(err)
		}
		s.Abort()
		r, err := p.Receiver(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if b, err := r.Next(); err != nil || string(b) != "partial" {
			t.Fatalf("first chunk %q, %v", b, err)
		}
		if _, err := r.Next(); err == nil || errors.Is(err, io.EOF) {
			t.Fatalf("aborted link ended with %v, want an error other than EOF", err)
		}
	})
	t.Run("closed before it was taken", func(t *testing.T) {
		p, err := home.Expect("n2")
		if err != nil {
			t.Fatal(err)
		}
		s, err := remote.Dial(ctx, "n1", p.Token)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Abort()
		p.Close()
		// The receiving side closed the connection: the sender's writes fail.
		deadline := time.Now().Add(5 * time.Second)
		for {
			if _, err := s.ReadFrom(bytes.NewReader(make([]byte, 64<<10))); err != nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("writes still succeed 5 s after the receiver closed the link")
			}
		}
		short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		if _, err := p.Receiver(short); err == nil {
			t.Fatal("a closed pending link gave a receiver")
		}
	})
	t.Run("receiver waits for the context", func(t *testing.T) {
		p, err := home.Expect("n2")
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		if _, err := p.Receiver(short); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v, want the context's error", err)
		}
	})
}

func TestParseToken(t *testing.T) {
	var tok Token
	rand.Read(tok[:])
	got, err := ParseToken(tok.String())
	if err != nil || got != tok {
		t.Fatalf("round trip: %v %v", got, err)
	}
	for _, bad := range []string{"", "00", tok.String() + "00", strings.Repeat("zz", len(tok))} {
		if _, err := ParseToken(bad); err == nil {
			t.Errorf("ParseToken(%q) succeeded", bad)
		}
	}
}

// A node whose link cannot be connected is not dialled again for a while: its sessions go on
// without the link instead of waiting for each connect to fail.
func TestDialRemembersUnreachableNodes(t *testing.T) {
	c := newTestCluster(t, "c1")
	var addrs sync.Map
	remote := startNode(t, c, "n2", &addrs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addrs.Store("n1", lis.Addr().String())
	lis.Close() // nothing listens there any more
	if _, err := remote.Dial(context.Background(), "n1", Token{}); err == nil {
		t.Fatal("dial to a closed port succeeded")
	}
	if _, err := remote.Dial(context.Background(), "n1", Token{}); err == nil || !strings.Contains(err.Error(), "failed recently") {
		t.Fatalf("second dial: %v, want it refused at once", err)
	}
}

// BenchmarkLinkSetup measures a link's whole set-up and clean end, both sides in this process:
// what a session pays for moving its stdout to a link.
func BenchmarkLinkSetup(b *testing.B) {
	home, remote := startPair(b)
	ctx := context.Background()
	for b.Loop() {
		p, err := home.Expect("n2")
		if err != nil {
			b.Fatal(err)
		}
		s, err := remote.Dial(ctx, "n1", p.Token)
		if err != nil {
			b.Fatal(err)
		}
		r, err := p.Receiver(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		if _, err := r.Next(); !errors.Is(err, io.EOF) {
			b.Fatal(err)
		}
		r.Close()
		p.Close()
	}
}

// BenchmarkLinkThroughput streams data over a loopback link, both sides in this process, read
// from a pipe as the agent reads a command's stdout.
func BenchmarkLinkThroughput(b *testing.B) {
	home, remote := startPair(b)
	ctx := context.Background()
	const size = 64 << 20
	b.SetBytes(size)
	before := processCPU(b)
	for b.Loop() {
		p, err := home.Expect("n2")
		if err != nil {
			b.Fatal(err)
		}
		pr, pw, err := os.Pipe()
		if err != nil {
			b.Fatal(err)
		}
		go func() {
			buf := make([]byte, 128<<10)
			for sent := 0; sent < size; sent += len(buf) {
				if _, err := pw.Write(buf); err != nil {
					break
				}
			}
			pw.Close()
		}()
		sendErr := sendAll(ctx, remote, "n1", p.Token, pr)
		r, err := p.Receiver(ctx)
		if err != nil {
			b.Fatal(err)
		}
		got := 0
		for {
			chunk, err := r.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			got += len(chunk)
		}
		if err := <-sendErr; err != nil || got != size {
			b.Fatalf("got %d bytes, %v", got, err)
		}
		r.Close()
		p.Close()
	}
	b.ReportMetric((processCPU(b)-before).Seconds()/float64(b.N)*(1<<30)/size, "cpu-s/GiB")
}

// processCPU is the CPU time this process has used, both sides of the link and the writer.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
