package cluster

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestParseLoadavg(t *testing.T) {
	l1, l5, l15, r, err := parseLoadavg("0.50 1.25 2.00 3/456 7890\n")
	if err != nil || l1 != 0.5 || l5 != 1.25 || l15 != 2 || r != 3 {
		t.Fatalf("got %v %v %v %v %v", l1, l5, l15, r, err)
	}
	for _, bad := range []string{"", "1 2 3", "a b c 1/2", "1 2 3 x/2"} {
		if _, _, _, _, err := parseLoadavg(bad); err == nil {
			t.Errorf("parseLoadavg(%q) accepted", bad)
		}
	}
}

func TestParseProcStatBusy(t *testing.T) {
	// user nice system idle iowait irq softirq steal guest guest_nice
	got, err := parseProcStatBusy([]byte("cpu  100 10 50 1000 20 5 5 7 0 0\ncpu0 1 2 3 4\n"))
	if err != nil || got != 1.7 {
		t.Fatalf("got %v, %v; want 1.7", got, err)
	}
	if _, err := parseProcStatBusy([]byte("intr 1 2 3\n")); err == nil {
		t.Fatal("accepted a file without a cpu line")
	}
}

// fakeProc builds a /proc-like tree with the given task states.
func fakeProc(t *testing.T, states map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for pid, st := range states {
		dir := filepath.Join(root, pid, "task", pid)
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "stat"), []byte(pid+" (odd) name) "+st+" 1 2 3\n"), 0o644)
	}
	os.WriteFile(filepath.Join(root, "meminfo"), []byte("MemTotal:  1000 kB\nMemFree: 100 kB\nMemAvailable:  600 kB\n"), 0o644)
	return root
}

func TestSamplerWithCgroup(t *testing.T) {
	proc := fakeProc(t, map[string]string{"1": "S", "2": "R", "3": "R", "4": "D"})
	cg := t.TempDir()
	os.WriteFile(filepath.Join(cg, "cpu.stat"), []byte("usage_usec 1000000\nuser_usec 1\n"), 0o644)
	s := NewLoadSampler(proc, cg)
	t0 := time.Unix(1000, 0)
	l, err := s.Sample(t0)
	if err != nil {
		t.Fatal(err)
	}
	if l.Runnable != 2 || l.Load1 != 2 || l.MemTotal != 1000*1024 || l.MemFree != 600*1024 || l.CPUUsed != 0 {
		t.Fatalf("first sample %+v", l)
	}
	// One and a half cores busy over two seconds; nothing runnable any more.
	os.WriteFile(filepath.Join(cg, "cpu.stat"), []byte("usage_usec 4000000\n"), 0o644)
	os.WriteFile(filepath.Join(proc, "2", "task", "2", "stat"), []byte("2 (x) S 1\n"), 0o644)
	os.WriteFile(filepath.Join(proc, "3", "task", "3", "stat"), []byte("3 (x) S 1\n"), 0o644)
	l, err = s.Sample(t0.Add(2 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if l.CPUUsed != 1.5 || l.Runnable != 0 {
		t.Fatalf("second sample %+v", l)
	}
	if !(l.Load1 < 2 && l.Load5 > l.Load1 && l.Load15 > l.Load5) {
		t.Fatalf("load averages should decay, the 1-minute fastest: %+v", l)
	}
}
