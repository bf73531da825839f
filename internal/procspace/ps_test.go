package procspace

import (
	"context"
	"log/slog"
	"slices"
	"testing"

	"github.com/ssi-cluster/ssi/internal/api/ssipb"
)

func TestPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"sleep 10":          "sleep 10",
		"sh -c echo\thi\n":  "sh -c echo?hi?",
		"caf\xe9 \xff\xfe":  "caf? ??",
		"café ünïcode":      "café ünïcode",
		"esc \x1b[2J clear": "esc ?[2J clear",
	} {
		if got := printable(in); got != want {
			t.Errorf("printable(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRecordRunningUntilReaped(t *testing.T) {
	r := &record{done: make(chan struct{})}
	if !r.running() {
		t.Fatal("a record not yet reaped is not running")
	}
	close(r.done)
	// Its pid may now be another process's, which ps must not show as started by ssi.
	if r.running() {
		t.Fatal("a reaped record is still running")
	}
}

// ssi ps says which nodes' processes it could not list: a dead node is not asked, but named;
// a node that left the cluster on purpose is neither.
func TestPsNamesDeadNodes(t *testing.T) {
	for _, tc := range []struct {
		cluster fakeCluster
		want    []string
	}{
		{fakeCluster{n2Down: true}, []string{"n2"}},
		{fakeCluster{n2Left: true}, nil},
	} {
		s := &Service{cfg: Config{Cluster: tc.cluster, ProcRoot: "/proc"}, log: slog.New(slog.DiscardHandler), started: map[int]*record{}}
		resp, err := s.Ps(context.Background(), &ssipb.PsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(resp.Unreachable, tc.want) || len(resp.Procs) == 0 {
			t.Errorf("%+v: unreachable %v with %d processes; want %v and this node's processes", tc.cluster, resp.Unreachable, len(resp.Procs), tc.want)
		}
	}
}
