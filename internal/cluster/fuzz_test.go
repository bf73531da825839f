package cluster

import (
	"encoding/json"
	"log/slog"
	"math"
	"net"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/memberlist"
)

// FuzzDescribeMeta feeds describe gossip metadata as another node could send it: it must not
// panic, metadata that decodes must re-encode to the same Meta, and metadata that does not
// decode must leave the member's Meta empty rather than half filled from a bad message.
func FuzzDescribeMeta(f *testing.F) {
	good, err := json.Marshal(Meta{Index: 3, Role: "server", Addr: "10.0.0.3:7946", Protocol: 1, Version: "v1.2.3",
		Load: Load{CPUs: 8, Load1: 0.5, Load5: 1, Load15: 2, Runnable: 3, MemTotal: 1 << 34, MemFree: 1 << 30, CPUUsed: 1.25}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{}`))
	f.Add([]byte(``))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"i":4294967296}`))                                            // index overflows uint32
	f.Add([]byte(`{"i":-1,"a":"evil:1"}`))                                       // negative index, then a field
	f.Add([]byte(`{"a":"evil:1","r":5}`))                                        // a type error after a good field
	f.Add([]byte(`{"l":{"l1":1e309}}`))                                          // load out of float64 range
	f.Add([]byte(`{"l":{"c":1,"mt":18446744073709551615}}`))                     // the largest memory
	f.Add([]byte(`{"a":"\u0000\ud800","v":"` + strings.Repeat("x", 600) + `"}`)) // NUL, lone surrogate, over the 512-byte limit
	f.Add([]byte(`{"x":true,"x":false}`))
	f.Add([]byte(`[1,2,3]`))
	f.Add([]byte(`{"i":1}garbage`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m := newMembership(slog.New(slog.DiscardHandler), Meta{})
		n := &memberlist.Node{Name: "n2", Addr: net.IPv4(10, 0, 0, 2), Port: 7946, Meta: b}
		mem := m.describe(n, StateAlive)
		if mem.Name != "n2" || mem.State != StateAlive || mem.GossipAddr != "10.0.0.2:7946" {
			t.Fatalf("describe changed the node's identity: %+v", mem)
		}
		var want Meta
		if len(b) > 0 && json.Unmarshal(b, &want) != nil {
			if !reflect.DeepEqual(mem.Meta, Meta{}) {
				t.Fatalf("undecodable metadata %q left a half-filled Meta %+v", b, mem.Meta)
			}
			return
		}
		for _, v := range []float64{mem.Meta.Load.Load1, mem.Meta.Load.Load5, mem.Meta.Load.Load15, mem.Meta.Load.CPUUsed} {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				t.Fatalf("metadata %q decoded a non-finite load %v", b, v)
			}
		}
		again, err := json.Marshal(mem.Meta)
		if err != nil {
			t.Fatalf("decoded metadata %+v does not re-encode: %v", mem.Meta, err)
		}
		var back Meta
		if err := json.Unmarshal(again, &back); err != nil || !reflect.DeepEqual(back, mem.Meta) {
			t.Fatalf("metadata %q: re-encoded as %s, decodes to %+v (%v), want %+v", b, again, back, err, mem.Meta)
		}
	})
}

// FuzzParseLoadavg checks the /proc/loadavg parser on any text: no panic, and what it accepts
// is what the fields say.
func FuzzParseLoadavg(f *testing.F) {
	f.Add("0.52 0.58 0.59 2/1033 12345\n")
	f.Add("0.00 0.00 0.00 0/1 1")
	f.Add("1e400 1 1 1/1 1")
	f.Add("NaN Inf -Inf 4294967296/1 1")
	f.Add("1 2 3")
	f.Add("")
	f.Add("1 2 3 /")
	f.Fuzz(func(t *testing.T, s string) {
		l1, l5, l15, r, err := parseLoadavg(s)
		if err != nil {
			if l1 != 0 || l5 != 0 || l15 != 0 || r != 0 {
				t.Fatalf("%q: error %v with values %v %v %v %v", s, err, l1, l5, l15, r)
			}
			return
		}
		if len(strings.Fields(s)) < 4 {
			t.Fatalf("%q accepted with fewer than 4 fields", s)
		}
	})
}

// FuzzParseProcStatBusy checks the /proc/stat parser on any text: no panic, never negative
// time from digits only.
func FuzzParseProcStatBusy(f *testing.F) {
	f.Add([]byte("cpu  10132153 290696 3084719 46828483 16683 0 25195 0 175628 0\ncpu0 1 2 3 4 5\n"))
	f.Add([]byte("cpu 1 2 3 4\n"))
	f.Add([]byte("cpu0 1 2 3 4 5\n"))
	f.Add([]byte("cpu -1 -2 x 4 5"))
	f.Add([]byte("cpu 1e400 0 0 0 0"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, b []byte) {
		busy, err := parseProcStatBusy(b)
		if err != nil {
			return
		}
		line, _, _ := strings.Cut(string(b), "\n")
		if strings.Fields(line)[0] != "cpu" {
			t.Fatalf("%q accepted without the cpu line first", b)
		}
		if !strings.ContainsAny(line, "-eEnNiI") && (busy < 0 || math.IsNaN(busy)) {
			t.Fatalf("%q: busy %v from plain counters", b, busy)
		}
	})
}
