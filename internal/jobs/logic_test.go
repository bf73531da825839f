package jobs

import (
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ssi-cluster/ssi/internal/api/jobspb"
	"github.com/ssi-cluster/ssi/internal/sched"
)

func TestExpandPattern(t *testing.T) {
	v := patternVars{task: "42_7", job: "42", index: 7, rank: 3, node: "n2", user: "alice", name: "/x/run.sh"}
	tests := map[string]string{
		"ssi-%j.out":        "ssi-42_7.out",
		"/o/%A-%a.%t.%n.%u": "/o/42-7.3.n2.alice",
		"%x.log":            "run.sh.log",
		"100%%-%q-%":        "100%-%q-%",
		"no-pattern":        "no-pattern",
		"%j%j":              "42_742_7",
	}
	for in, want := range tests {
		if got := expandPattern(in, v); got != want {
			t.Errorf("expandPattern(%q) = %q, want %q", in, got, want)
		}
	}
	if got := expandPattern("%a", patternVars{index: -1}); got != "0" {
		t.Errorf("%%a of a plain job = %q, want 0", got)
	}
}

func TestNamesDirectory(t *testing.T) {
	for p, want := range map[string]bool{
		"":            false,
		"ssi-%j.out":  false,
		"logs/%j.out": false,
		"/tmp/w":      false,
		"logs/":       true,
		"/tmp/w/":     true,
		"/":           true,
		".":           true,
		"logs/..":     true,
		"a/.":         true,
		"..x":         false,
	} {
		if got := namesDirectory(p); got != want {
			t.Errorf("namesDirectory(%q) = %t, want %t", p, got, want)
		}
	}
}

func TestEndedError(t *testing.T) {
	plain := &jobRecord{ID: "24", Final: &finalState{State: sched.StateCompleted}}
	array := &jobRecord{ID: "2", Spec: jobSpec{Array: "1-5:2"}, Final: &finalState{State: sched.StateFailed}}
	tests := []struct {
		rec       *jobRecord
		id        string
		elemState sched.JobState
		want      string
	}{
		{plain, "24", "", "job 24 already ended (completed): nothing to cancel"},
		{plain, "24_1", "", "job 24 is not an array, so it has no element 1: give 24"},
		{array, "2", "", "job 2 already ended (failed): nothing to cancel"},
		{array, "2_2", "", "job 2 has no element 2: see ssi job show 2"},
		{array, "2_9", "", "job 2 has no element 9"},
		{array, "2_3", sched.StateCompleted, "job 2_3 already ended (completed): nothing to cancel"},
		{array, "2_5", "", "job 2_5 already ended, as did the whole array 2"},
	}
	for _, tt := range tests {
		if got := endedError(tt.rec, tt.id, "cancel", tt.elemState).Error(); !strings.Contains(got, tt.want) {
			t.Errorf("endedError(%s) = %q, want %q", tt.id, got, tt.want)
		}
	}
}

func TestExpectedLimits(t *testing.T) {
	queues := []sched.Queue{{Name: "batch"}, {Name: "debug", MaxTime: 30 * time.Minute}}
	tasks := []*jobspb.TaskInfo{
		{Id: "1", Queue: "batch"},
		{Id: "2", Queue: "debug"},
		{Id: "3", Queue: "debug", TimeLimitSeconds: 60},
		{Id: "4", Queue: "gone"},
	}
	expectedLimits(tasks, queues)
	for i, want := range []int64{86400, 1800, 60, 86400} {
		if got := tasks[i].TimeLimitSeconds; got != want {
			t.Errorf("task %s in queue %s: limit %d, want %d", tasks[i].Id, tasks[i].Queue, got, want)
		}
	}
}

func TestParseState(t *testing.T) {
	for in, want := range map[string]sched.JobState{
		"pending": sched.StatePending, "RUNNING": sched.StateRunning, " node_fail ": sched.StateNodeFail,
		"PD": sched.StatePending, "r": sched.StateRunning, "CD": sched.StateCompleted, "F": sched.StateFailed,
		"CA": sched.StateCancelled, "canceled": sched.StateCancelled, "TO": sched.StateTimeout, "NF": sched.StateNodeFail,
		"bogus": "", "": "", "requeued": "",
	} {
		got, ok := parseState(in)
		if ok != (want != "") || ok && got != want {
			t.Errorf("parseState(%q) = %q, %t; want %q", in, got, ok, want)
		}
	}
}

func TestSignalReason(t *testing.T) {
	for _, tt := range []struct {
		sig  syscall.Signal
		core bool
		want string
	}{
		{0, false, ""},
		{syscall.SIGKILL, false, "killed by signal 9 (SIGKILL)"},
		{syscall.SIGSEGV, true, "killed by signal 11 (SIGSEGV), core dumped"},
	} {
		if got := signalReason(tt.sig, tt.core); got != tt.want {
			t.Errorf("signalReason(%d, %t) = %q, want %q", tt.sig, tt.core, got, tt.want)
		}
	}
}

func TestHeldElementReasons(t *testing.T) {
	// Array 9 is held as a whole with element 2 released; the job's reason was written while
	// everything was held.
	rec := &jobRecord{ID: "9", Spec: jobSpec{Array: "1-3"}, Hold: true, ReleasedIndices: []int{2}}
	j := &jobEntry{id: "9", rec: rec, indices: []int{1, 2, 3}, tasks: make([]taskState, 3),
		released: indexSet(rec.ReleasedIndices), reason: reasonRecord{Reason: "held by user"}}
	for pos, want := range []string{"held by user", "waiting for the scheduler to consider it", "held by user"} {
		if got := activeTaskInfo(j, pos).Reason; got != want {
			t.Errorf("element %d: reason %q, want %q", j.indices[pos], got, want)
		}
	}
	// Held one by one instead: element 1 held, the job waits for a dependency.
	rec2 := &jobRecord{ID: "8", Spec: jobSpec{Array: "1-2"}, HeldIndices: []int{1}}
	j2 := &jobEntry{id: "8", rec: rec2, indices: []int{1, 2}, tasks: make([]taskState, 2),
		held: indexSet(rec2.HeldIndices), reason: reasonRecord{Reason: "waiting for job 5 to succeed"}}
	for pos, want := range []string{"held by user", "waiting for job 5 to succeed"} {
		if got := activeTaskInfo(j2, pos).Reason; got != want {
			t.Errorf("element %d of 8: reason %q, want %q", j2.indices[pos], got, want)
		}
	}
}

func TestCombineParts(t *testing.T) {
	t0 := time.Unix(1000, 0)
	part := func(node string, st sched.JobState, code int) *partRecord {
		return &partRecord{Node: node, result: result{State: st, ExitCode: code, HasExit: st != sched.StateNodeFail,
			Start: t0, End: t0.Add(time.Second), CPUTime: time.Second, MaxRSS: 10}}
	}
	tests := []struct {
		name        string
		parts       []*partRecord
		state       sched.JobState
		code        int
		wantRequeue bool
	}{
		{"all completed", []*partRecord{part("n1", sched.StateCompleted, 0), part("n2", sched.StateCompleted, 0)}, sched.StateCompleted, 0, false},
		{"one failed, the other ended for it", []*partRecord{part("n1", sched.StateCancelled, 143), part("n2", sched.StateFailed, 7)}, sched.StateFailed, 7, false},
		{"timeout beats failure", []*partRecord{part("n1", sched.StateFailed, 1), part("n2", sched.StateTimeout, 143)}, sched.StateTimeout, 143, false},
		{"exit 85 requeues", []*partRecord{part("n1", sched.StateFailed, 85), part("n2", sched.StateCancelled, 143)}, "requeued", 85, true},
		{"a lost node wins", []*partRecord{part("n1", sched.StateFailed, 85), part("n2", sched.StateNodeFail, 0)}, sched.StateNodeFail, 0, true},
		{"cancelled", []*partRecord{part("n1", sched.StateCancelled, 143), part("n2", sched.StateCancelled, 143)}, sched.StateCancelled, 143, false},
	}
	for _, tt := range tests {
		res, requeue := combineParts(tt.parts, &allocRecord{Start: t0})
		if res.State != tt.state || res.ExitCode != tt.code || requeue != tt.wantRequeue {
			t.Errorf("%s: %s exit %d requeue %t; want %s exit %d requeue %t", tt.name, res.State, res.ExitCode, requeue, tt.state, tt.code, tt.wantRequeue)
		}
		if res.CPUTime != time.Duration(len(tt.parts))*time.Second || res.MaxRSS != 10 || !res.End.Equal(t0.Add(time.Second)) {
			t.Errorf("%s: usage %v %d %v", tt.name, res.CPUTime, res.MaxRSS, res.End)
		}
	}
}

func TestCombinePartsKeepsTheFailedPartsReason(t *testing.T) {
	t0 := time.Unix(1000, 0)
	parts := []*partRecord{
		{Node: "n1", result: result{State: sched.StateCancelled, ExitCode: 143, HasExit: true, Reason: "task 1 exited with 137", Start: t0, End: t0}},
		{Node: "n2", result: result{State: sched.StateFailed, ExitCode: 137, HasExit: true, Reason: "killed by signal 9 (SIGKILL)", Start: t0, End: t0}},
	}
	res, _ := combineParts(parts, &allocRecord{Start: t0})
	if want := "its task on n2 ended (failed, exit code 137: killed by signal 9 (SIGKILL))"; res.Reason != want {
		t.Errorf("reason %q, want %q", res.Reason, want)
	}
}

func TestFormatIndices(t *testing.T) {
	tests := []struct {
		in   []int
		want string
	}{
		{nil, ""},
		{[]int{5}, "5"},
		{[]int{3, 1, 2, 7, 9, 8, 20}, "1-3,7-9,20"},
	}
	for _, tt := range tests {
		got := formatIndices(tt.in)
		if got != tt.want {
			t.Errorf("formatIndices(%v) = %q, want %q", tt.in, got, tt.want)
		}
		if got != "" {
			if _, err := sched.ParseArray(got); err != nil {
				t.Errorf("%q does not parse back: %v", got, err)
			}
		}
	}
}

func TestWithEnvAndLocalTasks(t *testing.T) {
	got := withEnv([]string{"PATH=/bin", "SSI_JOB_ID=forged", "HOME=/h"}, [][2]string{{"SSI_JOB_ID", "42"}, {"SSI_NTASKS", "2"}})
	if want := []string{"PATH=/bin", "HOME=/h", "SSI_JOB_ID=42", "SSI_NTASKS=2"}; !slices.Equal(got, want) {
		t.Errorf("withEnv = %v, want %v", got, want)
	}
	nodes := []nodeTasks{{"n1", 3}, {"n2", 2}, {"n3", 2}}
	for node, want := range map[string][2]int{"n1": {0, 3}, "n2": {3, 2}, "n3": {5, 2}, "n9": {0, 0}} {
		if first, count := localTasks(nodes, node); first != want[0] || count != want[1] {
			t.Errorf("localTasks(%s) = %d, %d; want %v", node, first, count, want)
		}
	}
}

func TestTxnPacking(t *testing.T) {
	w := &txnWriter{guard: &check{key: "g", create: true, rev: 1}}
	put := func(keys ...string) unit {
		var u unit
		for _, k := range keys {
			u.put(k, "v")
		}
		return u
	}
	many := make([]unit, 200)
	for i := range many {
		many[i] = put("k" + itoa(i))
	}
	if n, err := w.pack(many); err != nil || n != maxTxnOps {
		t.Errorf("pack of 200 one-op units = %d, %v; want %d", n, err, maxTxnOps)
	}
	if n, _ := w.pack([]unit{put("a"), put("b"), put("a")}); n != 2 {
		t.Errorf("a key written twice must start a new transaction: packed %d", n)
	}
	checked := make([]unit, 200)
	for i := range checked {
		checked[i] = unit{checks: []check{{key: "c" + itoa(i)}}, ops: []clientv3.Op{clientv3.OpDelete("d" + itoa(i))}}
	}
	if n, _ := w.pack(checked); n != maxTxnOps-2 {
		t.Errorf("units with one check each: packed %d, want %d (one compare is the guard, one read slot stays free)", n, maxTxnOps-2)
	}
	huge := unit{ops: make([]clientv3.Op, maxTxnOps+1)}
	if _, err := w.pack([]unit{huge}); err == nil {
		t.Error("a unit over etcd's limit was accepted")
	}
}

// TestScanNewestPagesThroughSharedRevisions writes keys in transactions (so many share a
// revision) and reads them back in pages that end inside such groups.
func TestScanNewestPagesThroughSharedRevisions(t *testing.T) {
	cli := newClient(t, startTestEtcd(t))
	defer cli.Close()
	s := &Service{d: Deps{Etcd: cli}}
	const groups, per = 7, 30
	for g := range groups {
		var ops []clientv3.Op
		for i := range per {
			ops = append(ops, clientv3.OpPut(doneKey(itoa(g*per+i)), "x"))
		}
		if _, err := cli.Txn(ctxT(t)).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
	}
	for _, page := range []int{7, 30, 45, 1000} {
		seen := map[string]int{}
		var last int64 = 1 << 62
		err := s.scanNewest(ctxT(t), prefixDone, page, func(kv *mvccpb.KeyValue) (bool, error) {
			seen[string(kv.Key)]++
			if kv.ModRevision > last {
				t.Errorf("page %d: revisions not descending", page)
			}
			last = kv.ModRevision
			return true, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(seen) != groups*per {
			t.Errorf("page %d: saw %d keys, want %d", page, len(seen), groups*per)
		}
		for k, n := range seen {
			if n != 1 {
				t.Errorf("page %d: %s seen %d times", page, k, n)
			}
		}
	}
}

// TestSpecKeepsItsBytes checks that a stored job spec gives back the bytes it was given, and
// that records written before such bytes were kept (plain strings) still read.
func TestSpecKeepsItsBytes(t *testing.T) {
	tests := []struct {
		name string
		sp   jobSpec
	}{
		{"utf-8", jobSpec{Args: []string{"echo", "été"}, Cwd: "/home/a", Env: []string{"A=b"}, Output: "/home/a/o-%j"}},
		{"not utf-8", jobSpec{Args: []string{"cat", "caf\xe9"}, ScriptName: "/x/\xff.sh", Cwd: "/home/\xfe",
			Env: []string{"X=\xfd"}, Output: "/home/\xfe/o", Error: "/e\x80"}},
		{"empty", jobSpec{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.sp.Name, tt.sp.Queue = "n", "batch"
			got, err := decode[jobSpec]([]byte(encode(tt.sp)))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*got, tt.sp) {
				t.Errorf("decoded %+v, want %+v", *got, tt.sp)
			}
		})
	}
	old := `{"name":"n","args":["echo","hi"],"cwd":"/home/a","env":["A=b"],"output":"/home/a/o","queue":"batch","cpus_milli":1000}`
	sp, err := decode[jobSpec]([]byte(old))
	if err != nil {
		t.Fatal(err)
	}
	if want := (jobSpec{Name: "n", Args: []string{"echo", "hi"}, Cwd: "/home/a", Env: []string{"A=b"}, Output: "/home/a/o", Queue: "batch", CPUs: 1000}); !reflect.DeepEqual(*sp, want) {
		t.Errorf("an older record reads as %+v, want %+v", *sp, want)
	}
	if strings.Contains(encode(tests[0].sp), "base64") {
		t.Errorf("UTF-8 text is stored as base64: %s", encode(tests[0].sp))
	}
}
