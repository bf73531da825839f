package jobs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	clusterfs "github.com/ssi-cluster/ssi/internal/fs"
	"github.com/ssi-cluster/ssi/internal/proc"
	"github.com/ssi-cluster/ssi/internal/sched"
)

// Environment variables every job task gets, besides those of proc (SSI_NODE, SSI_SOCKET).
const (
	EnvJobID         = "SSI_JOB_ID"         // the task's id: "42", or "42_7" for an array element
	EnvArrayJobID    = "SSI_ARRAY_JOB_ID"   // the array's id ("42"), arrays only
	EnvArrayTaskID   = "SSI_ARRAY_TASK_ID"  // the element's index, arrays only
	EnvTaskID        = "SSI_TASK_ID"        // this process's rank among the job's tasks, from 0
	EnvNTasks        = "SSI_NTASKS"         // how many tasks the job has
	EnvNNodes        = "SSI_NNODES"         // on how many nodes
	EnvNodeList      = "SSI_NODELIST"       // those nodes, comma-separated
	EnvJobName       = "SSI_JOB_NAME"       // --name
	EnvSubmitDir     = "SSI_SUBMIT_DIR"     // where the job was submitted (and runs)
	EnvCheckpointDir = "SSI_CHECKPOINT_DIR" // a private directory kept across exit-85 requeues
	EnvRestartCount  = "SSI_RESTART_COUNT"  // earlier runs of this task that were requeued
	EnvCPUsPerTask   = "SSI_CPUS_PER_TASK"
	EnvQueue         = "SSI_QUEUE"
)

// taskExit is one process's end.
type taskExit struct {
	i    int
	code int
	err  error
}

// execute runs this node's tasks of r once. It returns how they ended, whether the task asked
// to be requeued (exit 85), and whether the leader withdrew the allocation (then nothing is
// reported: the leader has decided).
func (e *executor) execute(r *run) (res result, requeue, revoked bool) {
	sp := &r.rec.Spec
	who := identity{uid: sp.UID, gid: sp.GID, groups: sp.Groups, umask: sp.Umask}
	res.Start = time.Now()
	fail := func(reason string) (result, bool, bool) {
		res.State, res.Reason, res.End = sched.StateFailed, reason, time.Now()
		return res, false, false
	}
	mkdir := "" // the checkpoint directory, created as the user with the first output files
	if r.ckpt == "" {
		dir, create, err := e.acquireCheckpoint(who)
		if err != nil {
			return fail(fmt.Sprintf("cannot create a checkpoint directory on %s: %v", e.node, err))
		}
		r.ckpt = dir
		if create {
			mkdir = dir
		}
	}
	argv := sp.Args
	if len(sp.Script) > 0 {
		script := e.spool("script", r.task)
		if err := writeUserFile(script, sp.Script, who); err != nil {
			return fail(fmt.Sprintf("cannot write the job script on %s: %v", e.node, err))
		}
		defer os.Remove(script)
		if bytes.HasPrefix(sp.Script, []byte("#!")) {
			argv = append([]string{script}, sp.Args...)
		} else {
			argv = append([]string{"/bin/sh", script}, sp.Args...)
		}
	}
	if len(argv) == 0 {
		return fail("the job has no command")
	}
	first, count := localTasks(r.alloc.Nodes, e.node)
	if count == 0 {
		return fail(fmt.Sprintf("the allocation gives node %s no task", e.node))
	}
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		return fail(err.Error())
	}
	defer devNull.Close()
	// The allocation's cgroup says "started" to a restarted agent: it must exist before any
	// process does (see executor).
	cgParent := e.marker(r.task, r.createRev)
	if err := os.Mkdir(filepath.Join(e.mount, cgParent), 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return fail(fmt.Sprintf("cannot create the job's cgroup on %s: %v", e.node, err))
	}

	procs := make([]*proc.Process, count)
	exits := make(chan taskExit, count)
	codes := make([]int, count)
	startFailed := false
	for i := range count {
		rank := first + i
		outs, p, err := e.startTask(r, rank, who, mkdir, argv, devNull, cgParent)
		mkdir = ""
		if outs == nil {
			codes[i], startFailed = 1, true
			res.Reason = err.Error()
			break
		}
		if err != nil {
			// Like a shell, say why the command did not run where its errors would go.
			msg := err.Error()
			var ce *proc.CommandError
			codes[i] = 1
			if errors.As(err, &ce) {
				codes[i] = ce.Code
			}
			fmt.Fprintf(outs[1], "ssi: %s\n", msg)
			closeFiles(outs)
			startFailed = true
			res.Reason = fmt.Sprintf("could not start on %s: %s", e.node, msg)
			break
		}
		closeFiles(outs)
		procs[i] = p
		go func() {
			code, err := p.Wait()
			exits <- taskExit{i: i, code: code, err: err}
		}()
	}

	running := 0
	for _, p := range procs {
		if p != nil {
			running++
		}
	}
	var ending sched.JobState
	var endReason string
	var killAt <-chan time.Time
	terminate := func(state sched.JobState, reason string) {
		if ending != "" {
			return
		}
		ending, endReason = state, reason
		for _, p := range procs {
			if p != nil {
				_ = p.SignalTree(syscall.SIGTERM)
				_ = p.SignalTree(syscall.SIGCONT)
			}
		}
		killAt = time.After(e.s.t.killGrace)
	}
	killAll := func() {
		for _, p := range procs {
			if p != nil {
				go func() { _ = p.KillTree() }()
			}
		}
	}
	if startFailed && running > 0 {
		terminate(sched.StateFailed, res.Reason)
	}
	limit := time.Until(r.alloc.Start.Add(time.Duration(r.alloc.TimeLimit) * time.Second))
	timer := time.NewTimer(max(limit, 0))
	defer timer.Stop()
	lastSeq := 0
	cause, causeAt := 0, -1 // the first failure, which the job's exit code reports, and its process
	revokedCh, stoppingCh := r.revoked, e.stopping
	for running > 0 {
		select {
		case x := <-exits:
			running--
			codes[x.i] = x.code
			if x.err != nil {
				codes[x.i] = 1
			}
			if codes[x.i] != 0 && cause == 0 && ending == "" {
				cause, causeAt = codes[x.i], x.i
			}
			if x.code != 0 && count > 1 && !sp.NoKill && ending == "" {
				terminate(sched.StateFailed, fmt.Sprintf("task %d exited with %d", first+x.i, x.code))
			}
		case <-timer.C:
			terminate(sched.StateTimeout, "reached its time limit of "+sched.FormatTimeLimit(time.Duration(r.alloc.TimeLimit)*time.Second))
		case <-r.notify:
			if sig := r.latest(); sig != nil {
				if sig.Seq > lastSeq && sig.Signal > 0 {
					lastSeq = sig.Seq
					for _, p := range procs {
						if p != nil {
							_ = p.SignalTree(syscall.Signal(sig.Signal))
						}
					}
				}
				if sig.End != "" {
					terminate(sig.End, sig.Reason)
				}
			}
		case <-killAt:
			killAt = nil
			killAll()
		case <-revokedCh:
			revoked, revokedCh = true, nil
			killAll()
		case <-stoppingCh:
			stoppingCh = nil
			if ending == "" || ending == sched.StateFailed {
				ending, endReason = sched.StateNodeFail, fmt.Sprintf("the agent on %s stopped while it ran", e.node)
			}
			killAll()
		}
	}
	res.End = time.Now()
	for _, p := range procs {
		if p == nil {
			continue
		}
		_ = p.Close()
		pr := p.Result()
		if pr.TreeGone {
			res.CPUTime += pr.TreeCPU
		} else {
			res.CPUTime += pr.UserCPU + pr.SystemCPU
		}
		if pr.TreeMemPeak > 0 {
			res.MaxRSS = max(res.MaxRSS, pr.TreeMemPeak)
		} else {
			res.MaxRSS = max(res.MaxRSS, pr.MaxRSSBytes)
		}
	}
	if revoked {
		return res, false, true
	}
	res.HasExit = true
	res.ExitCode = cause
	for _, c := range codes {
		if res.ExitCode == 0 && c != 0 {
			res.ExitCode = c
		}
	}
	switch {
	case ending == sched.StateNodeFail:
		res.State, res.Reason, res.HasExit = ending, endReason, false
	case ending != "" && ending != sched.StateFailed:
		res.State, res.Reason = ending, endReason
	case startFailed:
		res.State = sched.StateFailed
	case res.ExitCode == 0:
		res.State = sched.StateCompleted
	default:
		res.State = sched.StateFailed
		switch {
		case endReason != "":
			res.Reason = endReason
		case causeAt >= 0 && procs[causeAt] != nil:
			// Exit 137 may be "exit 137" or SIGKILL (the OOM killer, say): say which, as
			// Slurm's exit code "0:9" does.
			pr := procs[causeAt].Result()
			res.Reason = signalReason(pr.Signal, pr.CoreDumped)
		}
		for _, c := range codes {
			if c == exitRequeue {
				requeue = true
			}
		}
		if requeue {
			res.ExitCode = exitRequeue
		}
	}
	return res, requeue, false
}

// signalReason says that a task was killed by sig, "" if it was not.
func signalReason(sig syscall.Signal, core bool) string {
	if sig == 0 {
		return ""
	}
	why := fmt.Sprintf("killed by signal %d (%s)", int(sig), unix.SignalName(sig))
	if core {
		why += ", core dumped"
	}
	return why
}

func closeFiles(fs []*os.File) {
	seen := map[*os.File]bool{}
	for _, f := range fs {
		if f != nil && !seen[f] {
			seen[f] = true
			f.Close()
		}
	}
}

// startTask opens the stdout and stderr files of one of the task's processes as the job's
// user (after creating mkdir, if set, as the user) and starts the process with them: both in
// one request to the user's thread, which forks the process itself. Without --error both go
// to one file. With outs nil, nothing was opened and err says why; with outs set and err, the
// process could not start.
func (e *executor) startTask(r *run, rank int, who identity, mkdir string, argv []string, stdin *os.File, cgParent string) (outs []*os.File, p *proc.Process, err error) {
	sp := &r.rec.Spec
	v := patternVars{task: r.task, job: r.alloc.Job, index: r.alloc.Index, rank: rank, node: e.node, user: sp.User, name: sp.Name}
	paths := []string{expandPattern(sp.Output, v)}
	if sp.Error != "" {
		if errPath := expandPattern(sp.Error, v); errPath != paths[0] {
			paths = append(paths, errPath)
		}
	}
	for i, p := range paths {
		paths[i] = e.fromSubmitNode(sp, p, false)
	}
	spec := proc.Spec{
		Args: argv, Env: jobEnv(r, rank, r.ckpt), Dir: e.fromSubmitNode(sp, sp.Cwd, true),
		UID: sp.UID, GID: sp.GID, Groups: sp.Groups, Umask: sp.Umask, Stdin: stdin,
		CgroupParent: cgParent, CgroupMount: e.mount, Name: "task" + strconv.Itoa(rank),
		NodeIndex: int(e.s.d.NodeIndex), SocketPath: e.s.d.Socket,
	}
	for _, l := range sp.Rlimits {
		spec.Rlimits = append(spec.Rlimits, proc.Rlimit{Resource: l.Resource, Cur: l.Cur, Max: l.Max, CurUnknown: l.CurUnknown})
	}
	var openErr error
	doErr := e.users.do(who, func(t *onThread) {
		outs, openErr = openAsThread(paths, mkdir)
		if openErr != nil {
			return
		}
		if len(outs) == 1 {
			outs = append(outs, outs[0])
		}
		spec.Stdout, spec.Stderr, spec.ForkHere = outs[0], outs[1], t.locked
		if rootErr := t.asRoot(func() { p, err = proc.Start(context.Background(), spec) }); rootErr != nil {
			err = fmt.Errorf("taking back root's file identity: %w", rootErr)
		}
	})
	if doErr != nil {
		openErr = doErr
	}
	if openErr != nil {
		closeFiles(outs)
		return nil, nil, fmt.Errorf("cannot open the output file on %s as %s: %v; pick a writable --output", e.node, sp.User, openErr)
	}
	return outs, p, err
}

// localTasks is the rank of this node's first task and how many tasks it runs.
func localTasks(nodes []nodeTasks, node string) (first, count int) {
	for _, n := range nodes {
		if n.Node == node {
			return first, n.Tasks
		}
		first += n.Tasks
	}
	return 0, 0
}

// jobEnv is the environment of one task: the submitter's, with the job's variables set.
func jobEnv(r *run, rank int, ckpt string) []string {
	return withEnv(r.rec.Spec.Env, jobVars(r, rank, ckpt))
}

// jobVars are the SSI_* variables of one task; ckpt "" leaves out the checkpoint directory.
func jobVars(r *run, rank int, ckpt string) [][2]string {
	sp := &r.rec.Spec
	a := r.alloc
	vars := [][2]string{
		{EnvJobID, r.task},
		{EnvTaskID, strconv.Itoa(rank)},
		{EnvNTasks, strconv.Itoa(sp.Tasks)},
		{EnvNNodes, strconv.Itoa(len(a.Nodes))},
		{EnvNodeList, strings.Join(nodeNames(a.Nodes), ",")},
		{EnvJobName, sp.Name},
		{EnvSubmitDir, sp.Cwd},
		{EnvCheckpointDir, ckpt},
		{EnvRestartCount, strconv.Itoa(a.Attempt)},
		{EnvCPUsPerTask, sched.FormatCPUs(sp.CPUs)},
		{EnvQueue, sp.Queue},
	}
	if a.Index >= 0 {
		vars = append(vars, [2]string{EnvArrayJobID, a.Job}, [2]string{EnvArrayTaskID, strconv.Itoa(a.Index)})
	}
	if ckpt == "" {
		vars = slices.DeleteFunc(vars, func(v [2]string) bool { return v[0] == EnvCheckpointDir })
	}
	return vars
}

// withEnv returns env with vars set, replacing earlier values of the same names.
func withEnv(env []string, vars [][2]string) []string {
	set := make(map[string]bool, len(vars))
	for _, v := range vars {
		set[v[0]] = true
	}
	out := make([]string, 0, len(env)+len(vars))
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if !set[name] {
			out = append(out, kv)
		}
	}
	for _, v := range vars {
		out = append(out, v[0]+"="+v[1])
	}
	return out
}

// patternVars are the values of the output file name patterns.
type patternVars struct {
	task, job  string
	index      int
	rank       int
	node, user string
	name       string
}

// expandPattern replaces %j (task id), %A (job id), %a (array index), %t (task rank),
// %n (node), %u (user), %x (job name) and %% in an output path.
func expandPattern(p string, v patternVars) string {
	if !strings.Contains(p, "%") {
		return p
	}
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c != '%' || i+1 == len(p) {
			b.WriteByte(c)
			continue
		}
		i++
		switch p[i] {
		case 'j':
			b.WriteString(v.task)
		case 'A':
			b.WriteString(v.job)
		case 'a':
			b.WriteString(strconv.Itoa(max(v.index, 0)))
		case 't':
			b.WriteString(strconv.Itoa(v.rank))
		case 'n':
			b.WriteString(v.node)
		case 'u':
			b.WriteString(v.user)
		case 'x':
			b.WriteString(filepath.Base(v.name))
		case '%':
			b.WriteByte('%')
		default:
			b.WriteByte('%')
			b.WriteByte(p[i])
		}
	}
	return b.String()
}

// fromSubmitNode is where a path of the job's submit node (its directory, an output file) is
// found on this node: here if it exists here, else on the submit node through the cluster file
// tree. When neither, the path is used as it is and fails with the usual error.
func (e *executor) fromSubmitNode(sp *jobSpec, path string, isDir bool) string {
	tree, from := "", sp.SubmitNode
	if e.s.d.Tree != nil {
		tree = e.s.d.Tree()
	}
	if from == e.node {
		from = ""
	}
	if found := clusterfs.FromNode(path, isDir, tree, from); found != "" {
		return found
	}
	return path
}
