package procspace

import (
	"errors"
	"sync"
	"syscall"

	"github.com/ssi-cluster/ssi/internal/api"
	"github.com/ssi-cluster/ssi/internal/api/ssipb"
)

// ExitOutputFailed is the status a session ends with when the client's stdout can no longer
// be written because its reader went away: that of a local command killed by SIGPIPE.
const ExitOutputFailed = ssipb.ExitOutputFailed

// ExitOutputError is the status a session ends with when writing the client's stdout failed
// otherwise (a full disk, /dev/full, an I/O error): that of a local command such as yes or
// cat, which reports the error and exits 1.
const ExitOutputError = ssipb.ExitOutputError

// errOutputFailed means that writing the client's stdout failed: the session must end.
var errOutputFailed = errors.New("the client's stdout cannot be written")

// outputFailedExit tells the client why writing its stdout failed (err). A reader that went
// away gives no message, as a local command dying of SIGPIPE prints none; any other failure
// is reported in one line, as a local command reports it, with status 1.
func outputFailedExit(err error) *ssipb.RunOutput {
	var errno syscall.Errno
	if errors.Is(err, syscall.EPIPE) || !errors.As(err, &errno) {
		// The client dies of SIGPIPE in turn: its parent sees a local writer's end.
		return &ssipb.RunOutput{Msg: &ssipb.RunOutput_Exit{Exit: &ssipb.RunExit{Code: int32(ExitOutputFailed), Signal: int32(syscall.SIGPIPE)}}}
	}
	return &ssipb.RunOutput{Msg: &ssipb.RunOutput_Exit{Exit: &ssipb.RunExit{
		Code: ExitOutputError, Message: "writing standard output: " + errno.Error()}}}
}

// outputStream is the client side of a session whose client passed its stdout or stderr
// (api.PassOutput): output frames for those are written into them here, in the order they
// come, instead of being sent; the rest goes over the stream as before.
type outputStream struct {
	runStream
	out *api.ClientOutput
	// mu keeps each chunk's write whole: stdout from a data link (bulk.go) is written by
	// another goroutine than stderr, and both may be the same pipe (2>&1).
	mu sync.Mutex
}

// writeStdout writes a chunk of stdout that came on a data link into the client's stdout.
func (o *outputStream) writeStdout(b []byte) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := o.out.Stdout.Writev([][]byte{b}); err != nil {
		return errors.Join(errOutputFailed, err)
	}
	return nil
}

// SendMsg writes an output frame into the client's file, if it passed that one. A failed
// stdout, or a stderr whose reader went away, gives errOutputFailed.
func (o *outputStream) SendMsg(m any) error {
	frame, ok := m.(*api.Frame)
	if !ok {
		return o.runStream.SendMsg(m)
	}
	switch frame.Field() {
	case api.RunOutputStdout:
		if o.out.Stdout != nil {
			o.mu.Lock()
			defer o.mu.Unlock()
			if err := o.out.Stdout.WriteFrame(frame); err != nil {
				return errors.Join(errOutputFailed, err)
			}
			return nil
		}
	case api.RunOutputStderr:
		if o.out.Stderr != nil {
			o.mu.Lock()
			defer o.mu.Unlock()
			// A reader gone ends the session, as SIGPIPE ends a local writer that would go on
			// writing (and here be read for ever); other failures lose the chunk, as most
			// programs ignore failed writes to stderr.
			if err := o.out.Stderr.WriteFrame(frame); errors.Is(err, syscall.EPIPE) {
				return errors.Join(errOutputFailed, err)
			}
			return nil
		}
	}
	return o.runStream.SendMsg(m)
}

// Send closes the files before the exit status goes out: once the client has it, it exits,
// and its reader must then see end of file (no copy left open here).
func (o *outputStream) Send(m *ssipb.RunOutput) error {
	if m.GetExit() != nil {
		o.out.Close()
	}
	return o.runStream.Send(m)
}
