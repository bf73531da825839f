package promdefer

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func gathered(t *testing.T, name string) bool {
	t.Helper()
	families, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name {
			return true
		}
	}
	return false
}

func TestRegistrationsWaitForFlush(t *testing.T) {
	early := prometheus.NewCounter(prometheus.CounterOpts{Name: "promdefer_test_early", Help: "h"})
	gone := prometheus.NewCounter(prometheus.CounterOpts{Name: "promdefer_test_gone", Help: "h"})
	prometheus.MustRegister(early, gone)
	if gathered(t, "promdefer_test_early") {
		t.Fatal("registered before Flush")
	}
	if !prometheus.Unregister(gone) {
		t.Fatal("a recorded collector could not be unregistered")
	}
	if err := Flush(); err != nil {
		t.Fatal(err)
	}
	if !gathered(t, "promdefer_test_early") || gathered(t, "promdefer_test_gone") {
		t.Fatal("Flush did not register exactly what was recorded")
	}
	late := prometheus.NewCounter(prometheus.CounterOpts{Name: "promdefer_test_late", Help: "h"})
	prometheus.MustRegister(late)
	if !gathered(t, "promdefer_test_late") {
		t.Fatal("a registration after Flush did not go through")
	}
	if err := Flush(); err != nil {
		t.Fatalf("second Flush: %v", err)
	}
}
