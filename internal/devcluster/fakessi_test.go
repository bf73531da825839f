package devcluster

// A stand-in for the ssi binary, so that the harness is tested end to end
// (host init, agent command line, readiness, tokens, joins, restarts) without
// the real agent. The test binary re-executes itself: with fakeSSIEnv set,
// TestMain runs the subcommand named by its first argument instead of tests.
//
// The fake agent speaks a line protocol on its Unix socket and on its TCP
// --bind address. The bootstrap node (started without --join) holds the
// member list and the token; the others forward NODES and TOKEN to it. A
// member's state is "alive" when the bootstrap node can reach its TCP address,
// so partitions show up in `nodes` as they would with gossip.

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ssi-cluster/ssi/internal/agent"
)

const fakeSSIEnv = "SSI_DEVCLUSTER_FAKE_SSI"

func TestMain(m *testing.M) {
	if os.Getenv(fakeSSIEnv) == "1" && len(os.Args) > 1 {
		os.Exit(runFakeSSI(os.Args[1:]))
	}
	// Every process the tests start (host inits, agents, CLI probes) is
	// this binary and must act as the fake ssi.
	os.Setenv(fakeSSIEnv, "1")
	os.Exit(m.Run())
}

func runFakeSSI(args []string) int {
	switch args[0] {
	case "dev-init":
		err := RunHostInit(args[1:])
		if exit, ok := err.(*AgentExitError); ok {
			return exit.Code
		}
		fmt.Fprintln(os.Stderr, "dev-init:", err)
		return 1
	case "agent":
		return fakeAgent(args[1:])
	case "nodes":
		return fakeClient(args[1:], "NODES")
	case "token":
		return fakeClient(args[1:], "TOKEN")
	case "dial":
		// dial ADDR: used inside hosts to test reachability.
		reply, err := request("tcp", args[1], "PING")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println(reply)
		return 0
	}
	fmt.Fprintf(os.Stderr, "fake ssi: unknown command %q\n", args[0])
	return 2
}

// request sends one line and returns the one-line reply.
func request(network, addr, line string) (string, error) {
	conn, err := net.DialTimeout(network, addr, 300*time.Millisecond)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintln(conn, line); err != nil {
		return "", err
	}
	reply, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", err
	}
	reply = strings.TrimSpace(reply)
	if strings.HasPrefix(reply, "ERR") {
		return "", fmt.Errorf("%s", reply)
	}
	return reply, nil
}

// fakeClient serves `nodes -o json --socket S` and `token create --socket S`.
func fakeClient(args []string, verb string) int {
	flags := flag.NewFlagSet(verb, flag.ContinueOnError)
	socket := flags.String("socket", "", "")
	flags.String("o", "", "")
	// Flags may come after positional words ("token create --socket S").
	for len(args) > 0 {
		if err := flags.Parse(args); err != nil {
			return 2
		}
		args = flags.Args()
		if len(args) > 0 {
			args = args[1:]
		}
	}
	reply, err := request("unix", *socket, verb)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(reply)
	return 0
}

type fakeState struct {
	Join    string            `json:"join,omitempty"`
	Token   string            `json:"token"`
	Members map[string]string `json:"members,omitempty"` // bootstrap node only
}

type fakeAgentServer struct {
	name, bind, stateFile string
	mu                    sync.Mutex
	state                 fakeState
}

func fakeAgent(args []string) int {
	flags := flag.NewFlagSet("agent", flag.ContinueOnError)
	name := flags.String("name", "", "")
	dataDir := flags.String("data-dir", "", "")
	socket := flags.String("socket", "", "")
	bind := flags.String("bind", "", "")
	flags.String("http", "", "")
	flags.String("node-cgroup", "", "")
	flags.Bool("server", false, "")
	join := flags.String("join", "", "")
	token := flags.String("token", "", "")
	failAtStart := flags.Bool("fail-at-start", false, "")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	if *failAtStart {
		fmt.Fprintln(os.Stderr, "fake agent: failing at start as asked")
		return 3
	}
	if err := os.MkdirAll(*dataDir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	s := &fakeAgentServer{name: *name, bind: *bind, stateFile: filepath.Join(*dataDir, "state.json")}
	if data, err := os.ReadFile(s.stateFile); err == nil {
		if err := json.Unmarshal(data, &s.state); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	if *join != "" {
		// As the real agent: the token from --token, else from the environment, where
		// the harness puts it (see startHost).
		if *token == "" {
			*token = os.Getenv(agent.TokenEnv)
		}
		s.state.Join, s.state.Token = *join, *token
	}
	bootstrap := s.state.Join == ""
	if bootstrap {
		if s.state.Token == "" {
			var raw [8]byte
			_, _ = rand.Read(raw[:])
			s.state.Token = "tok-" + hex.EncodeToString(raw[:])
		}
		if s.state.Members == nil {
			s.state.Members = map[string]string{}
		}
		s.state.Members[*name] = *bind
	}
	tcp, err := net.Listen("tcp", *bind)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	go s.serve(tcp)
	if !bootstrap {
		// Tried for a while: on a busy machine a fresh veth can take a moment to pass packets.
		var err error
		for try := 0; try < 10; try++ {
			if _, err = request("tcp", s.state.Join, fmt.Sprintf("JOIN %s %s %s", *name, *bind, s.state.Token)); err == nil {
				break
			}
			time.Sleep(300 * time.Millisecond)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "fake agent %s: join %s refused: %v\n", *name, s.state.Join, err)
			return 1
		}
	}
	if err := s.save(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	_ = os.Remove(*socket)
	unixLn, err := net.Listen("unix", *socket)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	go s.serve(unixLn)
	fmt.Fprintf(os.Stderr, "fake agent %s up on %s\n", *name, *bind)
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	sig := <-signals
	fmt.Fprintf(os.Stderr, "fake agent %s stopping on %v\n", *name, sig)
	return 0
}

func (s *fakeAgentServer) save() error {
	s.mu.Lock()
	data, err := json.Marshal(s.state)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	return os.WriteFile(s.stateFile, data, 0o644)
}

func (s *fakeAgentServer) serve(ln net.Listener) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer conn.Close()
			line, err := bufio.NewReader(conn).ReadString('\n')
			if err != nil && err != io.EOF {
				return
			}
			fmt.Fprintln(conn, s.handle(strings.Fields(line)))
		}()
	}
}

func (s *fakeAgentServer) handle(req []string) string {
	if len(req) == 0 {
		return "ERR empty request"
	}
	s.mu.Lock()
	join, token := s.state.Join, s.state.Token
	members := maps.Clone(s.state.Members)
	s.mu.Unlock()
	switch req[0] {
	case "PING":
		return "PONG " + s.name
	case "TOKEN", "NODES":
		if join != "" {
			reply, err := request("tcp", join, req[0])
			if err != nil {
				return "ERR " + err.Error()
			}
			return reply
		}
		if req[0] == "TOKEN" {
			return token
		}
		return s.listing(members)
	case "JOIN":
		if len(req) != 4 || join != "" {
			return "ERR not a bootstrap node"
		}
		if req[3] != token {
			return "ERR bad token"
		}
		s.mu.Lock()
		s.state.Members[req[1]] = req[2]
		s.mu.Unlock()
		if err := s.save(); err != nil {
			return "ERR " + err.Error()
		}
		return "OK"
	}
	return "ERR unknown request " + req[0]
}

func (s *fakeAgentServer) listing(members map[string]string) string {
	type entry struct {
		Name  string `json:"name"`
		State string `json:"state"`
	}
	names := slices.Sorted(maps.Keys(members))
	entries := make([]entry, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Go(func() {
			entries[i] = entry{Name: name, State: "dead"}
			if name == s.name {
				entries[i].State = "alive"
			} else if reply, err := request("tcp", members[name], "PING"); err == nil && reply == "PONG "+name {
				entries[i].State = "alive"
			}
		})
	}
	wg.Wait()
	data, _ := json.Marshal(entries)
	return string(data)
}
