package cli

import (
	"context"
	"os"
	"runtime"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"github.com/ssi-cluster/ssi/internal/api/ssipb"
)

// runJob makes ssi run behave as the shell's job for the remote command: it passes the
// signals ssi receives on, and stops this process when the command stops, so that the
// shell gets its prompt back and sees a stopped job, and continues the command when the
// shell's fg or bg continues this process. One goroutine (loop) does all of it, so that a
// stop and the SIGCONT that ends it are handled in the order they happened.
type runJob struct {
	g        *Globals
	ctx      context.Context
	gpid     int64
	send     func(*ssipb.RunInput) error
	sigs     chan os.Signal
	useTTY   bool
	terminal *rawTerminal // nil: the terminal is not ours to set (no -t, or not one)
	// reports: the agent reports the command's stops and confirms each SIGCONT passed on
	// (RunStarted.job_control); remote carries those messages from the session's stream.
	reports bool
	remote  chan *ssipb.RunOutput
	// continued wakes the stdin pump: after a SIGCONT, ssi may be in the foreground.
	continued chan struct{}

	// unconfirmed counts the SIGCONTs passed on whose confirmation (continued) has not come:
	// a stop reported before it is one they have ended, not a new one.
	unconfirmed int
	// stopOwed: the command stopped and this process has not stopped for it yet, put off
	// while signals or messages wait to be handled.
	stopOwed bool
	// ownCont: this process was stopped and has gone on, so a SIGCONT came that was already
	// passed on when it went on; the next SIGCONT caught is that one.
	ownCont bool
}

// loop handles the signals that reached ssi before the command ran, then every signal and
// every job-control message of the agent until ctx ends.
func (j *runJob) loop(pending []syscall.Signal) {
	for _, s := range pending {
		j.signal(s)
	}
	for {
		select {
		case sig := <-j.sigs:
			j.signal(sig.(syscall.Signal))
		case m := <-j.remote:
			j.message(m)
		case <-j.ctx.Done():
			return
		}
		// A stop waits for what came before it: a SIGCONT already queued (a quick fg, or
		// one from kill) would otherwise find this process stopped with no one to pass
		// it on, and the confirmation of one passed on makes an earlier stop stale.
		if j.stopOwed && len(j.sigs) == 0 && len(j.remote) == 0 {
			j.stopOwed = false
			j.stopSelf()
		}
	}
}

// signal handles one signal ssi caught.
func (j *runJob) signal(s syscall.Signal) {
	switch {
	case s == syscall.SIGCONT:
		select {
		case j.continued <- struct{}{}:
		default:
		}
		if j.ownCont {
			// The SIGCONT that ended this process's own stop, passed on as it went on.
			j.ownCont = false
		} else {
			j.passCont()
		}
		j.terminal.enterIfForeground()
	case s == syscall.SIGWINCH && j.useTTY:
		if cols, rows, err := term.GetSize(int(os.Stdout.Fd())); err == nil {
			_ = j.send(&ssipb.RunInput{Msg: &ssipb.RunInput_Resize{Resize: &ssipb.WindowSize{Rows: uint32(rows), Cols: uint32(cols)}}})
		}
	default:
		j.g.signalSession(j.ctx, j.gpid, s, j.send)
		if s == syscall.SIGTSTP && !j.useTTY && len(j.sigs) == 0 {
			// A local child stopped by Ctrl-Z gives the shell its prompt back, and so does
			// this stand-in for the remote one, whether or not the command stops (a
			// script that traps TSTP): the job a shell stops is ssi. The TSTP passed on is
			// already in the socket, so stopping cannot hold it back. (With a terminal,
			// Ctrl-Z is a byte for the remote terminal instead, and the command's stop,
			// if it stops, stops ssi.)
			j.stopOwed = false
			j.stopSelf()
		}
	}
}

// message handles one job-control message of the agent.
func (j *runJob) message(m *ssipb.RunOutput) {
	switch {
	case m.GetContinued():
		if j.unconfirmed > 0 {
			j.unconfirmed--
		}
	case m.GetStopped() != nil:
		// A stop reported before the confirmation of a SIGCONT passed on is over: that
		// SIGCONT continued the command (or will have once confirmed).
		if j.unconfirmed == 0 {
			j.stopOwed = true
		}
	}
}

// passCont passes a SIGCONT on to the command's job and, if it was delivered, expects its
// confirmation on the stream.
func (j *runJob) passCont() {
	j.stopOwed = false
	if j.g.signalSession(j.ctx, j.gpid, syscall.SIGCONT, j.send) && j.reports {
		j.unconfirmed++
	}
}

// stopSelf stops this process as a local job would be stopped, after giving the terminal
// back its modes; it returns once the shell's fg or bg (or any SIGCONT) has continued it,
// having passed that SIGCONT on to the command.
func (j *runJob) stopSelf() {
	j.terminal.leave()
	raiseStop()
	// A stopped process goes on only through a SIGCONT, which is caught: pass it on now,
	// before any message of the agent (a stop it reported while this process was stopped
	// is ended by it), and not again when the signal itself is handled.
	j.ownCont = true
	select {
	case j.continued <- struct{}{}:
	default:
	}
	// Raw again before the command goes on: once continued it may end at once, and ssi with
	// it, whose last act gives the terminal its modes back.
	j.terminal.enterIfForeground()
	j.passCont()
}

// raiseStop stops this process, as a shell's job is stopped, and returns once it is
// continued. Always with SIGSTOP, which the shell sees as it would see its job stopped by
// TSTP (bash says "Stopped" for either): a TSTP would not stop it, as the Go runtime keeps
// its handler for TSTP once ssi has caught it (signal.Reset does not remove it), and a job
// control signal does nothing at all in a process group whose members have no parent in
// the session outside it (POSIX's orphaned group), while SIGSTOP always stops.
func raiseStop() {
	// To this thread, so that it stops before tgkill returns: a signal sent to the process
	// may be taken by another thread, and this one would run on meanwhile.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	_ = unix.Tgkill(unix.Getpid(), unix.Gettid(), unix.SIGSTOP)
}

// rawTerminal is the terminal on stdin while ssi run passes it to a remote terminal: raw, so
// that every key goes to the remote one, except while ssi is stopped or in the background,
// when the shell and other jobs use it. Its methods do nothing on nil.
type rawTerminal struct {
	fd     int
	mu     sync.Mutex
	saved  *term.State // the modes to restore; nil while not raw
	closed bool        // ssi is done with it: never raw again
}

// enter sets the terminal raw, saving its modes.
func (t *rawTerminal) enter() {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.saved != nil || t.closed {
		return
	}
	if st, err := term.MakeRaw(t.fd); err == nil {
		t.saved = st
	}
}

// enterIfForeground sets the terminal raw if ssi is in its foreground job: setting it from
// the background would stop ssi (SIGTTOU), and the terminal is another job's then.
func (t *rawTerminal) enterIfForeground() {
	if t != nil && !inBackground() {
		t.enter()
	}
}

// leave restores the modes the terminal had before enter.
func (t *rawTerminal) leave() {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.restore()
}

// close restores the terminal's modes for good: a stop handled late must not set it raw again
// after ssi's end.
func (t *rawTerminal) close() {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.restore()
	t.closed = true
}

func (t *rawTerminal) restore() {
	if t.saved != nil {
		_ = term.Restore(t.fd, t.saved)
		t.saved = nil
	}
}
