package cluster

import (
	"log/slog"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

func TestGoneSettlesAndClearsOnReturn(t *testing.T) {
	m := &Membership{logger: slog.New(slog.DiscardHandler), gone: map[string]memberlist.Node{}, goneAt: map[string]time.Time{}}
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
