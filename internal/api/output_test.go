package api

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/ssi-cluster/ssi/internal/localrpc"
)

// openFds counts this process's open descriptors.
func openFds(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// unixPair returns both ends of a fresh Unix stream connection.
func unixPair(t *testing.T) (client, server *net.UnixConn) {
	t.Helper()
	lis, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(t.TempDir(), "s"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	client, err = net.DialUnix("unix", nil, lis.Addr().(*net.UnixAddr))
	if err != nil {
		t.Fatal(err)
	}
	server, err = lis.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// pass runs PassOutput (and then, if not nil, more) as a client does, while the test plays
// the agent.
func pass(client *net.UnixConn, stdout, stderr *os.File, more func() error) <-chan error {
	done := make(chan error, 1)
	go func() {
		err := localrpc.PassOutput(context.Background(), client, stdout, stderr)
		if err == nil && more != nil {
			err = more()
		}
		done <- err
	}()
	return done
}

// received passes stdout and stderr as a client does and returns them as the agent receives
// them.
func received(t *testing.T, stdout, stderr *os.File) *ClientOutput {
	t.Helper()
	client, server := unixPair(t)
	passed := pass(client, stdout, stderr, nil)
	out, err := receiveOutput(server)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-passed; err != nil {
		t.Fatal(err)
	}
	return out
}

func TestPassOutputToAnOlderAgent(t *testing.T) {
	client, server := unixPair(t)
	passed := pass(client, os.Stdout, nil, nil)
	// An older agent answers with gRPC's settings frame, whatever came first.
	if _, err := server.Write([]byte{0, 0, 12, 4, 0, 0, 0, 0, 0}); err != nil {
		t.Fatal(err)
	}
	if err := <-passed; !errors.Is(err, localrpc.ErrOutputNotPassed) {
		t.Fatalf("got %v, want ErrOutputNotPassed", err)
	}
}

// outputFrame is a frame of RunOutput's field, received in buffers cut as given.
func outputFrame(t *testing.T, field protowire.Number, payload []byte, cuts ...int) *Frame {
	t.Helper()
	b := append(appendBytesHead(nil, field, len(payload)), payload...)
	var f Frame
	if err := (Codec{}).Unmarshal(split(b, cuts...), &f); err != nil {
		t.Fatal(err)
	}
	return &f
}

func TestPassOutputWritesIntoTheClientsFiles(t *testing.T) {
	before := openFds(t)
	func() {
		client, server := unixPair(t)
		defer client.Close()
		defer server.Close()
		pr, pw, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer pr.Close()
		file, err := os.Create(filepath.Join(t.TempDir(), "err"))
		if err != nil {
			t.Fatal(err)
		}
		passed := pass(client, pw, file, func() error {
			// What gRPC sends next must reach it untouched.
			_, err := client.Write([]byte("PRI * HTTP/2.0"))
			return err
		})
		out, err := receiveOutput(server)
		if err := <-passed; err != nil {
			t.Fatal(err)
		}
		// The client's own copies go, as when it exits: only the agent's remain.
		pw.Close()
		file.Close()
		if err != nil || out == nil || out.Stdout == nil || out.Stderr == nil {
			t.Fatalf("receiveOutput: %+v, %v", out, err)
		}
		rest := make([]byte, 14)
		if _, err := io.ReadFull(server, rest); err != nil || string(rest) != "PRI * HTTP/2.0" {
			t.Fatalf("after the preamble: %q, %v", rest, err)
		}

		payload := bytes.Repeat([]byte("0123456789abcdef"), 300000) // more than the pipe holds
		got := make(chan []byte)
		go func() {
			b, _ := io.ReadAll(pr)
			got <- b
		}()
		if err := out.Stdout.WriteFrame(outputFrame(t, RunOutputStdout, payload, 1, 3, 16384, 100000)); err != nil {
			t.Fatal(err)
		}
		if err := out.Stderr.WriteFrame(outputFrame(t, RunOutputStderr, []byte("warning\n"))); err != nil {
			t.Fatal(err)
		}
		out.Close()
		// End of file comes once the agent's copy is closed: none is left open.
		if b := <-got; !bytes.Equal(b, payload) {
			t.Fatalf("stdout got %d bytes, want %d", len(b), len(payload))
		}
		if b, err := os.ReadFile(file.Name()); err != nil || string(b) != "warning\n" {
			t.Fatalf("stderr file: %q %v", b, err)
		}
	}()
	if after := openFds(t); after != before {
		t.Fatalf("%d descriptors open before, %d after", before, after)
	}
}

func TestPassOutputRefusesBadFiles(t *testing.T) {
	readOnly, err := os.Open("/dev/null")
	if err != nil {
		t.Fatal(err)
	}
	defer readOnly.Close()
	sock, other, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	defer other.Close()
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	socket := os.NewFile(uintptr(sp[0]), "socket")
	defer socket.Close()
	defer unix.Close(sp[1])
	random, err := os.OpenFile("/dev/random", os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer random.Close()
	devNull, err := os.OpenFile("/dev/null", os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer devNull.Close()

	rights := func(files ...*os.File) []byte {
		var fds []int
		for _, f := range files {
			fds = append(fds, int(f.Fd()))
		}
		return unix.UnixRights(fds...)
	}
	preamble := func(version, mask byte) []byte { return append(outputMagic[:], version, mask) }
	tests := []struct {
		name string
		data []byte
		oob  []byte
	}{
		{"read-only stdout", preamble(outputVersion, maskStdout), rights(readOnly)},
		{"socket", preamble(outputVersion, maskStdout), rights(socket)},
		{"another device", preamble(outputVersion, maskStdout), rights(random)},
		{"more files than the mask says", preamble(outputVersion, maskStdout), rights(devNull, devNull)},
		{"fewer files than the mask says", preamble(outputVersion, maskStdout|maskStderr), rights(devNull)},
		{"too many files", preamble(outputVersion, maskStdout|maskStderr), rights(devNull, devNull, devNull, devNull)},
		{"unknown mask bit", preamble(outputVersion, 4), rights(devNull)},
		{"unknown version", preamble(9, maskStdout), rights(devNull)},
		{"bad magic", []byte{0, 'x', 'x', 'x', 'x', 'x', 1, 1}, rights(devNull)},
		{"second file refused", preamble(outputVersion, maskStdout|maskStderr), rights(devNull, readOnly)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, server := unixPair(t)
			before := openFds(t)
			if _, _, err := client.WriteMsgUnix(tt.data, tt.oob, nil); err != nil {
				t.Fatal(err)
			}
			out, err := receiveOutput(server)
			if err == nil || out != nil {
				t.Fatalf("accepted: %+v, %v", out, err)
			}
			if after := openFds(t); after != before {
				t.Fatalf("%d descriptors open before, %d after", before, after)
			}
		})
	}
}

func TestReceiveOutputWithoutPreamble(t *testing.T) {
	client, server := unixPair(t)
	if _, err := client.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	out, err := receiveOutput(server)
	if err != nil || out != nil {
		t.Fatalf("receiveOutput: %+v, %v", out, err)
	}
	b := make([]byte, 24)
	if _, err := io.ReadFull(server, b); err != nil || string(b) != "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" {
		t.Fatalf("gRPC's preface was consumed: %q %v", b, err)
	}
}

func TestUntakenOutputClosesWithTheConnection(t *testing.T) {
	client, server := unixPair(t)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	passed := pass(client, pw, nil, nil)
	creds, info, err := PeerCredentials().ServerHandshake(server)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-passed; err != nil {
		t.Fatal(err)
	}
	pw.Close()
	if info.(callerAuthInfo).passed == nil {
		t.Fatal("no files recorded with the connection")
	}
	creds.Close()
	// The reader sees end of file: no copy of the pipe is left with the agent.
	if b, err := io.ReadAll(pr); err != nil || len(b) != 0 {
		t.Fatalf("read %q, %v", b, err)
	}
}

func TestOutputFileInterrupt(t *testing.T) {
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	out := received(t, pw, nil)
	pw.Close()
	defer out.Close()
	// Nobody reads: the write blocks on a full pipe until interrupted, as when a session ends.
	done := make(chan error)
	go func() {
		done <- out.Stdout.Writev([][]byte{make([]byte, 4<<20)})
	}()
	out.Interrupt()
	if err := <-done; err == nil {
		t.Fatal("a write into a full pipe nobody reads succeeded")
	}
}

// GrowPipe enlarges a passed pipe and leaves other files, and larger pipes, alone.
func TestOutputFileGrowPipe(t *testing.T) {
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	out := received(t, pw, null)
	pw.Close()
	null.Close()
	defer out.Close()
	size := func() int {
		n, err := unix.FcntlInt(pr.Fd(), unix.F_GETPIPE_SZ, 0)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	out.Stdout.GrowPipe(256 << 10)
	if got := size(); got != 256<<10 {
		t.Fatalf("pipe of %d bytes, want %d", got, 256<<10)
	}
	out.Stdout.GrowPipe(64 << 10) // never shrinks: the reader may rely on what it set
	if got := size(); got != 256<<10 {
		t.Fatalf("pipe shrank to %d bytes", got)
	}
	out.Stderr.GrowPipe(256 << 10) // not a pipe: nothing happens
	if err := out.Stdout.Writev([][]byte{make([]byte, 200<<10)}); err != nil {
		t.Fatal(err)
	}
}
