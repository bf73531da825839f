package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/ssi-cluster/ssi/internal/localrpc"
)

// Default locations and ports.
const (
	DefaultDataDir = "/var/lib/ssi"
	DefaultSocket  = localrpc.DefaultSocket
	DefaultPort    = 7700 // gRPC; gossip, etcd client, etcd peer and the node links (links.go) use the next four ports

	// TokenEnv carries a join token when --token is not given: a command line is readable
	// by every user of the machine (ps, /proc/PID/cmdline, ssi ps), an environment only by
	// its owner and root, and a token lets whoever holds it join a node to the cluster.
	TokenEnv = "SSI_TOKEN"
)

// Config is everything an agent needs to start. The same keys are accepted in the config file
// (YAML or JSON) as on the command line.
type Config struct {
	Name          string   `json:"name"`
	DataDir       string   `json:"data-dir"`
	Bind          string   `json:"bind"`      // host:port for gRPC; the next three ports serve gossip and etcd
	Advertise     string   `json:"advertise"` // host[:port] other nodes dial; default: the bind host, or this host's primary address
	Join          string   `json:"join"`      // host:port of any node of the cluster to join
	Token         string   `json:"token"`
	Server        bool     `json:"server"`
	EtcdEndpoints []string `json:"etcd-endpoints"` // external etcd; empty: embedded on servers
	Socket        string   `json:"socket"`
	HTTP          string   `json:"http"`
	NodeCgroup    string   `json:"node-cgroup"`      // cgroup v2 path (relative to the cgroup2 mount) whose processes are this node's
	Mount         string   `json:"mount"`            // where the cluster file tree is mounted; default /ssi
	NoMount       bool     `json:"no-mount"`         // do not mount the tree (this node still exports its files)
	Exports       []string `json:"export"`           // export only these directories (default: the whole tree)
	ExportRO      bool     `json:"export-read-only"` // refuse changes to this node's files from the tree
	RootSquash    bool     `json:"root-squash"`      // requests from root act as nobody on this node's files
	// LogLevel is --log-level, a key of the config file like every flag; the command makes
	// Logger from it, the agent does not read it.
	LogLevel string `json:"log-level"`
	ProcRoot string `json:"-"`

	Logger  *slog.Logger `json:"-"`
	Version string       `json:"-"`
}

// LoadConfigFile reads a config file; unknown keys are an error so typos do not pass silently.
func LoadConfigFile(path string) (Config, error) {
	var c Config
	b, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("reading config file: %w: check the --config path", err)
	}
	if err := yaml.UnmarshalStrict(b, &c); err != nil {
		return c, fmt.Errorf("config file %s: %s: use the flags' names as keys, e.g. \"data-dir: /var/lib/ssi\" (see ssi agent --help)", path, configErrorDetail(err))
	}
	return c, nil
}

// configErrorDetail strips the layers sigs.k8s.io/yaml puts before the decoder's own words
// ("error unmarshaling JSON: while decoding JSON: json: unknown field "nmae""), leaving
// "unknown field "nmae"" or "cannot unmarshal string into Go struct field Config.server of
// type bool".
func configErrorDetail(err error) string {
	msg := err.Error()
	for _, layer := range []string{"error unmarshaling JSON: ", "while decoding JSON: ", "json: "} {
		msg = strings.TrimPrefix(msg, layer)
	}
	return msg
}

var nodeNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidNodeName reports whether name can name a node: a DNS label in lower case, since it
// appears in paths (/ssi/<node>), certificates and etcd member names.
func ValidNodeName(name string) error {
	if !nodeNameRE.MatchString(name) {
		return fmt.Errorf("node name %q is invalid: use 1-63 lower-case letters, digits and '-', not starting or ending with '-' (set --name)", name)
	}
	return nil
}

// withDefaults fills unset fields and checks the result.
func (c Config) withDefaults() (Config, error) {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Name == "" {
		h, err := os.Hostname()
		if err != nil {
			return c, fmt.Errorf("finding the host name for the node name: %w (set --name)", err)
		}
		c.Name = strings.ToLower(strings.SplitN(h, ".", 2)[0])
	}
	if err := ValidNodeName(c.Name); err != nil {
		return c, err
	}
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if c.Socket == "" {
		c.Socket = DefaultSocket
	}
	if c.Mount == "" {
		c.Mount = DefaultMount
	}
	if !filepath.IsAbs(c.Mount) {
		return c, fmt.Errorf("--mount %q: give an absolute path, e.g. /ssi", c.Mount)
	}
	c.Mount = filepath.Clean(c.Mount)
	for _, e := range c.Exports {
		if !filepath.IsAbs(e) {
			return c, fmt.Errorf("--export %q: give an absolute path on this node, e.g. /home", e)
		}
	}
	if c.ProcRoot == "" {
		c.ProcRoot = "/proc"
	}
	if c.Bind == "" {
		c.Bind = net.JoinHostPort("0.0.0.0", strconv.Itoa(DefaultPort))
	}
	host, port, err := splitHostPortDefault(c.Bind, DefaultPort)
	if err != nil {
		return c, fmt.Errorf("--bind %q: %w (want host:port, e.g. 0.0.0.0:7700)", c.Bind, err)
	}
	if net.ParseIP(host) == nil {
		return c, fmt.Errorf("--bind %q: host must be an IP address (e.g. 0.0.0.0:7700)", c.Bind)
	}
	c.Bind = net.JoinHostPort(host, strconv.Itoa(port))
	if c.Advertise == "" {
		adv := host
		if ip := net.ParseIP(host); ip.IsUnspecified() {
			if adv, err = primaryIP(); err != nil {
				return c, fmt.Errorf("finding the address to advertise: %w (set --advertise)", err)
			}
		}
		c.Advertise = net.JoinHostPort(adv, strconv.Itoa(port))
	} else {
		ah, ap, err := splitHostPortDefault(c.Advertise, port)
		if err != nil || net.ParseIP(ah) == nil || net.ParseIP(ah).IsUnspecified() {
			return c, fmt.Errorf("--advertise %q is not a usable address: give the IP other nodes reach this one at, e.g. 192.168.1.10", c.Advertise)
		}
		c.Advertise = net.JoinHostPort(ah, strconv.Itoa(ap))
	}
	if c.Join != "" {
		jh, jp, err := splitHostPortDefault(c.Join, DefaultPort)
		if err != nil {
			return c, fmt.Errorf("--join %q: %w (want host:port of a cluster node)", c.Join, err)
		}
		c.Join = net.JoinHostPort(jh, strconv.Itoa(jp))
	}
	// Checked now, not when the listener starts: by then a first server has bootstrapped a
	// cluster into its data dir.
	if c.HTTP != "" {
		host, p, err := net.SplitHostPort(c.HTTP)
		if n, perr := strconv.Atoi(p); err != nil || perr != nil || n < 0 || n > 65535 || strings.ContainsAny(host, " /") {
			return c, fmt.Errorf("--http %q is not a listen address: give IP:PORT, e.g. 127.0.0.1:7780 (or :7780 for every address)", c.HTTP)
		}
	}
	for _, e := range c.EtcdEndpoints {
		u, err := url.Parse(e)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return c, fmt.Errorf("--etcd-endpoints: %q is not an etcd URL: give http(s)://HOST:PORT, e.g. https://10.0.0.5:2379", e)
		}
	}
	// --join without --token is a restart of a node that joined before; the data dir decides.
	if c.Token != "" && c.Join == "" {
		return c, errors.New("--token needs --join ADDR: give the address of any node of the cluster")
	}
	return c, nil
}

// ports derived from the gRPC port.
func (c Config) port() int {
	_, p, _ := net.SplitHostPort(c.Bind)
	n, _ := strconv.Atoi(p)
	return n
}
func (c Config) bindHost() string {
	h, _, _ := net.SplitHostPort(c.Bind)
	return h
}
func (c Config) advertiseHost() string {
	h, _, _ := net.SplitHostPort(c.Advertise)
	return h
}
func (c Config) advertisePort() int {
	_, p, _ := net.SplitHostPort(c.Advertise)
	n, _ := strconv.Atoi(p)
	return n
}

func splitHostPortDefault(s string, def int) (string, int, error) {
	// A bare IPv6 address, bracketed or not, has no port: the brackets are not the host's.
	ip := s
	if len(s) > 2 && s[0] == '[' && s[len(s)-1] == ']' {
		ip = s[1 : len(s)-1]
	}
	if strings.Contains(ip, ":") && net.ParseIP(ip) != nil {
		return ip, def, nil
	}
	host, portStr, err := net.SplitHostPort(s)
	if err != nil {
		if strings.Contains(err.Error(), "missing port") && !strings.ContainsAny(s, "[]") {
			return s, def, nil
		}
		return "", 0, err
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port <= 0 || port > 65532 {
		return "", 0, fmt.Errorf("port %q out of range", portStr)
	}
	return host, port, nil
}

// primaryIP is the source address of the route to the outside world, without sending anything.
func primaryIP() (string, error) {
	conn, err := net.Dial("udp4", "192.0.2.1:9") // TEST-NET-1: never routed, nothing is sent
	if err == nil {
		defer conn.Close()
		return conn.LocalAddr().(*net.UDPAddr).IP.String(), nil
	}
	addrs, aerr := net.InterfaceAddrs()
	if aerr != nil {
		return "", aerr
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil {
			return ipn.IP.String(), nil
		}
	}
	return "", fmt.Errorf("no non-loopback IPv4 address: %w", err)
}
