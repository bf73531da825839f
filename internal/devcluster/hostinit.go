package devcluster

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// HostBinary is where, inside every host, the ssid binary the cluster runs is
// found, and HostClient the ssi binary. The harness's binaries may live under
// /tmp (a test's temporary directory), which each host hides behind its own
// tmpfs, so the host init bind-mounts them here before hiding /tmp.
const (
	HostBinary = "/run/ssi-bin/ssid"
	HostClient = "/run/ssi-bin/ssi"
)

// HostRunDir is the directory inside a host that is DIR/nK on the machine.
const HostRunDir = "/run/ssi"

// HostSocket is the agent's socket path inside a host (the default path
// every CLI command uses).
const HostSocket = HostRunDir + "/ssi.sock"

// Files the harness hands to the host init, at fixed descriptor numbers.
const (
	// goAheadFD is read by the init: one byte once its network link is in
	// place, EOF if the harness gave up.
	goAheadFD = 3
	// statusFD is written by the init: "ok\n" once the agent is started, or
	// "error: …\n" before it exits.
	statusFD = 4
)

const statusOK = "ok"

// hostInitConfig is what the harness tells the init on its command line.
type hostInitConfig struct {
	name      string   // hostname, also the node name
	dir       string   // DIR/nK on the machine, to become /run/ssi
	link      string   // name of the veth end the harness moves in
	addr      string   // CIDR for eth0
	client    string   // the ssi binary on the machine; empty: ssid stands in for it
	agentArgs []string // agent command line, argv[0] included
}

func (c hostInitConfig) args() []string {
	args := []string{"--name", c.name, "--dir", c.dir, "--link", c.link, "--addr", c.addr}
	if c.client != "" {
		args = append(args, "--client", c.client)
	}
	return append(append(args, "--"), c.agentArgs...)
}

func parseHostInitArgs(args []string) (hostInitConfig, error) {
	var cfg hostInitConfig
	flags := flag.NewFlagSet("dev-init", flag.ContinueOnError)
	flags.SetOutput(io.Discard)
	flags.StringVar(&cfg.name, "name", "", "hostname and node name")
	flags.StringVar(&cfg.dir, "dir", "", "node directory on the machine, mounted at /run/ssi")
	flags.StringVar(&cfg.link, "link", "", "veth end moved in by the harness")
	flags.StringVar(&cfg.addr, "addr", "", "address of eth0 in CIDR form")
	flags.StringVar(&cfg.client, "client", "", "the ssi binary, mounted at "+HostClient)
	if err := flags.Parse(args); err != nil {
		return cfg, fmt.Errorf("dev-init: %w (it is started by ssi dev, not by hand)", err)
	}
	cfg.agentArgs = flags.Args()
	switch {
	case cfg.name == "" || cfg.dir == "" || cfg.link == "" || cfg.addr == "":
		return cfg, errors.New("dev-init needs --name, --dir, --link and --addr: it is started by ssi dev, not by hand")
	case len(cfg.agentArgs) == 0:
		return cfg, errors.New("dev-init needs the agent command line after --: it is started by ssi dev, not by hand")
	}
	return cfg, nil
}

// AgentExitError is returned by RunHostInit when the agent has exited; the
// init must exit with Code so that the harness sees the agent's status.
type AgentExitError struct {
	Code int
}

func (e *AgentExitError) Error() string {
	return fmt.Sprintf("agent exited with status %d", e.Code)
}

// ExitCode is the status the init process must exit with.
func (e *AgentExitError) ExitCode() int { return e.Code }

// RunHostInit is the PID 1 of a simulated host (`ssi dev-init`). The harness
// starts it in new network, UTS, mount, PID and IPC namespaces inside the
// node's cgroup. It sets the hostname, makes /tmp, /run and /dev/shm private,
// mounts the node directory at /run/ssi and a fresh /proc, waits for the
// harness to move the veth in, configures eth0 and lo, starts the agent, and
// then reaps every process of the host and forwards SIGTERM and SIGINT to the
// agent. It returns an *AgentExitError carrying the agent's status when the
// agent exits; the caller exits with it, which ends the host.
//
// No thread locking is needed: the namespaces were created for the whole
// process by clone(2), so every thread of the Go runtime is already in them.
func RunHostInit(args []string) error {
	cfg, err := parseHostInitArgs(args)
	if err != nil {
		return err
	}
	// Checked before touching fds 3 and 4, which belong to someone else
	// when we were not started by the harness.
	if os.Getpid() != 1 {
		return errors.New("dev-init must be PID 1 of a new PID namespace: it is started by ssi dev, not by hand")
	}
	for _, fd := range []int{goAheadFD, statusFD} {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
			return errors.New("dev-init needs the harness's pipes on fds 3 and 4: it is started by ssi dev, not by hand")
		}
		// Neither pipe end may leak into the agent; the harness relies on
		// EOF of the status pipe to see the init die.
		unix.CloseOnExec(fd)
	}
	goAhead := os.NewFile(goAheadFD, "go-ahead")
	status := os.NewFile(statusFD, "status")
	defer status.Close()
	fail := func(err error) error {
		fmt.Fprintf(status, "error: %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
		return err
	}

	// Installed before anything else so a SIGTERM from the harness during
	// setup is not lost: as PID 1 the init ignores signals it has no handler for.
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)

	outerProc, err := setUpHostFilesystem(cfg)
	if err != nil {
		return fail(err)
	}
	defer outerProc.Close()

	var buf [1]byte
	if _, err := goAhead.Read(buf[:]); err != nil {
		return fail(fmt.Errorf("wait for the harness to move %s in: %w", cfg.link, err))
	}
	goAhead.Close()
	if err := configureHostNetwork(cfg.link, cfg.addr); err != nil {
		return fail(err)
	}

	agent, err := startAgent(cfg.agentArgs, outerProc)
	if err != nil {
		return fail(err)
	}
	fmt.Fprintln(status, statusOK)
	status.Close()

	return superviseAgent(agent, signals)
}

// dropFUSEMounts detaches the host's copies of the machine's FUSE mounts (an
// sshfs, a test's tree): a copy keeps its FUSE connection alive, so the file
// system's daemon could not end when the machine unmounts it while the
// cluster runs, and a frozen daemon would hang the host's processes that
// touch it. What cannot be detached stays: it is no worse than before.
func dropFUSEMounts() {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var fuse []string
	for _, line := range strings.Split(string(b), "\n") {
		// ID PARENT MAJ:MIN ROOT TARGET OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
		pre, post, ok := strings.Cut(line, " - ")
		fields, fstype := strings.Fields(pre), strings.Fields(post)
		if !ok || len(fields) < 5 || len(fstype) == 0 {
			continue
		}
		if fstype[0] == "fuse" || fstype[0] == "fuseblk" || strings.HasPrefix(fstype[0], "fuse.") {
			fuse = append(fuse, unescapeMountPath(fields[4]))
		}
	}
	// Later mounts first: one may lie below another.
	for i := len(fuse) - 1; i >= 0; i-- {
		_ = unix.Unmount(fuse[i], unix.MNT_DETACH)
	}
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// setUpHostFilesystem makes the host's mounts. It returns a handle on the
// machine's /proc, taken before the host's own /proc hides it, to translate
// the agent's pid for the machine.
func setUpHostFilesystem(cfg hostInitConfig) (*os.File, error) {
	if err := unix.Sethostname([]byte(cfg.name)); err != nil {
		return nil, fmt.Errorf("set hostname %s: %w", cfg.name, err)
	}
	// Without this, the mounts below would propagate back to the machine
	// wherever / is a shared mount (systemd makes it so). A slave, not a
	// private copy: what the machine unmounts goes from the host too.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return nil, fmt.Errorf("make / a slave of the machine's: %w", err)
	}
	dropFUSEMounts()
	// Detached copies of the node directory and of our own binary, taken
	// before the tmpfs mounts hide them when they live under /tmp or /run.
	dirTree, err := unix.OpenTree(unix.AT_FDCWD, cfg.dir, unix.OPEN_TREE_CLONE|unix.O_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("clone the mount of %s: %w (needs Linux 5.2+)", cfg.dir, err)
	}
	defer unix.Close(dirTree)
	binTree, err := unix.OpenTree(unix.AT_FDCWD, "/proc/self/exe", unix.OPEN_TREE_CLONE|unix.O_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("clone the mount of the ssid binary: %w", err)
	}
	defer unix.Close(binTree)
	clientPath := "/proc/self/exe" // ssid has every client command too
	if cfg.client != "" {
		clientPath = cfg.client
	}
	clientTree, err := unix.OpenTree(unix.AT_FDCWD, clientPath, unix.OPEN_TREE_CLONE|unix.O_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("clone the mount of the ssi binary %s: %w", clientPath, err)
	}
	defer unix.Close(clientTree)
	outerProc, err := os.Open("/proc")
	if err != nil {
		return nil, fmt.Errorf("open the machine's /proc: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			outerProc.Close()
		}
	}()

	for _, m := range []struct{ target, mode string }{
		{"/tmp", "1777"}, {"/run", "0755"}, {"/dev/shm", "1777"},
	} {
		if err := unix.Mount("tmpfs", m.target, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode="+m.mode); err != nil {
			return nil, fmt.Errorf("mount a private tmpfs on %s: %w", m.target, err)
		}
	}
	if err := os.Mkdir(HostRunDir, 0o755); err != nil {
		return nil, fmt.Errorf("make %s: %w", HostRunDir, err)
	}
	if err := unix.MoveMount(dirTree, "", unix.AT_FDCWD, HostRunDir, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return nil, fmt.Errorf("mount %s at %s: %w", cfg.dir, HostRunDir, err)
	}
	if err := os.Mkdir(filepath.Dir(HostBinary), 0o755); err != nil {
		return nil, fmt.Errorf("make %s: %w", filepath.Dir(HostBinary), err)
	}
	for _, m := range []struct {
		tree int
		path string
	}{{binTree, HostBinary}, {clientTree, HostClient}} {
		if err := os.WriteFile(m.path, nil, 0o755); err != nil {
			return nil, fmt.Errorf("make the mount point %s: %w", m.path, err)
		}
		if err := unix.MoveMount(m.tree, "", unix.AT_FDCWD, m.path, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
			return nil, fmt.Errorf("mount %s at %s: %w", filepath.Base(m.path), m.path, err)
		}
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return nil, fmt.Errorf("mount the host's own /proc: %w", err)
	}
	ok = true
	return outerProc, nil
}

// startAgent starts the agent with its output appended to /run/ssi/agent.log
// and writes its machine pid to /run/ssi/agent.pid.
func startAgent(argv []string, outerProc *os.File) (*os.Process, error) {
	logFile, err := os.OpenFile(filepath.Join(HostRunDir, "agent.log"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open the agent log: %w", err)
	}
	defer logFile.Close()
	cmd := &exec.Cmd{
		Path:   argv[0],
		Args:   argv,
		Stdout: logFile,
		Stderr: logFile,
		Dir:    "/",
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the agent %s: %w", argv[0], err)
	}
	outerPid, err := outerPidOfChild(outerProc, cmd.Process.Pid)
	if err != nil {
		_ = cmd.Process.Kill()
		return nil, err
	}
	pidFile := filepath.Join(HostRunDir, "agent.pid")
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(outerPid)+"\n"), 0o644); err != nil {
		_ = cmd.Process.Kill()
		return nil, fmt.Errorf("write %s: %w", pidFile, err)
	}
	return cmd.Process, nil
}

// outerPidOfChild translates the pid of one of our children from the host's
// PID namespace to the machine's, through the machine's /proc: our children
// there are listed in each thread's children file, and each one's NSpid line
// ends with its pid in our namespace.
func outerPidOfChild(outerProc *os.File, innerPid int) (int, error) {
	self, err := readlinkAt(outerProc, "self")
	if err != nil {
		return 0, fmt.Errorf("find our own pid in the machine's /proc: %w", err)
	}
	tasks, err := readDirNamesAt(outerProc, self+"/task")
	if err != nil {
		return 0, fmt.Errorf("list our threads in the machine's /proc: %w", err)
	}
	for _, task := range tasks {
		data, err := readFileAt(outerProc, self+"/task/"+task+"/children")
		if err != nil {
			continue
		}
		for _, child := range strings.Fields(string(data)) {
			status, err := readFileAt(outerProc, child+"/status")
			if err != nil {
				continue
			}
			if pids := nsPids(status); len(pids) > 0 && pids[len(pids)-1] == innerPid {
				return strconv.Atoi(child)
			}
		}
	}
	return 0, fmt.Errorf("pid %d of the host is not among the init's children in the machine's /proc (needs CONFIG_PROC_CHILDREN)", innerPid)
}

// nsPids returns the pids on the NSpid line of a /proc/PID/status file,
// outermost namespace first.
func nsPids(status []byte) []int {
	for line := range strings.Lines(string(status)) {
		rest, ok := strings.CutPrefix(line, "NSpid:")
		if !ok {
			continue
		}
		var pids []int
		for _, f := range strings.Fields(rest) {
			pid, err := strconv.Atoi(f)
			if err != nil {
				return nil
			}
			pids = append(pids, pid)
		}
		return pids
	}
	return nil
}

func readlinkAt(dir *os.File, name string) (string, error) {
	buf := make([]byte, 64)
	n, err := unix.Readlinkat(int(dir.Fd()), name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

func openAt(dir *os.File, name string, flags int) (*os.File, error) {
	fd, err := unix.Openat(int(dir.Fd()), name, flags|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "openat", Path: name, Err: err}
	}
	return os.NewFile(uintptr(fd), name), nil
}

func readFileAt(dir *os.File, name string) ([]byte, error) {
	f, err := openAt(dir, name, unix.O_RDONLY)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

func readDirNamesAt(dir *os.File, name string) ([]string, error) {
	f, err := openAt(dir, name, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

// superviseAgent is the init's main loop: it reaps every process that ends
// in the host (orphans are reparented to PID 1) and forwards termination
// signals to the agent until the agent itself has exited.
func superviseAgent(agent *os.Process, signals <-chan os.Signal) error {
	agentExited := make(chan int, 1)
	go func() {
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, 0, nil)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				// ECHILD: nothing is left to wait for, so the agent is gone
				// without our having seen it (it cannot happen while it runs).
				agentExited <- 1
				return
			}
			if pid == agent.Pid {
				agentExited <- exitCode(ws)
				return
			}
		}
	}()
	for {
		select {
		case sig := <-signals:
			// ESRCH only means the agent is exiting already.
			_ = agent.Signal(sig)
		case code := <-agentExited:
			return &AgentExitError{Code: code}
		}
	}
}

// exitCode maps a wait status to a shell-style exit code.
func exitCode(ws unix.WaitStatus) int {
	switch {
	case ws.Exited():
		return ws.ExitStatus()
	case ws.Signaled():
		return 128 + int(ws.Signal())
	default:
		return 1
	}
}

// readStatusLine reads the init's report from the status pipe.
func readStatusLine(r io.Reader) error {
	line, err := bufio.NewReader(r).ReadString('\n')
	line = strings.TrimSpace(line)
	switch {
	case line == statusOK:
		return nil
	case strings.HasPrefix(line, "error: "):
		return errors.New(strings.TrimPrefix(line, "error: "))
	case err != nil:
		return fmt.Errorf("the host init exited before starting the agent (%w)", err)
	default:
		return fmt.Errorf("unexpected report from the host init: %q", line)
	}
}
