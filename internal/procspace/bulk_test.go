package procspace

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/ssi-cluster/ssi/internal/api/ssipb"
	"github.com/ssi-cluster/ssi/internal/api/ssirpc"
	"github.com/ssi-cluster/ssi/internal/datalink"
	"github.com/ssi-cluster/ssi/internal/pki"
	"github.com/ssi-cluster/ssi/internal/pki/pkitest"
)

// The tests below give the agent of newSession a data link, and the fake remote node the other
// end of it: they check the local side of bulk stdout (bulk.go) against a remote that
// behaves, or fails, in the ways a real one could.

// links returns the data links of n1 (serving on loopback) and of n2 (which dials n1).
func links(t *testing.T) (home, remote *datalink.Link) {
	t.Helper()
	ca, err := pki.NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	addrOf := func(node string) (string, bool) { return lis.Addr().String(), node == "n1" }
	mk := func(kp tls.Certificate) *datalink.Link {
		return datalink.New(datalink.Config{
			ClientTLS: pki.ClientTLS(ca.Cert, kp), AddrOf: addrOf, Logger: slog.New(slog.DiscardHandler),
		})
	}
	homeKP := pkitest.Node(t, ca, "n1")
	home, remote = mk(homeKP), mk(pkitest.Node(t, ca, "n2"))
	go home.Serve(tls.NewListener(lis, pki.StrictServerTLS(ca.Cert, homeKP)))
	return home, remote
}

// bulkScript is a fake remote node's side of a session with a data link offered.
type bulkScript func(stream ssirpc.Peer_ExecServer, dial func() (*datalink.Sender, error)) error

func newBulkSession(t *testing.T, script bulkScript) *session {
	t.Helper()
	home, remote := links(t)
	ss := newSession(t, func(stream ssirpc.Peer_ExecServer) error {
		md, _ := metadata.FromIncomingContext(stream.Context())
		dial := func() (*datalink.Sender, error) {
			tok, err := datalink.ParseToken(strings.Join(md.Get(bulkTokenKey), ""))
			if err != nil {
				return nil, err
			}
			return remote.Dial(stream.Context(), "n1", tok)
		}
		return script(stream, dial)
	}, nil)
	ss.ctl.s.cfg.Link = home
	return ss
}

func send(stream ssirpc.Peer_ExecServer, msgs ...*ssipb.RunOutput) error {
	for _, m := range msgs {
		if err := stream.Send(m); err != nil {
			return err
		}
	}
	return nil
}

var (
	started = &ssipb.RunOutput{Msg: &ssipb.RunOutput_Started{Started: &ssipb.RunStarted{Gpid: 20000001, Node: "n2"}}}
	marker  = &ssipb.RunOutput{Msg: &ssipb.RunOutput_Stdout{Stdout: []byte{}}}
)

func stdoutMsg(s string) *ssipb.RunOutput {
	return &ssipb.RunOutput{Msg: &ssipb.RunOutput_Stdout{Stdout: []byte(s)}}
}

func stderrMsg(s string) *ssipb.RunOutput {
	return &ssipb.RunOutput{Msg: &ssipb.RunOutput_Stderr{Stderr: []byte(s)}}
}

func exitMsg(code int32) *ssipb.RunOutput {
	return &ssipb.RunOutput{Msg: &ssipb.RunOutput_Exit{Exit: &ssipb.RunExit{Code: code}}}
}

// readAll reads a pipe to its end in the background.
func readAll(r *os.File) <-chan []byte {
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(r)
		got <- b
	}()
	return got
}

func TestBulkStdoutArrivesBeforeTheStatus(t *testing.T) {
	big := bytes.Repeat([]byte("ssi\x00\xff"), 700000) // 3.5 MB, more than the pipes hold
	ss := newBulkSession(t, func(stream ssirpc.Peer_ExecServer, dial func() (*datalink.Sender, error)) error {
		if err := send(stream, started, stdoutMsg("as frames\n"), stderrMsg("err 1\n")); err != nil {
			return err
		}
		s, err := dial()
		if err != nil {
			return err
		}
		defer s.Abort()
		if err := send(stream, marker, stderrMsg("err 2\n")); err != nil {
			return err
		}
		if _, err := s.ReadFrom(bytes.NewReader(big)); err != nil {
			return err
		}
		if err := s.Close(); err != nil {
			return err
		}
		// The status is sent at once: the local agent must still write all of stdout first.
		return send(stream, stderrMsg("err 3\n"), exitMsg(3))
	})
	or, ow, _ := os.Pipe()
	er, ew, _ := os.Pipe()
	defer or.Close()
	defer er.Close()
	gotOut, gotErr := readAll(or), readAll(er)
	stream := ss.run(t, context.Background(), "n2", ow, ew)
	ow.Close()
	ew.Close()
	if ex := exitOf(t, stream); ex.Code != 3 {
		t.Fatalf("exit %v, want 3", ex)
	}
	if b := <-gotOut; !bytes.Equal(b, append([]byte("as frames\n"), big...)) {
		t.Fatalf("stdout: %d bytes, not the %d sent", len(b), len(big)+10)
	}
	if b := <-gotErr; string(b) != "err 1\nerr 2\nerr 3\n" {
		t.Fatalf("stderr %q", b)
	}
	if err := <-ss.ctl.done; err != nil {
		t.Fatal(err)
	}
}

func TestBulkFailures(t *testing.T) {
	chunk := make([]byte, 256<<10)
	endless := func(s *datalink.Sender) error {
		for {
			if _, err := s.ReadFrom(bytes.NewReader(chunk)); err != nil {
				return nil
			}
		}
	}
	// afterMarker is a remote that opens the data link, reports the start and moves stdout
	// to the link (the marker), then does the rest of its script.
	afterMarker := func(rest func(stream ssirpc.Peer_ExecServer, s *datalink.Sender) error) bulkScript {
		return func(stream ssirpc.Peer_ExecServer, dial func() (*datalink.Sender, error)) error {
			s, err := dial()
			if err != nil {
				return err
			}
			defer s.Abort()
			if err := send(stream, started, marker); err != nil {
				return err
			}
			return rest(stream, s)
		}
	}
	tests := []struct {
		name   string
		script bulkScript
		act    func(t *testing.T, pr *os.File, stream ssirpc.Control_RunClient, cancel func())
		// readerClosed: act closes the client's end of its pipe.
		readerClosed bool
		// want is the exit status, and a word its message must hold; -1: no status
		want    int32
		message string
	}{
		{"the link breaks", afterMarker(func(stream ssirpc.Peer_ExecServer, s *datalink.Sender) error {
			_, _ = s.ReadFrom(bytes.NewReader(chunk))
			s.Abort()
			<-stream.Context().Done() // the local agent gives up on the session
			return nil
		}), nil, false, ExitLostNode, "n2"},
		{"the status comes but the link broke", afterMarker(func(stream ssirpc.Peer_ExecServer, s *datalink.Sender) error {
			_, _ = s.ReadFrom(bytes.NewReader(chunk))
			s.Abort()
			return send(stream, exitMsg(0))
		}), nil, false, ExitLostNode, "n2"},
		{"stdout frames after the marker", afterMarker(func(stream ssirpc.Peer_ExecServer, _ *datalink.Sender) error {
			if err := send(stream, stdoutMsg("x")); err != nil {
				return err
			}
			<-stream.Context().Done()
			return nil
		}), nil, false, ExitLostNode, "data link"},
		{"reader gone", afterMarker(func(_ ssirpc.Peer_ExecServer, s *datalink.Sender) error {
			return endless(s)
		}), func(t *testing.T, pr *os.File, _ ssirpc.Control_RunClient, _ func()) {
			pr.Close()
		}, true, int32(ExitOutputFailed), ""},
		{"client gone while the reader stalls", afterMarker(func(_ ssirpc.Peer_ExecServer, s *datalink.Sender) error {
			return endless(s)
		}), func(t *testing.T, _ *os.File, stream ssirpc.Control_RunClient, cancel func()) {
			if _, err := stream.Recv(); err != nil {
				t.Fatal(err)
			}
			cancel()
		}, false, -1, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ss := newBulkSession(t, tt.script)
			pr, pw, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer pr.Close()
			pipe := identity(t, pr)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			stream := ss.run(t, ctx, "n2", pw, pw)
			pw.Close()
			readers := 1
			if tt.readerClosed {
				readers = 0
			}
			if tt.act != nil {
				tt.act(t, pr, stream, cancel)
			} else {
				go io.Copy(io.Discard, pr)
			}
			if tt.want >= 0 {
				ex := exitOf(t, stream)
				if ex.Code != tt.want || !strings.Contains(ex.Message, tt.message) {
					t.Fatalf("exit %v, want %d with %q", ex, tt.want, tt.message)
				}
			}
			select {
			case <-ss.ctl.done:
			case <-time.After(15 * time.Second):
				t.Fatal("the session did not end")
			}
			if n := copies(t, pipe); n != readers {
				t.Fatalf("%d descriptors open on the client's pipe after the session; want %d", n, readers)
			}
		})
	}
}
