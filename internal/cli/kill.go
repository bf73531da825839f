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

func newKillCommand(g *Globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "kill [-s SIG | --signal=SIG | -SIG | -N] [--] GPID|-GPID...",
		Short: "Send a signal to processes anywhere in the cluster, like kill(1)",
		Long: `Send a signal (default TERM) to processes by global process id. A user may signal only
their own processes; root may signal any. SIG is a name (TERM, SIGKILL, hup) or a number,
given as -s SIG, -sSIG, -n N, --signal SIG, --signal=SIG, -SIG or -N. As in kill(1), -GPID
(after the signal or --) is the process group that GPID leads: every process in it.`,
		Example: `  ssi kill 20004321
  ssi kill -9 20004321 30000042
  ssi kill -s USR1 20004321
  ssi kill -TERM -- -20004321                # the process group 20004321 leads
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
			ctl := g.control()
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
func takeSocketFlag(g *Globals, args []string) []string {
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

// parseKillArgs reads kill(1)-style arguments: the signal as -s SIG, -sSIG, -n SIG,
// --signal SIG, --signal=SIG, -SIG or -N. As kill(1), a bad signal is reported before a bad
// GPID, wherever each stands.
func parseKillArgs(args []string) (sig unix.Signal, gpids []int64, list bool, err error) {
	sig = unix.SIGTERM
	var words []string
	sigGiven := false
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-l" || a == "--list":
			return 0, nil, true, nil
		case a == "-h" || a == "--help":
			return sig, nil, false, nil
		case a == "-s" || a == "--signal" || a == "-n":
			if i+1 >= len(args) {
				return 0, nil, false, fmt.Errorf("%s needs a signal name or number, e.g. %s KILL", a, a)
			}
			i++
			if sig, err = parseSignal(args[i]); err != nil {
				return 0, nil, false, err
			}
			sigGiven = true
		case strings.HasPrefix(a, "--signal="):
			if sig, err = parseSignal(strings.TrimPrefix(a, "--signal=")); err != nil {
				return 0, nil, false, err
			}
			sigGiven = true
		case a == "--":
			words = append(words, args[i+1:]...)
			i = len(args)
		case sigGiven && isGroup(a):
			// After the signal, -GPID is a process group, as in kill -TERM -1234.
			words = append(words, a)
		case strings.HasPrefix(a, "-") && len(a) > 1:
			sig, err = parseSignal(a[1:])
			if err != nil && len(a) > 2 && (a[1] == 's' || a[1] == 'n') {
				// -sTERM, -n9: the option with its value attached. A whole name comes
				// first, so that -stop (STOP, any case as elsewhere) keeps its meaning.
				if s, err2 := parseSignal(a[2:]); err2 == nil {
					sig, err = s, nil
				}
			}
			if err != nil {
				return 0, nil, false, err
			}
			sigGiven = true
		default:
			words = append(words, a)
		}
	}
	for _, w := range words {
		group := isGroup(w)
		g, err := gpid.Parse(strings.TrimPrefix(w, "-"))
		if err != nil {
			return 0, nil, false, err
		}
		if group {
			g = -g
		}
		gpids = append(gpids, g)
	}
	if len(gpids) == 0 {
		return 0, nil, false, errors.New("no GPID given: usage is ssi kill [-s SIG | -SIG] GPID... (see ssi ps)")
	}
	return sig, gpids, false, nil
}

// isGroup reports whether a names a process group, -GPID.
func isGroup(a string) bool {
	return len(a) > 1 && a[0] == '-' && strings.Trim(a[1:], "0123456789") == ""
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
	if sig := signalByName(s); sig != 0 {
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
			name := signalName(unix.Signal(n))
			if n < 1 || name == "" {
				return out, fmt.Errorf("%s is not a signal number: see ssi kill -l", a)
			}
			out = append(out, name)
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

// The real-time signals the C library leaves to programs, 34-64 (it keeps 32 and 33), have no
// names of their own: kill(1) calls them RTMIN, RTMIN+1 ... RTMAX-1, RTMAX, counting from the
// nearer end.
const (
	sigRTMin = 34
	sigRTMax = maxSignal
)

// signalName is sig's name without "SIG" as kill(1) gives it, or "" for a number without one.
func signalName(sig unix.Signal) string {
	switch n := int(sig); {
	case n == sigRTMin:
		return "RTMIN"
	case n == sigRTMax:
		return "RTMAX"
	case n > sigRTMin && n <= (sigRTMin+sigRTMax)/2:
		return fmt.Sprintf("RTMIN+%d", n-sigRTMin)
	case n > (sigRTMin+sigRTMax)/2 && n < sigRTMax:
		return fmt.Sprintf("RTMAX-%d", sigRTMax-n)
	}
	return strings.TrimPrefix(unix.SignalName(sig), "SIG")
}

// signalByName reads a signal name in any case, with or without "SIG", the real-time ones
// as RTMIN+N or RTMAX-N; 0 if it names none.
func signalByName(s string) unix.Signal {
	name := strings.TrimPrefix(strings.ToUpper(s), "SIG")
	n := 0
	if rest, ok := strings.CutPrefix(name, "RTMIN"); ok {
		n = rtOffset(rest, '+', sigRTMin, 1)
	} else if rest, ok := strings.CutPrefix(name, "RTMAX"); ok {
		n = rtOffset(rest, '-', sigRTMax, -1)
	} else {
		return unix.SignalNum("SIG" + name)
	}
	if n < sigRTMin || n > sigRTMax {
		return 0
	}
	return unix.Signal(n)
}

// rtOffset reads the "+N" (or "-N") after RTMIN (RTMAX) and counts from base in direction
// dir; it returns 0 for anything else.
func rtOffset(rest string, sign byte, base, dir int) int {
	if rest == "" {
		return base
	}
	if rest[0] != sign || len(rest) < 2 || rest[1] < '0' || rest[1] > '9' {
		return 0
	}
	off, err := strconv.Atoi(rest[1:])
	if err != nil || off > sigRTMax-sigRTMin {
		return 0
	}
	return base + dir*off
}

func printSignals(cmd *cobra.Command) error {
	var names []string
	for n := unix.Signal(1); n <= maxSignal; n++ {
		if name := signalName(n); name != "" {
			names = append(names, fmt.Sprintf("%2d) SIG%s", n, name))
		}
	}
	for i := 0; i < len(names); i += 5 {
		fmt.Fprintln(cmd.OutOrStdout(), strings.Join(names[i:min(i+5, len(names))], "\t"))
	}
	return nil
}
