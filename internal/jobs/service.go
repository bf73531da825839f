package jobs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc"

	"github.com/ssi-cluster/ssi/internal/api/jobsrpc"
)

// Member is a node as gossip sees it.
type Member struct {
	Name     string
	Index    uint32
	Alive    bool
	CPUs     uint32
	MemTotal uint64
}

// Deps is what the job system needs from the agent.
type Deps struct {
	Etcd   *clientv3.Client
	Node   string // this node's name
	Server bool   // servers take part in the scheduler leader election
	// Members is the gossip view; it must be cheap to call.
	Members func() []Member
	// MembersChanged returns a channel that is closed at the view's next change: the
	// scheduler leader looks at the view only when it moved.
	MembersChanged func() <-chan struct{}
	// CgroupParent is the cgroup (relative to the cgroup2 mount) under which each job task
	// gets its own cgroup.
	CgroupParent string
	// Socket is the agent's socket as processes on this node see it (SSI_SOCKET for tasks).
	Socket    string
	NodeIndex uint32
	Logger    *slog.Logger
	// LeadsEtcd, when set, says without a network call whether this node's embedded etcd
	// member is the etcd leader. Nil: ask the endpoints (external etcd).
	LeadsEtcd func() bool
	// EtcdLeaderChanged, when set with LeadsEtcd, returns a channel that is closed when the
	// embedded member's etcd leader next changes.
	EtcdLeaderChanged func() <-chan struct{}
	// SpoolDir holds the node's checkpoint directories and batch scripts; it must be this
	// agent's own (the agent passes a directory in its data dir) and searchable by users.
	// Empty: defaultSpoolDir.
	SpoolDir string
	// Tree says where this node mounts the cluster file tree ("" when it does not), so that
	// jobs find their submit directory and output files on the submit node. Nil: never.
	Tree func() string
}

// tuning holds the timings and places the package uses; tests shorten them.
type tuning struct {
	spoolDir       string        // per-node spool: checkpoint directories and job scripts
	cgroupMount    string        // empty: the cgroup2 mount from /proc/self/mountinfo
	killGrace      time.Duration // TERM → KILL when a job is cancelled or times out
	sessionTTL     int           // seconds: the leader's etcd session, so failover takes ≤ 2 TTLs
	interactiveTTL int           // seconds: the lease of interactive sessions
	nodeGrace      time.Duration // a new leader waits this long before failing jobs on nodes gossip does not know
	backstop       time.Duration // past limit+grace, the leader ends a task its node did not report
	usageHalfLife  time.Duration // fair-share decay
	usageSave      time.Duration // how often the leader persists the fair-share table
	tick           time.Duration // the leader's pass interval without events
	stepAsideCheck time.Duration // how often a server checks whether it leads etcd (see campaign)
	// stepAsideFallback is how often a server with an embedded etcd member checks anyway;
	// leadership changes and candidates tell it sooner (stepAsideSignals).
	stepAsideFallback time.Duration
}

func defaultTuning() tuning {
	return tuning{
		spoolDir:          defaultSpoolDir,
		killGrace:         10 * time.Second,
		sessionTTL:        2,
		interactiveTTL:    10,
		nodeGrace:         10 * time.Second,
		backstop:          30 * time.Second,
		usageHalfLife:     7 * 24 * time.Hour,
		usageSave:         5 * time.Second,
		tick:              time.Second,
		stepAsideCheck:    500 * time.Millisecond,
		stepAsideFallback: 5 * time.Second,
	}
}

// Service is the job system on one node: the executor of the node's allocations, the Jobs
// RPCs for local clients, and (on servers) a candidate for scheduler leader.
type Service struct {
	jobsrpc.UnimplementedJobsServer
	d   Deps
	t   tuning
	log *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	exec       *executor
	leaderName atomic.Value // string
	// leading is closed-over state of the current leadership, for tests and metrics.
	leading atomic.Bool

	idMu   sync.Mutex
	nextID int64 // the next job id as last seen, to allocate in one round trip

	leaseMu sync.Mutex
	lease   clientv3.LeaseID // for interactive sessions, created on first use

	queueCache queueCache

	closeOnce sync.Once
}

// Start brings up the node's executor (adopting or failing what a previous agent left) and,
// on servers, the candidacy for scheduler leader. It returns once the executor runs.
func Start(ctx context.Context, d Deps) (*Service, error) {
	t := defaultTuning()
	if d.SpoolDir != "" {
		t.spoolDir = d.SpoolDir
	}
	return start(ctx, d, t)
}

// defaultSpoolDir is the spool of a Service started without Deps.SpoolDir.
const defaultSpoolDir = "/var/spool/ssi"

func start(ctx context.Context, d Deps, t tuning) (*Service, error) {
	switch {
	case d.Etcd == nil:
		return nil, errors.New("jobs: no etcd client: the agent must connect to etcd before starting the job system")
	case d.Node == "":
		return nil, errors.New("jobs: no node name: pass the node's name in Deps.Node")
	case d.Members == nil || d.MembersChanged == nil:
		return nil, errors.New("jobs: no membership view: pass Deps.Members and Deps.MembersChanged")
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Service{d: d, t: t, log: d.Logger.With("component", "jobs")}
	s.leaderName.Store("")
	s.ctx, s.cancel = context.WithCancel(context.Background())
	exec, err := newExecutor(ctx, s)
	if err != nil {
		s.cancel()
		return nil, err
	}
	s.exec = exec
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		s.observeLeader()
	}()
	go func() {
		defer s.wg.Done()
		s.watchQueues()
	}()
	if d.Server {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.campaign()
		}()
	}
	return s, nil
}

// Register adds the Jobs service to the agent's control (Unix socket) server.
func (s *Service) Register(g *grpc.Server) { jobsrpc.RegisterJobsServer(g, s) }

// Leader is the node that runs the scheduler now, "" if none is known.
func (s *Service) Leader() string { return s.leaderName.Load().(string) }

// Close stops the executor (its running tasks are ended and reported, requeued where
// allowed), gives up leadership at once so another server takes over without waiting for the
// session to expire, and waits for everything to stop.
func (s *Service) Close() error {
	s.closeOnce.Do(func() {
		s.exec.shutdown()
		s.cancel()
		s.wg.Wait()
		s.leaseMu.Lock()
		if s.lease != 0 {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, _ = s.d.Etcd.Revoke(ctx, s.lease)
			cancel()
		}
		s.leaseMu.Unlock()
	})
	return nil
}

// campaign keeps this server a candidate for scheduler leader until the service closes.
//
// The server that leads etcd's raft group stays out of the race while another server is a
// candidate, and hands leadership over if it comes to lead etcd: after etcd loses its raft
// leader it extends every lease, so if one kill -9 took both leaders the scheduler's lease
// would outlive its server by several seconds. With the roles apart, losing the scheduler
// leader costs one lease TTL, and losing the etcd leader does not stop the scheduler.
func (s *Service) campaign() {
	backoff := 100 * time.Millisecond
	signals := s.stepAsideSignals(s.ctx)
	for s.ctx.Err() == nil {
		// Sit out without a session: its keep-alives, three every two seconds, would be work
		// for the etcd leader, which is this server, for nothing.
		for {
			changed := signals.arm()
			if !s.stepAside("") || !signals.wait(s.ctx, changed) {
				break
			}
		}
		sess, err := concurrency.NewSession(s.d.Etcd, concurrency.WithTTL(s.t.sessionTTL), concurrency.WithContext(s.ctx))
		if err != nil {
			s.log.Debug("scheduler election: no etcd session yet", "err", err)
			sleep(s.ctx, backoff)
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		e := concurrency.NewElection(sess, nameElection)
		myKey := electionKey(sess.Lease())
		cctx, stop := context.WithCancel(s.ctx)
		watching := make(chan struct{})
		go func() {
			defer close(watching)
			s.watchStepAside(cctx, stop, signals, myKey)
		}()
		err = e.Campaign(cctx, s.d.Node)
		if err != nil {
			stop()
			<-watching
			sess.Close()
			if s.ctx.Err() == nil {
				s.log.Debug("scheduler election", "err", err)
				sleep(s.ctx, 200*time.Millisecond)
			}
			continue
		}
		s.leading.Store(true)
		s.log.Info("this server is now the scheduler leader")
		err = s.lead(cctx, sess, e)
		stop()
		<-watching
		s.leading.Store(false)
		if err != nil && s.ctx.Err() == nil {
			s.log.Warn("scheduler leadership ended", "err", err)
		}
		// Resigning deletes the election key now, so the next server need not wait for the
		// session to expire. It fails harmlessly if the session is already gone.
		rctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = e.Resign(rctx)
		cancel()
		sess.Close()
	}
}

// watchStepAside cancels a campaign or a leadership (through stop) once this server should
// step aside.
func (s *Service) watchStepAside(ctx context.Context, stop context.CancelFunc, signals *stepAsideSignals, myKey string) {
	for {
		changed := signals.arm()
		if !signals.wait(ctx, changed) {
			return
		}
		if s.stepAside(myKey) {
			s.log.Info("this server leads etcd: handing the scheduler to another server")
			stop()
			return
		}
	}
}

// stepAside reports whether this server leads etcd while another server is a candidate for
// scheduler leader. Errors count as no: a server that cannot tell keeps competing.
func (s *Service) stepAside(myKey string) bool {
	// Asking the embedded member is free, and most servers do not lead etcd: only the one that
	// does reads the candidates. The read is serializable: a linearizable one costs the raft
	// leader a round of messages to its followers at every check, and a candidate list a few
	// milliseconds old decides this as well.
	if s.d.LeadsEtcd != nil && !s.d.LeadsEtcd() {
		return false
	}
	ctx, cancel := context.WithTimeout(s.ctx, time.Second)
	defer cancel()
	cli := s.d.Etcd
	resp, err := cli.Get(ctx, prefixElection, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithSerializable())
	if err != nil {
		return false
	}
	others := false
	for _, kv := range resp.Kvs {
		if string(kv.Key) != myKey {
			others = true
		}
	}
	if !others {
		return false
	}
	if s.d.LeadsEtcd != nil {
		return true // checked above
	}
	// Status opens a connection of its own to the endpoint: fine for an external etcd, where
	// there is no member of ours to ask.
	members, err := cli.MemberList(ctx)
	if err != nil {
		return false
	}
	for _, ep := range cli.Endpoints() {
		st, err := cli.Status(ctx, ep)
		if err != nil {
			continue
		}
		for _, m := range members.Members {
			if m.ID == st.Leader {
				return m.Name == s.d.Node
			}
		}
		return false
	}
	return false
}

// observeLeader follows the election so Leader answers without a round trip.
func (s *Service) observeLeader() {
	for s.ctx.Err() == nil {
		resp, err := s.d.Etcd.Get(s.ctx, prefixElection, clientv3.WithFirstCreate()...)
		if err != nil {
			sleep(s.ctx, 500*time.Millisecond)
			continue
		}
		name := ""
		if len(resp.Kvs) > 0 {
			name = string(resp.Kvs[0].Value)
		}
		s.leaderName.Store(name)
		wctx, cancel := context.WithCancel(s.ctx)
		wch := s.d.Etcd.Watch(wctx, prefixElection, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
		for wr := range wch {
			if wr.Err() != nil || len(wr.Events) > 0 {
				break
			}
		}
		cancel()
	}
	s.leaderName.Store("")
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// interactiveLease is this agent's lease for interactive sessions: the session keys vanish
// with the agent, which tells the leader to end the sessions' jobs.
func (s *Service) interactiveLease(ctx context.Context) (clientv3.LeaseID, error) {
	s.leaseMu.Lock()
	defer s.leaseMu.Unlock()
	if s.lease != 0 {
		return s.lease, nil
	}
	g, err := s.d.Etcd.Grant(ctx, int64(s.t.interactiveTTL))
	if err != nil {
		return 0, fmt.Errorf("creating the lease for interactive jobs: %w", err)
	}
	ka, err := s.d.Etcd.KeepAlive(s.ctx, g.ID)
	if err != nil {
		return 0, fmt.Errorf("keeping the lease for interactive jobs: %w", err)
	}
	s.lease = g.ID
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for range ka {
		}
		// The keepalive ended (etcd unreachable for a TTL, or shutdown): a new lease is made
		// on next use.
		s.leaseMu.Lock()
		if s.lease == g.ID {
			s.lease = 0
		}
		s.leaseMu.Unlock()
	}()
	return s.lease, nil
}
