// Package promdefer makes Prometheus registrations done during program initialization cheap.
//
// The etcd server packages linked into ssi register about a hundred metrics with Prometheus's
// default registry from their init functions. Each registration starts a goroutine, and while
// packages initialize the main goroutine is locked to its thread, so each one costs operating-
// system thread switches: several milliseconds of every `ssi` command's start-up, for metrics
// that only the agent serves. This package is initialized right after Prometheus (Go
// initializes ready packages in import-path order, and this path sorts before go.etcd.io), and
// puts a registerer in place that only records what it is given. The agent calls Flush before
// it serves metrics; the CLI never does.
package promdefer

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// deferring records collectors instead of registering them.
type deferring struct {
	real prometheus.Registerer

	mu         sync.Mutex
	collectors []prometheus.Collector
	flushed    bool
}

func (d *deferring) Register(c prometheus.Collector) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.flushed {
		return d.real.Register(c)
	}
	d.collectors = append(d.collectors, c)
	return nil
}

func (d *deferring) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := d.Register(c); err != nil {
			panic(err)
		}
	}
}

func (d *deferring) Unregister(c prometheus.Collector) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.flushed {
		return d.real.Unregister(c)
	}
	for i, x := range d.collectors {
		if x == c {
			d.collectors = append(d.collectors[:i], d.collectors[i+1:]...)
			return true
		}
	}
	return false
}

var pending = &deferring{real: prometheus.DefaultRegisterer}

func init() {
	prometheus.DefaultRegisterer = pending
}

// Flush registers what was recorded with the real default registry, and from then on passes
// registrations straight through. Errors (duplicate metrics) are returned, not panicked on.
func Flush() error {
	pending.mu.Lock()
	defer pending.mu.Unlock()
	if pending.flushed {
		return nil
	}
	pending.flushed = true
	prometheus.DefaultRegisterer = pending.real
	var first error
	for _, c := range pending.collectors {
		if err := pending.real.Register(c); err != nil && first == nil {
			first = err
		}
	}
	pending.collectors = nil
	return first
}
