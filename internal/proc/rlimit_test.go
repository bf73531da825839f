package proc

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestCommandStartsWithTheGivenLimits starts commands with limits other than the agent's, on
// each way a start can take (forked here, by a spawner for another umask, as another user),
// and checks the command sees them from its first instruction on (the shell reads them
// before it runs anything else).
func TestCommandStartsWithTheGivenLimits(t *testing.T) {
	requireRoot(t)
	out, err := exec.Command("sh", "-c", "ulimit -Sn").Output()
	if err != nil {
		t.Fatal(err)
	}
	inheritedSoft, err := strconv.ParseUint(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	var nofile unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &nofile); err != nil {
		t.Fatal(err)
	}
	// Without CAP_SYS_RESOURCE (the root of some containers) a hard limit cannot be raised
	// above the agent's: the command keeps the inherited one.
	raisedMax := nofile.Max + 1
	if !hasCapability(t, unix.CAP_SYS_RESOURCE) {
		raisedMax = nofile.Max
	}
	limits := []Rlimit{
		{Resource: unix.RLIMIT_CORE, Cur: 0, Max: 0},
		{Resource: unix.RLIMIT_STACK, Cur: 4 << 20, Max: unix.RLIM_INFINITY},
		{Resource: unix.RLIMIT_FSIZE, Cur: 1 << 30, Max: 2 << 30},
		{Resource: unix.RLIMIT_NOFILE, Cur: 333, Max: 777},
	}
	script := `echo $(ulimit -Sc) $(ulimit -Hc) $(ulimit -Ss) $(ulimit -Hs) $(ulimit -Sf) $(ulimit -Hf) $(ulimit -Sn) $(ulimit -Hn)`
	tests := []struct {
		name   string
		adjust func(*Spec)
		limits []Rlimit
		want   string
	}{
		{"forked here", func(*Spec) {}, limits, "0 0 4096 unlimited 2097152 4194304 333 777"},
		{"by a spawner", func(s *Spec) { s.Umask = 0o077 }, limits, "0 0 4096 unlimited 2097152 4194304 333 777"},
		{"as another user", func(s *Spec) { s.UID, s.GID = 65534, 65534 }, limits, "0 0 4096 unlimited 2097152 4194304 333 777"},
		{"soft limit on open files unknown", func(*Spec) {},
			[]Rlimit{{Resource: unix.RLIMIT_NOFILE, CurUnknown: true, Max: 512}},
			"* * * * * * " + strconv.FormatUint(min(inheritedSoft, 512), 10) + " 512"},
		{"a hard limit raised above the agent's", func(*Spec) {},
			[]Rlimit{{Resource: unix.RLIMIT_NOFILE, Cur: 64, Max: nofile.Max + 1}},
			"* * * * * * 64 " + strconv.FormatUint(raisedMax, 10)},
		{"only root raises a hard limit", func(s *Spec) { s.UID, s.GID = 65534, 65534 },
			[]Rlimit{{Resource: unix.RLIMIT_NOFILE, Cur: 64, Max: nofile.Max + 1}},
			"* * * * * * 64 " + strconv.FormatUint(nofile.Max, 10)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := rootSpec("sh", "-c", script)
			spec.Rlimits = tt.limits
			tt.adjust(&spec)
			got := run(t, spec)
			fields, want := strings.Fields(got.stdout), strings.Fields(tt.want)
			if got.code != 0 || len(fields) != len(want) {
				t.Fatalf("exit %d, stdout %q, stderr %q", got.code, got.stdout, got.stderr)
			}
			for i := range want {
				if want[i] != "*" && fields[i] != want[i] {
					t.Errorf("limits seen: %s, want %s", got.stdout, tt.want)
					break
				}
			}
		})
	}
}

// TestLimitsAsInheritedNeedNoTrace checks which starts need their limits set: those whose
// limits differ from what a command inherits, and all of them until that is known.
func TestLimitsAsInheritedNeedNoTrace(t *testing.T) {
	known := map[int]unix.Rlimit{
		unix.RLIMIT_NOFILE: {Cur: 1024, Max: 4096},
		unix.RLIMIT_CORE:   {Cur: 0, Max: unix.RLIM_INFINITY},
	}
	tests := []struct {
		name     string
		defaults map[int]unix.Rlimit
		limits   []Rlimit
		want     []Rlimit
		needed   bool
	}{
		{"nothing known yet", nil, []Rlimit{{Resource: unix.RLIMIT_CORE, Max: unix.RLIM_INFINITY}},
			[]Rlimit{{Resource: unix.RLIMIT_CORE, Max: unix.RLIM_INFINITY}}, true},
		{"as inherited", known, []Rlimit{{Resource: unix.RLIMIT_CORE, Max: unix.RLIM_INFINITY}, {Resource: unix.RLIMIT_NOFILE, CurUnknown: true, Max: 4096}},
			[]Rlimit{{Resource: unix.RLIMIT_CORE, Max: unix.RLIM_INFINITY}, {Resource: unix.RLIMIT_NOFILE, Cur: 1024, Max: 4096}}, false},
		{"unknown soft limit under a lower hard one", known, []Rlimit{{Resource: unix.RLIMIT_NOFILE, CurUnknown: true, Max: 512}},
			[]Rlimit{{Resource: unix.RLIMIT_NOFILE, Cur: 512, Max: 512}}, true},
		{"a core limit raised", known, []Rlimit{{Resource: unix.RLIMIT_CORE, Cur: unix.RLIM_INFINITY, Max: unix.RLIM_INFINITY}},
			[]Rlimit{{Resource: unix.RLIMIT_CORE, Cur: unix.RLIM_INFINITY, Max: unix.RLIM_INFINITY}}, true},
		{"a resource not read", known, []Rlimit{{Resource: unix.RLIMIT_STACK, Cur: 1, Max: 2}},
			[]Rlimit{{Resource: unix.RLIMIT_STACK, Cur: 1, Max: 2}}, true},
		{"none asked", known, nil, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := inherited{limits: tt.defaults}
			got, needed := d.resolve(tt.limits)
			if needed != tt.needed || len(got) != len(tt.want) {
				t.Fatalf("resolve = %+v, %v; want %+v, %v", got, needed, tt.want, tt.needed)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("resolve = %+v; want %+v", got, tt.want)
				}
			}
		})
	}
}

func hasCapability(t *testing.T, c int) bool {
	t.Helper()
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if hex, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return caps&(1<<c) != 0
		}
	}
	t.Fatal("no CapEff in /proc/self/status")
	return false
}

func TestRlimitsOfMatchesGetrlimit(t *testing.T) {
	got, err := RlimitsOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != rlimitCount {
		t.Fatalf("%d limits read, want %d", len(got), rlimitCount)
	}
	for _, l := range got {
		var want unix.Rlimit
		if err := unix.Getrlimit(l.Resource, &want); err != nil {
			t.Fatal(err)
		}
		if l.Cur != want.Cur || l.Max != want.Max || l.CurUnknown != (l.Resource == unix.RLIMIT_NOFILE && want.Cur == want.Max) {
			t.Errorf("limit %d: %+v from /proc, %d:%d from getrlimit", l.Resource, l, want.Cur, want.Max)
		}
	}
}

func TestParseLimitsRefusesWhatItCannotRead(t *testing.T) {
	for _, text := range []string{
		"",
		"Limit                     Soft Limit           Hard Limit           Units\nMax cpu time              unlimited            unlimited            seconds\n",
		"Max cpu time              ten            unlimited            seconds\n",
		"Max cpu time              10\n",
	} {
		if got, err := parseLimits(text); err == nil {
			t.Errorf("parseLimits(%q) = %+v, want an error", text, got)
		}
	}
}
