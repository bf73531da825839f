// Package cli builds ssi's command tree. Each file holds one command group; commands return
// errors to main rather than exiting, and print through one printer (table or JSON).
package cli

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/buildinfo"
	"github.com/ssi-cluster/ssi/internal/localrpc"
)

// Globals are the options every client command shares.
type Globals struct {
	socket string
	build  buildinfo.Info
	args   []string // the command line, for handing a command to ssid
}

// SocketFlag is --socket as given (empty when not given).
func (g *Globals) SocketFlag() string { return g.socket }

// Build identifies the binary.
func (g *Globals) Build() buildinfo.Info { return g.build }

// socketPath resolves where the local agent listens: --socket, else $SSI_SOCKET, else the default.
func (g *Globals) socketPath() string {
	if g.socket != "" {
		return g.socket
	}
	if s := os.Getenv("SSI_SOCKET"); s != "" {
		return s
	}
	return localrpc.DefaultSocket
}

// ServerCommands makes the commands that run the cluster rather than use it (the agent, the
// simulated cluster). Only ssid links them: they bring the embedded etcd server, FUSE and the
// rest of the agent, whose start-up would slow every client command by milliseconds.
type ServerCommands func(g *Globals) []*cobra.Command

// NewRoot returns the ssi command tree for the command line args. Without server commands
// (the ssi binary), the agent and dev commands hand the whole command line to ssid.
func NewRoot(build buildinfo.Info, args []string, server ServerCommands) *cobra.Command {
	g := &Globals{build: build, args: args}
	root := &cobra.Command{
		Use:   "ssi",
		Short: "ssi makes a cluster of Linux machines look and behave like one computer",
		Long: `ssi is a single system image for Linux clusters: one process space, one file tree,
one job scheduler and one control point over every node, kept running when nodes fail.

Every node runs "ssi agent"; every other command talks to the local agent.`,
		Example: `  sudo ssi dev --nodes 3                 # a 3-node cluster of simulated hosts on this machine
  export SSI_SOCKET=/tmp/ssi-dev/n1/ssi.sock
  ssi nodes                              # every node with its state and load
  ssi status -o json`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	// ssi --version, as most tools answer it, says what ssi version does.
	root.Version = build.Version
	root.SetVersionTemplate(versionLine(build) + "\n")
	root.PersistentFlags().StringVar(&g.socket, "socket", "", "the local agent's socket (default $SSI_SOCKET, else "+localrpc.DefaultSocket+")")
	if server != nil {
		root.AddCommand(server(g)...)
	} else {
		root.AddCommand(serverStubs(g)...)
	}
	root.AddCommand(
		newNodesCommand(g),
		newStatusCommand(g),
		newTokenCommand(g),
		newRunCommand(g),
		newRshCommand(g),
		newPsCommand(g),
		newKillCommand(g),
		newWaitCommand(g),
		newFSCommand(g),
		newVersionCommand(g),
	)
	root.AddCommand(newJobsCommands(g)...)
	addCompletionExamples(root)
	strictGroups(root)
	strictHelp(root)
	withUsageHints(root)
	return root
}

// strictGroups makes a word that is none of a command group's subcommands ("ssi token
// crate") an error, as it is at the top level: cobra shows the group's help for it and exits
// 0, so a typo in a script goes unnoticed. The group alone still shows its help.
func strictGroups(root *cobra.Command) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if !sub.Runnable() && sub.HasSubCommands() {
				sub.Args = cobra.NoArgs
				sub.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
			}
			walk(sub)
		}
	}
	walk(root)
}

// strictHelp makes "ssi help" about a command that does not exist an error: cobra's prints
// "Unknown help topic" with the usage and exits 0.
func strictHelp(root *cobra.Command) {
	root.InitDefaultHelpCmd()
	for _, help := range root.Commands() {
		if help.Name() != "help" || help.Run == nil {
			continue
		}
		show := help.Run
		help.Run = nil
		help.Example = "  ssi help run\n  ssi help token create"
		help.RunE = func(c *cobra.Command, args []string) error {
			cmd, rest, err := c.Root().Find(args)
			if err != nil || cmd == nil || len(rest) > 0 {
				return fmt.Errorf("no command %q to help with: see ssi --help for the commands", strings.Join(args, " "))
			}
			show(c, args)
			return nil
		}
	}
}

// addCompletionExamples makes cobra's completion command now, rather than at Execute, so
// that it too can show an example, as every command's --help does.
func addCompletionExamples(root *cobra.Command) {
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		if c.Name() != "completion" {
			continue
		}
		c.Example = `  source <(ssi completion bash)
  ssi completion zsh > "${fpath[1]}/_ssi"`
		examples := map[string]string{
			"bash":       "  source <(ssi completion bash)\n  ssi completion bash > /etc/bash_completion.d/ssi",
			"zsh":        `  ssi completion zsh > "${fpath[1]}/_ssi"`,
			"fish":       "  ssi completion fish > ~/.config/fish/completions/ssi.fish",
			"powershell": "  ssi completion powershell | Out-String | Invoke-Expression",
		}
		for _, sh := range c.Commands() {
			sh.Example = examples[sh.Name()]
		}
	}
}

// withUsageHints makes cobra's own messages for wrong arguments and flags (e.g. "accepts 1
// arg(s), received 0", "unknown flag: --nod") name the fix too: the command's --help. Messages
// of our own validators already say what to do, and carry "--help" when they point there.
func withUsageHints(root *cobra.Command) {
	hint := func(cmd *cobra.Command, err error) error {
		if err == nil || strings.Contains(err.Error(), "--help") {
			return err
		}
		err = flagValueError(err)
		if cmd.Name() == "submit" || cmd.Name() == "alloc" {
			err = withSlurmHint(err)
		}
		return fmt.Errorf("%w: see %s --help", err, cmd.CommandPath())
	}
	root.SetFlagErrorFunc(hint)
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if check := c.Args; check != nil {
			c.Args = func(cmd *cobra.Command, args []string) error { return hint(cmd, check(cmd, args)) }
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// flagValueError words pflag's error for a number, boolean or duration flag that did not parse
// ("invalid argument "x" for "-N, --nodes" flag: strconv.ParseInt: parsing "x": invalid
// syntax") as what the value should be; other errors are returned as they are.
func flagValueError(err error) error {
	var bad *pflag.InvalidValueError
	if !errors.As(err, &bad) {
		return err
	}
	name, value := bad.GetFlag().Name, bad.GetValue()
	kind := bad.GetFlag().Value.Type()
	if kind == "duration" {
		// time.ParseDuration's own words ("time: unknown unit \"x\" in duration \"1x\"").
		return fmt.Errorf("--%s %q is not a duration: give a number with a unit, e.g. 90s, 30m or 24h", name, value)
	}
	var num *strconv.NumError
	if !errors.As(err, &num) {
		return err
	}
	switch {
	case kind == "bool":
		return fmt.Errorf("--%s=%s: give true or false, or just --%s", name, value, name)
	case errors.Is(num.Err, strconv.ErrRange):
		return fmt.Errorf("--%s %s is out of range", name, value)
	case strings.HasPrefix(kind, "float"):
		return fmt.Errorf("--%s %q is not a number", name, value)
	}
	return fmt.Errorf("--%s %q is not a whole number", name, value)
}

// Execute runs the command tree and returns the process exit code.
func Execute(build buildinfo.Info, args []string, server ServerCommands) int {
	asShortLivedClient()
	return execute(NewRoot(build, args, server), args, os.Stdout, os.Stderr)
}

// execute runs root with args, writing what commands print to stdout and ssi's own messages
// to stderr, and returns the exit code.
func execute(root *cobra.Command, args []string, stdout, stderr io.Writer) int {
	out := &outputWriter{w: stdout}
	root.SetOut(out)
	root.SetArgs(args)
	cmd, err := root.ExecuteC()
	if err == nil && out.err != nil {
		// Output that did not reach its file (a full disk, /dev/full) is a failure, as for
		// any Unix tool: "ssi token create > token" must not leave an empty file and exit 0.
		// A reader that went away ends ssi by SIGPIPE before this, as it does them.
		err = fmt.Errorf("writing standard output: %w", out.err)
	}
	if err != nil && cmd == root && !strings.Contains(err.Error(), "--help") {
		// An unknown command: cobra checks the root's words itself, past withUsageHints.
		err = fmt.Errorf("%s: see ssi --help", oneLineSuggestions(err.Error()))
	}
	if err == nil {
		return 0
	}
	var ee exitError
	if errors.As(err, &ee) {
		if ee.msg != "" {
			fmt.Fprintln(stderr, "ssi: "+ee.msg)
		}
		if ee.signal != 0 {
			dieOfSignal(ee.signal)
		}
		return ee.code
	}
	fmt.Fprintln(stderr, "ssi: "+err.Error())
	return 1
}

// oneLineSuggestions puts cobra's suggestions for a mistyped command ("unknown command
// \"nodse\" for \"ssi\"\n\nDid you mean this?\n\tnodes\n") on the message's one line.
func oneLineSuggestions(msg string) string {
	first, rest, ok := strings.Cut(msg, "\n\nDid you mean this?\n")
	if !ok {
		return msg
	}
	return fmt.Sprintf("%s (did you mean %s?)", first, strings.Join(strings.Fields(rest), " or "))
}

// outputWriter is the commands' standard output. It keeps the first write error, which
// commands that print with fmt.Fprint* do not look at, for execute to report.
type outputWriter struct {
	w   io.Writer
	err error
}

func (o *outputWriter) Write(p []byte) (int, error) {
	n, err := o.w.Write(p)
	if err == nil {
		return n, nil
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err // "write /dev/stdout: ..." names a path the user never gave
	}
	if o.err == nil {
		o.err = err
	}
	return n, err
}

// exitError ends the process with a specific code (e.g. a remote command's status).
type exitError struct {
	code int
	msg  string
	// signal, if not 0, is the signal to die of instead (code is then 128+signal): the one
	// that killed a remote command.
	signal unix.Signal
}

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// Exit is the error that makes Execute return code, after printing msg (if any) as ssi's
// one-line message.
func Exit(code int, msg string) error { return exitError{code: code, msg: msg} }
