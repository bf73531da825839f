package sched

import (
	"cmp"
	"slices"
)

// candidate is a node a job could use in a search: how many tasks fit, and what would be left.
type candidate struct {
	node             int
	fit              int // tasks that fit, capped at what the search needs
	leftCPU, leftMem int64
}

// tasksFit is how many tasks of s fit in cpu and mem, at most limit.
func tasksFit(cpu, mem int64, s shape, limit int) int {
	if cpu < s.cpu || mem < s.mem {
		return 0
	}
	k := cpu / s.cpu
	if s.mem > 0 {
		k = min(k, mem/s.mem)
	}
	return int(min(k, int64(limit)))
}

// better reports whether a should be chosen over b under the placement policy. Ties go to the
// node that sorts first by name, so passes are deterministic.
func (p *pass) better(a, b *candidate) bool {
	if p.cfg.Placement == LeastLoaded {
		fa := float64(a.leftCPU) / float64(max(p.nodes[a.node].capCPU, 1))
		fb := float64(b.leftCPU) / float64(max(p.nodes[b.node].capCPU, 1))
		if fa != fb {
			return fa > fb
		}
		if a.leftMem != b.leftMem {
			return a.leftMem > b.leftMem
		}
		return a.node < b.node
	}
	if a.leftCPU != b.leftCPU {
		return a.leftCPU < b.leftCPU
	}
	if a.leftMem != b.leftMem {
		return a.leftMem < b.leftMem
	}
	return a.node < b.node
}

func (p *pass) compare(a, b candidate) int {
	if p.better(&a, &b) {
		return -1
	}
	if p.better(&b, &a) {
		return 1
	}
	return 0
}

// place searches nodes for room for every task of s (gang: all or nothing), using capacity for
// what each node has free. The result is ordered by node and is valid until the next search.
//
// With s.nodes == N ≥ 1 the tasks are spread evenly over N distinct nodes (the first T mod N
// nodes get one more). With s.nodes == 0 the tasks go on one node if any has room, else on as
// few nodes as possible, largest room first.
func (p *pass) place(nodes []int, s shape, capacity func(int) (int64, int64)) ([]candidate, bool) {
	if s.nodes == 0 && s.tasks > 1 {
		return p.placePacked(nodes, s, capacity)
	}
	spread := max(s.nodes, 1)
	if spread == 1 {
		best, ok := p.bestSingle(nodes, s, capacity)
		if !ok {
			return nil, false
		}
		p.picked = append(p.picked[:0], best)
		return p.picked, true
	}
	return p.placeSpread(nodes, s, spread, capacity)
}

// bestSingle finds the best node that takes all tasks of s.
func (p *pass) bestSingle(nodes []int, s shape, capacity func(int) (int64, int64)) (candidate, bool) {
	needCPU, needMem := s.cpu*int64(s.tasks), s.mem*int64(s.tasks)
	var best candidate
	found := false
	for _, i := range nodes {
		cpu, mem := capacity(i)
		if cpu < needCPU || mem < needMem {
			continue
		}
		c := candidate{node: i, fit: s.tasks, leftCPU: cpu - needCPU, leftMem: mem - needMem}
		if !found || p.better(&c, &best) {
			best, found = c, true
		}
	}
	return best, found
}

func (p *pass) placeSpread(nodes []int, s shape, spread int, capacity func(int) (int64, int64)) ([]candidate, bool) {
	low, extra := s.tasks/spread, s.tasks%spread
	high := low
	if extra > 0 {
		high++
	}
	p.cands = p.cands[:0]
	for _, i := range nodes {
		cpu, mem := capacity(i)
		k := tasksFit(cpu, mem, s, high)
		if k < low {
			continue
		}
		p.cands = append(p.cands, candidate{node: i, fit: k,
			leftCPU: cpu - s.cpu*int64(low), leftMem: mem - s.mem*int64(low)})
	}
	if len(p.cands) < spread {
		return nil, false
	}
	slices.SortFunc(p.cands, p.compare)
	// Give the extra tasks to the best nodes that can hold them, then fill with the rest.
	p.picked = p.picked[:0]
	taken := 0
	for i := range p.cands {
		if taken == extra {
			break
		}
		if c := &p.cands[i]; c.fit >= high {
			p.picked = append(p.picked, candidate{node: c.node, fit: high})
			c.fit = -1
			taken++
		}
	}
	if taken < extra {
		return nil, false
	}
	for i := range p.cands {
		if len(p.picked) == spread {
			break
		}
		if c := &p.cands[i]; c.fit >= low {
			p.picked = append(p.picked, candidate{node: c.node, fit: low})
		}
	}
	if len(p.picked) < spread {
		return nil, false
	}
	slices.SortFunc(p.picked, func(a, b candidate) int { return cmp.Compare(a.node, b.node) })
	return p.picked, true
}

func (p *pass) placePacked(nodes []int, s shape, capacity func(int) (int64, int64)) ([]candidate, bool) {
	if best, ok := p.bestSingle(nodes, s, capacity); ok {
		p.picked = append(p.picked[:0], best)
		return p.picked, true
	}
	p.cands = p.cands[:0]
	total := 0
	for _, i := range nodes {
		cpu, mem := capacity(i)
		k := tasksFit(cpu, mem, s, s.tasks)
		if k == 0 {
			continue
		}
		total += k
		p.cands = append(p.cands, candidate{node: i, fit: k,
			leftCPU: cpu - s.cpu*int64(k), leftMem: mem - s.mem*int64(k)})
	}
	if total < s.tasks {
		return nil, false
	}
	// Largest room first keeps the job on few nodes; the policy breaks ties.
	slices.SortFunc(p.cands, func(a, b candidate) int {
		if a.fit != b.fit {
			return cmp.Compare(b.fit, a.fit)
		}
		return p.compare(a, b)
	})
	p.picked = p.picked[:0]
	left := s.tasks
	for _, c := range p.cands {
		if left == 0 {
			break
		}
		take := min(c.fit, left)
		p.picked = append(p.picked, candidate{node: c.node, fit: take})
		left -= take
	}
	slices.SortFunc(p.picked, func(a, b candidate) int { return cmp.Compare(a.node, b.node) })
	return p.picked, true
}
