package agent

import (
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// FuzzLoadConfigFile reads any config file: no panic, a refusal is one line naming the file,
// and an accepted config written back as YAML loads again the same.
func FuzzLoadConfigFile(f *testing.F) {
	f.Add("name: n1\ndata-dir: /var/lib/ssi\nbind: 0.0.0.0:7600\nserver: true\netcd-endpoints: [a, b]\nexport: [/home]\n")
	f.Add(`{"name":"n1","join":"10.0.0.1:7600","token":"ssi1.abc.def","no-mount":true}`)
	f.Add("nmae: n1\n")
	f.Add("server: yes\n")
	f.Add("server: \"true\"\n")
	f.Add("name: [\n")
	f.Add("a: &a [*a, *a, *a, *a]\n")         // an alias loop
	f.Add("Name: n1\nname: n2\n")             // keys in two cases
	f.Add("name: n1\nname: n2\n")             // a key twice
	f.Add("logger: x\n")                      // a field with no key
	f.Add("ProcRoot: /evil\n")                // nor this one
	f.Add("export: !!binary aGVsbG8=\n")      // a tag
	f.Add("\xff\xfe\x00n\x00a\x00m\x00e\x00") // UTF-16
	f.Add("")
	f.Add("---\nname: a\n---\nname: b\n")
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, content string) {
		file, err := os.CreateTemp(dir, "config")
		if err != nil {
			t.Fatal(err)
		}
		path := file.Name()
		defer os.Remove(path)
		if _, err := file.WriteString(content); err != nil {
			t.Fatal(err)
		}
		file.Close()
		c, err := LoadConfigFile(path)
		if err != nil {
			if msg := err.Error(); !strings.HasPrefix(msg, "config file "+path+": ") {
				t.Fatalf("%q: error %q", content, msg)
			}
			return
		}
		if c.ProcRoot != "" || c.Logger != nil || c.Version != "" {
			t.Fatalf("%q set a field that has no key: %+v", content, c)
		}
		again, err := yaml.Marshal(c)
		if err != nil {
			t.Fatalf("%q: config %+v does not re-encode: %v", content, c, err)
		}
		var back Config
		if err := yaml.UnmarshalStrict(again, &back); err != nil || !reflect.DeepEqual(back, c) {
			t.Fatalf("%q: re-encoded as %q, loads as %+v, %v; want %+v", content, again, back, err, c)
		}
	})
}

// FuzzValidNodeName checks the node name a joining node asks for: an accepted name is a
// lower-case DNS label, safe as a path component (/ssi/<node>) and as an etcd member name.
func FuzzValidNodeName(f *testing.F) {
	for _, s := range []string{"n1", "a", "node-7", "-a", "a-", "A", "..", ".", "a/b", "a\x00", strings.Repeat("a", 63),
		strings.Repeat("a", 64), "a\n", "ａ", "", "a.b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		err := ValidNodeName(name)
		if err != nil {
			if !strings.Contains(err.Error(), strconv.Quote(name)) || strings.Contains(err.Error(), "\n") && !strings.Contains(name, "\n") {
				t.Fatalf("%q: %v", name, err)
			}
			return
		}
		if len(name) == 0 || len(name) > 63 || filepath.Base(name) != name || name == "." || name == ".." ||
			name[0] == '-' || name[len(name)-1] == '-' {
			t.Fatalf("%q accepted", name)
		}
		for _, r := range name {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
				t.Fatalf("%q accepted with %q", name, r)
			}
		}
	})
}

// FuzzSplitHostPortDefault checks --bind and --advertise: an accepted port is one whose three
// successors (gossip, etcd) are ports too, and host and port join back to an address that
// splits the same.
func FuzzSplitHostPortDefault(f *testing.F) {
	for _, s := range []string{"0.0.0.0:7600", "10.0.0.1", "[::1]:7600", "::1", "[::1]", "host:0", "host:65532", "host:65533",
		"host:-1", "host:+80", "host:0x50", ":7600", "host:", "a:b:c", "[fe80::1%eth0]:7600", "host:99999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		host, port, err := splitHostPortDefault(s, DefaultPort)
		if err != nil {
			return
		}
		if port <= 0 || port > 65532 {
			t.Fatalf("%q: port %d", s, port)
		}
		h2, p2, err := splitHostPortDefault(net.JoinHostPort(host, strconv.Itoa(port)), DefaultPort)
		if err != nil || h2 != host || p2 != port {
			t.Fatalf("%q: %q, %d re-joins and splits as %q, %d, %v", s, host, port, h2, p2, err)
		}
	})
}
