package sched

import (
	"fmt"
	"strings"
)

// neverFits explains a job that no free capacity could ever satisfy: the queue has too few
// nodes, or none big enough even when empty. It returns "" when the job could fit some day.
func (p *pass) neverFits(qi int, s shape) string {
	q := &p.queues[qi]
	if len(q.all) == 0 {
		return fmt.Sprintf("queue %s has no nodes: add nodes or fix the queue's node list", q.name)
	}
	if s.nodes > len(q.all) {
		return fmt.Sprintf("needs %d nodes, queue %s has %d", s.nodes, q.name, len(q.all))
	}
	perNode := s.tasks // the tasks that must share one node at least somewhere
	if s.nodes > 0 {
		perNode = (s.tasks + s.nodes - 1) / s.nodes
	} else if s.tasks > 1 {
		perNode = 1
	}
	if needCPU := s.cpu * int64(perNode); needCPU > q.maxCapCPU {
		return fmt.Sprintf("needs %s cpus on one node, the largest node in queue %s has %s",
			FormatCPUs(needCPU), q.name, FormatCPUs(q.maxCapCPU))
	}
	if needMem := s.mem * int64(perNode); needMem > q.maxCapMem {
		return fmt.Sprintf("needs %s memory on one node, the largest node in queue %s has %s",
			FormatSize(needMem), q.name, FormatSize(q.maxCapMem))
	}
	if s.nodes == 0 && s.tasks > 1 {
		room := 0
		for _, i := range q.all {
			n := &p.nodes[i]
			room += tasksFit(q.cpuCap(n), n.capMem, s, s.tasks)
			if room >= s.tasks {
				return ""
			}
		}
		return fmt.Sprintf("needs %d tasks of %s cpus, queue %s holds %d when empty",
			s.tasks, FormatCPUs(s.cpu), q.name, room)
	}
	return ""
}

// resourceReason explains a job that could fit an empty queue but not the queue as it is now.
// It also tightens the queue's free-capacity bounds, since it measures them anyway.
func (p *pass) resourceReason(qi int, s shape) string {
	q := &p.queues[qi]
	if len(q.usable) == 0 {
		return p.unusableReason(qi)
	}
	var maxCPU, maxMem int64 = -1 << 62, -1 << 62
	cpuNode, memNode := "", ""
	spread := max(s.nodes, 1)
	low := s.tasks / spread
	roomy, packed := 0, 0
	for _, i := range q.usable {
		n := &p.nodes[i]
		cpu, mem := q.cpuCap(n)-n.usedCPU, n.capMem-n.usedMem
		if cpu > maxCPU {
			maxCPU, cpuNode = cpu, n.name
		}
		if mem > maxMem {
			maxMem, memNode = mem, n.name
		}
		if tasksFit(cpu, mem, s, s.tasks) >= low {
			roomy++
		}
		packed += tasksFit(cpu, mem, s, s.tasks)
	}
	q.boundCPU, q.boundMem = max(maxCPU, 0), max(maxMem, 0)

	var reason string
	switch {
	case s.nodes == 0 && s.tasks > 1:
		reason = fmt.Sprintf("waiting for resources: needs %d tasks of %s cpus%s each, room for %d now",
			s.tasks, FormatCPUs(s.cpu), memSuffix(s.mem), packed)
	case spread > 1:
		reason = fmt.Sprintf("waiting for resources: needs %d nodes with room for %d tasks of %s cpus%s each, %d have it",
			spread, low, FormatCPUs(s.cpu), memSuffix(s.mem), roomy)
	default:
		needCPU, needMem := s.cpu*int64(s.tasks), s.mem*int64(s.tasks)
		switch {
		case maxCPU < needCPU:
			reason = fmt.Sprintf("waiting for resources: needs %s cpus, largest free is %s (%s)",
				FormatCPUs(needCPU), FormatCPUs(max(maxCPU, 0)), cpuNode)
		case maxMem < needMem:
			reason = fmt.Sprintf("waiting for resources: needs %s memory, largest free is %s (%s)",
				FormatSize(needMem), FormatSize(max(maxMem, 0)), memNode)
		default:
			reason = fmt.Sprintf("waiting for resources: needs %s cpus and %s memory on one node, none has both free",
				FormatCPUs(needCPU), FormatSize(needMem))
		}
	}
	return reason + p.drainHint(qi, s)
}

func memSuffix(mem int64) string {
	if mem == 0 {
		return ""
	}
	return " and " + FormatSize(mem)
}

// drainHint names a draining node the job would fit on, since draining is often why it waits.
func (p *pass) drainHint(qi int, s shape) string {
	q := &p.queues[qi]
	perNode := s.tasks
	if s.nodes > 1 {
		perNode = s.tasks / s.nodes
	} else if s.nodes == 0 && s.tasks > 1 {
		perNode = 1
	}
	for _, i := range q.all {
		n := &p.nodes[i]
		if n.alive && n.draining && tasksFit(q.cpuCap(n)-n.usedCPU, n.capMem-n.usedMem, s, perNode) >= perNode {
			return fmt.Sprintf("; node %s could run it but is %s", n.name, drainWords(n))
		}
	}
	return ""
}

func drainWords(n *nodeView) string {
	if n.drainReason == "" {
		return "draining"
	}
	return "draining (" + n.drainReason + ")"
}

// unusableReason explains a queue whose nodes are all draining or down.
func (p *pass) unusableReason(qi int) string {
	q := &p.queues[qi]
	const shown = 3
	var parts []string
	for _, i := range q.all {
		if len(parts) == shown {
			parts = append(parts, fmt.Sprintf("and %d more", len(q.all)-shown))
			break
		}
		n := &p.nodes[i]
		if !n.alive {
			parts = append(parts, "node "+n.name+" down")
		} else {
			parts = append(parts, "node "+n.name+" "+drainWords(n))
		}
	}
	return fmt.Sprintf("queue %s has no usable node: %s", q.name, strings.Join(parts, ", "))
}
