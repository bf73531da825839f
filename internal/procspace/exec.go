package procspace

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/ssi-cluster/ssi/internal/api"
	"github.com/ssi-cluster/ssi/internal/api/ssipb"
	"github.com/ssi-cluster/ssi/internal/api/ssirpc"
	clusterfs "github.com/ssi-cluster/ssi/internal/fs"
	"github.com/ssi-cluster/ssi/internal/gpid"
	"github.com/ssi-cluster/ssi/internal/proc"
)

// Exit codes ssi itself gives, as ssh does.
const (
	ExitLostNode    = ssipb.ExitLostNode    // the node running the command was lost
	ExitStartFailed = ssipb.ExitStartFailed // the command could not be started (e.g. no such directory)
)

// chunkSize is the largest stdio chunk per message: big enough for throughput, small enough
// that the few chunks in flight keep memory bounded.
const chunkSize = 1 << 20

// pipeSize enlarges output pipes so each read carries a full chunk.
const pipeSize = 1 << 20

// stopSettle is how long the output of a stopped command must have been quiet before the
// stop is reported, and stopOutputWait the longest a report waits for it (see attach).
const (
	stopSettle     = 10 * time.Millisecond
	stopOutputWait = 250 * time.Millisecond
)

// outputDrain is how long output may still arrive after the command exits (from descendants
// holding its stdout) before the rest of its tree is ended.
const outputDrain = time.Second

// runStream is the server side of Control.Run and Peer.Exec.
type runStream interface {
	Send(*ssipb.RunOutput) error
	SendMsg(any) error // for frames (api.Frame)
	Recv() (*ssipb.RunInput, error)
	Context() context.Context
}

// Exec serves Peer.Exec: a command for a user of another node.
func (s *Service) Exec(stream ssirpc.Peer_ExecServer) error {
	in, err := stream.Recv()
	if err != nil {
		return err
	}
	start := in.GetStart()
	if start == nil || start.Caller == nil {
		return errors.New("exec: the first message must be a start with the caller")
	}
	return s.execute(stream, start, "", s.offeredBulk(stream.Context()))
}

// execute runs start on this node and serves its session on stream until it ends; bulk, if
// not nil, is the data link offered for its stdout.
func (s *Service) execute(stream runStream, start *ssipb.RunStart, explanation string, bulk *bulkOffer) error {
	ctx := stream.Context()
	nodeName, nodeIndex := s.self()
	exit := func(code int, msg string) error {
		return stream.Send(&ssipb.RunOutput{Msg: &ssipb.RunOutput_Exit{Exit: &ssipb.RunExit{Code: int32(code), Message: ssipb.ValidText(msg)}}})
	}
	if len(start.Args) == 0 {
		return exit(ExitStartFailed, "no command given: usage is ssi run [flags] -- CMD [ARGS...]")
	}
	c := start.Caller
	args := ssipb.StringWords(start.Args)
	spec := proc.Spec{
		Args: args, Env: ssipb.StringWords(start.Env), Dir: string(start.Cwd),
		UID: c.Uid, GID: c.Gid, Groups: c.Groups, Umask: int(c.Umask),
		TTY: start.Tty, Rows: uint16(start.Rows), Cols: uint16(start.Cols),
		StderrToStdout: start.StderrToStdout && !start.Tty,
		CgroupParent:   s.cfg.CgroupParent + "/" + attachedGroup,
		NodeIndex:      int(nodeIndex), ParentGPID: start.ParentGpid, SocketPath: s.cfg.Socket,
	}
	if c.Nice != 0 {
		// 0 is also what an older agent sends: the agent's own then, as before.
		nice := int(c.Nice)
		spec.Nice = &nice
	}
	spec.Rlimits = rlimitsOfPB(c.Rlimits)
	for _, sig := range start.IgnoredSignals {
		if sig > 0 && sig <= 64 && sig != int32(syscall.SIGKILL) && sig != int32(syscall.SIGSTOP) {
			spec.Ignore = append(spec.Ignore, syscall.Signal(sig))
		}
	}
	if start.Shell {
		if err := asLoginShell(&spec, args, spec.Env); err != nil {
			return exit(ExitStartFailed, err.Error())
		}
	}
	if spec.Dir != "" {
		// Before looking for it (as root), here or on the home node.
		if err := proc.CheckReach(spec, spec.Dir); err != nil {
			return exit(ExitStartFailed, fmt.Sprintf("cannot start %s on %s: %v", args[0], nodeName, err))
		}
		dir, err := s.workingDir(spec.Dir, start.HomeNode, nodeName)
		if err != nil {
			return exit(ExitStartFailed, err.Error())
		}
		spec.Dir = dir
		spec.Env = withPWD(spec.Env, dir)
	}
	var outPath string
	if start.Detach {
		spec.CgroupParent = s.cfg.CgroupParent + "/" + detachedGroup
		outDir := strings.TrimSuffix(spec.Dir, "/") // "/" gives "", and "$d/ssi-..." then /ssi-...
		if spec.Dir == "" {
			outDir = "."
		}
		// The wrapper names the file after its own pid, which the command keeps through exec.
		// The file is made private (umask 077), as nohup's is: output often holds what only
		// its owner may read; the command itself then runs with the caller's umask again.
		// $0 stays "sh" so that the shell's own messages (e.g. "sh: 1: exec: x: not found")
		// read as usual in that file. A file the caller cannot create is said on stderr,
		// which is still the agent's pipe then (see the reaper below), before exec's
		// redirection, whose failure would end the shell without a word of ours.
		script := `d=$1; shift; umask 077; f="$d/ssi-$((SSI_NODE*` + strconv.Itoa(gpid.PerNode) + `+$$)).out"; ` +
			`if ! { true >>"$f"; } 2>/dev/null; then echo "cannot write the output file $f: give a --cwd you can write in" >&2; exit 126; fi; ` +
			`exec >>"$f" 2>&1 </dev/null; umask ` + fmt.Sprintf("%04o", spec.Umask) + `; exec "$@"`
		spec.Args = append([]string{"/bin/sh", "-c", script, "sh", outDir}, spec.Args...)
		spec.Path = ""
	}
	p, err := proc.Start(ctx, spec)
	if err != nil {
		var ce *proc.CommandError
		if errors.As(err, &ce) {
			return exit(ce.Code, ce.Error())
		}
		return exit(ExitStartFailed, fmt.Sprintf("cannot start %s on %s: %v", args[0], nodeName, err))
	}
	r := &record{proc: p, parentGPID: start.ParentGpid, uid: c.Uid, done: make(chan struct{})}
	s.track(r)
	g := gpid.Make(int(nodeIndex), p.PID())
	if start.Detach {
		outPath = detachedOutput(spec.Dir, g)
	}
	s.log.Debug("started", "gpid", g, "cmd", args[0], "uid", c.Uid, "detach", start.Detach)
	started := &ssipb.RunStarted{Gpid: g, Node: nodeName, Explanation: explanation, OutputPath: []byte(outPath), Cwd: []byte(spec.Dir),
		JobControl: !start.Detach}
	if err := stream.Send(&ssipb.RunOutput{Msg: &ssipb.RunOutput_Started{Started: started}}); err != nil {
		_ = p.Terminate(s.cfg.Grace)
		s.reap(r)
		return err
	}
	if start.Detach {
		p.Stdin().Close()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			// Until the wrapper moves its output to the file, its stderr is this pipe; it
			// ends there when the redirection is done, or carries why it could not be,
			// which ssi wait then reports.
			if f := p.Stderr(); f != nil {
				msg, _ := io.ReadAll(io.LimitReader(f, 4096))
				r.message = strings.TrimSpace(string(msg))
			}
			s.reap(r)
		}()
		return nil
	}
	return s.attach(stream, r, bulk)
}

// reap waits for a started process, records its status and frees what it held.
func (s *Service) reap(r *record) {
	code, err := r.proc.Wait()
	r.code, r.signal = code, int(r.proc.Result().Signal)
	if err != nil {
		r.code, r.signal, r.message = ExitStartFailed, 0, err.Error()
	}
	if err := r.proc.Close(); err != nil {
		s.log.Debug("closing process", "pid", r.proc.PID(), "err", err)
	}
	s.finished(r)
}

// attach pumps stdio, signals and terminal size between the client and the process until the
// process exits (then sends its status) or the client goes away (then ends the whole tree).
// With bulk, stdout moves to the data link once it passed s.bulkAfter bytes.
func (s *Service) attach(stream runStream, r *record, bulk *bulkOffer) error {
	p := r.proc
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()

	// Output is read straight into the buffers gRPC sends from (see api.Frame).
	out := make(chan *api.Frame, 4)
	bulkFailed := make(chan error, 1)
	var pumps sync.WaitGroup
	pump := func(f *os.File, field protowire.Number, bulk *bulkOffer) {
		if f == nil {
			return
		}
		_, _ = unix.FcntlInt(f.Fd(), unix.F_SETPIPE_SZ, pipeSize)
		pumps.Add(1)
		go func() {
			defer pumps.Done()
			sent := 0
			for {
				if bulk != nil && sent >= s.bulkAfter {
					used, err := s.sendBulk(ctx, bulk, f, out)
					if err != nil {
						bulkFailed <- err
						return
					}
					if used {
						return
					}
					bulk = nil
				}
				frame, err := s.framer.Read(f, field)
				if frame != nil {
					sent += frame.Len()
					select {
					case out <- frame:
					case <-ctx.Done():
						frame.Free()
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
	if tty := p.TTY(); tty != nil {
		pump(tty, api.RunOutputStdout, nil)
	} else {
		pump(p.Stdout(), api.RunOutputStdout, bulk)
		pump(p.Stderr(), api.RunOutputStderr, nil)
	}
	pumpsDone := make(chan struct{})
	go func() { pumps.Wait(); close(pumpsDone) }()

	// Client → process. A receive error means the client is gone.
	clientGone := make(chan struct{})
	go func() {
		defer close(clientGone)
		stdin := p.Stdin()
		if tty := p.TTY(); tty != nil {
			stdin = tty
		}
		for {
			in, err := stream.Recv()
			if err != nil {
				return
			}
			switch m := in.Msg.(type) {
			case *ssipb.RunInput_Stdin:
				if p.TTY() != nil {
					// Keys, Ctrl-Z among them, as a local terminal would take them.
					if err := p.TypeKeys(m.Stdin, s.cfg.ProcRoot); err != nil {
						s.log.Debug("typing on the terminal", "err", err)
					}
				} else if stdin != nil {
					if _, err := stdin.Write(m.Stdin); err != nil && !errors.Is(err, syscall.EPIPE) {
						s.log.Debug("writing stdin", "err", err)
					}
				}
			case *ssipb.RunInput_StdinEof:
				if p.TTY() != nil {
					_, _ = p.TTY().Write([]byte{4}) // ^D: end of input on a terminal
				} else if stdin != nil {
					stdin.Close()
				}
			case *ssipb.RunInput_Signal:
				if err := s.forwardSignal(p, syscall.Signal(m.Signal)); err != nil {
					s.log.Debug("forwarding signal", "sig", m.Signal, "err", err)
				}
			case *ssipb.RunInput_Resize:
				if m.Resize != nil {
					_ = p.Resize(uint16(m.Resize.Rows), uint16(m.Resize.Cols))
				}
			}
		}
	}()

	exited := make(chan struct{})
	go func() {
		_, _ = p.Wait()
		close(exited)
	}()

	// Process → client, until the command exits and its output is drained.
	var drainTimer <-chan time.Time
	// A stop goes to the client after the output the command wrote before it, as a local
	// job's output is on the terminal before its shell says it stopped: once the pipes are
	// empty and no frame has come for stopSettle, or after stopOutputWait at most (other
	// processes of the tree may write on).
	var job proc.JobState // what the client has been told
	var stopCheck <-chan time.Time
	var stopBy, lastFrame time.Time
	outputs := []*os.File{p.TTY(), p.Stdout(), p.Stderr()}
	for pumpsDone != nil || exited != nil {
		select {
		case <-p.JobChanged():
			now := p.Job()
			if now.Stopped && now.Stops > job.Stops {
				// For now the SIGCONTs passed on only; the stop once its output is out.
				if stopCheck == nil {
					stopBy, stopCheck = time.Now().Add(stopOutputWait), time.After(stopSettle)
				}
				if err := sendContinues(stream, now, &job); err != nil {
					return s.sendFailed(stream, r, err)
				}
				continue
			}
			if err := sendJobState(stream, now, &job); err != nil {
				return s.sendFailed(stream, r, err)
			}
		case <-stopCheck:
			if t := time.Now(); t.Before(stopBy) && (len(out) > 0 || t.Sub(lastFrame) < stopSettle || unread(outputs)) {
				stopCheck = time.After(stopSettle)
				continue
			}
			stopCheck = nil
			if err := sendJobState(stream, p.Job(), &job); err != nil {
				return s.sendFailed(stream, r, err)
			}
		case frame := <-out:
			lastFrame = time.Now()
			if err := stream.SendMsg(frame); err != nil {
				return s.sendFailed(stream, r, err)
			}
		case err := <-bulkFailed:
			return s.sendFailed(stream, r, fmt.Errorf("stdout's data link: %w", err))
		case <-clientGone:
			s.endTree(r, "client gone")
			return stream.Context().Err()
		case <-ctx.Done():
			// The client is gone while the receiver above is blocked writing stdin that
			// the command does not read; ending the tree unblocks it.
			s.endTree(r, "client gone")
			return stream.Context().Err()
		case <-exited:
			exited = nil
			drainTimer = time.After(outputDrain)
		case <-drainTimer:
			// Descendants still hold the output open: the session is over, end them.
			_ = p.Terminate(s.cfg.Grace)
			drainTimer = nil
		case <-pumpsDone:
			pumpsDone = nil
		}
	}
	// The pumps have stopped: what they queued is all there is.
	for len(out) > 0 {
		if err := stream.SendMsg(<-out); err != nil {
			return s.sendFailed(stream, r, err)
		}
	}
	s.reap(r)
	return stream.Send(&ssipb.RunOutput{Msg: &ssipb.RunOutput_Exit{Exit: &ssipb.RunExit{Code: int32(r.code), Signal: int32(r.signal), Message: ssipb.ValidText(r.message)}}})
}

// unread reports whether any of files (nil ones skipped) holds output not yet read.
func unread(files []*os.File) bool {
	for _, f := range files {
		if f == nil {
			continue
		}
		rc, err := f.SyscallConn()
		if err != nil {
			continue
		}
		n := 0
		_ = rc.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.TIOCINQ) })
		if n > 0 {
			return true
		}
	}
	return false
}

// sendJobState tells the client what job control did to the command since sent: first a
// continued for each SIGCONT passed on for the session, then a stop that came after them,
// if the command is still stopped. A stop counted before one of those SIGCONTs is over and
// not sent: the client, resumed by its shell's fg, must not stop again for it.
func sendJobState(stream runStream, now proc.JobState, sent *proc.JobState) error {
	if err := sendContinues(stream, now, sent); err != nil {
		return err
	}
	if now.Stopped && now.Stops > sent.Stops {
		if err := stream.Send(&ssipb.RunOutput{Msg: &ssipb.RunOutput_Stopped{Stopped: &ssipb.RunStopped{Signal: int32(now.Signal)}}}); err != nil {
			return err
		}
	}
	sent.Stops = now.Stops
	return nil
}

// sendContinues sends the client a continued for each SIGCONT passed on since sent.
func sendContinues(stream runStream, now proc.JobState, sent *proc.JobState) error {
	for ; sent.Continues < now.Continues; sent.Continues++ {
		if err := stream.Send(&ssipb.RunOutput{Msg: &ssipb.RunOutput_Continued{Continued: true}}); err != nil {
			return err
		}
	}
	return nil
}

// sendFailed ends a session whose output could not be delivered: the tree ends, as a local
// one would when its reader goes away, and a client whose stdout failed is told so.
func (s *Service) sendFailed(stream runStream, r *record, err error) error {
	if errors.Is(err, errOutputFailed) {
		// The client learns first: ending the tree may take the grace period.
		sendErr := stream.Send(outputFailedExit(err))
		s.endTree(r, "the client's stdout failed")
		return sendErr
	}
	s.endTree(r, "send failed")
	return err
}

// forwardSignal delivers a signal the client received as it would reach a local child. The
// keys of a terminal (Ctrl-C INT, Ctrl-\ QUIT, Ctrl-Z TSTP, a resize WINCH) and a shell's
// fg/bg (CONT) reach a whole foreground job, so these go to the command's process group;
// the others (TERM, HUP, USR1, USR2) usually come from kill(1) aimed at one process, the
// command.
func (s *Service) forwardSignal(p *proc.Process, sig syscall.Signal) error {
	switch sig {
	case syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTSTP, syscall.SIGTTIN, syscall.SIGTTOU, syscall.SIGWINCH, syscall.SIGCONT:
		return p.SignalJob(sig, s.cfg.ProcRoot)
	}
	return p.Signal(sig)
}

// endTree ends a session's whole tree after its client was lost: no orphans.
func (s *Service) endTree(r *record, why string) {
	s.log.Info("ending process tree", "pid", r.proc.PID(), "reason", why)
	if err := r.proc.Terminate(s.cfg.Grace); err != nil {
		s.log.Warn("ending process tree", "pid", r.proc.PID(), "err", err)
	}
	s.reap(r)
}

// detachedOutput is where a detached command's output goes: ssi-<gpid>.out in its working
// directory, as nohup and batch systems do.
func detachedOutput(dir string, g int64) string {
	if dir == "" {
		dir = "."
	}
	return strings.TrimSuffix(dir, "/") + "/ssi-" + strconv.FormatInt(g, 10) + ".out"
}

// asLoginShell turns words into "$SHELL -c 'words'" run in the user's home with a minimal
// environment, as sshd does for `ssh host cmd`. Of the caller's environment, callerEnv, it
// keeps what ssh passes on: TERM with a terminal, and the locale (LANG, LC_*, as the usual
// SendEnv and AcceptEnv settings do).
func asLoginShell(spec *proc.Spec, words []string, callerEnv []string) error {
	u, err := user.LookupId(strconv.Itoa(int(spec.UID)))
	if err != nil {
		return fmt.Errorf("user %d is unknown on this node: %w", spec.UID, err)
	}
	shell := loginShell(u.Username)
	spec.Args = []string{shell, "-c", strings.Join(words, " ")}
	spec.Path = shell
	spec.Dir = u.HomeDir
	if _, err := os.Stat(u.HomeDir); err != nil {
		spec.Dir = "/"
	}
	spec.Env = []string{
		"HOME=" + u.HomeDir, "USER=" + u.Username, "LOGNAME=" + u.Username, "SHELL=" + shell,
		"PATH=/usr/local/bin:/usr/bin:/bin:/usr/games",
	}
	callerLang := false
	for _, kv := range callerEnv {
		k, _, _ := strings.Cut(kv, "=")
		if k == "LANG" || strings.HasPrefix(k, "LC_") || (k == "TERM" && spec.TTY) {
			spec.Env = append(spec.Env, kv)
			callerLang = callerLang || k == "LANG"
		}
	}
	// Else the node's own, as sshd's PAM gives from /etc/default/locale.
	if lang, ok := os.LookupEnv("LANG"); ok && !callerLang {
		spec.Env = append(spec.Env, "LANG="+lang)
	}
	return nil
}

// loginShell reads the user's shell from /etc/passwd; /bin/sh if none is set.
func loginShell(name string) string {
	b, err := os.ReadFile("/etc/passwd")
	if err != nil {
		return "/bin/sh"
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Split(line, ":")
		if len(f) >= 7 && f[0] == name && f[6] != "" {
			return f[6]
		}
	}
	return "/bin/sh"
}

// workingDir is where a command asked to run in dir starts on this node: dir itself if it
// exists here, else the same directory on the caller's home node through the cluster tree,
// so that relative paths keep meaning the caller's files.
func (s *Service) workingDir(dir, home, self string) (string, error) {
	tree := ""
	if s.cfg.Tree != nil {
		tree = s.cfg.Tree()
	}
	if home == self {
		home = ""
	}
	if found := clusterfs.FromNode(dir, true, tree, home); found != "" {
		return found, nil
	}
	if tree == "" || home == "" {
		return "", fmt.Errorf("working directory %s does not exist on node %s: give one that does with --cwd", dir, self)
	}
	return "", fmt.Errorf("working directory %s does not exist on node %s, nor on %s (as %s): give one that does with --cwd",
		dir, self, home, filepath.Join(tree, home, dir))
}

// withPWD sets PWD in env to dir, where the command runs, as a shell does for a local child
// started there; a PWD that already names that directory (through a symbolic link, say) is
// kept, as the caller's shell keeps its logical path.
func withPWD(env []string, dir string) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PWD="); ok {
			if v == dir || sameDir(v, dir) {
				return env
			}
			continue
		}
		out = append(out, kv)
	}
	return append(out, "PWD="+dir)
}

func sameDir(a, b string) bool {
	sa, err := os.Stat(a)
	if err != nil {
		return false
	}
	sb, err := os.Stat(b)
	return err == nil && os.SameFile(sa, sb)
}
