package store

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
)

// startTestEtcd runs a plain-text single-member etcd on loopback for the registry logic.
func startTestEtcd(t *testing.T) *clientv3.Client {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Dir = t.TempDir()
	cfg.LogLevel = "error"
	lc, _ := url.Parse("http://127.0.0.1:0")
	lp, _ := url.Parse("http://127.0.0.1:0")
	cfg.ListenClientUrls = []url.URL{*lc}
	cfg.AdvertiseClientUrls = []url.URL{*lc}
	cfg.ListenPeerUrls = []url.URL{*lp}
	cfg.AdvertisePeerUrls = []url.URL{*lp}
	cfg.InitialCluster = cfg.Name + "=" + lp.String()
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		t.Fatal("etcd did not start")
	}
	cli, err := NewClient([]string{e.Clients[0].Addr().String()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func TestRegistry(t *testing.T) {
	cli := startTestEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("init cluster once", func(t *testing.T) {
		s := ClusterSecrets{ClusterID: "c1", GossipKey: []byte("k"), CACert: []byte("ca"), CAKey: []byte("key")}
		if _, err := InitCluster(ctx, cli, s); err != nil {
			t.Fatal(err)
		}
		s2 := s
		s2.ClusterID = "c2"
		id, err := InitCluster(ctx, cli, s2)
		if !errors.Is(err, ErrClusterExists) || id != "c1" {
			t.Fatalf("second init: got %q, %v; want c1, ErrClusterExists", id, err)
		}
		got, err := ReadClusterSecrets(ctx, cli)
		if err != nil || got.ClusterID != "c1" || string(got.CAKey) != "key" {
			t.Fatalf("read secrets: %+v, %v", got, err)
		}
	})

	t.Run("indexes are unique and stable", func(t *testing.T) {
		const n = 20
		var wg sync.WaitGroup
		got := make([]uint32, n)
		errs := make([]error, n)
		for i := range n {
			wg.Go(func() { got[i], errs[i] = AllocateIndex(ctx, cli, fmt.Sprintf("node%d", i)) })
		}
		wg.Wait()
		seen := map[uint32]bool{}
		for i, idx := range got {
			if errs[i] != nil {
				t.Fatal(errs[i])
			}
			if idx == 0 || seen[idx] {
				t.Fatalf("index %d handed out twice or zero: %v", idx, got)
			}
			seen[idx] = true
		}
		again, err := AllocateIndex(ctx, cli, "node7")
		if err != nil || again != got[7] {
			t.Fatalf("node7 again: %d, %v; want %d", again, err, got[7])
		}
	})

	t.Run("nodes and tokens", func(t *testing.T) {
		rec := NodeRecord{Name: "n1", NodeID: "id", Index: 1, Role: "server", Addr: "10.0.0.1:7700", State: RecordUp}
		if err := PutNode(ctx, cli, rec); err != nil {
			t.Fatal(err)
		}
		got, ok, err := GetNode(ctx, cli, "n1")
		if err != nil || !ok || got.Addr != rec.Addr || got.Updated.IsZero() {
			t.Fatalf("GetNode: %+v %v %v", got, ok, err)
		}
		if _, ok, _ := GetNode(ctx, cli, "nope"); ok {
			t.Fatal("unknown node found")
		}
		list, err := ListNodes(ctx, cli)
		if err != nil || len(list) != 1 {
			t.Fatalf("ListNodes: %v %v", list, err)
		}
		tr := TokenRecord{SecretHash: "h", Expires: time.Now().Add(time.Hour).UTC().Truncate(time.Second)}
		if err := PutToken(ctx, cli, "abc123", tr); err != nil {
			t.Fatal(err)
		}
		gt, ok, err := GetToken(ctx, cli, "abc123")
		if err != nil || !ok || !gt.Expires.Equal(tr.Expires) {
			t.Fatalf("GetToken: %+v %v %v", gt, ok, err)
		}
	})
}

func TestNameFromKey(t *testing.T) {
	tests := []struct{ prefix, key, want string }{
		{PrefixNodes, NodeKey("n1"), "n1"},
		{PrefixNodes, PrefixNodes, ""},
		{PrefixNodes, PrefixNodes + "a/b", ""},
		{PrefixNodes, TokenKey("x"), ""},
	}
	for _, tt := range tests {
		if got := NameFromKey(tt.prefix, tt.key); got != tt.want {
			t.Errorf("NameFromKey(%q, %q) = %q, want %q", tt.prefix, tt.key, got, tt.want)
		}
	}
}
