package idleprocs

import (
	"context"
	"runtime"
	"testing"
	"time"
)

func TestDecide(t *testing.T) {
	tests := []struct {
		name               string
		cur, full          int
		share              float64
		idleRuns           int
		wantNext, wantRuns int
	}{
		{"busy widens at once", 1, 4, 0.5, 7, 4, 0},
		{"busy at the threshold", 1, 4, busyShare, 0, 4, 0},
		{"busy stays wide", 4, 4, 0.9, 0, 4, 0},
		{"first idle interval keeps the setting", 4, 4, 0.01, 0, 4, 1},
		{"second idle interval keeps the setting", 4, 4, 0.01, 1, 4, 2},
		{"third idle interval narrows", 4, 4, 0.01, 2, 1, 3},
		{"staying idle stays narrow", 1, 4, 0.0, 9, 1, 10},
		{"in between keeps narrow and restarts the count", 1, 4, 0.1, 5, 1, 0},
		{"in between keeps wide and restarts the count", 4, 4, 0.1, 2, 4, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			next, runs := decide(tt.cur, tt.full, tt.share, tt.idleRuns)
			if next != tt.wantNext || runs != tt.wantRuns {
				t.Errorf("decide(%d, %d, %v, %d) = %d, %d; want %d, %d",
					tt.cur, tt.full, tt.share, tt.idleRuns, next, runs, tt.wantNext, tt.wantRuns)
			}
		})
	}
}

func TestUpkeepDue(t *testing.T) {
	tests := []struct {
		idleRuns int
		want     bool
	}{
		{0, false},
		{1, false},
		{idleIntervals, false},
		{upkeepIntervals - 1, false},
		{upkeepIntervals, true},
		{upkeepIntervals + 1, false},
		{2 * upkeepIntervals, true},
	}
	for _, tt := range tests {
		if got := upkeepDue(tt.idleRuns); got != tt.want {
			t.Errorf("upkeepDue(%d) = %v, want %v", tt.idleRuns, got, tt.want)
		}
	}
}

// TestRunNarrowsWhenIdleAndRestores runs the governor in this (idle) test process: after the
// idle intervals it must have narrowed the scheduler to one processor, and it must restore
// the full count when it stops.
func TestRunNarrowsWhenIdleAndRestores(t *testing.T) {
	if testing.Short() {
		t.Skip("takes idleIntervals+1 seconds")
	}
	t.Setenv("GOMAXPROCS", "")
	full := runtime.GOMAXPROCS(0)
	if full < 2 {
		runtime.GOMAXPROCS(2)
		full = 2
		defer runtime.GOMAXPROCS(1)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Run(ctx, nil); close(done) }()
	deadline := time.Now().Add(time.Duration(idleIntervals+3) * interval)
	for runtime.GOMAXPROCS(0) != 1 {
		if time.Now().After(deadline) {
			cancel()
			<-done
			t.Fatalf("GOMAXPROCS still %d after %d idle intervals", runtime.GOMAXPROCS(0), idleIntervals+3)
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	<-done
	if got := runtime.GOMAXPROCS(0); got != full {
		t.Errorf("GOMAXPROCS %d after Run returned, want %d restored", got, full)
	}
}
