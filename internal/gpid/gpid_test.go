package gpid

import (
	"strings"
	"testing"
)

func TestMakeSplit(t *testing.T) {
	tests := []struct {
		node, pid int
		want      int64
	}{
		{0, 1, 1},
		{2, 1234, 20001234},
		{1, PerNode - 1, 19_999_999},
		{3, 4_194_304, 34_194_304},
		{922, 0, 9_220_000_000},
	}
	for _, tt := range tests {
		got := Make(tt.node, tt.pid)
		if got != tt.want {
			t.Errorf("Make(%d, %d) = %d, want %d", tt.node, tt.pid, got, tt.want)
		}
		node, pid := Split(got)
		if node != tt.node || pid != tt.pid {
			t.Errorf("Split(%d) = %d, %d, want %d, %d", got, node, pid, tt.node, tt.pid)
		}
	}
}

func TestMakePanicsOnImpossiblePid(t *testing.T) {
	for _, tt := range []struct{ node, pid int }{{0, PerNode}, {0, -1}, {-1, 5}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Make(%d, %d) did not panic", tt.node, tt.pid)
				}
			}()
			Make(tt.node, tt.pid)
		}()
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr string
	}{
		{in: "20001234", want: 20001234},
		{in: "1", want: 1},
		{in: "0000042", want: 42},
		{in: "42949672959999999", want: 42949672959999999}, // the last node index, 2^32-1
		// 2^32+1 cut to 32 bits would be node 1: 42949672970000009 must not name pid 9 there.
		{in: "42949672970000009", wantErr: "no node can have index 4294967297"},
		{in: "9223372036854775807", wantErr: "no node can have index"},
		{in: "abc", wantErr: `"abc" is not a GPID: want a number like 20001234 (node 2, pid 1234)`},
		{in: "", wantErr: "an empty string is not a GPID"},
		{in: "-5", wantErr: `"-5" is not a GPID`},
		{in: "+5", wantErr: `"+5" is not a GPID`},
		{in: " 5", wantErr: `" 5" is not a GPID`},
		{in: "2.1234", wantErr: `"2.1234" is not a GPID`},
		{in: "9223372036854775808", wantErr: "too large"},
		{in: "20000000", wantErr: "the pid) are all zero"},
		{in: "0", wantErr: "the pid) are all zero"},
	}
	for _, tt := range tests {
		got, err := Parse(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Parse(%q) error = %v, want it to contain %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("Parse(%q) = %d, %v, want %d", tt.in, got, err, tt.want)
		}
	}
}

func TestCheck(t *testing.T) {
	for g, ok := range map[int64]bool{1: true, 20001234: true, 42949672959999999: true, 0: false, -5: false, 20000000: false, 42949672960000001: false} {
		if err := Check(g); (err == nil) != ok {
			t.Errorf("Check(%d) = %v, want ok=%v", g, err, ok)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"20001234", "0", "abc", "-1", "9223372036854775807", "99999999999999999999", "1e7"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		g, err := Parse(s)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("Parse(%q) error spans lines: %q", s, err)
			}
			return
		}
		if g <= 0 {
			t.Fatalf("Parse(%q) = %d, want a positive GPID", s, g)
		}
		node, pid := Split(g)
		if pid <= 0 || node > MaxNodeIndex || Make(node, pid) != g {
			t.Fatalf("Parse(%q) = %d which does not round-trip through Split/Make (%d, %d)", s, g, node, pid)
		}
		if back, err := Parse(Format(g)); err != nil || back != g {
			t.Fatalf("Parse(Format(%d)) = %d, %v", g, back, err)
		}
	})
}
