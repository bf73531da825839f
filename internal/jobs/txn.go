package jobs

import (
	"context"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// etcd refuses transactions with more than this many compares or operations per branch
// (its --max-txn-ops default).
const maxTxnOps = 128

// errNotLeader means the guard (the leader's election key) no longer holds: another server
// leads now, and nothing was written.
var errNotLeader = errors.New("this server is no longer the scheduler leader")

// check is a precondition of a unit: key's create (or mod) revision must equal rev; rev 0 with
// create means the key must not exist.
type check struct {
	key    string
	create bool
	rev    int64
}

func (c check) cmp() clientv3.Cmp {
	if c.create {
		return clientv3.Compare(clientv3.CreateRevision(c.key), "=", c.rev)
	}
	return clientv3.Compare(clientv3.ModRevision(c.key), "=", c.rev)
}

// holds reports whether the check is true of a key as read (nil: absent).
func (c check) holds(createRev, modRev int64) bool {
	if c.create {
		return createRev == c.rev
	}
	return modRev == c.rev
}

// unit is a group of writes that must happen together (a gang start, a task's end) under
// its checks. Units are packed many to a transaction.
type unit struct {
	checks []check
	ops    []clientv3.Op
	keys   []string // every key the ops write or delete: etcd refuses one key twice in a txn
	// done, if set, is told whether the unit was written and at which revision.
	done func(ok bool, rev int64)
}

func (u *unit) put(key, value string, opts ...clientv3.OpOption) {
	u.ops = append(u.ops, clientv3.OpPut(key, value, opts...))
	u.keys = append(u.keys, key)
}

func (u *unit) del(key string) {
	u.ops = append(u.ops, clientv3.OpDelete(key))
	u.keys = append(u.keys, key)
}

// txnWriter writes units in as few transactions as etcd allows. With a guard, every
// transaction also requires it, so a deposed leader cannot write.
type txnWriter struct {
	cli   *clientv3.Client
	guard *check
}

// commit writes units. A unit whose checks fail is dropped (its done is told so) and the rest
// are retried. It returns the revision of the last transaction written (0 if none), and
// errNotLeader if the guard failed.
func (w *txnWriter) commit(ctx context.Context, units []unit) (int64, error) {
	var last int64
	for len(units) > 0 {
		n, err := w.pack(units)
		if err != nil {
			return last, err
		}
		batch := units[:n]
		units = units[n:]
		for len(batch) > 0 {
			rev, failed, err := w.try(ctx, batch)
			if err != nil {
				return last, err
			}
			if failed == nil {
				last = max(last, rev)
				for _, u := range batch {
					if u.done != nil {
						u.done(true, rev)
					}
				}
				break
			}
			kept := batch[:0]
			for i, u := range batch {
				if failed[i] {
					if u.done != nil {
						u.done(false, 0)
					}
					continue
				}
				kept = append(kept, u)
			}
			batch = kept
		}
	}
	return last, nil
}

// pack returns how many leading units fit in one transaction.
func (w *txnWriter) pack(units []unit) (int, error) {
	cmps, ops := 0, 0
	if w.guard != nil {
		cmps = 1
	}
	seen := map[string]bool{}
	for i, u := range units {
		if len(u.checks)+1 > maxTxnOps || len(u.ops) > maxTxnOps {
			return 0, fmt.Errorf("a single change needs %d operations, more than etcd's limit of %d per transaction", len(u.ops), maxTxnOps)
		}
		overlap := false
		for _, k := range u.keys {
			if seen[k] {
				overlap = true
				break
			}
		}
		// Failure reads one key per check (and the guard), so checks stay below the limit too.
		if overlap || cmps+len(u.checks) > maxTxnOps-1 || ops+len(u.ops) > maxTxnOps {
			if i == 0 {
				return 1, nil
			}
			return i, nil
		}
		cmps += len(u.checks)
		ops += len(u.ops)
		for _, k := range u.keys {
			seen[k] = true
		}
	}
	return len(units), nil
}

// try commits one transaction. On failure it returns which units' checks failed.
func (w *txnWriter) try(ctx context.Context, batch []unit) (int64, []bool, error) {
	var cmps []clientv3.Cmp
	var ops []clientv3.Op
	var reads []clientv3.Op
	var readCheck []check
	if w.guard != nil {
		cmps = append(cmps, w.guard.cmp())
		reads = append(reads, clientv3.OpGet(w.guard.key, clientv3.WithKeysOnly()))
		readCheck = append(readCheck, *w.guard)
	}
	for _, u := range batch {
		for _, c := range u.checks {
			cmps = append(cmps, c.cmp())
			reads = append(reads, clientv3.OpGet(c.key, clientv3.WithKeysOnly()))
			readCheck = append(readCheck, c)
		}
		ops = append(ops, u.ops...)
	}
	resp, err := clientv3.NewKV(w.cli).Txn(ctx).If(cmps...).Then(ops...).Else(reads...).Commit()
	if err != nil {
		return 0, nil, fmt.Errorf("writing job state to etcd: %w", err)
	}
	if resp.Succeeded {
		return resp.Header.Revision, nil, nil
	}
	holds := make([]bool, len(readCheck))
	for i, r := range resp.Responses {
		var createRev, modRev int64
		if kvs := r.GetResponseRange().Kvs; len(kvs) > 0 {
			createRev, modRev = kvs[0].CreateRevision, kvs[0].ModRevision
		}
		holds[i] = readCheck[i].holds(createRev, modRev)
	}
	i := 0
	if w.guard != nil {
		if !holds[0] {
			return 0, nil, errNotLeader
		}
		i = 1
	}
	failed := make([]bool, len(batch))
	any := false
	for u := range batch {
		for range batch[u].checks {
			if !holds[i] {
				failed[u], any = true, true
			}
			i++
		}
	}
	if !any {
		// The compares and the reads see the same revision, so this cannot happen; refuse to
		// loop if it does.
		return 0, nil, errors.New("an etcd transaction failed although all its conditions hold: retry")
	}
	return 0, failed, nil
}
