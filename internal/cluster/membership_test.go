package cluster

import (
	"log/slog"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

func TestGoneSettlesAndClearsOnReturn(t *testing.T) {
	m := &Membership{logger: slog.New(slog.DiscardHandler), gone: map[string]memberlist.Node{}, goneAt: map[string]time.Time{}, changed: make(chan struct{})}
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
	m := &Membership{logger: slog.New(slog.DiscardHandler), gone: map[string]memberlist.Node{}, goneAt: map[string]time.Time{}, changed: make(chan struct{})}
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
