package sched

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestCombineArrayStates(t *testing.T) {
	tests := []struct {
		states []JobState
		want   JobState
	}{
		{nil, StatePending},
		{[]JobState{StateCompleted, StateCompleted}, StateCompleted},
		{[]JobState{StateCompleted, StateRunning, StatePending}, StateRunning},
		{[]JobState{StateCompleted, StatePending}, StatePending},
		{[]JobState{StateCompleted, StateTimeout, StateFailed}, StateTimeout},
		{[]JobState{StateFailed, StatePending}, StatePending},
	}
	for _, tt := range tests {
		if got := CombineArrayStates(tt.states); got != tt.want {
			t.Errorf("CombineArrayStates(%v) = %s, want %s", tt.states, got, tt.want)
		}
	}
}

func TestExpandArray(t *testing.T) {
	spec, err := ParseArray("1-5:2%2")
	if err != nil {
		t.Fatal(err)
	}
	elems := ExpandArray(job("42", after("7")), spec)
	var ids []string
	for _, e := range elems {
		ids = append(ids, e.ID)
		if e.ArrayJobID != "42" || e.ArrayMaxRunning != 2 || !slices.Equal(e.After, []string{"7"}) {
			t.Errorf("element %+v", e)
		}
	}
	if !slices.Equal(ids, []string{"42_1", "42_3", "42_5"}) {
		t.Fatalf("ids %v", ids)
	}
	elems[0].After[0] = "changed"
	if elems[1].After[0] != "7" {
		t.Fatal("elements share their dependency list")
	}
}

func TestJobValidate(t *testing.T) {
	tests := []struct {
		j       Job
		wantErr string
	}{
		{job("1"), ""},
		{Job{CPUsPerTask: cpu, Tasks: 1}, "no id"},
		{job("1", cpus(0)), "0 cpus per task"},
		{job("1", tasks(0)), "0 tasks"},
		{job("1", tasks(MaxTasks+1)), "tasks"},
		{job("1", tasks(2), nodes(3)), "3 nodes for 2 tasks"},
		{job("1", limit(-time.Second)), "negative time limit"},
		{job("1", memGiB(-1)), "bytes of memory"},
	}
	for _, tt := range tests {
		err := tt.j.Validate()
		if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("Validate(%+v) = %v, want %q", tt.j, err, tt.wantErr)
		}
	}
}

func TestQueueValidate(t *testing.T) {
	good := []Queue{{Name: "a"}, {Name: "b", Oversubscribe: 1}, {Name: "c", Oversubscribe: 2.5, MaxRunningJobs: 3}}
	bad := []Queue{{}, {Name: "x", Oversubscribe: 0.5}, {Name: "x", Oversubscribe: 65}, {Name: "x", MaxRunningJobs: -1}, {Name: "x", MaxTime: -1}}
	for _, q := range good {
		if err := q.Validate(); err != nil {
			t.Errorf("Validate(%+v): %v", q, err)
		}
	}
	for _, q := range bad {
		if err := q.Validate(); err == nil {
			t.Errorf("Validate(%+v) accepted a bad queue", q)
		}
	}
}

func TestHarnessRefusesBadPlans(t *testing.T) {
	h := NewHarness(t0, time.Hour)
	h.AddNode(node("n1", 4, 8))
	mustSubmit(t, h, job("1"))
	for _, plan := range []Plan{
		{Starts: []Start{{JobID: "nope", Nodes: []NodeTasks{{Node: "n1", Tasks: 1}}}}},
		{Starts: []Start{{JobID: "1", Nodes: []NodeTasks{{Node: "n9", Tasks: 1}}}}},
		{Ends: []End{{JobID: "1", State: StateTimeout}}},
	} {
		if err := h.Apply(plan); err == nil {
			t.Errorf("Apply(%+v) accepted a bad plan", plan)
		}
	}
	if err := h.Submit(job("1")); err == nil {
		t.Error("Submit accepted a duplicate id")
	}
	if err := h.Finish("1", StateCompleted); err == nil {
		t.Error("Finish completed a job that never ran")
	}
}
