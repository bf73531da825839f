package sched

import "fmt"

// depResult is why a job's dependencies hold it back; an empty reason means they do not.
type depResult struct {
	reason string
	never  bool
}

// depResolver settles dependencies for one pass. A pending dependency whose own dependencies
// can never be met makes its dependents never runnable too, so a whole failed chain says so at
// once; cycles are never runnable.
type depResolver struct {
	state    State
	pending  map[string]*Job
	done     map[string]depResult
	visiting map[string]bool
	lookups  map[string]lookupResult
}

type lookupResult struct {
	state JobState
	found bool
}

func newDepResolver(st State, pending []*Job) *depResolver {
	d := &depResolver{state: st}
	for _, j := range pending {
		if len(j.After)+len(j.AfterAny) > 0 {
			d.pending = make(map[string]*Job, len(pending))
			break
		}
	}
	if d.pending == nil {
		return d // nothing depends on anything: skip building the index
	}
	for _, j := range pending {
		d.pending[j.ID] = j
	}
	d.done = make(map[string]depResult)
	d.visiting = make(map[string]bool)
	d.lookups = make(map[string]lookupResult)
	return d
}

func (d *depResolver) resolve(j *Job) depResult {
	if len(j.After)+len(j.AfterAny) == 0 {
		return depResult{}
	}
	if r, ok := d.done[j.ID]; ok {
		return r
	}
	if d.visiting[j.ID] {
		return depResult{reason: fmt.Sprintf("dependency cycle through job %s: never runnable", j.ID), never: true}
	}
	d.visiting[j.ID] = true
	var wait, never depResult
	note := func(r depResult) {
		switch {
		case r.never && never.reason == "":
			never = r
		case !r.never && r.reason != "" && wait.reason == "":
			wait = r
		}
	}
	for _, id := range j.After {
		note(d.afterSuccess(id))
	}
	for _, id := range j.AfterAny {
		note(d.afterAny(id))
	}
	delete(d.visiting, j.ID)
	r := wait
	if never.reason != "" {
		r = never
	}
	d.done[j.ID] = r
	return r
}

func (d *depResolver) lookup(id string) lookupResult {
	if r, ok := d.lookups[id]; ok {
		return r
	}
	st, found := d.state.Lookup(id)
	r := lookupResult{state: st, found: found}
	d.lookups[id] = r
	return r
}

// afterSuccess is the --after rule: the dependency must complete successfully.
func (d *depResolver) afterSuccess(id string) depResult {
	if pj, ok := d.pending[id]; ok {
		if r := d.resolve(pj); r.never {
			return depResult{reason: fmt.Sprintf("dependency %s can never run: never runnable", id), never: true}
		}
		return depResult{reason: fmt.Sprintf("waiting for job %s to succeed", id)}
	}
	l := d.lookup(id)
	switch {
	case !l.found:
		return depResult{reason: fmt.Sprintf("dependency %s not found: never runnable", id), never: true}
	case l.state == StateCompleted:
		return depResult{}
	case l.state.Terminal():
		return depResult{reason: fmt.Sprintf("dependency %s %s: never runnable", id, endedWords(l.state)), never: true}
	}
	return depResult{reason: fmt.Sprintf("waiting for job %s to succeed", id)}
}

// afterAny is the --after-any rule: the dependency must have ended, however it ended.
func (d *depResolver) afterAny(id string) depResult {
	if pj, ok := d.pending[id]; ok {
		if r := d.resolve(pj); r.never {
			return depResult{reason: fmt.Sprintf("waiting for job %s to end; it can never run, so cancel it to release this job", id)}
		}
		return depResult{reason: fmt.Sprintf("waiting for job %s to end", id)}
	}
	l := d.lookup(id)
	switch {
	case !l.found:
		return depResult{reason: fmt.Sprintf("dependency %s not found: never runnable", id), never: true}
	case l.state.Terminal():
		return depResult{}
	}
	return depResult{reason: fmt.Sprintf("waiting for job %s to end", id)}
}

func endedWords(s JobState) string {
	switch s {
	case StateFailed:
		return "failed"
	case StateCancelled:
		return "was cancelled"
	case StateTimeout:
		return "timed out"
	case StateNodeFail:
		return "lost its node"
	}
	return "ended as " + string(s)
}
