package jobs

import (
	"context"
	"errors"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ssi-cluster/ssi/internal/api"
	"github.com/ssi-cluster/ssi/internal/api/jobspb"
	"github.com/ssi-cluster/ssi/internal/api/ssipb"
	"github.com/ssi-cluster/ssi/internal/proc"
	"github.com/ssi-cluster/ssi/internal/sched"
)

// Limits on what one submission may carry: etcd refuses requests over 1.5 MiB.
const (
	maxScriptBytes = 512 << 10
	maxRecordBytes = 1 << 20
	defaultOutput  = "ssi-%j.out"
)

// callerOf is the identity of the local client: uid and gid from the kernel, groups and
// umask from the client process itself (as procspace does for ssi run).
func (s *Service) callerOf(ctx context.Context) (identity, error) {
	c, err := api.CallerFrom(ctx)
	if err != nil {
		return identity{}, status.Error(codes.Unauthenticated, err.Error())
	}
	if c.PID == 0 {
		// A client outside this node's PID namespace: the kernel vouches for uid and gid only.
		groups, err := proc.Groups(c.UID, c.GID)
		if err != nil {
			return identity{}, status.Errorf(codes.PermissionDenied, "looking up the groups of uid %d: %v", c.UID, err)
		}
		return identity{uid: c.UID, gid: c.GID, groups: groups, umask: 0o022}, nil
	}
	id, err := proc.IdentityOf(int(c.PID))
	if err != nil {
		return identity{}, status.Errorf(codes.Unauthenticated, "reading the identity of client pid %d: %v", c.PID, err)
	}
	if id.UID != c.UID || id.GID != c.GID {
		return identity{}, status.Errorf(codes.PermissionDenied, "client pid %d changed identity since it connected: reconnect", c.PID)
	}
	return identity{uid: c.UID, gid: c.GID, groups: slices.Clone(id.Groups), umask: id.Umask}, nil
}

// callerRlimits are the local client's resource limits, which a job it submits starts with (as
// Slurm's PropagateResourceLimits=ALL), read from the kernel. Without them (a client outside
// this node's PID namespace, a kernel without the file) the job gets the agent's.
func (s *Service) callerRlimits(ctx context.Context) []proc.Rlimit {
	c, err := api.CallerFrom(ctx)
	if err != nil || c.PID == 0 {
		return nil
	}
	limits, err := proc.RlimitsOf(int(c.PID))
	if err != nil {
		s.log.Debug("reading the resource limits of a client", "pid", c.PID, "err", err)
	}
	return limits
}

// Submit queues a batch job.
func (s *Service) Submit(ctx context.Context, req *jobspb.SubmitRequest) (*jobspb.SubmitResponse, error) {
	who, err := s.callerOf(ctx)
	if err != nil {
		return nil, err
	}
	who.rlimits = s.callerRlimits(ctx)
	rec, tasks, err := s.prepare(ctx, req, who, false)
	if err != nil {
		return nil, err
	}
	id, _, err := s.allocateAndPut(ctx, rec, nil)
	if err != nil {
		return nil, err
	}
	s.log.Debug("job submitted", "job", id, "user", rec.Spec.User, "tasks", tasks)
	return &jobspb.SubmitResponse{JobId: id, Tasks: uint32(tasks)}, nil
}

func invalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}

// isJobID reports whether s looks like a job or element id: "42" or "42_7".
func isJobID(s string) bool {
	base, idx, isElem := strings.Cut(s, "_")
	return allDigits(base) && (!isElem || allDigits(idx))
}

// canonicalID writes a job or element id without leading zeros ("07_002" is "7_2"), the way
// ids are stored and compared, so that an id typed with them names the same job as it would
// in Slurm. Anything that is not an id is returned as it is.
func canonicalID(s string) string {
	if !isJobID(s) {
		return s
	}
	trim := func(n string) string {
		if t := strings.TrimLeft(n, "0"); t != "" {
			return t
		}
		return "0"
	}
	base, idx, isElem := strings.Cut(s, "_")
	if !isElem {
		return trim(base)
	}
	return trim(base) + "_" + trim(idx)
}

func allDigits(s string) bool {
	if s == "" || len(s) > 18 {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// prepare checks a submission and turns it into the job record to store. Everything that
// can be known at submit time to make the job unrunnable is refused here, with the reason.
func (s *Service) prepare(ctx context.Context, req *jobspb.SubmitRequest, who identity, interactive bool) (*jobRecord, int, error) {
	sp := jobSpec{
		Name: req.Name, User: proc.UserName(who.uid), UID: who.uid, GID: who.gid, Groups: who.groups,
		Umask: who.umask, SubmitNode: s.d.Node, Submit: time.Now().UTC(), Args: ssipb.StringWords(req.Args),
		Script: req.Script, ScriptName: string(req.ScriptName), Cwd: string(req.Cwd), Env: ssipb.StringWords(req.Env), CPUs: req.CpusMilli, Memory: req.MemBytes,
		Nodes: int(req.Nodes), Tasks: int(req.Tasks), TimeLimit: req.TimeLimitSeconds, Queue: req.Queue,
		Priority: int(req.Priority), After: req.After, AfterAny: req.AfterAny, NoKill: req.NoKill,
		Interactive: interactive,
	}
	for _, l := range who.rlimits {
		sp.Rlimits = append(sp.Rlimits, rlimitRecord{Resource: l.Resource, Cur: l.Cur, Max: l.Max, CurUnknown: l.CurUnknown})
	}
	var scriptErr error
	if len(sp.Script) > 0 {
		scriptErr = sched.CheckScript(sp.Script)
	}
	switch {
	case len(sp.Script) == 0 && len(sp.Args) == 0 && !interactive:
		return nil, 0, invalid("no command given: use ssi submit [options] -- CMD [ARGS...] or ssi submit [options] SCRIPT")
	case len(sp.Script) > maxScriptBytes:
		return nil, 0, invalid("the script is %d bytes, over the limit of %d: keep the work in a separate file the script runs", len(sp.Script), maxScriptBytes)
	case scriptErr != nil:
		return nil, 0, invalid("script %s %v", sp.ScriptName, scriptErr)
	case !filepath.IsAbs(sp.Cwd):
		return nil, 0, invalid("the submit directory %q is not absolute: submit from a directory (the CLI sends its working directory)", sp.Cwd)
	case strings.ContainsFunc(sp.Name, unicode.IsControl):
		return nil, 0, invalid("the job name %q has a control character (a newline, a tab, an escape): give a name without", sp.Name)
	case sp.Priority < -1000000 || sp.Priority > 1000000:
		return nil, 0, invalid("priority %d is out of range: use -1000000 to 1000000", sp.Priority)
	case sp.Priority > 0 && who.uid != 0:
		return nil, 0, status.Errorf(codes.PermissionDenied, "only root may raise a job's priority above 0: submit with --priority 0 or lower")
	case req.TimeLimitSeconds < 0 || time.Duration(req.TimeLimitSeconds)*time.Second > sched.MaxTimeLimit:
		return nil, 0, invalid("time limit of %d seconds is out of range: use --time up to %s", req.TimeLimitSeconds, sched.FormatTimeLimit(sched.MaxTimeLimit))
	}
	if sp.CPUs == 0 {
		sp.CPUs = 1000
	}
	if sp.Tasks == 0 {
		// --nodes alone means one task on each node, as Slurm's -N without -n: a job asking
		// for two nodes and one task could never be placed.
		sp.Tasks = max(1, sp.Nodes)
	}
	if sp.Queue == "" {
		sp.Queue = sched.DefaultQueueName
	}
	switch req.Requeue {
	case jobspb.SubmitRequest_REQUEUE_YES:
		sp.Requeue = true
	case jobspb.SubmitRequest_REQUEUE_DEFAULT:
		sp.Requeue = !interactive
	}
	if interactive && sp.Requeue {
		return nil, 0, invalid("an interactive job cannot be requeued: its session would be lost; drop --requeue")
	}
	if sp.Name == "" {
		switch {
		case sp.ScriptName != "":
			sp.Name = filepath.Base(sp.ScriptName)
		case len(sp.Args) > 0:
			sp.Name = filepath.Base(sp.Args[0])
		default:
			sp.Name = "interactive"
		}
		// A name shows in tables and travels as text: bytes of the file name that are not UTF-8,
		// and control characters, show as '?'.
		sp.Name = strings.Map(func(c rune) rune {
			if unicode.IsControl(c) {
				return '?'
			}
			return c
		}, strings.ToValidUTF8(sp.Name, "?"))
	}
	tasks := 1
	if req.Array != "" {
		if interactive {
			return nil, 0, invalid("an interactive job cannot be an array: drop --array or submit without -i")
		}
		spec, err := sched.ParseArray(req.Array)
		if err != nil {
			return nil, 0, invalid("%v", err)
		}
		sp.Array = spec.String()
		tasks = spec.Len()
	}
	out := string(req.Output)
	if out == "" {
		out = defaultOutput
	}
	for _, f := range []struct{ flag, path string }{{"output", out}, {"error", string(req.Error)}} {
		if namesDirectory(f.path) {
			return nil, 0, invalid("--%s %s names a directory, not a file: name a file in it, such as %s", f.flag, f.path, path.Join(f.path, defaultOutput))
		}
	}
	sp.Output = absUnder(sp.Cwd, out)
	if len(req.Error) > 0 {
		sp.Error = absUnder(sp.Cwd, string(req.Error))
	}
	for _, id := range slices.Concat(sp.After, sp.AfterAny) {
		if !isJobID(id) {
			return nil, 0, invalid("dependency %q is not a job id: give ids like 42 or 42_7 (see ssi jobs)", id)
		}
	}
	for _, ids := range [][]string{sp.After, sp.AfterAny} {
		for i, id := range ids {
			ids[i] = canonicalID(id)
		}
	}
	probe := sched.Job{ID: "0", User: sp.User, Queue: sp.Queue, CPUsPerTask: sp.CPUs, MemoryPerTask: sp.Memory,
		Nodes: sp.Nodes, Tasks: sp.Tasks, TimeLimit: time.Duration(sp.TimeLimit) * time.Second, State: sched.StatePending}
	if err := probe.Validate(); err != nil {
		return nil, 0, invalid("%s", strings.Replace(err.Error(), "job 0 ", "the job ", 1))
	}
	if err := s.checkQueues(ctx, probe); err != nil {
		return nil, 0, err
	}
	if err := s.checkDeps(ctx, sp.After, sp.AfterAny); err != nil {
		return nil, 0, err
	}
	rec := &jobRecord{Spec: sp, Hold: req.Hold}
	if n := len(encode(rec)); n > maxRecordBytes {
		return nil, 0, invalid("the job's record would be %d bytes, over the limit of %d: submit with a smaller environment or script", n, maxRecordBytes)
	}
	return rec, tasks, nil
}

// namesDirectory reports whether an output path can only be a directory: it ends in "/",
// "." or "..". Made absolute, it would lose that ending and name the directory itself,
// which the job then fails to open, or, on a node without it, quietly creates as a file.
func namesDirectory(p string) bool {
	if p == "" {
		return false
	}
	base := path.Base(p)
	return strings.HasSuffix(p, "/") || base == "." || base == ".."
}

func absUnder(dir, p string) string {
	if filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return filepath.Join(dir, p)
}

// checkQueues refuses a job whose queue does not exist or could never run it, by the cached
// queues when they are there, and refuses only by a fresh read (see queueCache).
func (s *Service) checkQueues(ctx context.Context, probe sched.Job) error {
	if cached := s.queueCache.get(); cached != nil && s.checkFits(probe, cached) == nil {
		return nil
	}
	queues, err := s.readQueues(ctx)
	if err != nil {
		return err
	}
	return s.checkFits(probe, queues)
}

// readQueues is the configured queues plus the implicit default one. The read is served by
// the nearest etcd member without a quorum round trip: queue definitions change rarely, and a
// submit racing a queue change is judged again by the scheduler anyway.
func (s *Service) readQueues(ctx context.Context) ([]sched.Queue, error) {
	resp, err := s.d.Etcd.Get(ctx, prefixQueue, clientv3.WithPrefix(), clientv3.WithSerializable())
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "reading the queues from etcd: %v; is a quorum of the servers up?", err)
	}
	m := newModel(s.log)
	for _, kv := range resp.Kvs {
		m.apply(kv, false)
	}
	return m.queueList(), nil
}

// checkFits refuses a job that could not start even on an idle cluster: it asks the scheduler
// itself, on the known nodes with nothing running and nothing drained.
func (s *Service) checkFits(probe sched.Job, queues []sched.Queue) error {
	if !slices.ContainsFunc(queues, func(q sched.Queue) bool { return q.Name == probe.Queue }) {
		names := make([]string, len(queues))
		for i, q := range queues {
			names[i] = q.Name
		}
		return invalid("queue %s does not exist: use one of %s (see ssi queue ls)", probe.Queue, strings.Join(names, ", "))
	}
	members := s.d.Members()
	if len(members) == 0 {
		return nil // nothing known yet to judge by
	}
	st := &probeState{queues: queues, jobs: []*sched.Job{&probe}}
	for _, m := range members {
		st.nodes = append(st.nodes, sched.Node{Name: m.Name, CPUs: int64(m.CPUs) * 1000, Memory: int64(min(m.MemTotal, 1<<62)), Alive: true})
	}
	core, err := sched.New(sched.Config{})
	if err != nil {
		return err
	}
	plan := core.Pass(st, time.Now())
	if len(plan.Starts) == 1 {
		return nil
	}
	reason := "it does not fit any node"
	if len(plan.Reasons) > 0 {
		reason = plan.Reasons[0].Reason
	}
	return invalid("this job could never run: %s", reason)
}

type probeState struct {
	nodes  []sched.Node
	queues []sched.Queue
	jobs   []*sched.Job
}

func (p *probeState) Nodes() []sched.Node                  { return p.nodes }
func (p *probeState) Queues() []sched.Queue                { return p.queues }
func (p *probeState) Jobs() []*sched.Job                   { return p.jobs }
func (p *probeState) Lookup(string) (sched.JobState, bool) { return sched.StateCompleted, true }
func (p *probeState) Usage(string, time.Time) float64      { return 0 }

// checkDeps refuses dependencies on jobs that do not exist, and --after on jobs that already
// ended without success (they can never be satisfied).
func (s *Service) checkDeps(ctx context.Context, after, afterAny []string) error {
	ids := slices.Concat(after, afterAny)
	if len(ids) == 0 {
		return nil
	}
	if len(ids) > maxTxnOps/2 {
		return invalid("%d dependencies are too many: use at most %d, or depend on an array's id", len(ids), maxTxnOps/2)
	}
	var ops []clientv3.Op
	for _, id := range ids {
		base, _, _ := strings.Cut(id, "_")
		ops = append(ops, clientv3.OpGet(jobKey(base)), clientv3.OpGet(histKey(base)), clientv3.OpGet(doneKey(id)))
	}
	resp, err := s.d.Etcd.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return status.Errorf(codes.Unavailable, "checking dependencies in etcd: %v", err)
	}
	for i, id := range ids {
		active := resp.Responses[3*i].GetResponseRange().Kvs
		hist := resp.Responses[3*i+1].GetResponseRange().Kvs
		done := resp.Responses[3*i+2].GetResponseRange().Kvs
		var rec *jobRecord
		switch {
		case len(active) > 0:
			rec, err = decode[jobRecord](active[0].Value)
		case len(hist) > 0:
			rec, err = decode[jobRecord](hist[0].Value)
		default:
			return invalid("dependency %s does not exist: give the id of a submitted job (see ssi jobs -a)", id)
		}
		if err != nil {
			return status.Errorf(codes.Internal, "reading dependency %s: %v", id, err)
		}
		if _, idx, isElem := strings.Cut(id, "_"); isElem {
			n, _ := strconv.Atoi(idx)
			spec, err := sched.ParseArray(rec.Spec.Array)
			if rec.Spec.Array == "" || err != nil || !slices.Contains(spec.Indices(), n) {
				return invalid("dependency %s does not exist: job %s has no element %s (see ssi job show %s)", id, rec.ID, idx, rec.ID)
			}
		}
		if i >= len(after) || len(active) > 0 {
			continue
		}
		// --after on a finished job: only success satisfies it.
		if rec.Final == nil {
			continue
		}
		state := rec.Final.State
		if _, _, isElem := strings.Cut(id, "_"); isElem {
			state = sched.StateCancelled
			if len(done) > 0 {
				if d, err := decode[doneRecord](done[0].Value); err == nil {
					state = d.State
				}
			}
		}
		if state != sched.StateCompleted {
			return invalid("dependency %s already ended as %s, so --after %s can never be met: use --after-any or drop it", id, state, id)
		}
	}
	return nil
}

// allocateAndPut gives rec the next job id and stores it, with extra writes in the same
// transaction. The next id is cached, so a submit is normally one round trip.
func (s *Service) allocateAndPut(ctx context.Context, rec *jobRecord, extra func(id string) []clientv3.Op) (string, int64, error) {
	s.idMu.Lock()
	defer s.idMu.Unlock()
	for range 100 {
		next := s.nextID
		var cmp clientv3.Cmp
		if next <= 1 {
			next = 1
			cmp = clientv3.Compare(clientv3.CreateRevision(keyNextID), "=", 0)
		} else {
			cmp = clientv3.Compare(clientv3.Value(keyNextID), "=", strconv.FormatInt(next, 10))
		}
		id := strconv.FormatInt(next, 10)
		rec.ID = id
		ops := []clientv3.Op{
			clientv3.OpPut(keyNextID, strconv.FormatInt(next+1, 10)),
			clientv3.OpPut(jobKey(id), encode(rec)),
		}
		if extra != nil {
			ops = append(ops, extra(id)...)
		}
		resp, err := s.d.Etcd.Txn(ctx).
			If(cmp, clientv3.Compare(clientv3.CreateRevision(jobKey(id)), "=", 0), clientv3.Compare(clientv3.CreateRevision(histKey(id)), "=", 0)).
			Then(ops...).Else(clientv3.OpGet(keyNextID)).Commit()
		if err != nil {
			return "", 0, status.Errorf(codes.Unavailable, "storing the job in etcd: %v; is a quorum of the servers up?", err)
		}
		if resp.Succeeded {
			s.nextID = next + 1
			return id, resp.Header.Revision, nil
		}
		kvs := resp.Responses[0].GetResponseRange().Kvs
		switch {
		case len(kvs) == 0:
			s.nextID = 1
		default:
			v, err := strconv.ParseInt(string(kvs[0].Value), 10, 64)
			if err != nil || v < 1 {
				return "", 0, status.Errorf(codes.Internal, "the job id counter %s holds %q: repair it with etcdctl", keyNextID, kvs[0].Value)
			}
			if v == next {
				// The counter matches but the id is taken (a counter restored from backup):
				// skip ahead.
				v = next + 1
				_, _ = s.d.Etcd.Put(ctx, keyNextID, strconv.FormatInt(v, 10))
			}
			s.nextID = v
		}
	}
	return "", 0, status.Error(codes.Aborted, errors.New("could not allocate a job id after 100 tries: too many concurrent submits; retry").Error())
}
