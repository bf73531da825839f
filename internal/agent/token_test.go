package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Without a quorum etcd answers a write with a deadline; the user is told what to look at.
func TestStoreUnavailable(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("storing join token: %w", context.DeadlineExceeded),
			"storing join token: context deadline exceeded: etcd did not answer within 5s; is a quorum of the servers up? (see ssi status)"},
		{fmt.Errorf("storing join token: %w", status.Error(codes.DeadlineExceeded, "context deadline exceeded")),
			"etcd did not answer within 5s; is a quorum of the servers up? (see ssi status)"},
		{errors.New("storing join token: etcdserver: no leader"), "storing join token: etcdserver: no leader; is a quorum of the servers up? (see ssi status)"},
	} {
		err := storeUnavailable(tc.err)
		if st, _ := status.FromError(err); st.Code() != codes.Unavailable || !strings.HasSuffix(st.Message(), tc.want) {
			t.Errorf("storeUnavailable(%v) = %v, want Unavailable ending %q", tc.err, err, tc.want)
		}
	}
}
