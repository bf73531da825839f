package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/api/ssipb"
	"github.com/ssi-cluster/ssi/internal/gpid"
)

func newKillCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "kill [-s SIG | -SIG] GPID...",
		Short: "Send a signal to processes anywhere in the cluster, like kill(1)",
		Long: `Send a signal (default TERM) to processes by global process id. A user may signal only
their own processes; root may signal any. SIG is a name (TERM, SIGKILL, hup) or a number.`,
		Example: `  ssi kill 20004321
  ssi kill -9 20004321 30000042
  ssi kill -s USR1 20004321
  ssi kill -l`,
		// kill(1)'s "-9" and "-KILL" forms are not flags cobra can parse.
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			args = takeSocketFlag(g, args)
			if len(args) > 1 && (args[0] == "-l" || args[0] == "--list") {
				lines, err := translateSignals(args[1:])
				for _, l := range lines {
					fmt.Fprintln(cmd.OutOrStdout(), l)
				}
				return err
			}
			sig, gpids, list, err := parseKillArgs(args)
			if err != nil {
				return err
			}
			if list {
				return printSignals(cmd)
			}
			if help(args) {
				return cmd.Help()
			}
			ctl, closeConn, err := g.control()
			if err != nil {
				return err
			}
			defer closeConn()
			ctx, cancel := context.WithTimeout(cmd.Context(), callTimeout)
			defer cancel()
			resp, err := ctl.Kill(ctx, &ssipb.KillRequest{Gpids: gpids, Signal: int32(sig)})
			if err != nil {
				return g.rpcError(err)
			}
			failed := 0
			for _, r := range resp.Results {
				if r.Error != "" {
					fmt.Fprintf(os.Stderr, "ssi kill: %s\n", r.Error)
					failed++
				}
			}
			if failed > 0 {
				return exitError{code: 1}
			}
			return nil
		},
	}
	return cmd
}

// takeSocketFlag removes the global --socket flag, which flag parsing would otherwise handle.
func takeSocketFlag(g *globals, args []string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case a == "--socket" && i+1 < len(args):
			g.socket = args[i+1]
			i++
		case strings.HasPrefix(a, "--socket="):
			g.socket = strings.TrimPrefix(a, "--socket=")
		default:
			out = append(out, a)
		}
	}
	return out
}

func help(args []string) bool {
	for _, a := range args {
		if a == "-h" || a == "--help" {
			return true
		}
	}
	return false
}

// parseKillArgs reads kill(1)-style arguments.
func parseKillArgs(args []string) (sig unix.Signal, gpids []int64, list bool, err error) {
	sig = unix.SIGTERM
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-l" || a == "--list":
			return 0, nil, true, nil
		case a == "-h" || a == "--help":
			return sig, nil, false, nil
		case a == "-s" || a == "--signal":
			if i+1 >= len(args) {
				return 0, nil, false, errors.New("-s needs a signal name or number, e.g. -s KILL")
			}
			i++
			if sig, err = parseSignal(args[i]); err != nil {
				return 0, nil, false, err
			}
		case a == "--":
			for _, rest := range args[i+1:] {
				g, err := gpid.Parse(rest)
				if err != nil {
					return 0, nil, false, err
				}
				gpids = append(gpids, g)
			}
			i = len(args)
		case strings.HasPrefix(a, "-") && len(a) > 1:
			if sig, err = parseSignal(a[1:]); err != nil {
				return 0, nil, false, err
			}
		default:
			g, err := gpid.Parse(a)
			if err != nil {
				return 0, nil, false, err
			}
			gpids = append(gpids, g)
		}
	}
	if len(gpids) == 0 {
		return 0, nil, false, errors.New("no GPID given: usage is ssi kill [-s SIG | -SIG] GPID... (see ssi ps)")
	}
	return sig, gpids, false, nil
}

// maxSignal is the highest signal Linux has (SIGRTMAX), as kill(1) accepts.
const maxSignal = 64

// parseSignal accepts "9", "KILL", "SIGKILL" and lower-case forms, as ssi kill does: any signal
// 1-64, or 0, which as in kill(1) only checks that the processes exist and may be signalled.
func parseSignal(s string) (unix.Signal, error) {
	return parseSignalFrom(s, 0, "ssi kill")
}

// parseSignalFrom parses a signal for the command cmd, which accepts the numbers lo-64, and
// names the range it accepts in every refusal.
func parseSignalFrom(s string, lo int, cmd string) (unix.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n == 0 && lo > 0 {
			return 0, fmt.Errorf("%s cannot use signal 0 (it only tests that a process exists): use %d-%d or a name such as TERM or USR1", cmd, lo, maxSignal)
		}
		if n < lo || n > maxSignal {
			return 0, fmt.Errorf("signal %d is out of range for %s: use %d-%d or a name such as TERM (ssi kill -l lists them)", n, cmd, lo, maxSignal)
		}
		return unix.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("unknown signal %q for %s: use a name such as TERM, KILL or HUP, or a number %d-%d (ssi kill -l lists them)", s, cmd, lo, maxSignal)
}

// translateSignals answers "kill -l ARG..." as kill(1) does: a number (or an exit status
// above 128, 128+N) gives the signal's name, a name gives its number.
func translateSignals(args []string) ([]string, error) {
	var out []string
	for _, a := range args {
		if n, err := strconv.Atoi(a); err == nil {
			if n > 128 {
				n -= 128
			}
			name := unix.SignalName(unix.Signal(n))
			if n < 1 || name == "" {
				return out, fmt.Errorf("%s is not a signal number: see ssi kill -l", a)
			}
			out = append(out, strings.TrimPrefix(name, "SIG"))
			continue
		}
		sig, err := parseSignal(a)
		if err != nil {
			return out, err
		}
		out = append(out, strconv.Itoa(int(sig)))
	}
	return out, nil
}

func printSignals(cmd *cobra.Command) error {
	var names []string
	for n := unix.Signal(1); n < 32; n++ {
		if name := unix.SignalName(n); name != "" {
			names = append(names, fmt.Sprintf("%2d) %s", n, name))
		}
	}
	for i := 0; i < len(names); i += 5 {
		fmt.Fprintln(cmd.OutOrStdout(), strings.Join(names[i:min(i+5, len(names))], "\t"))
	}
	return nil
}
