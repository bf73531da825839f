package store

import (
	"context"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
)

// TestReadTryTimeout checks which calls get a deadline of their own per try: reads whose
// caller allows longer than a try, never writes.
func TestReadTryTimeout(t *testing.T) {
	const try = time.Second
	tests := []struct {
		name     string
		method   string
		caller   time.Duration // 0: no deadline
		wantLeft time.Duration // the most the try may have left; 0: no deadline
	}{
		{"range without a deadline", pb.KV_Range_FullMethodName, 0, try},
		{"range with a long deadline", pb.KV_Range_FullMethodName, time.Minute, try},
		{"range with a short deadline", pb.KV_Range_FullMethodName, 300 * time.Millisecond, 300 * time.Millisecond},
		{"member list", pb.Cluster_MemberList_FullMethodName, 0, try},
		{"put", pb.KV_Put_FullMethodName, 0, 0},
		{"txn with a long deadline", pb.KV_Txn_FullMethodName, time.Minute, time.Minute},
	}
	icpt := readTryTimeout(try)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			if tt.caller > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.caller)
				defer cancel()
			}
			var left time.Duration
			var has bool
			invoker := func(ctx context.Context, _ string, _, _ any, _ *grpc.ClientConn, _ ...grpc.CallOption) error {
				var dl time.Time
				dl, has = ctx.Deadline()
				left = time.Until(dl)
				return nil
			}
			if err := icpt(ctx, tt.method, nil, nil, nil, invoker); err != nil {
				t.Fatal(err)
			}
			if tt.wantLeft == 0 {
				if has {
					t.Fatalf("got a deadline %v away, want none", left)
				}
				return
			}
			if !has || left > tt.wantLeft || left < tt.wantLeft-200*time.Millisecond {
				t.Fatalf("deadline %v away (set: %v), want about %v", left, has, tt.wantLeft)
			}
		})
	}
}
