package procspace

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ssi-cluster/ssi/internal/api/ssipb"
	"github.com/ssi-cluster/ssi/internal/gpid"
)

// A GPID whose node index does not fit in 32 bits must not reach the node it would name
// once cut to 32 bits: 2^32+1 is not node 1.
func TestSignalRefusesGPIDsOfOtherNodes(t *testing.T) {
	s := &Service{cfg: Config{Cluster: fakeCluster{}}, log: slog.New(slog.DiscardHandler), started: map[int]*record{}}
	self := int64(os.Getpid())
	root := &ssipb.Caller{Uid: uint32(os.Geteuid())}
	for _, tc := range []struct {
		gpid    int64
		wantErr string
	}{
		{1*gpid.PerNode + self, ""},                // this process, on node 1 (fakeCluster's self)
		{2*gpid.PerNode + self, "No such process"}, // node 2's
		{(1<<32+1)*gpid.PerNode + self, "No such process"},
		{(1 << 32) * gpid.PerNode, "No such process"},
	} {
		resp, err := s.Signal(context.Background(), &ssipb.KillRequest{Gpids: []int64{tc.gpid}, Signal: 0, Caller: root})
		if err != nil || len(resp.Results) != 1 {
			t.Fatalf("Signal(%d): %v, %v", tc.gpid, resp, err)
		}
		got := resp.Results[0].Error
		if tc.wantErr == "" && got != "" || tc.wantErr != "" && !strings.Contains(got, tc.wantErr) {
			t.Errorf("Signal(%d) = %q, want %q", tc.gpid, got, tc.wantErr)
		}
	}
}

// What ssi kill and ssi run say of a node they could not reach is the dial's error, not
// gRPC's wrapping of it.
func TestPeerErrorText(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{status.Error(codes.Unavailable, `connection error: desc = "transport: Error while dialing: dial tcp 10.0.0.3:7700: i/o timeout"`), "dial tcp 10.0.0.3:7700: i/o timeout"},
		{status.Error(codes.PermissionDenied, "not yours"), "not yours"},
		{errors.New("plain"), "plain"},
	} {
		if got := peerErrorText(tc.err); got != tc.want {
			t.Errorf("peerErrorText(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}
