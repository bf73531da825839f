package fs

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Benchmarks go through n1's mount to files on n2's disk (not a tmpfs), over loopback gRPC with
// TLS as between agents. Peers measured on this machine (../shared/MACHINE-NOTES.md): sshfs
// writes 173 MB/s, reads 201 MB/s, creates 1,012 small files/s.
//
//	go test -run XXX -bench . -benchtime 5x ./internal/fs

const benchFileSize = 256 << 20

func benchMount(b *testing.B) (*testCluster, *testNode, *testNode) {
	c := newTLSCluster(b, "n1", "n2")
	n1, n2 := c.node("n1"), c.node("n2")
	n1.mountTree(30 * time.Second)
	return c, n1, n2
}

func writeBig(b *testing.B, p string) {
	f, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i)
	}
	for range benchFileSize / len(buf) {
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
}

func readAll(b *testing.B, p string, dropCache bool) {
	f, err := os.Open(p)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if dropCache {
		unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
	}
	buf := make([]byte, 1<<20)
	n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{f}, buf)
	if err != nil || n != benchFileSize {
		b.Fatalf("read %d bytes: %v", n, err)
	}
}

// BenchmarkSequentialWrite writes a 256 MiB file in 1 MiB writes (like dd bs=1M).
func BenchmarkSequentialWrite(b *testing.B) {
	_, n1, _ := benchMount(b)
	p := n1.path("n2", "big")
	b.SetBytes(benchFileSize)
	for b.Loop() {
		writeBig(b, p)
	}
}

// BenchmarkSequentialRead reads a 256 MiB file whose pages the client does not hold.
func BenchmarkSequentialRead(b *testing.B) {
	_, n1, _ := benchMount(b)
	p := n1.path("n2", "big")
	writeBig(b, p)
	b.SetBytes(benchFileSize)
	for b.Loop() {
		readAll(b, p, true)
	}
}

// BenchmarkCachedReread reads a 256 MiB file again from the client's page cache.
func BenchmarkCachedReread(b *testing.B) {
	_, n1, _ := benchMount(b)
	p := n1.path("n2", "big")
	writeBig(b, p)
	readAll(b, p, false)
	b.SetBytes(benchFileSize)
	for b.Loop() {
		readAll(b, p, false)
	}
}

// BenchmarkSmallFiles creates, stats and unlinks 1,000 small files per iteration and reports
// each rate.
func BenchmarkSmallFiles(b *testing.B) {
	_, n1, n2 := benchMount(b)
	const files = 1000
	var create, stat, unlink time.Duration
	data := []byte("a small file\n")
	for i := 0; b.Loop(); i++ {
		dir := n1.path("n2", fmt.Sprint("small", i))
		if err := os.Mkdir(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		for j := range files {
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprint("f", j)), data, 0o644); err != nil {
				b.Fatal(err)
			}
		}
		create += time.Since(start)
		// Stat files the client has not seen: made on the owner's disk. Such changes reach the
		// client shortly after, not at once: wait for the last one (they come in order).
		diskDir := n2.disk(fmt.Sprint("small", i))
		for j := range files {
			os.WriteFile(filepath.Join(diskDir, fmt.Sprint("g", j)), data, 0o644)
		}
		os.WriteFile(filepath.Join(diskDir, "last"), data, 0o644)
		eventually(b, 5*time.Second, "the owner's own files show in the mount", func() error {
			_, err := os.Stat(filepath.Join(dir, "last"))
			return err
		})
		start = time.Now()
		for j := range files {
			if _, err := os.Stat(filepath.Join(dir, fmt.Sprint("g", j))); err != nil {
				b.Fatal(err)
			}
		}
		stat += time.Since(start)
		start = time.Now()
		for j := range files {
			if err := os.Remove(filepath.Join(dir, fmt.Sprint("f", j))); err != nil {
				b.Fatal(err)
			}
		}
		unlink += time.Since(start)
	}
	n := float64(b.N * files)
	b.ReportMetric(n/create.Seconds(), "creates/s")
	b.ReportMetric(n/stat.Seconds(), "stats/s")
	b.ReportMetric(n/unlink.Seconds(), "unlinks/s")
}

// BenchmarkListLarge is `ls -l` of a 10,000-entry directory: cold (the client caches nothing
// of it) and warm.
func BenchmarkListLarge(b *testing.B) {
	_, n1, n2 := benchMount(b)
	const entries = 10000
	if err := os.Mkdir(n2.disk("large"), 0o755); err != nil {
		b.Fatal(err)
	}
	for i := range entries {
		os.WriteFile(n2.disk("large", fmt.Sprintf("entry-%05d", i)), nil, 0o644)
	}
	list := func() {
		d, err := os.ReadDir(n1.path("n2", "large"))
		if err != nil || len(d) != entries {
			b.Fatalf("listed %d: %v", len(d), err)
		}
		for _, e := range d {
			if _, err := os.Lstat(n1.path("n2", "large", e.Name())); err != nil {
				b.Fatal(err)
			}
		}
	}
	var cold, warm time.Duration
	for b.Loop() {
		n1.mount.peer("n2").flush()
		start := time.Now()
		list()
		cold += time.Since(start)
		start = time.Now()
		list()
		warm += time.Since(start)
	}
	b.ReportMetric(float64(cold.Milliseconds())/float64(b.N), "cold-ms")
	b.ReportMetric(float64(warm.Milliseconds())/float64(b.N), "warm-ms")
}

// BenchmarkCheckoutLike writes a source tree as `git clone` would (200 directories, 2,000
// files of 1-8 KiB), then stats every file as a build would.
func BenchmarkCheckoutLike(b *testing.B) {
	_, n1, _ := benchMount(b)
	var files int
	for i := 0; b.Loop(); i++ {
		root := n1.path("n2", fmt.Sprint("checkout", i))
		for d := range 200 {
			dir := filepath.Join(root, fmt.Sprint("pkg", d/20), fmt.Sprint("sub", d))
			if err := os.MkdirAll(dir, 0o755); err != nil {
				b.Fatal(err)
			}
			for f := range 10 {
				data := make([]byte, 1024*(1+(d+f)%8))
				if err := os.WriteFile(filepath.Join(dir, fmt.Sprint("file", f, ".go")), data, 0o644); err != nil {
					b.Fatal(err)
				}
				files++
			}
		}
		filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil {
				_, err = d.Info()
			}
			return err
		})
	}
	b.ReportMetric(float64(files)/b.Elapsed().Seconds(), "files/s")
}

// BenchmarkLocalNodeRead reads through /<mount>/<this node>, which skips gRPC.
func BenchmarkLocalNodeRead(b *testing.B) {
	_, n1, _ := benchMount(b)
	p := n1.path("n1", "big")
	writeBig(b, p)
	b.SetBytes(benchFileSize)
	for b.Loop() {
		readAll(b, p, true)
	}
}
