package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Node states as shown to users.
const (
	StateAlive   = "alive"
	StateSuspect = "suspect"
	StateDead    = "dead"
	StateLeft    = "left"
)

// Meta is what each node gossips about itself. It must stay under memberlist's 512-byte limit,
// hence the short JSON keys.
type Meta struct {
	Index    uint32 `json:"i"`
	Role     string `json:"r"`
	Addr     string `json:"a"` // gRPC cluster address
	Protocol uint32 `json:"p"`
	Version  string `json:"v,omitempty"`
	Load     Load   `json:"l"`
	Leaving  bool   `json:"x,omitempty"` // set just before a graceful leave, so peers show "left", not "dead"
}

// Member is one node as this agent currently sees it.
type Member struct {
	Name       string
	GossipAddr string
	State      string
	Meta       Meta
}

// Config configures the gossip layer.
type Config struct {
	Name          string
	BindAddr      string // IP to listen on
	BindPort      int
	AdvertiseAddr string
	AdvertisePort int
	SecretKey     []byte // 16, 24 or 32 bytes (AES)
	ClusterID     string // gossip of another cluster is dropped even if keys collide
	Meta          Meta
	Logger        *slog.Logger
}

// Membership is a running gossip member.
type Membership struct {
	ml     *memberlist.Memberlist
	logger *slog.Logger

	mu   sync.Mutex
	meta Meta
	// members is every node memberlist has reported, described (metadata decoded) in its
	// event hooks, once per change: the nodes its Members returns are its own, which it
	// changes under a lock of its own, so reading them would race.
	members map[string]Member
	goneAt  map[string]time.Time // when memberlist reported a node dead or departed
	// changed is closed, and replaced, whenever a node joins, departs or updates its metadata.
	changed chan struct{}
}

// Failure-detection timing. With these values a node killed with SIGKILL is suspected within
// about one probe interval and declared dead once the suspicion timeout
// (SuspicionMult × max(1, log10 N) × ProbeInterval) runs out, counted from the suspicion once
// another member confirms it: 1.5–1.8 s in small clusters (BenchmarkKillDetect). A probe is a
// few hundred microseconds of CPU, so the short interval costs little idle CPU.
const (
	probeInterval  = 300 * time.Millisecond
	probeTimeout   = 150 * time.Millisecond
	suspicionMult  = 3
	gossipInterval = 200 * time.Millisecond
)

func newMembership(logger *slog.Logger, meta Meta) *Membership {
	return &Membership{logger: logger, meta: meta, members: map[string]Member{}, goneAt: map[string]time.Time{},
		changed: make(chan struct{})}
}

// Start begins gossiping. It does not contact anyone; call Join with seeds.
func Start(cfg Config) (*Membership, error) {
	m := newMembership(cfg.Logger, cfg.Meta)
	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Name
	mc.BindAddr = cfg.BindAddr
	mc.BindPort = cfg.BindPort
	tr, err := newTransport(cfg.BindAddr, cfg.BindPort, cfg.Logger)
	if err != nil {
		return nil, fmt.Errorf("starting gossip on %s:%d: %w", cfg.BindAddr, cfg.BindPort, err)
	}
	mc.Transport = tr
	mc.AdvertiseAddr = cfg.AdvertiseAddr
	mc.AdvertisePort = cfg.AdvertisePort
	mc.SecretKey = cfg.SecretKey
	mc.Label = "ssi/" + cfg.ClusterID
	mc.ProbeInterval = probeInterval
	mc.ProbeTimeout = probeTimeout
	mc.SuspicionMult = suspicionMult
	mc.GossipInterval = gossipInterval
	mc.TCPTimeout = 2 * time.Second
	mc.DeadNodeReclaimTime = 5 * time.Second
	// memberlist compresses every packet by default, and each compression allocates a fresh
	// LZW table: ~1 MB/s of garbage on an idle node, for pings and acks of ~100 bytes that
	// do not get smaller (packets are encrypted, so this does not weaken anything).
	mc.EnableCompression = false
	mc.Delegate = (*metaDelegate)(m)
	mc.Events = (*eventDelegate)(m)
	mc.Logger = log.New(&logBridge{logger: cfg.Logger}, "", 0)
	ml, err := memberlist.Create(mc)
	if err != nil {
		tr.Shutdown()
		return nil, fmt.Errorf("starting gossip on %s:%d: %w", cfg.BindAddr, cfg.BindPort, err)
	}
	m.ml = ml
	return m, nil
}

// Join contacts the seeds (host:port gossip addresses) and returns how many answered.
func (m *Membership) Join(seeds []string) (int, error) {
	if len(seeds) == 0 {
		return 0, nil
	}
	n, err := m.ml.Join(seeds)
	if n == 0 && err != nil {
		return 0, fmt.Errorf("joining gossip through %v: %w", seeds, err)
	}
	return n, nil
}

// SetLoad publishes a new load vector to the cluster.
func (m *Membership) SetLoad(l Load) error {
	m.mu.Lock()
	m.meta.Load = l
	m.mu.Unlock()
	return m.ml.UpdateNode(time.Second)
}

// LocalMeta returns what this node currently gossips about itself.
func (m *Membership) LocalMeta() Meta {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.meta
}

// Members returns every node this agent knows, including dead and departed ones it still
// remembers.
func (m *Membership) Members() []Member {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Member, 0, len(m.members))
	for _, mem := range m.members {
		out = append(out, mem)
	}
	return out
}

// describe is n as a Member in state.
func (m *Membership) describe(n *memberlist.Node, state string) Member {
	var meta Meta
	if len(n.Meta) > 0 {
		// json.Unmarshal fills the fields it decoded before a type error: use all or nothing,
		// so a bad message cannot leave, say, an address without the index it belongs to.
		if err := json.Unmarshal(n.Meta, &meta); err != nil {
			m.logger.Debug("undecodable gossip metadata", "node", n.Name, "err", err)
			meta = Meta{}
		}
	}
	return Member{Name: n.Name, GossipAddr: net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port))),
		State: state, Meta: meta}
}

// goneSettle is how long a node must have been reported gone before Gone says so: on a
// saturated machine gossip can briefly misjudge a live node, which then refutes it.
const goneSettle = time.Second

// Gone reports whether gossip has seen the node die or leave, at least goneSettle ago, and
// not come back since. It is cheap enough to ask on every request to the node.
func (m *Membership) Gone(name string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	at, gone := m.goneAt[name]
	return gone && time.Since(at) >= goneSettle
}

// Changed returns a channel that is closed at the next change of the membership: a node
// joins, departs or updates its metadata. Take it before reading Members, so a change in
// between still closes it.
func (m *Membership) Changed() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.changed
}

// announce closes the channel of Changed. The caller holds m.mu.
func (m *Membership) announce() {
	close(m.changed)
	m.changed = make(chan struct{})
}

// eventDelegate keeps the membership's description of every node and announces every change.
// memberlist calls it under its own lock, so the node it passes is stable meanwhile.
type eventDelegate Membership

func (d *eventDelegate) NotifyJoin(n *memberlist.Node) {
	d.mu.Lock()
	d.members[n.Name] = (*Membership)(d).describe(n, StateAlive)
	delete(d.goneAt, n.Name)
	(*Membership)(d).announce()
	d.mu.Unlock()
	d.logger.Info("node joined", "node", n.Name, "addr", n.Address())
}

func (d *eventDelegate) NotifyLeave(n *memberlist.Node) {
	d.mu.Lock()
	// memberlist does not say why a node went; its last metadata says whether it announced
	// its departure.
	mem := (*Membership)(d).describe(n, StateDead)
	if mem.Meta.Leaving {
		mem.State = StateLeft
	}
	d.members[n.Name] = mem
	d.goneAt[n.Name] = time.Now()
	(*Membership)(d).announce()
	d.mu.Unlock()
	d.logger.Info("node gone", "node", n.Name)
}

func (d *eventDelegate) NotifyUpdate(n *memberlist.Node) {
	d.mu.Lock()
	d.members[n.Name] = (*Membership)(d).describe(n, StateAlive)
	(*Membership)(d).announce()
	d.mu.Unlock()
}

// Leave tells the cluster this node is departing on purpose, then stops gossiping. Each step
// waits until its message has gone out, which needs a node that stays: when every other node
// is gone or leaving too (a whole cluster stopping), no one is left to tell, and the waits
// would only run into the timeout.
func (m *Membership) Leave(timeout time.Duration) error {
	self := m.ml.LocalNode().Name
	m.mu.Lock()
	m.meta.Leaving = true
	m.mu.Unlock()
	var err error
	if m.anyoneStaying(self) {
		if uerr := m.ml.UpdateNode(timeout / 2); uerr != nil {
			m.logger.Warn("announcing departure", "err", uerr)
		}
	}
	if m.anyoneStaying(self) {
		err = m.ml.Leave(timeout)
	}
	if serr := m.ml.Shutdown(); err == nil {
		err = serr
	}
	return err
}

// anyoneStaying reports whether a node other than self is alive and not leaving.
func (m *Membership) anyoneStaying(self string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for name, mem := range m.members {
		if name != self && mem.State == StateAlive && !mem.Meta.Leaving {
			return true
		}
	}
	return false
}

// Shutdown stops gossiping without a goodbye, as a crash would.
func (m *Membership) Shutdown() error { return m.ml.Shutdown() }

// metaDelegate supplies this node's metadata to memberlist; the other hooks are unused.
type metaDelegate Membership

func (d *metaDelegate) NodeMeta(limit int) []byte {
	d.mu.Lock()
	b, err := json.Marshal(d.meta)
	d.mu.Unlock()
	if err != nil || len(b) > limit {
		d.logger.Error("gossip metadata does not fit", "bytes", len(b), "limit", limit, "err", err)
		return nil
	}
	return b
}
func (d *metaDelegate) NotifyMsg([]byte)                  {}
func (d *metaDelegate) GetBroadcasts(int, int) [][]byte   { return nil }
func (d *metaDelegate) LocalState(bool) []byte            { return nil }
func (d *metaDelegate) MergeRemoteState(_ []byte, _ bool) {}

// logBridge turns memberlist's "[LEVEL] memberlist: msg" lines into slog records.
type logBridge struct{ logger *slog.Logger }

func (b *logBridge) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	level := slog.LevelInfo
	for prefix, l := range map[string]slog.Level{"[DEBUG]": slog.LevelDebug, "[WARN]": slog.LevelWarn, "[ERR]": slog.LevelError, "[INFO]": slog.LevelInfo} {
		if rest, ok := strings.CutPrefix(line, prefix); ok {
			level, line = l, strings.TrimSpace(rest)
			break
		}
	}
	b.logger.Log(context.Background(), level, line, "component", "gossip")
	return len(p), nil
}

var _ io.Writer = (*logBridge)(nil)
