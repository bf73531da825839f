package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestConfigDefaults(t *testing.T) {
	tests := []struct {
		name    string
		in      Config
		wantErr string
		check   func(t *testing.T, c Config)
	}{
		{name: "explicit addresses", in: Config{Name: "n1", Bind: "10.0.0.1:7700"}, check: func(t *testing.T, c Config) {
			if c.Advertise != "10.0.0.1:7700" || c.DataDir != DefaultDataDir || c.Socket != DefaultSocket {
				t.Errorf("got %+v", c)
			}
		}},
		{name: "port defaults", in: Config{Name: "n1", Bind: "10.0.0.1", Join: "10.0.0.2", Token: "x"}, check: func(t *testing.T, c Config) {
			if c.Bind != "10.0.0.1:7700" || c.Join != "10.0.0.2:7700" {
				t.Errorf("got bind %q join %q", c.Bind, c.Join)
			}
		}},
		{name: "advertise port follows bind", in: Config{Name: "n1", Bind: "0.0.0.0:8800", Advertise: "192.168.1.5"}, check: func(t *testing.T, c Config) {
			if c.Advertise != "192.168.1.5:8800" {
				t.Errorf("advertise %q", c.Advertise)
			}
		}},
		{name: "unspecified bind picks an address", in: Config{Name: "n1"}, check: func(t *testing.T, c Config) {
			if strings.HasPrefix(c.Advertise, "0.0.0.0") || c.Advertise == "" {
				t.Errorf("advertise %q", c.Advertise)
			}
		}},
		{name: "bad name", in: Config{Name: "Bad_Name"}, wantErr: "node name"},
		{name: "bind hostname", in: Config{Name: "n1", Bind: "localhost:7700"}, wantErr: "must be an IP"},
		{name: "bad port", in: Config{Name: "n1", Bind: "10.0.0.1:99999"}, wantErr: "out of range"},
		{name: "unspecified advertise", in: Config{Name: "n1", Advertise: "0.0.0.0"}, wantErr: "not a usable address"},
		{name: "token without join", in: Config{Name: "n1", Token: "t"}, wantErr: "--token needs --join"},
		{name: "http without port", in: Config{Name: "n1", HTTP: "nonsense"}, wantErr: `--http "nonsense" is not a listen address`},
		{name: "http port out of range", in: Config{Name: "n1", HTTP: "10.0.0.1:99999"}, wantErr: "is not a listen address"},
		{name: "http URL", in: Config{Name: "n1", HTTP: "http://10.0.0.1:7780"}, wantErr: "is not a listen address"},
		{name: "http forms", in: Config{Name: "n1", HTTP: ":7780"}, check: func(t *testing.T, c Config) {
			for _, ok := range []string{"127.0.0.1:7780", "localhost:7780", "[::1]:7780"} {
				if _, err := (Config{Name: "n1", HTTP: ok}).withDefaults(); err != nil {
					t.Errorf("--http %s: %v", ok, err)
				}
			}
		}},
		{name: "etcd endpoint without scheme", in: Config{Name: "n1", EtcdEndpoints: []string{"10.0.0.5:2379"}}, wantErr: "is not an etcd URL"},
		{name: "etcd endpoint word", in: Config{Name: "n1", EtcdEndpoints: []string{"nonsense"}}, wantErr: "is not an etcd URL"},
		{name: "etcd endpoints", in: Config{Name: "n1", EtcdEndpoints: []string{"http://e1:2379", "https://10.0.0.5:2379"}}, check: func(t *testing.T, c Config) {}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tt.in.withDefaults()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, c)
		})
	}
}

func TestValidNodeName(t *testing.T) {
	for name, ok := range map[string]bool{
		"n1": true, "web-01": true, "a": true, strings.Repeat("a", 63): true,
		"": false, "-a": false, "a-": false, "A1": false, "a.b": false, "a/b": false, strings.Repeat("a", 64): false, "n\n1": false,
	} {
		if err := ValidNodeName(name); (err == nil) != ok {
			t.Errorf("ValidNodeName(%q) = %v, want ok=%v", name, err, ok)
		}
	}
}

func TestLoadConfigFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("name: n7\ndata-dir: /srv/ssi\nserver: true\netcd-endpoints: [http://e1:2379, http://e2:2379]\n"), 0o600)
	c, err := LoadConfigFile(good)
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != "n7" || c.DataDir != "/srv/ssi" || !c.Server || len(c.EtcdEndpoints) != 2 {
		t.Fatalf("got %+v", c)
	}
	// Bad files: one line naming the problem and the fix, without the YAML library's layers.
	for _, tc := range []struct{ name, content, want string }{
		{"typo.yaml", "nmae: n7\n", `typo.yaml: unknown field "nmae": use the flags' names as keys`},
		{"type.yaml", "server: maybe\n", "type.yaml: cannot unmarshal string into Go struct field Config.server of type bool: use the flags' names"},
		{"missing.yaml", "", "no such file or directory: check the --config path"},
	} {
		path := filepath.Join(dir, tc.name)
		if tc.content != "" {
			os.WriteFile(path, []byte(tc.content), 0o600)
		}
		_, err := LoadConfigFile(path)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "unmarshaling JSON") || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v, want one line containing %q", tc.name, err, tc.want)
		}
	}
}
