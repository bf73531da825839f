package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/ssi-cluster/ssi/internal/cluster"
	"github.com/ssi-cluster/ssi/internal/promdefer"
)

// metrics is the agent's own Prometheus registry; etcd's metrics (on the default registry)
// are served beside it.
type metrics struct {
	reg      *prometheus.Registry
	rpcs     *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newMetrics(log *slog.Logger) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		rpcs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ssi_rpc_total", Help: "RPCs served, by API, method and status code.",
		}, []string{"api", "method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "ssi_rpc_duration_seconds", Help: "Time to serve an RPC.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}, []string{"api", "method"}),
	}
	// Go runtime and process metrics come with the default registry, served beside this one,
	// and so do etcd's, once registered for real.
	m.reg.MustRegister(m.rpcs, m.duration)
	if err := promdefer.Flush(); err != nil {
		log.Warn("registering the etcd metrics", "err", err)
	}
	return m
}

func (m *metrics) observe(apiName, method string, start time.Time, err error) {
	m.rpcs.WithLabelValues(apiName, method, status.Code(err).String()).Inc()
	m.duration.WithLabelValues(apiName, method).Observe(time.Since(start).Seconds())
}

func (m *metrics) unary(apiName string) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		m.observe(apiName, info.FullMethod, start, err)
		return resp, err
	}
}

func (m *metrics) stream(apiName string) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		start := time.Now()
		err := handler(srv, ss)
		m.observe(apiName, info.FullMethod, start, err)
		return err
	}
}

// clusterCollector reports membership and etcd health at scrape time.
type clusterCollector struct {
	a       *Agent
	members *prometheus.Desc
	etcdUp  *prometheus.Desc
	leader  *prometheus.Desc
}

func (c *clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.members
	ch <- c.etcdUp
	ch <- c.leader
}

func (c *clusterCollector) Collect(ch chan<- prometheus.Metric) {
	counts := map[string]int{cluster.StateAlive: 0, cluster.StateSuspect: 0, cluster.StateDead: 0, cluster.StateLeft: 0}
	nodes, _ := c.a.nodes(context.Background())
	for _, n := range nodes {
		counts[n.State]++
	}
	for state, n := range counts {
		ch <- prometheus.MustNewConstMetric(c.members, prometheus.GaugeValue, float64(n), state)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	up := 0.0
	if _, err := c.a.etcd.Get(ctx, "health-probe"); err == nil {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(c.etcdUp, prometheus.GaugeValue, up)
	leader := 0.0
	if c.a.member != nil && c.a.member.IsLeader() {
		leader = 1
	}
	ch <- prometheus.MustNewConstMetric(c.leader, prometheus.GaugeValue, leader)
}

func (a *Agent) startHTTP() error {
	if a.cfg.HTTP == "" {
		return nil
	}
	a.metrics.reg.MustRegister(&clusterCollector{
		a:       a,
		members: prometheus.NewDesc("ssi_cluster_members", "Nodes by state, as this agent sees them.", []string{"state"}, nil),
		etcdUp:  prometheus.NewDesc("ssi_etcd_up", "1 if this agent can read etcd (a quorum is up).", nil, nil),
		leader:  prometheus.NewDesc("ssi_etcd_is_leader", "1 if this node's etcd member leads.", nil, nil),
	})
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(prometheus.Gatherers{a.metrics.reg, prometheus.DefaultGatherer}, promhttp.HandlerOpts{}))
	// Profiles for operators, on the same operator-only address as the metrics.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if _, err := a.etcd.Get(ctx, "health-probe"); err != nil {
			http.Error(w, fmt.Sprintf("etcd unavailable: %v\n", err), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	lis, err := net.Listen("tcp", a.cfg.HTTP)
	if err != nil {
		return fmt.Errorf("listening on --http %s: %w", a.cfg.HTTP, err)
	}
	a.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if err := a.httpSrv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.fail(fmt.Errorf("HTTP server stopped: %w", err))
		}
	}()
	return nil
}
