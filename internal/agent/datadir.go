package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// nodeState is what a node keeps in its data dir to restart as the same node of the same
// cluster. node.json is written last: its presence means the node has fully joined.
type nodeState struct {
	ClusterID     string    `json:"cluster_id"`
	Name          string    `json:"name"`
	NodeID        string    `json:"node_id"`
	Index         uint32    `json:"index"`
	Role          string    `json:"role"`
	CAHash        string    `json:"ca_hash"`
	GossipKey     []byte    `json:"gossip_key"`
	EtcdEndpoints []string  `json:"etcd_endpoints"`
	ExternalEtcd  bool      `json:"external_etcd"`
	Joined        time.Time `json:"joined"`
}

// Files in the data dir.
const (
	fileState   = "node.json"
	fileCACert  = "ca.crt"
	fileCert    = "node.crt"
	fileKey     = "node.key"
	fileLock    = "agent.lock"
	dirEtcd     = "etcd"
	fileEtcdLog = "etcd.log"
	// dirSpool holds the job system's checkpoint directories and batch scripts: one per agent,
	// so that agents sharing a machine (ssi dev) never share them.
	dirSpool = "spool"
)

type dataDir string

func (d dataDir) path(name string) string { return filepath.Join(string(d), name) }

// lock takes the data dir for this agent. The kernel drops the lock when the process dies, so a
// crashed agent never blocks its own restart.
func (d dataDir) lock() (*os.File, error) {
	if err := os.MkdirAll(string(d), 0o700); err != nil {
		return nil, fmt.Errorf("creating data dir: %w", err)
	}
	// Searchable but not listable: job tasks reach their checkpoint directories in the spool
	// under it (dirSpool) as their users. Everything else in it is root's alone by its own
	// mode (keys, state, etcd, etcd's log: see privateEtcdLog) or public (certificates).
	if err := os.Chmod(string(d), 0o711); err != nil {
		return nil, fmt.Errorf("setting the data dir's mode: %w", err)
	}
	f, err := os.OpenFile(d.path(fileLock), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening data dir lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		b, _ := os.ReadFile(d.path(fileLock))
		f.Close()
		pid := strings.TrimSpace(string(b))
		if pid == "" {
			pid = "unknown"
		}
		return nil, fmt.Errorf("data dir %s is in use by another agent (pid %s): stop that agent or use another --data-dir", string(d), pid)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

// loadState reads node.json; ok is false for a data dir that holds no node yet.
func (d dataDir) loadState() (st nodeState, ok bool, err error) {
	b, err := os.ReadFile(d.path(fileState))
	if errors.Is(err, fs.ErrNotExist) {
		return st, false, nil
	}
	if err != nil {
		return st, false, fmt.Errorf("reading node state: %w", err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, false, fmt.Errorf("node state %s is corrupt (%v): restore it from a backup or remove the data dir to join as a new node", d.path(fileState), err)
	}
	return st, true, nil
}

func (d dataDir) saveState(st nodeState) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(d.path(fileState), append(b, '\n'), 0o600)
}

// writeFileAtomic replaces path with data so that a crash leaves either the old or the new
// content, never a torn file.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return nil
	}
	defer dir.Close()
	_ = dir.Sync()
	return nil
}

// privateEtcdLog creates etcd's log file, or fixes its mode, as root's alone before etcd opens
// it: etcd would create it readable by all, and the data dir is searchable by all.
func (d dataDir) privateEtcdLog() error {
	f, err := os.OpenFile(d.path(fileEtcdLog), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("creating etcd's log: %w", err)
	}
	defer f.Close()
	if err := f.Chmod(0o600); err != nil {
		return fmt.Errorf("setting the mode of etcd's log: %w", err)
	}
	return nil
}
