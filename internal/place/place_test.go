package place

import (
	"errors"
	"testing"
)

func TestChoose(t *testing.T) {
	idle := func(name string, idx uint32) Candidate {
		return Candidate{Name: name, Index: idx, Alive: true, CPUs: 2, MemFree: 1 << 30}
	}
	busy := func(c Candidate, load float64) Candidate { c.Load1 = load; return c }
	tests := []struct {
		name  string
		home  string
		cands []Candidate
		want  string
		err   error
	}{
		{"stay home while light", "n1", []Candidate{busy(idle("n1", 1), 1.0), idle("n2", 2)}, "n1", nil},
		{"leave a busy home", "n1", []Candidate{busy(idle("n1", 1), 1.8), busy(idle("n2", 2), 0.6), busy(idle("n3", 3), 0.2)}, "n3", nil},
		{"measured CPU counts too", "n1", []Candidate{func() Candidate { c := idle("n1", 1); c.CPUUsed = 1.9; return c }(), idle("n2", 2)}, "n2", nil},
		{"recent placements count", "n1", []Candidate{busy(idle("n1", 1), 2), func() Candidate { c := idle("n2", 2); c.Recent = 3; return c }(), busy(idle("n3", 3), 1)}, "n3", nil},
		{"skip dead, draining and full nodes", "n1", []Candidate{busy(idle("n1", 1), 4),
			func() Candidate { c := idle("n2", 2); c.Alive = false; return c }(),
			func() Candidate { c := idle("n3", 3); c.Draining = true; return c }(),
			func() Candidate { c := idle("n4", 4); c.MemFree = 1; return c }(),
			busy(idle("n5", 5), 3)}, "n5", nil},
		{"home unknown", "x", []Candidate{busy(idle("n1", 1), 1), idle("n2", 2)}, "n2", nil},
		{"ties prefer home", "n2", []Candidate{busy(idle("n1", 1), 2), busy(idle("n2", 2), 2)}, "n2", nil},
		{"nothing alive", "n1", []Candidate{func() Candidate { c := idle("n1", 1); c.Alive = false; return c }()}, "", ErrNoNode},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := DefaultPolicy.Choose(tt.home, tt.cands)
			if !errors.Is(err, tt.err) || d.Node != tt.want {
				t.Fatalf("got %q (%s), %v; want %q, %v", d.Node, d.Reason, err, tt.want, tt.err)
			}
			if err == nil && d.Reason == "" {
				t.Fatal("no reason given")
			}
		})
	}
}

func BenchmarkChoose1000(b *testing.B) {
	cands := make([]Candidate, 1000)
	for i := range cands {
		cands[i] = Candidate{Name: "n", Index: uint32(i), Alive: true, CPUs: 8, Load1: float64(i % 17), MemFree: 1 << 30}
	}
	cands[0].Load1 = 100
	cands[0].Name = "home"
	for b.Loop() {
		if _, err := DefaultPolicy.Choose("home", cands); err != nil {
			b.Fatal(err)
		}
	}
}
