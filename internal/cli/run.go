package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"
	"golang.org/x/term"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/ssi-cluster/ssi/internal/api/ssipb"
	"github.com/ssi-cluster/ssi/internal/localrpc"
)

// lateSignalsAfter is how long a command runs before the signals other than the shell's are
// caught and passed on to it (see runRemote).
const lateSignalsAfter = 20 * time.Millisecond

// shellSignals are those a shell passes on to a foreground job.
var shellSignals = []os.Signal{
	syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1,
	syscall.SIGUSR2, syscall.SIGWINCH, syscall.SIGCONT, syscall.SIGTSTP,
}

// forwardedSignals are the signals passed on to the command: those a shell would pass on to
// a foreground job, and every other one that would end a local child sent it by kill(1)
// (ALRM, XCPU, the real-time ones...), since ssi stands in for the command. Not those the Go
// runtime needs or that a fault raises (SEGV, BUS, FPE, ILL, TRAP, SYS, URG, CHLD), nor PIPE,
// which tells ssi its own output is gone.
func forwardedSignals() []os.Signal {
	sigs := append(slices.Clone(shellSignals),
		syscall.SIGABRT, syscall.SIGALRM, syscall.SIGVTALRM, syscall.SIGPROF, syscall.SIGXCPU,
		syscall.SIGXFSZ, syscall.SIGPWR, syscall.SIGSTKFLT,
	)
	for n := sigRTMin; n <= sigRTMax; n++ {
		sigs = append(sigs, syscall.Signal(n))
	}
	return sigs
}

type runOptions struct {
	node    string
	tty     bool
	noTTY   bool
	detach  bool
	env     []string
	cwd     string
	explain bool
	shell   bool
	// gpidOut is where --detach prints the GPID: the command's output, whose write errors
	// execute reports (nil: os.Stdout).
	gpidOut io.Writer
}

func newRunCommand(g *Globals) *cobra.Command {
	var o runOptions
	cmd := &cobra.Command{
		Use:   "run [flags] -- CMD [ARGS...]",
		Short: "Run a command on any node as if it were a local child",
		Long: `Run a command on a node of the cluster, as the calling user, with this shell's
environment, working directory, nice value and resource limits. stdin, stdout and stderr
stream both ways, through a terminal only when all three are one (or with -t).

Signals the shell would pass on (INT, TERM, HUP, QUIT, USR1, USR2, WINCH, CONT, TSTP) reach
the command, as does any other sent to ssi that would end a local command (ALRM, XCPU,
real-time ones) once the command has run 20 ms; those a terminal sends to a whole job (INT,
QUIT, TSTP, WINCH, CONT) reach its process group. ssi is the shell's job for the command:
after TSTP it stops too, and so it does whenever the command stops otherwise (Ctrl-Z on its
terminal with -t, kill -STOP, ssi kill -s STOP), giving the terminal its modes back, so that
the shell shows its prompt and a stopped job; fg and bg continue the command with it, as for
a local job. HUP and INT that the caller ignores (nohup, a script's background job) stay
ignored, by the command too.

The exit status is the command's (127 for a command that is not found, 255 when the node
running it is lost); after the command's death by signal N, ssi dies of N too, so that a
shell sees 128+N and treats it as it would a local child killed by N. Without -n the agent
places the command: it stays on this node while the node is lightly loaded, else it goes to
the least-loaded node per CPU.

With --detach, ssi prints the command's global process id (GPID) and returns; the command's
stdout and stderr go to ssi-<GPID>.out in its working directory on that node, and
"ssi wait GPID" collects its exit status.`,
		Example: `  ssi run -n n2 -- hostname
  ssi run -- make -j8                        # placed by load
  ssi run -t -n n3 -- top                    # a terminal program
  ssi run -n n1 -- tar c src | ssi run -n n2 -- tar x -C /tmp
  GPID=$(ssi run --detach -n n2 -- ./simulate) && ssi wait $GPID`,
		Args: NeedArgs(1, -1, "a command after --, e.g. ssi run -n n2 -- hostname"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkNodeFlag(cmd, o.node); err != nil {
				return err
			}
			o.gpidOut = cmd.OutOrStdout()
			return runRemote(cmd.Context(), g, o, args)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.node, "node", "n", "", "node to run on (default: placed by load)")
	f.BoolVarP(&o.tty, "tty", "t", false, "give the command a pseudo-terminal (default when stdin, stdout and stderr are terminals)")
	f.BoolVarP(&o.noTTY, "no-tty", "T", false, "never give the command a terminal")
	f.BoolVar(&o.detach, "detach", false, "start the command, print its GPID and return")
	f.StringArrayVar(&o.env, "env", nil, "set an environment variable, K=V (repeatable)")
	f.StringVar(&o.cwd, "cwd", "", "working directory on the node (default: the current one)")
	f.BoolVar(&o.explain, "explain", false, "print on stderr why the node was chosen")
	f.SetInterspersed(false)
	return cmd
}

func newRshCommand(g *Globals) *cobra.Command {
	var (
		o       runOptions
		login   string
		noStdin bool
	)
	cmd := &cobra.Command{
		Use:   "rsh [flags] [USER@]HOST CMD [ARGS...]",
		Short: "Run a command through the user's shell on a node, like ssh HOST CMD",
		Long: `Behaves like "ssh HOST CMD": the words are joined with spaces and run by the user's login
shell on that node, in the home directory, with stdio and exit status passed through and no
terminal unless -t is given. HOST is a node name or address. Tools that launch through a remote
shell (MPI launchers, pdsh, GNU parallel, clush) can use it instead of ssh:
  mpirun --mca plm_rsh_agent "ssi rsh" ...   or   PDSH_RCMD_TYPE=exec pdsh -R exec -w n[1-3] ssi rsh %h ...

The ssh options such tools pass are accepted: -n (stdin from /dev/null), -l USER and USER@HOST
(only your own user: commands run as you), and, ignored since they mean nothing here (no agent
or X11 to forward, no ssh configuration, port or key), -a -A -x -X -Y -k -q -v -C -4 -6,
-o OPTION, -p PORT, -i FILE and -F FILE.`,
		Example: `  ssi rsh n2 uname -a
  ssi rsh 10.77.0.3 'echo $HOSTNAME; ls | wc -l'
  ssi rsh -a -x -oBatchMode=yes n3 uptime    # as clush runs it, with ssh_path: ssi rsh`,
		Args: NeedArgs(2, -1, "a host and a command, e.g. ssi rsh n2 uname -a"),
		RunE: func(cmd *cobra.Command, args []string) error {
			node, err := rshTarget(args[0], login, currentUser)
			if err != nil {
				return err
			}
			if noStdin {
				// As ssh -n: the command reads an empty stdin, and ssi leaves its own alone.
				null, err := os.Open(os.DevNull)
				if err != nil {
					return fmt.Errorf("-n: %w", err)
				}
				defer null.Close()
				saved := os.Stdin
				os.Stdin = null
				defer func() { os.Stdin = saved }()
			}
			if o.tty && o.noTTY {
				return errors.New("-t and -T contradict each other: give one")
			}
			o.node, o.shell, o.noTTY = node, true, !o.tty
			return runRemote(cmd.Context(), g, o, args[1:])
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&o.tty, "tty", "t", false, "give the command a pseudo-terminal")
	f.BoolVarP(&o.noTTY, "no-tty", "T", false, "no pseudo-terminal (the default), as ssh -T")
	f.BoolVarP(&noStdin, "no-stdin", "n", false, "stdin from /dev/null, as ssh -n")
	f.StringVarP(&login, "login", "l", "", "the user to run as, as ssh -l: only your own (commands run as you)")
	addIgnoredSSHOptions(f)
	f.SetInterspersed(false)
	return cmd
}

// addIgnoredSSHOptions adds the ssh(1) options that launchers pass (clush: -a -x
// -oBatchMode=yes; MPICH's hydra: -x) and that mean nothing for ssi rsh: accepted, so that it
// can stand in for ssh, and ignored. Hidden from --help, whose text names them in one sentence.
func addIgnoredSSHOptions(f *pflag.FlagSet) {
	for _, c := range "aAxXYkqvC46" {
		name := "ssh-" + string(c)
		f.BoolP(name, string(c), false, "ignored, as ssh's -"+string(c))
		_ = f.MarkHidden(name)
	}
	for _, c := range "opiF" {
		name := "ssh-" + string(c)
		f.StringArrayP(name, string(c), nil, "ignored, as ssh's -"+string(c))
		_ = f.MarkHidden(name)
	}
}

// rshTarget is the node of ssi rsh's [USER@]HOST, after checking that USER (or -l login) is
// the caller, whom the command runs as whatever is asked: asking for another user must fail
// rather than run as the wrong one.
func rshTarget(host, login string, current func() (*user.User, error)) (string, error) {
	if u, h, ok := strings.Cut(host, "@"); ok {
		if login != "" && strings.TrimSpace(login) != u {
			return "", fmt.Errorf("-l %s and %s name two users: give one", strings.TrimSpace(login), host)
		}
		login, host = u, h
	}
	if host == "" {
		// Else the command would go wherever placement sends it.
		return "", errors.New("ssi rsh needs a host: give a node name or address (see ssi nodes)")
	}
	// clush passes "-l USER" as one word, which reads as -l " USER".
	if login = strings.TrimSpace(login); login != "" {
		me, err := current()
		if err != nil {
			return "", fmt.Errorf("-l %s: cannot tell who you are (%v): leave -l out, commands run as you", login, err)
		}
		if login != me.Username && login != me.Uid {
			return "", fmt.Errorf("-l %s: ssi rsh runs commands as you (%s), never as another user: leave -l out, or run ssi as %s", login, me.Username, login)
		}
	}
	return host, nil
}

// currentUser is the caller, from the user database the static client can read (/etc/passwd).
func currentUser() (*user.User, error) { return user.Current() }

// checkNodeFlag refuses an empty -n (a script's unset $NODE): without it the command
// would quietly run wherever placement puts it, or list every node.
func checkNodeFlag(cmd *cobra.Command, node string) error {
	if node == "" && cmd.Flags().Changed("node") {
		return fmt.Errorf("-n/--node is empty: give a node name or address (see ssi nodes), or leave -n out")
	}
	return nil
}

// runRemote runs one session and ends the process with the command's exit status.
func runRemote(ctx context.Context, g *Globals, o runOptions, args []string) error {
	if o.tty && o.noTTY {
		return errors.New("-t and -T contradict each other: give one")
	}
	if o.tty && o.detach {
		return errors.New("--detach runs without a terminal, its output going to a file: drop -t")
	}
	for _, kv := range o.env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return fmt.Errorf("--env %q is not K=V: write it like --env OMP_NUM_THREADS=4", kv)
		}
	}
	stdinTTY := term.IsTerminal(int(os.Stdin.Fd()))
	// A terminal only when all three are one: a pseudo-terminal is the command's stdin,
	// stdout and stderr at once, so with stdout going to a pipe or a file the command would
	// see a terminal there (ls prints columns, grep colours) and its output would come with
	// the terminal's CRLF line ends. Redirected, a local command sees what is really there.
	allTTY := stdinTTY && term.IsTerminal(int(os.Stdout.Fd())) && term.IsTerminal(int(os.Stderr.Fd()))
	// A background job (cmd &) does not own the terminal: a local one that does not read
	// it runs on undisturbed, and so must ssi, which would be stopped (SIGTTOU) setting the
	// terminal to raw mode, and (SIGTTIN) reading it for a command that may never read.
	bg := stdinTTY && inBackground()
	useTTY := o.tty || (!o.noTTY && !o.detach && allTTY && !bg)
	cwd := o.cwd
	if (cwd == "" || !filepath.IsAbs(cwd)) && !o.shell {
		// A relative --cwd is relative to this directory, as cd's argument would be.
		wd, err := os.Getwd()
		if err != nil {
			return fmt.Errorf("finding the working directory: %w (give --cwd with an absolute path)", err)
		}
		cwd = filepath.Join(wd, cwd)
	}
	// A signal the caller ignores (nohup's HUP, INT and QUIT of a background job of a
	// script) stays ignored: by this process, which must not catch it and pass it on, and by
	// the command, as a local child keeps it through exec. The Go runtime keeps that of HUP
	// and INT only (the others it cannot tell).
	//
	// Catching a signal costs the Go runtime a hand-off to its signal-mask thread, ~50 µs on
	// this VM: all of them took 2.3 ms more of each ssi run. The shell's are caught before the
	// start (early), the others (rarer: ALRM, XCPU, real-time ones) once the command has run
	// for lateSignalsAfter; before, they end ssi as they would have ended it.
	var early, late []os.Signal
	var ignored []int32
	for _, sig := range forwardedSignals() {
		switch {
		case signal.Ignored(sig):
			ignored = append(ignored, int32(sig.(syscall.Signal)))
		case slices.Contains(shellSignals, sig):
			early = append(early, sig)
		default:
			late = append(late, sig)
		}
	}
	start := &ssipb.RunStart{IgnoredSignals: ignored, StderrToStdout: !useTTY && sameFile(os.Stdout, os.Stderr),
		Args: ssipb.ByteWords(args), Env: ssipb.ByteWords(append(os.Environ(), o.env...)), Cwd: []byte(cwd), Node: o.node,
		Tty: useTTY, Detach: o.detach, Explain: o.explain, Shell: o.shell,
	}
	if useTTY {
		if cols, rows, err := term.GetSize(int(os.Stdout.Fd())); err == nil {
			start.Rows, start.Cols = uint32(rows), uint32(cols)
		}
	}

	// Output the agent can write straight into saves this process copying it. Not with a
	// terminal (its output is small, and raw mode is ours), nor with --explain, whose line
	// must come before the command's output.
	var passOut, passErr *os.File
	if !useTTY && !o.detach && !o.explain {
		passOut, passErr = passable(os.Stdout), passable(os.Stderr)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Caught before the session starts: a signal that comes while the command is being
	// started reaches it once it runs, as a local child forked and exec'd at once would get
	// it. Never stopped: signal.Stop waits for the runtime's signal goroutine to go idle,
	// ~0.4 ms of a 6 ms ssi run, and the process ends once the session has. A signal that
	// comes in between is dropped, as it would reach no process anyway.
	var sigs chan os.Signal
	if !o.detach {
		sigs = make(chan os.Signal, 16)
		signal.Notify(sigs, early...)
	}
	// Until the command runs, its signals wait in pending, passed on once it does; the same
	// ending signal twice (a second Ctrl-C while the start hangs) gives the start up instead,
	// and ssi dies of it.
	var pending []syscall.Signal
	var abortSig syscall.Signal
	startDone, watched := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(watched)
		for {
			select {
			case <-startDone:
				return
			case sig := <-sigs: // never, with --detach (nil)
				s := sig.(syscall.Signal)
				if endsProcess(s) && slices.Contains(pending, s) {
					abortSig = s
					cancel()
					return
				}
				pending = append(pending, s)
			}
		}
	}()
	conn, stream, first, err := g.startSession(ctx, passOut, passErr, start)
	close(startDone)
	<-watched
	if abortSig != 0 {
		if conn != nil {
			conn.Close()
		}
		return exitError{code: 128 + int(abortSig), signal: abortSig}
	}
	if err != nil {
		return err
	}
	defer conn.Close()
	send := func(in *ssipb.RunInput) error { return stream.Send(in) }
	if ex := first.GetExit(); ex != nil {
		return exitError{code: int(ex.Code), msg: ex.Message}
	}
	started := first.GetStarted()
	if started == nil {
		return errors.New("the agent answered out of order: expected the start confirmation")
	}
	if started.Explanation != "" {
		fmt.Fprintf(os.Stderr, "ssi: running on %s: %s\n", started.Node, started.Explanation)
	}
	if o.detach {
		w := o.gpidOut
		if w == nil {
			w = os.Stdout
		}
		if _, err := fmt.Fprintln(w, started.Gpid); err != nil {
			// The command runs on; without its GPID the caller cannot wait for it or stop it.
			return fmt.Errorf("GPID %d started, but printing it failed: %w", started.Gpid, err)
		}
		if len(started.OutputPath) != 0 {
			fmt.Fprintf(os.Stderr, "ssi: output of %d goes to %s on %s\n", started.Gpid, started.OutputPath, started.Node)
		}
		return nil
	}
	// Even off the start's path, catching them took ~0.4 ms of a short command's run (the
	// hand-offs compete for the two vCPUs): a command that lives a little gets them.
	lateTimer := time.AfterFunc(lateSignalsAfter, func() { signal.Notify(sigs, late...) })
	defer lateTimer.Stop()

	job := &runJob{g: g, ctx: ctx, gpid: started.Gpid, send: send, sigs: sigs, useTTY: useTTY,
		reports: started.JobControl, remote: make(chan *ssipb.RunOutput, 16), continued: make(chan struct{}, 1)}
	if useTTY && stdinTTY {
		job.terminal = &rawTerminal{fd: int(os.Stdin.Fd())}
		job.terminal.enter()
		defer job.terminal.close()
	}
	go job.loop(pending)
	continued := job.continued
	go func() {
		if stdinTTY {
			// Read the terminal only once in the foreground: the shell's fg moves the
			// job there and then continues it.
			for inBackground() {
				select {
				case <-continued:
				case <-ctx.Done():
					return
				}
			}
		}
		pumpStdin(send)
	}()

	for {
		raw, err := stream.RecvRaw()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return exitError{code: 255, msg: "the agent ended the session without an exit status"}
			}
			return exitError{code: 255, msg: g.rpcError(err).Error()}
		}
		// Output is written from the received bytes, without decoding the message.
		if field, payload, ok := outputPayload(raw); ok {
			if field == ssipb.RunOutputStdoutField {
				if _, err := os.Stdout.Write(payload); err != nil {
					// Returning ends the session, and with it the remote command, as a local
					// one would end when its output fails.
					return stdoutWriteError(err)
				}
			} else {
				_, _ = os.Stderr.Write(payload)
			}
			continue
		}
		var out ssipb.RunOutput
		if err := proto.Unmarshal(raw, &out); err != nil {
			return exitError{code: 255, msg: fmt.Sprintf("the agent sent a message ssi cannot read: %v", err)}
		}
		if out.GetStopped() != nil || out.GetContinued() {
			select {
			case job.remote <- &out:
			case <-ctx.Done():
			}
			continue
		}
		if ex := out.GetExit(); ex != nil {
			if ex.Code == int32(ssipb.ExitOutputFailed) && ex.Message == "" && passOut != nil {
				dieIfOutputBroken()
			}
			return exitError{code: int(ex.Code), msg: ex.Message, signal: unix.Signal(ex.Signal)}
		}
	}
}

// outputPayload returns the payload of a RunOutput message that is only its stdout or
// stderr field, and whether it is one.
func outputPayload(msg []byte) (protowire.Number, []byte, bool) {
	num, typ, n := protowire.ConsumeTag(msg)
	if n < 0 || typ != protowire.BytesType || (num != ssipb.RunOutputStdoutField && num != ssipb.RunOutputStderrField) {
		return 0, nil, false
	}
	payload, m := protowire.ConsumeBytes(msg[n:])
	if m < 0 || n+m != len(msg) {
		return 0, nil, false
	}
	return num, payload, true
}

// stdoutWriteError is how ssi ends when writing its stdout failed with err: a reader that
// went away ends it silently with the status of death by SIGPIPE, any other failure (a full
// disk, /dev/full) is reported in one line with status 1, as a local command reports it.
func stdoutWriteError(err error) exitError {
	var errno syscall.Errno
	if errors.Is(err, syscall.EPIPE) || !errors.As(err, &errno) {
		return exitError{code: ssipb.ExitOutputFailed}
	}
	return exitError{code: ssipb.ExitOutputError, msg: "writing standard output: " + errno.Error()}
}

// startSession connects to the agent, passing stdout and stderr if not nil, sends start and
// returns the agent's first answer: the command's start, or why it did not start.
func (g *Globals) startSession(ctx context.Context, stdout, stderr *os.File, start *ssipb.RunStart) (*localrpc.Conn, *localrpc.Stream, *ssipb.RunOutput, error) {
	conn, stream, err := g.openRun(ctx, stdout, stderr)
	if err != nil {
		return nil, nil, nil, g.rpcError(err)
	}
	if err := stream.Send(&ssipb.RunInput{Msg: &ssipb.RunInput_Start{Start: start}}); err != nil {
		conn.Close()
		return nil, nil, nil, g.rpcError(err)
	}
	var first ssipb.RunOutput
	if err := stream.Recv(&first); err != nil {
		conn.Close()
		return nil, nil, nil, g.rpcError(err)
	}
	return conn, stream, &first, nil
}

// endsProcess reports whether sig, at its default, ends a process: those a user sends to
// stop one (a second Ctrl-C gives up a start that hangs).
func endsProcess(sig syscall.Signal) bool {
	switch sig {
	case syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT:
		return true
	}
	return false
}

// signalSession passes sig on to the session's command, gpid, through a call of its own: on
// the session's stream it would wait behind stdin that the command does not read, as long as
// the command does not read it. Only an agent that cannot be reached gets it on the stream.
// It returns once the signal was delivered, or could not be, and whether it was.
func (g *Globals) signalSession(ctx context.Context, gpid int64, sig syscall.Signal, send func(*ssipb.RunInput) error) bool {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	req := &ssipb.KillRequest{Gpids: []int64{gpid}, Signal: int32(sig), Session: true}
	resp, err := g.control().Kill(ctx, req)
	if err != nil {
		if ctx.Err() != nil {
			return false
		}
		return send(&ssipb.RunInput{Msg: &ssipb.RunInput_Signal{Signal: int32(sig)}}) == nil
	}
	for _, r := range resp.GetResults() {
		if r.Error != "" {
			return false
		}
	}
	return true
}

// passable returns f if the agent can write into it for us (see localrpc.PassOutput): a pipe, a
// regular file, /dev/null, /dev/zero or /dev/full, open for writing. The agent checks again.
func passable(f *os.File) *os.File {
	var st unix.Stat_t
	var fl int
	rc, err := f.SyscallConn()
	if err != nil {
		return nil
	}
	var serr, ferr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.Fstat(int(fd), &st)
		fl, ferr = unix.FcntlInt(fd, unix.F_GETFL, 0)
	}); err != nil || serr != nil || ferr != nil {
		return nil
	}
	if acc := fl & unix.O_ACCMODE; acc != unix.O_WRONLY && acc != unix.O_RDWR {
		return nil
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFIFO, unix.S_IFREG:
		return f
	case unix.S_IFCHR:
		if localrpc.IsNullDevice(st.Rdev) {
			return f
		}
	}
	return nil
}

// openRun connects to the agent, passing stdout and stderr if not nil, and opens a Run call.
func (g *Globals) openRun(ctx context.Context, stdout, stderr *os.File) (*localrpc.Conn, *localrpc.Stream, error) {
	conn, err := g.dialAgent(ctx, stdout, stderr)
	if err != nil {
		return nil, nil, err
	}
	stream, err := conn.Stream(ctx, methodRun)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, stream, nil
}

// dieIfOutputBroken ends this process the way a local command ends when its stdout reader
// goes away, after the agent found our stdout pipe without a reader: a write now fails with
// EPIPE, and the runtime turns that on stdout into death by SIGPIPE. Nothing is written unless the pipe
// has no reader (poll reports an error), so no byte can reach anyone.
func dieIfOutputBroken() {
	fds := []unix.PollFd{{Fd: int32(unix.Stdout), Events: unix.POLLOUT}}
	if n, err := unix.Poll(fds, 0); err != nil || n != 1 || fds[0].Revents&unix.POLLERR == 0 {
		return
	}
	_, _ = os.Stdout.Write([]byte{0})
}

// sameFile reports whether a and b are the same file (2>&1 makes them so), whose writes a
// local command would interleave in the order it makes them.
func sameFile(a, b *os.File) bool {
	sa, err := a.Stat()
	if err != nil {
		return false
	}
	sb, err := b.Stat()
	return err == nil && os.SameFile(sa, sb)
}

// inBackground reports whether this process is in a background job of the terminal on its
// stdin: that terminal's foreground process group is another one.
func inBackground() bool {
	fg, err := unix.IoctlGetInt(int(os.Stdin.Fd()), unix.TIOCGPGRP)
	return err == nil && fg != unix.Getpgrp()
}

// pumpStdin sends stdin in chunks until EOF. Send blocks while the remote side is not
// reading, so a slow consumer slows this reader: memory stays bounded.
func pumpStdin(send func(*ssipb.RunInput) error) {
	buf := make([]byte, 256<<10)
	for {
		n, err := os.Stdin.Read(buf)
		if n > 0 {
			chunk := make([]byte, n)
			copy(chunk, buf[:n])
			if send(&ssipb.RunInput{Msg: &ssipb.RunInput_Stdin{Stdin: chunk}}) != nil {
				return
			}
		}
		if err != nil {
			_ = send(&ssipb.RunInput{Msg: &ssipb.RunInput_StdinEof{StdinEof: true}})
			return
		}
	}
}
