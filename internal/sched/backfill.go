package sched

import (
	"cmp"
	"fmt"
	"slices"
	"time"
)

// reserve finds the earliest time job j (of queue qi, shape s) could start if every running
// job ran to its time limit, and claims the nodes it would get then. It searches only nodes no
// other reservation holds, so reservations never compete. Releases are swept in end order while
// a running count of "nodes with room" is kept per node touched, so the cost is one sort of the
// allocations, not a node search per release.
func (p *pass) reserve(j *Job, qi int, s shape) (Reservation, bool) {
	q := &p.queues[qi]
	local := make(map[int]int, len(q.usable))
	var nodes []int
	for _, i := range q.usable {
		if p.nodes[i].resv < 0 {
			local[i] = len(nodes)
			nodes = append(nodes, i)
		}
	}
	if len(nodes) == 0 {
		return Reservation{}, false
	}
	availCPU := make([]int64, len(nodes))
	availMem := make([]int64, len(nodes))
	for l, i := range nodes {
		n := &p.nodes[i]
		availCPU[l], availMem[l] = q.cpuCap(n)-n.usedCPU, n.capMem-n.usedMem
	}
	var releases []allocation
	for _, a := range p.allocs {
		if l, ok := local[a.node]; ok {
			a.node = l
			releases = append(releases, a)
		}
	}
	slices.SortFunc(releases, func(a, b allocation) int { return cmp.Compare(a.end, b.end) })

	fit := newFitCounter(s, len(nodes))
	for l := range nodes {
		fit.set(l, availCPU[l], availMem[l])
	}
	at, found := p.nowNs, fit.fits()
	for r := 0; !found && r < len(releases); {
		at = releases[r].end
		for ; r < len(releases) && releases[r].end == at; r++ {
			a := releases[r]
			availCPU[a.node] += a.cpu
			availMem[a.node] += a.mem
			fit.set(a.node, availCPU[a.node], availMem[a.node])
		}
		found = fit.fits()
	}
	if !found {
		return Reservation{}, false
	}
	at = max(at, p.nowNs)
	placed, ok := p.place(nodes, s, func(i int) (int64, int64) { return availCPU[local[i]], availMem[local[i]] })
	if !ok {
		return Reservation{}, false // the counter and the search disagree; plan without a promise
	}
	r := Reservation{JobID: j.ID, Start: time.Unix(0, at).In(p.now.Location())}
	for _, c := range placed {
		n := &p.nodes[c.node]
		l := local[c.node]
		n.resv = len(p.resv)
		n.resvAt = at
		n.spareCPU = availCPU[l] - s.cpu*int64(c.fit)
		n.spareMem = availMem[l] - s.mem*int64(c.fit)
		r.Nodes = append(r.Nodes, NodeTasks{Node: n.name, Tasks: c.fit})
	}
	p.resv = append(p.resv, reservation{job: j, at: at})
	return r, true
}

// fitCounter answers "could the job be placed now?" in O(1) as single nodes change, mirroring
// the rules of place: N nodes with an even spread, or packed tasks summed over nodes.
type fitCounter struct {
	s           shape
	spread      int   // 0 when packing
	low, high   int   // tasks per node when spreading
	extra       int   // nodes that need high
	fit         []int // tasks each node holds, capped
	atLow       int   // nodes holding at least low
	atHigh      int   // nodes holding at least high
	packedTotal int
}

func newFitCounter(s shape, nodes int) *fitCounter {
	f := &fitCounter{s: s, fit: make([]int, nodes)}
	if s.nodes == 0 && s.tasks > 1 {
		return f
	}
	f.spread = max(s.nodes, 1)
	f.low, f.extra = s.tasks/f.spread, s.tasks%f.spread
	f.high = f.low
	if f.extra > 0 {
		f.high++
	}
	return f
}

func (f *fitCounter) set(node int, cpu, mem int64) {
	if f.spread == 0 {
		k := tasksFit(cpu, mem, f.s, f.s.tasks)
		f.packedTotal += k - f.fit[node]
		f.fit[node] = k
		return
	}
	old := f.fit[node]
	k := tasksFit(cpu, mem, f.s, f.high)
	f.fit[node] = k
	f.atLow += b2i(k >= f.low) - b2i(old >= f.low)
	f.atHigh += b2i(k >= f.high) - b2i(old >= f.high)
}

func (f *fitCounter) fits() bool {
	if f.spread == 0 {
		return f.packedTotal >= f.s.tasks
	}
	return f.atLow >= f.spread && f.atHigh >= f.extra
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// blockedReason explains a job that fits now but only by taking what a reservation needs.
func (p *pass) blockedReason(qi int, s shape, end int64) string {
	blocker := -1
	if placed, ok := p.place(p.queues[qi].usable, s, p.capacity(qi, -1)); ok {
		for _, c := range placed {
			n := &p.nodes[c.node]
			if n.resv >= 0 && end > n.resvAt && (s.cpu*int64(c.fit) > n.spareCPU || s.mem*int64(c.fit) > n.spareMem) {
				blocker = n.resv
				break
			}
		}
	}
	if blocker < 0 {
		blocker = 0
	}
	return fmt.Sprintf("reserved for job %s (backfill would delay it)", p.resv[blocker].job.ID)
}
