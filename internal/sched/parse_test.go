package sched

import (
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseArray(t *testing.T) {
	tests := []struct {
		in      string
		indices []int // checked when the spec is small
		count   int
		max     int
		wantErr string
	}{
		{in: "1-5", indices: []int{1, 2, 3, 4, 5}, count: 5},
		{in: "1-100", count: 100},
		{in: "1-100:2%5", count: 50, max: 5},
		{in: "0-10:5", indices: []int{0, 5, 10}, count: 3},
		{in: "7", indices: []int{7}, count: 1},
		{in: "1,3,5-7", indices: []int{1, 3, 5, 6, 7}, count: 5},
		{in: "1-4,3-6", indices: []int{1, 2, 3, 4, 5, 6}, count: 6},
		{in: " 2-3%1 ", indices: []int{2, 3}, count: 2, max: 1},
		{in: "", wantErr: "empty array spec"},
		{in: "5-1", wantErr: "runs backwards"},
		{in: "1-10:0", wantErr: "step 0"},
		{in: "5:2", wantErr: "step but no range"},
		{in: "1-10%0", wantErr: "%0 would never run"},
		{in: "1-10%x", wantErr: "running limit"},
		{in: "a-b", wantErr: "not an index"},
		{in: "1,,2", wantErr: "empty item"},
		{in: "%2", wantErr: "no indices before the %"},
		{in: "-3", wantErr: "not an index"},
		{in: "0-1000001", wantErr: "not an index"},
		{in: "0-200000", wantErr: "more than 100000 elements"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			spec, err := ParseArray(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseArray(%q) error = %v, want one containing %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseArray(%q): %v", tt.in, err)
			}
			if tt.indices != nil && !slices.Equal(spec.Indices(), tt.indices) {
				t.Errorf("indices = %v, want %v", spec.Indices(), tt.indices)
			}
			if spec.Len() != tt.count || spec.MaxRunning != tt.max {
				t.Errorf("len %d max %d, want %d and %d", spec.Len(), spec.MaxRunning, tt.count, tt.max)
			}
		})
	}
}

func FuzzParseArray(f *testing.F) {
	for _, s := range []string{"1-100:2%5", "1,3,5-7", "0", "1-", "%3", "1-10:3%2", "999999-1000000"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		spec, err := ParseArray(s)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
			return
		}
		again, err := ParseArray(spec.String())
		if err != nil {
			t.Fatalf("ParseArray(%q) ok but its String %q fails: %v", s, spec.String(), err)
		}
		if again.String() != spec.String() {
			t.Fatalf("round trip %q -> %q -> %q", s, spec.String(), again.String())
		}
		idx := spec.Indices()
		if len(idx) == 0 || len(idx) > MaxArrayTasks || idx[0] < 0 || idx[len(idx)-1] > MaxArrayIndex {
			t.Fatalf("ParseArray(%q) gave %d indices from %v", s, len(idx), idx[:min(len(idx), 3)])
		}
	})
}

func TestParseTimeLimit(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Duration
		wantErr string
	}{
		{in: "30", want: 30 * time.Minute},
		{in: "90", want: 90 * time.Minute},
		{in: "5:30", want: 5*time.Minute + 30*time.Second},
		{in: "90:00", want: 90 * time.Minute},
		{in: "1:02:03", want: time.Hour + 2*time.Minute + 3*time.Second},
		{in: "48:00:00", want: 48 * time.Hour},
		{in: "2-12", want: 60 * time.Hour},
		{in: "1-00:30", want: 24*time.Hour + 30*time.Minute},
		{in: "1-02:03:04", want: 26*time.Hour + 3*time.Minute + 4*time.Second},
		{in: "90s", want: 90 * time.Second},
		{in: "2h", want: 2 * time.Hour},
		{in: "1h30m", want: 90 * time.Minute},
		{in: "1.5s", want: 2 * time.Second},
		{in: "365-00", want: MaxTimeLimit},
		{in: "", wantErr: "empty time limit"},
		{in: "0", wantErr: "not more than zero"},
		{in: "0s", wantErr: "not more than zero"},
		{in: "-1h", wantErr: "not more than zero"},
		{in: "1:60", wantErr: "below 60"},
		{in: "1:00:60", wantErr: "below 60"},
		{in: "1-24", wantErr: "below 24"},
		{in: "1:2:3:4", wantErr: "too many fields"},
		{in: "abc", wantErr: "not a whole number"},
		{in: "1-", wantErr: "not a whole number"},
		{in: "-5", wantErr: "not a whole number"},
		{in: "366-00", wantErr: "longer than"},
		{in: "9000h", wantErr: "longer than"},
		{in: "1x", wantErr: "not a whole number"},
		{in: "3q", wantErr: "not a whole number"},
		{in: "5m3", wantErr: "not valid"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseTimeLimit(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseTimeLimit(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseTimeLimit(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestFormatTimeLimit(t *testing.T) {
	tests := map[time.Duration]string{
		90 * time.Second:                   "00:01:30",
		26*time.Hour + 3*time.Minute + 4e9: "1-02:03:04",
		0:                                  "00:00:00",
	}
	for d, want := range tests {
		if got := FormatTimeLimit(d); got != want {
			t.Errorf("FormatTimeLimit(%v) = %q, want %q", d, got, want)
		}
	}
}

func FuzzParseTimeLimit(f *testing.F) {
	for _, s := range []string{"30", "5:30", "1:02:03", "2-12", "1-00:30", "1-02:03:04", "90s", "2h", "1h30m", "0", "1-"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseTimeLimit(s)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
			return
		}
		if d <= 0 || d > MaxTimeLimit || d%time.Second != 0 {
			t.Fatalf("ParseTimeLimit(%q) = %v, outside (0, max] or not whole seconds", s, d)
		}
		back, err := ParseTimeLimit(FormatTimeLimit(d))
		if err != nil || back != d {
			t.Fatalf("round trip %q -> %v -> %q -> %v, %v", s, d, FormatTimeLimit(d), back, err)
		}
	})
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr string
	}{
		{in: "0", want: 0},
		{in: "4096", want: 4096},
		{in: "100K", want: 100 << 10},
		{in: "512M", want: 512 << 20},
		{in: "512m", want: 512 << 20},
		{in: "4G", want: 4 << 30},
		{in: "4GB", want: 4 << 30},
		{in: "4GiB", want: 4 << 30},
		{in: "1.5G", want: 3 << 29},
		{in: ".5K", want: 512},
		{in: "2T", want: 2 << 40},
		{in: "1P", want: 1 << 50},
		{in: "100B", want: 100},
		{in: "7E", wantErr: "not valid"},
		{in: "", wantErr: "empty size"},
		{in: "G", wantErr: "not valid"},
		{in: "4iB", wantErr: "not valid"},
		{in: "1.G", wantErr: "not valid"},
		{in: "-1G", wantErr: "not valid"},
		{in: "1 G", wantErr: "not valid"},
		{in: "8192P", wantErr: "too large"},
		{in: "99999999999999999999", wantErr: "too large"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSize(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseSize(%q) = %d, %v; want error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestParseMem(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{in: "4000", want: 4000 << 20}, // Slurm's default unit
		{in: "0", want: 0},
		{in: "1.5", want: 3 << 19},
		{in: "512K", want: 512 << 10},
		{in: "4G", want: 4 << 30},
		{in: "4096B", want: 4096},
		{in: " 8 ", want: 8 << 20},
		{in: "", wantErr: true},
		{in: ".", wantErr: true},
		{in: "1.", wantErr: true},
		{in: "4X", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParseMem(tt.in)
		if tt.wantErr {
			if err == nil || !strings.Contains(err.Error(), "megabytes") {
				t.Errorf("ParseMem(%q) = %d, %v; want an error that names the default unit", tt.in, got, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseMem(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
	if _, err := ParseMem("9999999999999"); err == nil || !strings.Contains(err.Error(), "too large") {
		t.Errorf("ParseMem of 9999999999999 megabytes: %v, want too large", err)
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"512M", "4G", "100K", "1048576", "1.5G", "4GiB", "8191.999P", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
			return
		}
		if n < 0 {
			t.Fatalf("ParseSize(%q) = %d, negative", s, n)
		}
		formatted := FormatSize(n)
		back, err := ParseSize(formatted)
		if err != nil || back > n || (back != n && !strings.Contains(formatted, ".")) {
			t.Fatalf("round trip %q -> %d -> %q -> %d, %v", s, n, formatted, back, err)
		}
	})
}

func TestFormatSize(t *testing.T) {
	tests := map[int64]string{0: "0", 1023: "1023", 1024: "1K", 3 << 29: "1.5G", 512 << 20: "512M", math.MaxInt64: "8191.9P"}
	for n, want := range tests {
		if got := FormatSize(n); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestParseCPUs(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr string
	}{
		{in: "2", want: 2000},
		{in: "0.5", want: 500},
		{in: ".25", want: 250},
		{in: "1.125", want: 1125},
		{in: "500m", want: 500},
		{in: "0", wantErr: "zero"},
		{in: "0m", wantErr: "zero"},
		{in: "1.0001", wantErr: "three decimals"},
		{in: "2.", wantErr: "not valid"},
		{in: "m", wantErr: "not valid"},
		{in: "-1", wantErr: "not valid"},
		{in: "2000000", wantErr: "more than"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseCPUs(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseCPUs(%q) = %d, %v; want error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseCPUs(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
		})
	}
}

func FuzzParseCPUs(f *testing.F) {
	for _, s := range []string{"2", "0.5", "500m", "1.125", "0", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseCPUs(s)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
			return
		}
		if n <= 0 || n > MaxCPUsPerTask {
			t.Fatalf("ParseCPUs(%q) = %d, out of range", s, n)
		}
		if back, err := ParseCPUs(FormatCPUs(n)); err != nil || back != n {
			t.Fatalf("round trip %q -> %d -> %q -> %d, %v", s, n, FormatCPUs(n), back, err)
		}
	})
}

func TestParseScriptDirectives(t *testing.T) {
	tests := []struct {
		name    string
		script  string
		want    []string
		wantErr string
	}{
		{name: "basic", script: "#!/bin/sh\n#SSI --cpus 2\n#SSI --mem 4G --time 1:00:00\necho hi\n",
			want: []string{"--cpus", "2", "--mem", "4G", "--time", "1:00:00"}},
		{name: "stops at first command", script: "#!/bin/bash\n#SSI -n 2\nhostname\n#SSI --cpus 8\n",
			want: []string{"-n", "2"}},
		{name: "blank lines and comments in the block", script: "#!/bin/sh\n\n# setup\n#SSI --name a\n\n#SSI --queue debug\n",
			want: []string{"--name", "a", "--queue", "debug"}},
		{name: "no shebang", script: "#SSI --cpus 1\nrun\n", want: []string{"--cpus", "1"}},
		{name: "disabled directives", script: "##SSI --cpus 9\n# SSI --cpus 8\n#SSIX --cpus 7\n#SSI --cpus 1\n",
			want: []string{"--cpus", "1"}},
		{name: "quotes", script: `#SSI --name 'my job' --output "out \"1\".txt" a\ b` + "\n",
			want: []string{"--name", "my job", "--output", `out "1".txt`, "a b"}},
		{name: "trailing comment", script: "#SSI --cpus 2 # two cpus\n#SSI --mem=1G#x\n",
			want: []string{"--cpus", "2", "--mem=1G#x"}},
		{name: "crlf", script: "#!/bin/sh\r\n#SSI --cpus 3\r\necho\r\n", want: []string{"--cpus", "3"}},
		{name: "indented", script: "  #SSI --cpus 4\n", want: []string{"--cpus", "4"}},
		{name: "shebang only", script: "#!/bin/sh\n", want: nil},
		{name: "empty", script: "", want: nil},
		{name: "unterminated single quote", script: "#SSI --name 'oops\n", wantErr: "line 1: unterminated ' quote"},
		{name: "unterminated double quote", script: "#!/bin/sh\n#SSI --name \"oops\n", wantErr: "line 2: unterminated \" quote"},
		{name: "continuation", script: "#SSI --cpus \\\n", wantErr: "ends with a backslash"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseScriptDirectives([]byte(tt.script))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func FuzzParseScriptDirectives(f *testing.F) {
	for _, s := range []string{"#!/bin/sh\n#SSI --cpus 2\necho\n", "#SSI --name 'a b' \"c\\\"d\"\n", "#SSI '\n", "#SSI x\\"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, script []byte) {
		args, err := ParseScriptDirectives(script)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
			return
		}
		// Directives come only from the leading comment block, so adding a command line and
		// more directives after the script must not change them.
		more, err := ParseScriptDirectives(append(append([]byte{}, script...), "\nrun\n#SSI --late\n"...))
		if err != nil || !slices.Equal(args, more) {
			t.Fatalf("a command after the block changed the directives: %q vs %q (%v)", args, more, err)
		}
	})
}

func TestCheckScript(t *testing.T) {
	tests := []struct {
		script, wantErr string
	}{
		{"#!/bin/sh\necho hi\n", ""},
		{"echo no interpreter line\n", ""},
		{"#!/bin/sh\nprintf 'a\\r\\n'\n", ""}, // a \r\n the script prints is fine
		{"\xef\xbb\xbf#!/bin/sh\n#SSI --name x\n", "byte-order mark"},
		{"\x7fELF\x02\x01\x01\x00\x00", "binary file"},
		{"#!/bin/sh\r\necho hi\r\n", "DOS line breaks"},
		{"#!/bin/sh\necho hi\r\n", "DOS line breaks"},
	}
	for _, tt := range tests {
		err := CheckScript([]byte(tt.script))
		if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("CheckScript(%q) = %v, want %q", tt.script, err, tt.wantErr)
		}
	}
}
