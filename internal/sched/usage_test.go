package sched

import (
	"math"
	"testing"
	"time"
)

func TestUsage(t *testing.T) {
	const hl = time.Hour
	approx := func(a, b float64) bool { return math.Abs(a-b) < 1e-9*math.Max(1, math.Abs(b)) }
	tests := []struct {
		name     string
		halfLife time.Duration
		adds     []usageAdd
		at       time.Duration
		want     float64
	}{
		{name: "unknown user", halfLife: hl, at: 0, want: 0},
		{name: "no decay at the same time", halfLife: hl, adds: []usageAdd{{100, 0}}, at: 0, want: 100},
		{name: "halves each half-life", halfLife: hl, adds: []usageAdd{{100, 0}}, at: 2 * hl, want: 25},
		{name: "adds decay separately", halfLife: hl, adds: []usageAdd{{100, 0}, {100, hl}}, at: hl, want: 150},
		{name: "out-of-order add counts by its age", halfLife: hl, adds: []usageAdd{{100, hl}, {100, 0}}, at: hl, want: 150},
		{name: "decay off", halfLife: 0, adds: []usageAdd{{100, 0}}, at: 100 * hl, want: 100},
		{name: "bad amounts ignored", halfLife: hl, adds: []usageAdd{{-5, 0}, {math.NaN(), 0}, {math.Inf(1), 0}, {10, 0}}, at: 0, want: 10},
		{name: "reading the past does not grow it", halfLife: hl, adds: []usageAdd{{100, hl}}, at: 0, want: 100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := NewUsage(tt.halfLife)
			for _, a := range tt.adds {
				u.Add("alice", a.amount, t0.Add(a.at))
			}
			if got := u.Get("alice", t0.Add(tt.at)); !approx(got, tt.want) {
				t.Fatalf("Get = %v, want %v", got, tt.want)
			}
		})
	}
	t.Run("snapshot restores", func(t *testing.T) {
		u := NewUsage(hl)
		u.Add("alice", 100, t0)
		u.Add("bob", 40, t0.Add(hl))
		at := t0.Add(2 * hl)
		restored := NewUsage(hl)
		for user, v := range u.Snapshot(at) {
			restored.Add(user, v, at)
		}
		for _, user := range []string{"alice", "bob"} {
			later := at.Add(3 * hl)
			if a, b := u.Get(user, later), restored.Get(user, later); !approx(a, b) {
				t.Errorf("%s: original %v, restored %v", user, a, b)
			}
		}
	})
}

type usageAdd struct {
	amount float64
	at     time.Duration
}
