package monitorslack

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestSecondThread(t *testing.T) {
	tests := []struct {
		name   string
		pid    int
		pidMax int
		tids   []int
		want   int
		ok     bool
	}{
		{"next id", 100, 4194304, []int{100, 101, 102, 150}, 101, true},
		{"listing order does not matter", 100, 4194304, []int{150, 102, 100, 101}, 101, true},
		{"a gap from other processes", 100, 4194304, []int{100, 107, 230}, 107, true},
		{"ids wrapped after the main thread", 32760, 32768, []int{32760, 300, 2, 32767}, 32767, true},
		{"ids wrapped before sysmon", 32767, 32768, []int{32767, 301, 300}, 300, true},
		{"only the main thread", 100, 4194304, []int{100}, 0, false},
		{"out-of-range ids are ignored", 100, 32768, []int{100, 40000, 0, 102}, 102, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := secondThread(tt.pid, tt.pidMax, tt.tids)
			if got != tt.want || ok != tt.ok {
				t.Fatalf("secondThread(%d, %d, %v) = %d, %v; want %d, %v", tt.pid, tt.pidMax, tt.tids, got, ok, tt.want, tt.ok)
			}
		})
	}
}

// TestSetReachesSysmon checks, in this test binary's own runtime, that Set changes the slack of
// the thread that runs sysmon and of no other. While a goroutine keeps a processor busy,
// sysmon polls in short sleeps, and it is the only thread of the runtime that sleeps in
// nanosleep(2): sampling what each thread is blocked in names it.
func TestSetReachesSysmon(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("changing another thread's timer slack needs CAP_SYS_NICE; CI runs this as root")
	}
	if err := Set(0); err == nil {
		t.Fatal("Set(0) succeeded; want an error")
	}
	if err := Set(700 * time.Microsecond); err != nil {
		t.Fatal(err)
	}
	sysmon := nanosleepingThread(t)
	if got := readSlack(t, sysmon); got != "700000" {
		t.Errorf("sysmon (thread %d) has slack %s, want 700000", sysmon, got)
	}
	// Only sysmon was changed. Threads that sysmon itself starts (to take over a processor
	// from a blocked system call) inherit its slack, so the others are not all unchanged:
	// the main thread is.
	if got := readSlack(t, os.Getpid()); got == "700000" {
		t.Errorf("the main thread has sysmon's slack %s", got)
	}
}

// nanosleepingThread keeps a processor busy and returns the thread most often found blocked
// in nanosleep(2).
func nanosleepingThread(t *testing.T) int {
	var stop atomic.Bool
	go func() {
		for !stop.Load() {
		}
	}()
	defer stop.Store(true)
	seen := map[int]int{}
	for i := 0; i < 400; i++ {
		tids, err := threadIDs()
		if err != nil {
			t.Fatal(err)
		}
		for _, tid := range tids {
			b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/syscall", tid))
			if err != nil {
				continue // the thread exited
			}
			if f := strings.Fields(string(b)); len(f) > 0 && f[0] == strconv.Itoa(unix.SYS_NANOSLEEP) {
				seen[tid]++
			}
		}
		time.Sleep(100 * time.Microsecond)
	}
	best, most := 0, 0
	for tid, n := range seen {
		if n > most {
			best, most = tid, n
		}
	}
	if most < 10 {
		t.Fatalf("no thread was seen in nanosleep more than %d times in 400 samples: %v", most, seen)
	}
	return best
}

func readSlack(t *testing.T, tid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/timerslack_ns", tid))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
