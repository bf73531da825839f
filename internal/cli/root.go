// Package cli builds ssi's command tree. Each file holds one command group; commands return
// errors to main rather than exiting, and print through one printer (table or JSON).
package cli

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ssi-cluster/ssi/internal/agent"
)

// BuildInfo identifies the binary.
type BuildInfo struct {
	Version string
	Commit  string
}

// globals are the options every client command shares.
type globals struct {
	socket string
	build  BuildInfo
}

// socketPath resolves where the local agent listens: --socket, else $SSI_SOCKET, else the default.
func (g *globals) socketPath() string {
	if g.socket != "" {
		return g.socket
	}
	if s := os.Getenv("SSI_SOCKET"); s != "" {
		return s
	}
	return agent.DefaultSocket
}

// NewRoot returns the ssi command tree.
func NewRoot(build BuildInfo) *cobra.Command {
	g := &globals{build: build}
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
	root.PersistentFlags().StringVar(&g.socket, "socket", "", "the local agent's socket (default $SSI_SOCKET, else "+agent.DefaultSocket+")")
	root.AddCommand(
		newAgentCommand(g),
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
		newDevCommand(),
		newDevInitCommand(),
	)
	root.AddCommand(newJobsCommands(g)...)
	addCompletionExamples(root)
	withUsageHints(root)
	return root
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

// Execute runs the command tree and returns the process exit code.
func Execute(build BuildInfo, args []string) int {
	asShortLivedClient()
	root := NewRoot(build)
	root.SetArgs(args)
	cmd, err := root.ExecuteC()
	if err != nil && cmd == root && !strings.Contains(err.Error(), "--help") {
		// An unknown command: cobra checks the root's words itself, past withUsageHints.
		err = fmt.Errorf("%w: see ssi --help", err)
	}
	if err == nil {
		return 0
	}
	var ee exitError
	if errors.As(err, &ee) {
		if ee.msg != "" {
			fmt.Fprintln(os.Stderr, "ssi: "+ee.msg)
		}
		return ee.code
	}
	fmt.Fprintln(os.Stderr, "ssi: "+err.Error())
	return 1
}

// exitError ends the process with a specific code (e.g. a remote command's status).
type exitError struct {
	code int
	msg  string
}

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }
