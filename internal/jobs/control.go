package jobs

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ssi-cluster/ssi/internal/api/jobspb"
	"github.com/ssi-cluster/ssi/internal/proc"
	"github.com/ssi-cluster/ssi/internal/sched"
)

// Cancel ends jobs (or sends them a signal with ControlRequest.Signal). Pending tasks are
// cancelled at once; running ones get TERM, then KILL after the grace period.
func (s *Service) Cancel(ctx context.Context, req *jobspb.ControlRequest) (*jobspb.ControlResponse, error) {
	if req.Signal < 0 || req.Signal > 64 {
		return nil, invalid("signal %d is out of range: use 1-64 or a name such as TERM", req.Signal)
	}
	verb := "cancel"
	if req.Signal > 0 {
		verb = "signal"
	}
	return s.control(ctx, req.Ids, verb, func(j *jobEntry, rec *jobRecord, pos int, st stamp) error {
		if req.Signal > 0 {
			if !anyTask(j, pos, func(p int) bool { return j.state(p) == sched.StateRunning }) {
				return fmt.Errorf("job %s is not running, so it cannot get a signal: cancel it without -s", taskOrJob(j, pos))
			}
			idx := -1
			if pos >= 0 {
				idx = j.index(pos)
			}
			seq := 1
			if n := len(rec.Signals); n > 0 {
				seq = rec.Signals[n-1].Seq + 1
			}
			rec.Signals = append(rec.Signals, signalRequest{Seq: seq, Signal: int(req.Signal), Index: idx, At: st})
			// Keep the record small: only the latest requests matter for delivery.
			if len(rec.Signals) > 16 {
				rec.Signals = rec.Signals[len(rec.Signals)-16:]
			}
			return nil
		}
		if !anyTask(j, pos, func(p int) bool { return !j.state(p).Terminal() }) {
			return fmt.Errorf("job %s already ended: nothing to cancel", taskOrJob(j, pos))
		}
		if pos < 0 {
			if rec.Cancel == nil {
				rec.Cancel = &st
			}
			return nil
		}
		if rec.CancelIndices == nil {
			rec.CancelIndices = map[int]stamp{}
		}
		if _, ok := rec.CancelIndices[j.index(pos)]; !ok {
			rec.CancelIndices[j.index(pos)] = st
		}
		return nil
	})
}

// Hold keeps pending jobs from starting until released.
func (s *Service) Hold(ctx context.Context, req *jobspb.ControlRequest) (*jobspb.ControlResponse, error) {
	return s.control(ctx, req.Ids, "hold", func(j *jobEntry, rec *jobRecord, pos int, _ stamp) error {
		if !anyTask(j, pos, func(p int) bool { return j.state(p) == sched.StatePending }) {
			return fmt.Errorf("job %s has no pending task: only pending jobs can be held", taskOrJob(j, pos))
		}
		if pos < 0 {
			rec.Hold, rec.ReleasedIndices = true, nil
			return nil
		}
		idx := j.index(pos)
		if rec.Hold && slices.Contains(rec.ReleasedIndices, idx) {
			rec.ReleasedIndices = slices.DeleteFunc(rec.ReleasedIndices, func(i int) bool { return i == idx })
			return nil
		}
		if !slices.Contains(rec.HeldIndices, idx) {
			rec.HeldIndices = append(rec.HeldIndices, idx)
		}
		return nil
	})
}

// Release lets held jobs start again.
func (s *Service) Release(ctx context.Context, req *jobspb.ControlRequest) (*jobspb.ControlResponse, error) {
	return s.control(ctx, req.Ids, "release", func(j *jobEntry, rec *jobRecord, pos int, _ stamp) error {
		if pos < 0 {
			if !rec.Hold && len(rec.HeldIndices) == 0 {
				return fmt.Errorf("job %s is not held: nothing to release", j.id)
			}
			rec.Hold, rec.HeldIndices, rec.ReleasedIndices = false, nil, nil
			return nil
		}
		if !j.isHeld(pos) {
			return fmt.Errorf("job %s is not held: nothing to release", taskOrJob(j, pos))
		}
		idx := j.index(pos)
		rec.HeldIndices = slices.DeleteFunc(rec.HeldIndices, func(i int) bool { return i == idx })
		if rec.Hold {
			// One element of a wholly held array: the rest stay held, as with scontrol.
			rec.ReleasedIndices = append(rec.ReleasedIndices, idx)
		}
		return nil
	})
}

func taskOrJob(j *jobEntry, pos int) string {
	if pos < 0 {
		return j.id
	}
	return j.taskID(pos)
}

// anyTask reports whether ok holds for task pos, or for some task of the job when pos < 0.
func anyTask(j *jobEntry, pos int, ok func(int) bool) bool {
	if pos >= 0 {
		return ok(pos)
	}
	for p := range j.tasks {
		if ok(p) {
			return true
		}
	}
	return false
}

// control applies change to each named job (pos -1) or element, as the caller, and stores
// it if the record changed. A user may change only their own jobs; root may change any.
func (s *Service) control(ctx context.Context, ids []string, verb string, change func(j *jobEntry, rec *jobRecord, pos int, st stamp) error) (*jobspb.ControlResponse, error) {
	who, err := s.callerOf(ctx)
	if err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		return nil, invalid("no job id given: name the jobs to %s (see ssi jobs)", verb)
	}
	out := &jobspb.ControlResponse{}
	for _, id := range ids {
		err := s.controlOne(ctx, who, strings.TrimSpace(id), verb, change)
		r := &jobspb.ControlResult{Id: id}
		if err != nil {
			if st, ok := status.FromError(err); ok {
				r.Error = st.Message()
			} else {
				r.Error = err.Error()
			}
		}
		out.Results = append(out.Results, r)
	}
	return out, nil
}

func (s *Service) controlOne(ctx context.Context, who identity, id, verb string, change func(*jobEntry, *jobRecord, int, stamp) error) error {
	if !isJobID(id) {
		return fmt.Errorf("%q is not a job id: give one like 42 or 42_7 (see ssi jobs)", id)
	}
	id = canonicalID(id)
	base, idx, isElem := strings.Cut(id, "_")
	for range 20 {
		m, rec, err := s.loadJob(ctx, base)
		if err != nil {
			return err
		}
		j := m.jobs[base]
		if j == nil {
			if rec != nil && rec.Final != nil {
				return endedError(rec, id, verb, s.elementEnd(ctx, rec, id))
			}
			return fmt.Errorf("no job %s: see ssi jobs for the ids", base)
		}
		if who.uid != 0 && who.uid != rec.Spec.UID {
			if rec.Spec.UID == 0 {
				// "only root or root" reads as a typo; root's jobs have one controller.
				return status.Errorf(codes.PermissionDenied, "job %s belongs to root: only root may %s it", base, verb)
			}
			return status.Errorf(codes.PermissionDenied, "job %s belongs to %s: only %s or root may %s it", base, rec.Spec.User, rec.Spec.User, verb)
		}
		pos := -1
		if isElem {
			n, _ := strconv.Atoi(idx)
			jj, p := m.task(id)
			if jj == nil {
				if rec.Spec.Array == "" {
					return fmt.Errorf("job %s is not an array, so it has no element %d: give %s", base, n, base)
				}
				return fmt.Errorf("job %s has no element %d: see ssi job show %s", base, n, base)
			}
			pos = p
		}
		next := *rec
		next.CancelIndices = cloneMap(rec.CancelIndices)
		next.HeldIndices = slices.Clone(rec.HeldIndices)
		next.ReleasedIndices = slices.Clone(rec.ReleasedIndices)
		next.Signals = slices.Clone(rec.Signals)
		now := time.Now().UTC()
		if err := change(j, &next, pos, stamp{At: now, UID: who.uid}); err != nil {
			return err
		}
		next.Events = append(slices.Clone(rec.Events), fmt.Sprintf("%s %s by %s (uid %d) on %s",
			now.Format(time.RFC3339), verbPast(verb, id), proc.UserName(who.uid), who.uid, s.d.Node))
		resp, err := s.d.Etcd.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(jobKey(base)), "=", j.modRev)).
			Then(clientv3.OpPut(jobKey(base), encode(next))).Commit()
		if err != nil {
			return unavailable(err)
		}
		if resp.Succeeded {
			s.log.Info("job changed", "job", id, "change", verb, "uid", who.uid)
			return nil
		}
	}
	return fmt.Errorf("job %s kept changing while trying to %s it: retry", id, verb)
}

// elementEnd is how element id of a job that moved to history ended, or "" when id is not
// an element or its end cannot be read (endedError then words it without).
func (s *Service) elementEnd(ctx context.Context, rec *jobRecord, id string) sched.JobState {
	if !strings.Contains(id, "_") || rec.Spec.Array == "" {
		return ""
	}
	resp, err := s.d.Etcd.Get(ctx, doneKey(id))
	if err != nil || len(resp.Kvs) == 0 {
		return "" // an element cancelled before it started has no done record
	}
	d, err := decode[doneRecord](resp.Kvs[0].Value)
	if err != nil {
		return ""
	}
	return d.State
}

// endedError says why id, of a job that already moved to history, cannot be changed: the
// element it names does not exist, or it (or the whole job) ended. elemState is the
// element's end when known.
func endedError(rec *jobRecord, id, verb string, elemState sched.JobState) error {
	base, idx, isElem := strings.Cut(id, "_")
	if !isElem {
		return fmt.Errorf("job %s already ended (%s): nothing to %s", base, rec.Final.State, verb)
	}
	n, _ := strconv.Atoi(idx)
	if rec.Spec.Array == "" {
		return fmt.Errorf("job %s is not an array, so it has no element %d: give %s", base, n, base)
	}
	if spec, err := sched.ParseArray(rec.Spec.Array); err == nil {
		if _, found := slices.BinarySearch(spec.Indices(), n); !found {
			return fmt.Errorf("job %s has no element %d: see ssi job show %s", base, n, base)
		}
	}
	if elemState == "" {
		return fmt.Errorf("job %s already ended, as did the whole array %s: nothing to %s", id, base, verb)
	}
	return fmt.Errorf("job %s already ended (%s): nothing to %s", id, elemState, verb)
}

func verbPast(verb, id string) string {
	switch verb {
	case "cancel":
		return id + " cancelled"
	case "signal":
		return id + " signalled"
	case "hold":
		return id + " held"
	}
	return id + " released"
}

func cloneMap(m map[int]stamp) map[int]stamp {
	if m == nil {
		return nil
	}
	out := make(map[int]stamp, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
