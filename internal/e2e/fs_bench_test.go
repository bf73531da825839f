package e2e

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/ssi-cluster/ssi/internal/devcluster"
)

// BenchmarkTree measures the cluster file tree as the issue states its goals: from n1,
// through /ssi/n2/<a directory on the machine's disk> (not a tmpfs), on a 3-node simulated
// cluster; and, for scale, the same operations on that directory directly. The work is done by
// shell builtins and single commands inside n1, so process start-up does not dominate:
//
//	go test -run XXX -bench Tree -benchtime 3x ./internal/e2e
//
// The small-file operations are also measured with n2's directory on its tmpfs /tmp
// (tree-tmpfs): the cost of creating a file on this disk swings with the deletions made lately
// by anyone (docs/fs.md, "Where the time goes"), which hides the cost of the tree itself.
func BenchmarkTree(b *testing.B) {
	c := benchCluster(b, 3)
	disk, err := os.MkdirTemp("/var/tmp", "ssi-bench-tree")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(disk) })
	const tmpfs = "/ssi/n2/tmp/ssi-bench-tree"
	shell(b, c, "mkdir -p "+tmpfs)
	for _, where := range []struct {
		name, dir string
		smallOnly bool
	}{{"tree", "/ssi/n2" + disk, false}, {"tree-tmpfs", tmpfs, true}, {"local", disk, false}} {
		dir := where.dir
		if where.smallOnly {
			benchSmallFiles(b, c, where.name, dir)
			continue
		}
		const mib = 256
		b.Run(where.name+"/seq-write", func(b *testing.B) {
			took := timeShell(b, c, false, fmt.Sprintf("dd if=/dev/zero of=%s/big bs=1M count=%d conv=fsync 2>/dev/null", dir, mib))
			b.ReportMetric(mib*1.048576*float64(b.N)/took.Seconds(), "MB/s")
		})
		b.Run(where.name+"/seq-read-uncached", func(b *testing.B) {
			took := timeShell(b, c, true, fmt.Sprintf("dd if=%s/big of=/dev/null bs=1M 2>/dev/null", dir))
			b.ReportMetric(mib*1.048576*float64(b.N)/took.Seconds(), "MB/s")
		})
		b.Run(where.name+"/seq-read-cached", func(b *testing.B) {
			shell(b, c, fmt.Sprintf("cat %s/big >/dev/null", dir))
			took := timeShell(b, c, false, fmt.Sprintf("dd if=%s/big of=/dev/null bs=1M 2>/dev/null", dir))
			b.ReportMetric(mib*1.048576*float64(b.N)/took.Seconds(), "MB/s")
		})
		benchSmallFiles(b, c, where.name, dir)
		const entries = 10000
		b.Run(where.name+"/ls-l-10000", func(b *testing.B) {
			shell(b, c, fmt.Sprintf("rm -rf %[1]s/wide; mkdir %[1]s/wide && cd %[1]s/wide && i=0; while [ $i -lt %[2]d ]; do : > f$i; i=$((i+1)); done", dir, entries))
			cold := timeShell(b, c, true, fmt.Sprintf("ls -l %s/wide >/dev/null", dir))
			warm := timeShell(b, c, false, fmt.Sprintf("ls -l %s/wide >/dev/null", dir))
			b.ReportMetric(float64(cold.Milliseconds())/float64(b.N), "ms-cold")
			b.ReportMetric(float64(warm.Milliseconds())/float64(b.N), "ms-warm")
		})
		// A checkout: 2,000 files of 4 KiB in 200 directories, then a stat of everything.
		b.Run(where.name+"/checkout-like", func(b *testing.B) {
			took := timeShell(b, c, false, fmt.Sprintf(
				"rm -rf %[1]s/co; mkdir %[1]s/co && cd %[1]s/co && s=$(head -c 4096 /dev/zero | tr '\\0' x) && d=0; "+
					"while [ $d -lt 200 ]; do mkdir d$d; f=0; while [ $f -lt 10 ]; do printf %%s \"$s\" > d$d/f$f; f=$((f+1)); done; d=$((d+1)); done; "+
					"find . -type f | xargs stat -c %%s >/dev/null", dir),
				fmt.Sprintf("rm -rf %s/co", dir))
			b.ReportMetric(2000*float64(b.N)/took.Seconds(), "files/s")
		})
	}
}

// benchSmallFiles creates, stats and unlinks 2,000 small files in dir, from n1.
func benchSmallFiles(b *testing.B, c *devcluster.Cluster, name, dir string) {
	const files = 2000
	b.Run(name+"/create-small", func(b *testing.B) {
		// The previous round's files are moved aside (one rename) and removed untimed, so
		// that only creates are timed; the last round's files stay for the stat test.
		took := timeShell(b, c, false, fmt.Sprintf(
			"cd %[1]s && { [ ! -e small ] || mv small small.old; } && mkdir small && cd small && i=0; while [ $i -lt %[2]d ]; do echo 'hello, world' > f$i; i=$((i+1)); done", dir, files),
			fmt.Sprintf("rm -rf %s/small.old", dir))
		b.ReportMetric(files*float64(b.N)/took.Seconds(), "files/s")
	})
	b.Run(name+"/stat-uncached", func(b *testing.B) {
		took := timeShell(b, c, true, fmt.Sprintf("ls -l %s/small >/dev/null", dir))
		b.ReportMetric(files*float64(b.N)/took.Seconds(), "files/s")
	})
	b.Run(name+"/unlink", func(b *testing.B) {
		took := timeShell(b, c, false, fmt.Sprintf("cd %s/small && rm f*", dir),
			fmt.Sprintf("cd %[1]s/small && i=0; while [ $i -lt %[2]d ]; do : > f$i; i=$((i+1)); done", dir, files))
		b.ReportMetric(files*float64(b.N)/took.Seconds(), "files/s")
	})
}

// shell runs script inside n1 and fails the benchmark if it fails.
func shell(b *testing.B, c *devcluster.Cluster, script string) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, err := c.Exec(ctx, "n1", "sh", "-c", script).CombinedOutput(); err != nil {
		b.Fatalf("%s: %v: %s", script, err, out)
	}
}

// timeShell runs script b.N times inside n1 and returns the time it took in all, running
// reset (untimed) after each run, and dropping the machine's caches before each when cold.
func timeShell(b *testing.B, c *devcluster.Cluster, cold bool, script string, reset ...string) time.Duration {
	b.Helper()
	var took time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		if cold {
			if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
				b.Fatalf("dropping the page cache: %v", err)
			}
		}
		b.StartTimer()
		start := time.Now()
		shell(b, c, script)
		took += time.Since(start)
		b.StopTimer()
		for _, r := range reset {
			shell(b, c, r)
		}
		b.StartTimer()
	}
	return took
}
