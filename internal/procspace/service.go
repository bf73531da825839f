// Package procspace is the cluster-wide process space: it starts commands on any node as if
// they were local children (stdio, terminal, signals, exit status), lists and signals every
// process of every node by its global process id, and waits for them. The local agent serves
// the CLI (Run, Ps, Kill, Wait) and forwards to the owning node's agent (Exec, Ps, Signal, Wait)
// over mutual TLS; the owning node starts the work through package proc.
package procspace

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/ssi-cluster/ssi/internal/api"
	"github.com/ssi-cluster/ssi/internal/api/ssirpc"
	"github.com/ssi-cluster/ssi/internal/datalink"
	"github.com/ssi-cluster/ssi/internal/place"
	"github.com/ssi-cluster/ssi/internal/proc"
)

// Cluster is what the process space needs to know about the other nodes.
type Cluster interface {
	// Self is this node's name and index.
	Self() (name string, index uint32)
	// Candidates is the live gossip view of every node, for placement and fan-out.
	Candidates() []place.Candidate
	// Resolve maps a node name or address to a node name.
	Resolve(nameOrAddr string) (string, bool)
	// NameOf maps a node index to its name.
	NameOf(index uint32) (string, bool)
	// Peer returns a client for the named node's agent.
	Peer(name string) (ssirpc.PeerClient, error)
}

// Config configures the service.
type Config struct {
	Cluster Cluster
	// Socket is the path of the agent's socket as processes on this node see it.
	Socket string
	// CgroupParent is the cgroup (relative to the cgroup2 mount) under which each started
	// tree gets its own cgroup.
	CgroupParent string
	ProcRoot     string
	Logger       *slog.Logger
	// Grace is how long a tree whose client went away gets between SIGHUP and SIGKILL.
	Grace time.Duration
	// Policy decides where unplaced commands run.
	Policy place.Policy
	// Tree says where the cluster file tree is mounted on this node ("" when it is not), so
	// that a command whose working directory exists only on its caller's node can start in
	// that directory through the tree. Nil: never.
	Tree func() string
	// Link carries bulk stdout between agents (see bulk.go); nil: always over gRPC.
	Link *datalink.Link
}

// Service serves the process space of one node.
type Service struct {
	cfg    Config
	log    *slog.Logger
	framer *api.BytesFramer // buffers of process output on its way to clients
	// bulkAfter is how many bytes of stdout go as frames before a session moves it to a
	// data link offered by its client's agent.
	bulkAfter int

	mu      sync.Mutex
	started map[int]*record // by local pid: processes this agent started and still tracks
	recent  map[string][]time.Time

	wg sync.WaitGroup
}

// record is a process this agent started.
type record struct {
	proc       *proc.Process
	parentGPID int64
	uid        uint32
	done       chan struct{}
	code       int
	signal     int // the signal that killed it, 0 if it exited
	message    string
}

// keepExited is how long the exit status of a started process stays available to `ssi wait`.
const keepExited = 10 * time.Minute

// Subtrees of CgroupParent: attached trees end with their client; detached ones outlive it.
const (
	attachedGroup = "attached"
	detachedGroup = "detached"
)

// New returns the service. Trees a previous instance started attached are ended: their
// clients are gone.
func New(ctx context.Context, cfg Config) (*Service, error) {
	if cfg.Grace == 0 {
		cfg.Grace = 2 * time.Second
	}
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = "/proc"
	}
	if cfg.Policy == (place.Policy{}) {
		cfg.Policy = place.DefaultPolicy
	}
	s := &Service{cfg: cfg, log: cfg.Logger, framer: api.NewBytesFramer(chunkSize),
		bulkAfter: defaultBulkAfter, started: map[int]*record{}, recent: map[string][]time.Time{}}
	n, err := proc.TerminateLeftovers(ctx, "", cfg.CgroupParent+"/"+attachedGroup, cfg.Grace)
	if err != nil {
		s.log.Warn("ending process trees of a previous agent", "err", err)
	} else if n > 0 {
		s.log.Info("ended process trees whose clients were lost in an agent restart", "trees", n)
	}
	return s, nil
}

// Close waits for the bookkeeping of running sessions to finish.
func (s *Service) Close() { s.wg.Wait() }

func (s *Service) self() (string, uint32) { return s.cfg.Cluster.Self() }

func (s *Service) track(r *record) {
	s.mu.Lock()
	s.started[r.proc.PID()] = r
	s.mu.Unlock()
}

// finished keeps an exited record around for a while so `ssi wait` can collect its status.
func (s *Service) finished(r *record) {
	close(r.done)
	time.AfterFunc(keepExited, func() {
		s.mu.Lock()
		if s.started[r.proc.PID()] == r {
			delete(s.started, r.proc.PID())
		}
		s.mu.Unlock()
	})
}

// running reports whether r's process has not been reaped yet. Once it has, its pid may be
// another process's: only its exit status stays r's.
func (r *record) running() bool {
	select {
	case <-r.done:
		return false
	default:
		return true
	}
}

func (s *Service) lookup(pid int) *record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.started[pid]
}

// notePlacement counts a placement against a node until its next load report catches up.
func (s *Service) notePlacement(node string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recent[node] = append(s.recent[node], time.Now())
}

func (s *Service) recentPlacements(node string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	cutoff := time.Now().Add(-2 * time.Second)
	times := s.recent[node]
	kept := times[:0]
	for _, t := range times {
		if t.After(cutoff) {
			kept = append(kept, t)
		}
	}
	s.recent[node] = kept
	return len(kept)
}

// place picks the node for an unplaced command.
func (s *Service) place() (place.Decision, error) {
	home, _ := s.self()
	cands := s.cfg.Cluster.Candidates()
	for i := range cands {
		cands[i].Recent = s.recentPlacements(cands[i].Name)
	}
	d, err := s.cfg.Policy.Choose(home, cands)
	if err != nil {
		return d, fmt.Errorf("placing the command: %w", err)
	}
	s.notePlacement(d.Node)
	return d, nil
}
