package store

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestReadTries checks that a read that hangs is tried again with a doubled deadline while the
// caller's context lives, and that any other outcome is the answer at once.
func TestReadTries(t *testing.T) {
	const first = 20 * time.Millisecond
	boom := errors.New("boom")
	tests := []struct {
		name      string
		caller    time.Duration // 0: no deadline
		hangs     int           // tries that hang until their deadline before one answers
		answerErr error
		wantTries int
		wantErr   error
	}{
		{"answers at once", 0, 0, nil, 1, nil},
		{"fails at once", 0, 0, boom, 1, boom},
		{"one hung try", 0, 1, nil, 2, nil},
		{"three hung tries", time.Minute, 3, nil, 4, nil},
		{"caller's deadline first", 50 * time.Millisecond, 100, nil, 2, context.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			if tt.caller > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.caller)
				defer cancel()
			}
			var deadlines []time.Duration
			_, err := readTries(ctx, first, func(ctx context.Context) (int, error) {
				dl, _ := ctx.Deadline()
				deadlines = append(deadlines, time.Until(dl))
				if len(deadlines) <= tt.hangs {
					<-ctx.Done()
					return 0, ctx.Err()
				}
				return 1, tt.answerErr
			})
			if !errors.Is(err, tt.wantErr) || len(deadlines) != tt.wantTries {
				t.Fatalf("%d tries, error %v; want %d tries, error %v", len(deadlines), err, tt.wantTries, tt.wantErr)
			}
			if tt.caller == 0 {
				for i, d := range deadlines {
					if want := first << i; d > want || d < want/2 { // generous: a loaded machine delays the call
						t.Errorf("try %d had %v, want about %v", i+1, d, want)
					}
				}
			}
		})
	}
}

// fakeKV records whether each transaction committed through it had a deadline of its own.
type fakeKV struct {
	clientv3.KV
	deadlines *[]bool
}

func (f fakeKV) Txn(ctx context.Context) clientv3.Txn {
	_, ok := ctx.Deadline()
	*f.deadlines = append(*f.deadlines, ok)
	return fakeTxn{}
}

type fakeTxn struct{}

func (t fakeTxn) If(...clientv3.Cmp) clientv3.Txn      { return t }
func (t fakeTxn) Then(...clientv3.Op) clientv3.Txn     { return t }
func (t fakeTxn) Else(...clientv3.Op) clientv3.Txn     { return t }
func (fakeTxn) Commit() (*clientv3.TxnResponse, error) { return &clientv3.TxnResponse{}, nil }

// TestBoundedTxn checks that only transactions that just read are tried under a deadline of
// their own: a write that timed out may have been applied, so it is never tried again.
func TestBoundedTxn(t *testing.T) {
	tests := []struct {
		name    string
		then    []clientv3.Op
		els     []clientv3.Op
		bounded bool
	}{
		{"reads", []clientv3.Op{clientv3.OpGet("a"), clientv3.OpGet("b", clientv3.WithPrefix())}, nil, true},
		{"a put", []clientv3.Op{clientv3.OpGet("a"), clientv3.OpPut("b", "1")}, nil, false},
		{"a delete in else", []clientv3.Op{clientv3.OpGet("a")}, []clientv3.Op{clientv3.OpDelete("b")}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var deadlines []bool
			kv := boundedKV{KV: fakeKV{deadlines: &deadlines}, first: time.Minute}
			if _, err := kv.Txn(context.Background()).If(clientv3.Compare(clientv3.Version("a"), ">", 0)).Then(tt.then...).Else(tt.els...).Commit(); err != nil {
				t.Fatal(err)
			}
			if len(deadlines) != 1 || deadlines[0] != tt.bounded {
				t.Fatalf("commits with a deadline: %v, want [%v]", deadlines, tt.bounded)
			}
		})
	}
}
