// Package place decides where a new process runs, MOSIX-style and without a central round
// trip: from the load vectors every agent already holds through gossip. A process stays on its
// home node while that node is lightly loaded; otherwise it goes to the node with the lowest
// load per CPU that has the memory free.
package place

import (
	"errors"
	"fmt"
	"sort"
)

// Candidate is a node as the local gossip view describes it.
type Candidate struct {
	Name     string
	Index    uint32
	Alive    bool
	Left     bool // it left the cluster on purpose (SIGTERM), rather than died
	CPUs     uint32
	Load1    float64 // runnable tasks, averaged over a minute
	CPUUsed  float64 // cores busy with the node's own processes
	MemFree  uint64
	Recent   int  // processes this agent placed there since the node last gossiped its load
	Draining bool // an operator asked for no new work there
}

// Policy holds the placement thresholds.
type Policy struct {
	// StayBelow is the load per CPU under which work stays on the home node.
	StayBelow float64
	// MinMemFree is the free memory a node needs to receive work.
	MinMemFree uint64
}

// DefaultPolicy stays home while under 70 % busy and wants 64 MiB free.
var DefaultPolicy = Policy{StayBelow: 0.7, MinMemFree: 64 << 20}

// Decision is a choice and the reason for it, for `ssi run --explain`.
type Decision struct {
	Node   string
	Reason string
}

// ErrNoNode means no alive node can take the work.
var ErrNoNode = errors.New("no alive node can take the work")

// LoadPerCPU is a node's load as placement sees it: the busier of its run queue and its
// measured CPU use, plus what was just placed there, per CPU.
func (c Candidate) LoadPerCPU() float64 {
	cpus := float64(c.CPUs)
	if cpus < 1 {
		cpus = 1
	}
	return (max(c.Load1, c.CPUUsed) + float64(c.Recent)) / cpus
}

// Choose picks the node for one process whose home is home.
func (p Policy) Choose(home string, cands []Candidate) (Decision, error) {
	var usable []Candidate
	var homeC *Candidate
	for i := range cands {
		c := cands[i]
		if !c.Alive || c.Draining || c.MemFree < p.MinMemFree {
			continue
		}
		usable = append(usable, c)
		if c.Name == home {
			homeC = &cands[i]
		}
	}
	if len(usable) == 0 {
		return Decision{}, ErrNoNode
	}
	if homeC != nil && homeC.LoadPerCPU() < p.StayBelow {
		return Decision{Node: home, Reason: fmt.Sprintf("home node %s is lightly loaded (%.2f per CPU < %.2f)", home, homeC.LoadPerCPU(), p.StayBelow)}, nil
	}
	sort.SliceStable(usable, func(i, j int) bool {
		li, lj := usable[i].LoadPerCPU(), usable[j].LoadPerCPU()
		if li != lj {
			return li < lj
		}
		if (usable[i].Name == home) != (usable[j].Name == home) {
			return usable[i].Name == home
		}
		return usable[i].Index < usable[j].Index
	})
	best := usable[0]
	why := fmt.Sprintf("least loaded per CPU: %s at %.2f", best.Name, best.LoadPerCPU())
	if homeC == nil {
		why += fmt.Sprintf("; home node %s cannot take work", home)
	} else {
		why += fmt.Sprintf("; home node %s is at %.2f (>= %.2f)", home, homeC.LoadPerCPU(), p.StayBelow)
	}
	if len(usable) > 1 {
		why += fmt.Sprintf("; next %s at %.2f", usable[1].Name, usable[1].LoadPerCPU())
	}
	return Decision{Node: best.Name, Reason: why}, nil
}
