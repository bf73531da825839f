package cli

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ssi-cluster/ssi/internal/gpid"
)

// FuzzParseSignal checks the signal argument of ssi kill (0-64) and ssi cancel -s (1-64): no
// panic, an accepted signal is within the command's range, a name gives the signal of that
// name, and every refusal names the command.
func FuzzParseSignal(f *testing.F) {
	for _, s := range []string{"9", "KILL", "SIGKILL", "kill", "sigterm", "usr1", "0", "64", "65", "-1", "+9",
		"0x9", "09", "9 ", " 9", "SIG", "", "SIGSIGKILL", "RTMIN+3", "ſigkıll", "\x00", "99999999999999999999"} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, s string, cancel bool) {
		lo, cmd := 0, "ssi kill"
		if cancel {
			lo, cmd = 1, "ssi cancel -s"
		}
		sig, err := parseSignalFrom(s, lo, cmd)
		if err != nil {
			if sig != 0 || !strings.Contains(err.Error(), cmd) {
				t.Fatalf("%q: %v, %v", s, sig, err)
			}
			return
		}
		if int(sig) < lo || sig > maxSignal {
			t.Fatalf("%s accepted %q as signal %d", cmd, s, sig)
		}
		if _, err := strconv.Atoi(s); err == nil {
			return
		}
		if back := signalByName(signalName(sig)); back != sig {
			t.Fatalf("%q parsed as %d, named %q, which reads back as %d", s, sig, signalName(sig), back)
		}
		if !strings.HasPrefix(strings.ToUpper(s), "SIGRT") && !strings.HasPrefix(strings.ToUpper(s), "RT") &&
			!strings.EqualFold(signalName(sig), strings.TrimPrefix(strings.ToUpper(s), "SIG")) {
			t.Fatalf("%q parsed as %d, named %q", s, sig, signalName(sig))
		}
	})
}

// FuzzParseKillArgs checks ssi kill's kill(1)-style argument list: no panic, and an accepted
// list has a signal in range and GPIDs that re-format to what was given.
func FuzzParseKillArgs(f *testing.F) {
	f.Add("-9\x0020004321\x0030000042")
	f.Add("-s\x00USR1\x0020004321")
	f.Add("-s")
	f.Add("-l")
	f.Add("--\x00-9")
	f.Add("-\x0020004321")
	f.Add("--signal\x00--\x0020004321")
	f.Add("-KILL\x00-TERM\x0010000001")
	f.Add("20004321\x00-h")
	f.Add("")
	f.Fuzz(func(t *testing.T, joined string) {
		args := strings.Split(joined, "\x00")
		sig, gpids, list, err := parseKillArgs(args)
		if err != nil || list {
			return
		}
		if sig < 0 || sig > maxSignal {
			t.Fatalf("%q: signal %d", args, sig)
		}
		if len(gpids) == 0 && !help(args) {
			t.Fatalf("%q: accepted with no GPID", args)
		}
		for _, g := range gpids {
			g := max(g, -g) // a negative one names the process group of its absolute value
			back, err := gpid.Parse(gpid.Format(g))
			if err != nil || back != g {
				t.Fatalf("%q: GPID %d re-formats as %q, parses back as %d, %v", args, g, gpid.Format(g), back, err)
			}
		}
	})
}

// FuzzTranslateSignals checks ssi kill -l ARG: a number's name translates back to the number,
// a name's number back to the name.
func FuzzTranslateSignals(f *testing.F) {
	for _, s := range []string{"9", "137", "128", "129", "KILL", "sigusr1", "0", "-9", "31", "32", "64", "192", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, a string) {
		out, err := translateSignals([]string{a})
		if err != nil {
			if len(out) != 0 {
				t.Fatalf("%q: %v and output %q", a, err, out)
			}
			return
		}
		if len(out) != 1 {
			t.Fatalf("%q: output %q", a, out)
		}
		back, err := translateSignals(out)
		if err != nil || len(back) != 1 {
			t.Fatalf("%q gave %q, which does not translate back: %q, %v", a, out, back, err)
		}
		if n, err := strconv.Atoi(a); err == nil {
			if n > 128 {
				n -= 128
			}
			if back[0] != strconv.Itoa(n) {
				t.Fatalf("%q gave %q, which translates to %q", a, out, back)
			}
		} else if o, err := strconv.Atoi(out[0]); err != nil || o < 0 || o > maxSignal {
			t.Fatalf("name %q gave %q", a, out)
		}
	})
}

// FuzzParseSince checks ssi jobs --since: no panic, and a duration or a day count looks back,
// never ahead.
func FuzzParseSince(f *testing.F) {
	for _, s := range []string{"24h", "7d", "0d", "-1d", "2026-03-01", "2026-03-01T10:00:00Z", "2026-03-01 10:00:00",
		"9223372036854775807d", "106751d", "2562047h", "-5m", "d", "1.5d", "", "2026-02-30"} {
		f.Add(s)
	}
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, s string) {
		got, err := parseSince(s, now)
		if err != nil {
			if !strings.Contains(err.Error(), "--since") {
				t.Fatalf("%q: %v", s, err)
			}
			return
		}
		days, isDays := strings.CutSuffix(s, "d")
		_, nerr := strconv.Atoi(days)
		_, derr := time.ParseDuration(s)
		if (isDays && nerr == nil || derr == nil) && got.After(now) {
			t.Fatalf("--since %q looks ahead: %v after %v", s, got, now)
		}
	})
}
