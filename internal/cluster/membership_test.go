package cluster

import (
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

func TestGoneSettlesAndClearsOnReturn(t *testing.T) {
	m := newMembership(slog.New(slog.DiscardHandler), Meta{})
	events := (*eventDelegate)(m)
	if m.Gone("n2") {
		t.Fatal("a node never reported gone is gone")
	}
	events.NotifyLeave(&memberlist.Node{Name: "n2"})
	if m.Gone("n2") {
		t.Fatal("gone at once: a briefly misjudged node would fail requests")
	}
	m.mu.Lock()
	m.goneAt["n2"] = time.Now().Add(-goneSettle)
	m.mu.Unlock()
	if !m.Gone("n2") {
		t.Fatal("not gone after settling")
	}
	events.NotifyJoin(&memberlist.Node{Name: "n2"})
	if m.Gone("n2") {
		t.Fatal("still gone after coming back")
	}
}

func TestChangedClosesAtEveryEvent(t *testing.T) {
	m := newMembership(slog.New(slog.DiscardHandler), Meta{})
	events := (*eventDelegate)(m)
	for _, tt := range []struct {
		name  string
		event func(*memberlist.Node)
	}{
		{"join", events.NotifyJoin},
		{"update", events.NotifyUpdate},
		{"leave", events.NotifyLeave},
	} {
		ch := m.Changed()
		select {
		case <-ch:
			t.Fatalf("before %s: closed without a change", tt.name)
		default:
		}
		tt.event(&memberlist.Node{Name: "n2"})
		select {
		case <-ch:
		default:
			t.Fatalf("%s did not close the channel", tt.name)
		}
	}
}

// TestMembersAreCopiesFromTheEventHooks: the view is what the hooks reported, in copies that
// memberlist's later changes to its own nodes do not touch.
func TestMembersAreCopiesFromTheEventHooks(t *testing.T) {
	m := newMembership(slog.New(slog.DiscardHandler), Meta{})
	events := (*eventDelegate)(m)
	stateOf := func(name string) (Member, bool) {
		for _, mem := range m.Members() {
			if mem.Name == name {
				return mem, true
			}
		}
		return Member{}, false
	}
	n := &memberlist.Node{Name: "n2", Addr: net.IPv4(10, 0, 0, 2), Port: 7701, Meta: []byte(`{"i":2}`)}
	events.NotifyJoin(n)
	n.Addr[15] = 9 // memberlist rewriting its own node
	n.Meta = []byte(`{"i":7}`)
	if mem, ok := stateOf("n2"); !ok || mem.State != StateAlive || mem.GossipAddr != "10.0.0.2:7701" || mem.Meta.Index != 2 {
		t.Fatalf("after join: %+v, %v", mem, ok)
	}
	events.NotifyUpdate(&memberlist.Node{Name: "n2", Addr: net.IPv4(10, 0, 0, 2), Port: 7701, Meta: []byte(`{"i":3}`)})
	if mem, _ := stateOf("n2"); mem.Meta.Index != 3 {
		t.Fatalf("after update: %+v", mem)
	}
	events.NotifyLeave(&memberlist.Node{Name: "n2", Addr: net.IPv4(10, 0, 0, 2), Port: 7701, Meta: []byte(`{"i":3,"x":true}`)})
	if mem, _ := stateOf("n2"); mem.State != StateLeft {
		t.Fatalf("after a departure: %+v", mem)
	}
	if got := len(m.Members()); got != 1 {
		t.Fatalf("%d members, want the one", got)
	}
}
