package proc

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// TestConcurrentStartsKeepTheirOwnUmask starts many processes at once, each with its own
// umask and identity, and checks that every child saw exactly its own while the agent's
// umask never changed, not even for files it created during the starts.
func TestConcurrentStartsKeepTheirOwnUmask(t *testing.T) {
	requireRoot(t)
	agentUmask, err := UmaskOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()

	// The agent keeps creating files while the children start.
	stop := make(chan struct{})
	agentErr := make(chan error, 1)
	go func() {
		defer close(agentErr)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			path := filepath.Join(dir, "agent-"+strconv.Itoa(i))
			f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o666)
			if err != nil {
				agentErr <- err
				return
			}
			f.Close()
			fi, err := os.Stat(path)
			os.Remove(path)
			if err != nil {
				agentErr <- err
				return
			}
			if got, want := int(fi.Mode().Perm()), 0o666&^agentUmask; got != want {
				agentErr <- fmt.Errorf("a file the agent created has mode %#o, want %#o: a start leaked its umask into the agent", got, want)
				return
			}
		}
	}()

	const starts = 64
	var wg sync.WaitGroup
	for i := range starts {
		wg.Go(func() {
			spec := rootSpec("sh", "-c", "umask; id -u")
			spec.Umask = (i * 0o13) & 0o777
			if i%4 == 2 {
				spec.Umask = agentUmask // forked right on the caller's thread
			}
			if i%2 == 1 {
				spec.UID, spec.GID, spec.Groups = 65534, 65534, nil
			}
			want := fmt.Sprintf("%04o\n%d\n", spec.Umask, spec.UID)
			if out, err := runConcurrently(spec); err != nil || out != want {
				t.Errorf("start %d (umask %#o, uid %d): stdout %q, %v; want stdout %q", i, spec.Umask, spec.UID, out, err, want)
			}
		})
	}
	wg.Wait()
	close(stop)
	if err := <-agentErr; err != nil {
		t.Error(err)
	}
	if after, err := UmaskOf(os.Getpid()); err != nil || after != agentUmask {
		t.Errorf("the agent's umask is %#o (%v) after the starts, want %#o", after, err, agentUmask)
	}
}

// runConcurrently is run for goroutines other than the test's: it returns the child's
// stdout, or an error if the child did not exit 0.
func runConcurrently(spec Spec) (string, error) {
	spec.Stdin, spec.Stderr = nil, nil
	p, err := Start(context.Background(), spec)
	if err != nil {
		return "", err
	}
	defer p.Close()
	p.Stdin().Close()
	var stderr bytes.Buffer
	done := make(chan struct{})
	go func() { _, _ = io.Copy(&stderr, p.Stderr()); close(done) }()
	stdout, err := io.ReadAll(p.Stdout())
	<-done
	if err != nil {
		return "", err
	}
	if code, err := p.Wait(); code != 0 || err != nil {
		return string(stdout), fmt.Errorf("exit %d, %v, stderr %q", code, err, stderr.String())
	}
	return string(stdout), p.Close()
}

// TestStartFollowsAgentWorkingDirectory checks that a start without Dir, or with a
// relative Dir or command path, uses the agent's working directory at the time of the
// call, although the spawner threads have their own fs_struct.
func TestStartFollowsAgentWorkingDirectory(t *testing.T) {
	requireRoot(t)
	for _, sub := range []string{"a", "b"} {
		dir := filepath.Join(t.TempDir(), sub)
		if err := os.MkdirAll(filepath.Join(dir, "rel"), 0o755); err != nil {
			t.Fatal(err)
		}
		script := filepath.Join(dir, "rel", "here")
		if err := os.WriteFile(script, []byte("#!/bin/sh\necho script in "+sub+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		t.Chdir(dir)
		for _, tc := range []struct {
			dir, path string
			want      string
		}{
			{"", "", dir},
			{"rel", "", filepath.Join(dir, "rel")},
			{"", "./rel/here", "script in " + sub},
		} {
			spec := rootSpec("pwd")
			spec.Dir = tc.dir
			if tc.path != "" {
				spec.Args = []string{tc.path}
			}
			out := run(t, spec)
			if got := strings.TrimSpace(out.stdout); out.code != 0 || got != tc.want {
				t.Errorf("agent in %s, Dir %q, Args %q: exit %d, stdout %q, stderr %q; want %q",
					dir, spec.Dir, spec.Args, out.code, got, out.stderr, tc.want)
			}
		}
	}
}

// TestSpawnerThreadsKeepTheAgentsState checks, after starts as other users with other
// umasks, that every thread of the agent (the spawners included) still has the agent's
// credentials, groups, umask and namespaces.
func TestSpawnerThreadsKeepTheAgentsState(t *testing.T) {
	requireRoot(t)
	for _, umask := range []int{0o077, 0o002} {
		spec := rootSpec("true")
		spec.UID, spec.GID, spec.Groups, spec.Umask = 65534, 65534, []uint32{100}, umask
		run(t, spec)
	}
	want, err := IdentityOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	namespaces, err := os.ReadDir("/proc/self/ns")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		dir := filepath.Join("/proc/self/task", task.Name())
		f, err := os.Open(filepath.Join(dir, "status"))
		if err != nil {
			continue // the thread exited
		}
		got, err := parseStatusIdentity(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if got.UID != want.UID || got.GID != want.GID || got.Umask != want.Umask || !slices.Equal(got.Groups, want.Groups) {
			t.Errorf("thread %s has identity %+v, want the agent's %+v", task.Name(), got, want)
		}
		for _, ns := range namespaces {
			mine, err1 := os.Readlink(filepath.Join(dir, "ns", ns.Name()))
			agent, err2 := os.Readlink(filepath.Join("/proc/self/ns", ns.Name()))
			if err1 == nil && err2 == nil && mine != agent {
				t.Errorf("thread %s is in %s, the agent in %s", task.Name(), mine, agent)
			}
		}
	}
}
