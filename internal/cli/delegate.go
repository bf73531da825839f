package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

// DaemonBinary is the name of the binary with the server commands (see ServerCommands).
const DaemonBinary = "ssid"

// serverStubs stand in for the server commands in the ssi binary: each hands the whole
// command line to ssid, which runs it in this process's place (same pid, so a service
// manager watching `ssi agent` sees the agent itself).
func serverStubs(g *Globals) []*cobra.Command {
	stubs := []struct {
		use, short, example string
		hidden              bool
	}{
		{"agent", "Run the node daemon (as root)", "  sudo ssi agent --server --name n1", false},
		{"dev", "Run a cluster of simulated hosts on this machine (needs root)", "  sudo ssi dev --nodes 3", false},
		{"dev-init", "", "", true},
	}
	var cmds []*cobra.Command
	for _, s := range stubs {
		cmds = append(cmds, &cobra.Command{
			Use:                s.use,
			Short:              s.short,
			Example:            s.example,
			Hidden:             s.hidden,
			DisableFlagParsing: true,
			RunE: func(*cobra.Command, []string) error {
				return execDaemon(g.args)
			},
		})
	}
	return cmds
}

// execDaemon replaces this process with ssid running args.
func execDaemon(args []string) error {
	path, err := findDaemon()
	if err != nil {
		return err
	}
	argv := append([]string{path}, args...)
	if err := syscall.Exec(path, argv, os.Environ()); err != nil {
		return fmt.Errorf("starting %s: %w", path, err)
	}
	return nil // not reached
}

// findDaemon finds ssid next to this binary (how both are built and installed), else on PATH.
func findDaemon() (string, error) {
	self, err := os.Executable()
	if err == nil {
		// LookPath of a path checks that it is an executable file.
		if path, err := exec.LookPath(filepath.Join(filepath.Dir(self), DaemonBinary)); err == nil {
			return path, nil
		}
	}
	path, err := exec.LookPath(DaemonBinary)
	if err == nil {
		return path, nil
	}
	if !errors.Is(err, exec.ErrNotFound) && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("finding %s: %w", DaemonBinary, err)
	}
	dir := "."
	if self != "" {
		dir = filepath.Dir(self)
	}
	missing := fmt.Errorf("this command is in %s, the server half of ssi, which is neither next to this binary nor on PATH: build it there (go build -o %s ./cmd/ssid in the source tree)", DaemonBinary, dir)
	if self == "" {
		return "", missing
	}
	return buildDaemon(filepath.Join(dir, DaemonBinary), missing)
}

// buildDaemon builds ssid at path from the source tree this binary was built from, when that
// tree is still there, belongs to this user and Go is installed: a clone built with only
// "go build ./cmd/ssi" then still runs ssi dev. Otherwise it returns missing.
func buildDaemon(path string, missing error) (string, error) {
	root, ok := sourceTree()
	goTool, err := exec.LookPath("go")
	if !ok || err != nil {
		return "", missing
	}
	fmt.Fprintf(os.Stderr, "ssi: building %s, the server half of ssi, from %s (once; this takes a minute)\n", path, root)
	build := exec.Command(goTool, "build", "-o", path, "./cmd/ssid")
	build.Dir = root
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("building %s in %s: %w", path, root, err)
	}
	return path, nil
}

// modulePath is this module's path, as its go.mod declares it.
const modulePath = "github.com/ssi-cluster/ssi"

// sourceTree returns the root of the source tree this binary was built from, if it is still
// there and trustedTree.
func sourceTree() (string, bool) {
	_, file, _, ok := runtime.Caller(0)
	if !ok || !filepath.IsAbs(file) {
		return "", false // built with -trimpath, or from the module cache
	}
	root := filepath.Dir(filepath.Dir(filepath.Dir(file))) // <root>/internal/cli/delegate.go
	return root, trustedTree(root, os.Geteuid())
}

// trustedTree reports whether root is this module's tree, owned by euid or root and writable
// by no one else: building and running code from someone else's tree would run their code as
// us.
func trustedTree(root string, euid int) bool {
	mod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil || !strings.HasPrefix(string(mod), "module "+modulePath+"\n") {
		return false
	}
	for _, p := range []string{root, filepath.Join(root, "go.mod"), filepath.Join(root, "cmd"), filepath.Join(root, "cmd", "ssid")} {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return false
		}
		if (st.Uid != uint32(euid) && st.Uid != 0) || st.Mode&0o022 != 0 {
			return false
		}
	}
	return true
}
