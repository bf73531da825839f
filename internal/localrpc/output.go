package localrpc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Output passing. A local client (ssi run) may hand the agent its stdout and stderr over the
// Unix socket (SCM_RIGHTS), so that the agent writes a command's output straight into them
// instead of streaming it to the client, which would copy it once more. The files travel in a
// preamble the client writes on a fresh connection before anything else (gRPC's preface, or
// Hello); the agent checks the files and keeps them with the connection until a call takes
// them or the connection closes. Identity still comes from SO_PEERCRED only: the preamble
// carries files, nothing else.

// OutputMagic starts the output preamble, which is OutputMagic, OutputVersion, and a mask of
// the files that follow (OutputStdout, OutputStderr). It starts with a zero byte, which no
// HTTP/2 client sends first (its preface starts with "PRI"), so clients that pass nothing
// need not change.
var OutputMagic = [6]byte{0, 's', 's', 'i', 'f', 'd'}

// The rest of the output preamble.
const (
	OutputVersion     = 1
	OutputPreambleLen = len(OutputMagic) + 2
	OutputStdout      = 1 // mask bit of a passed stdout
	OutputStderr      = 2 // mask bit of a passed stderr
)

// OutputAck is what the agent answers a preamble it accepted with.
const OutputAck = "ssi-ok\n"

// ErrOutputNotPassed means the agent does not take output files: the connection is spent,
// and the client must make another that passes none.
var ErrOutputNotPassed = errors.New("the agent does not take output files (it is older than this client)")

// PassOutput writes the preamble that hands stdout and stderr (either may be nil) to the
// agent on conn, which must not have carried anything yet, and waits for the agent's
// acknowledgement until ctx ends. It does nothing if both are nil.
func PassOutput(ctx context.Context, conn *net.UnixConn, stdout, stderr *os.File) error {
	sent, err := sendOutput(conn, stdout, stderr)
	if err != nil || !sent {
		return err
	}
	if d, ok := ctx.Deadline(); ok {
		_ = conn.SetReadDeadline(d)
		defer conn.SetReadDeadline(time.Time{})
	}
	return readAck(conn)
}

// sendOutput writes the output preamble with stdout and stderr (either may be nil) on conn,
// and reports whether there was anything to pass.
func sendOutput(conn *net.UnixConn, stdout, stderr *os.File) (bool, error) {
	var mask byte
	var fdBuf [2]int
	fds := fdBuf[:0]
	for i, f := range [2]*os.File{stdout, stderr} {
		if f == nil {
			continue
		}
		// Through SyscallConn, not Fd: Fd would switch a non-blocking descriptor to blocking
		// mode, which other holders of the same file would then see.
		rc, err := f.SyscallConn()
		if err != nil {
			return false, fmt.Errorf("passing %s: %w", f.Name(), err)
		}
		if err := rc.Control(func(fd uintptr) { fds = append(fds, int(fd)) }); err != nil {
			return false, fmt.Errorf("passing %s: %w", f.Name(), err)
		}
		mask |= 1 << i
	}
	if mask == 0 {
		return false, nil
	}
	var pre [OutputPreambleLen]byte
	copy(pre[:], OutputMagic[:])
	pre[len(OutputMagic)] = OutputVersion
	pre[len(OutputMagic)+1] = mask
	// The descriptors are only read by the kernel during the call; the files stay open
	// because the caller holds them.
	n, _, err := conn.WriteMsgUnix(pre[:], unix.UnixRights(fds...), nil)
	if err == nil && n != len(pre) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return false, fmt.Errorf("passing output files to the agent: %w", err)
	}
	return true, nil
}

// readAck reads the agent's acknowledgement of an output preamble from r. An agent older than
// output passing starts with its HTTP/2 settings instead, whose first byte (of a small length)
// is never 's'.
func readAck(r io.Reader) error {
	var ack [len(OutputAck)]byte
	if _, err := io.ReadFull(r, ack[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("the agent did not take the output files passed to it (hung up): %w", ErrOutputNotPassed)
		}
		return fmt.Errorf("passing output files to the agent: %w", err)
	}
	if string(ack[:]) != OutputAck {
		return ErrOutputNotPassed
	}
	return nil
}

// ackReader reads the acknowledgement of an output preamble before what follows it: a client
// that passed its output sends its call without waiting for the acknowledgement, which saves
// a round trip to the agent on every ssi run.
type ackReader struct {
	r       io.Reader
	pending bool
	// answered: the agent sent something after the acknowledgement (the call's answer).
	answered bool
}

func (a *ackReader) Read(p []byte) (int, error) {
	if a.pending {
		if err := readAck(a.r); err != nil {
			return 0, err
		}
		a.pending = false
	}
	n, err := a.r.Read(p)
	if n > 0 && !a.answered {
		a.answered = true
		if p[0] != FrameMessage && p[0] != FrameStatus {
			// An agent older than this protocol answers with gRPC's HTTP/2 settings.
			return 0, errNotSpoken
		}
	}
	return n, err
}

// errNotSpoken means the agent answered in another protocol than this one.
var errNotSpoken = errors.New("the agent answered in another protocol")
