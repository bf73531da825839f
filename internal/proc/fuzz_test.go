package proc

import (
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// FuzzParseSignalDisposition reads any status text for any signal: no panic, a signal out of
// 1-64 is refused, and a signal reported as having its default action has its bit in
// neither mask.
func FuzzParseSignalDisposition(f *testing.F) {
	f.Add("Name:\tsh\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000000004\nSigCgt:\t0000000000080002\n", 20)
	f.Add("SigIgn:\t0\nSigCgt:\t0\n", 64)
	f.Add("SigIgn:\tffffffffffffffff\nSigCgt:\tffffffffffffffff\n", 1)
	f.Add("SigIgn:\t10000000000000000\nSigCgt:\t0\n", 9) // 65 bits
	f.Add("SigCgt:\t0\nSigCgt:\t0\n", 20)                // one line twice, the other missing
	f.Add("Name:\tSigCgt:\t0\nSigIgn:\t0\n", 20)         // a process named to look like a mask
	f.Add("SigIgn:\t-1\nSigCgt:\t0x1\n", 20)
	f.Add("SigIgn:\t\nSigCgt:\t \n", 20)
	f.Add(strings.Repeat("x", 70000)+"\nSigIgn:\t0\nSigCgt:\t0\n", 20) // a line over the scanner's limit
	f.Add("SigIgn:\t0\nSigCgt:\t0\n", 0)
	f.Add("SigIgn:\t0\nSigCgt:\t0\n", 65)
	f.Add("SigIgn:\t0\nSigCgt:\t0\n", -9)
	f.Fuzz(func(t *testing.T, status string, sig int) {
		isDefault, err := parseSignalDisposition(strings.NewReader(status), syscall.Signal(sig))
		if sig < 1 || sig > 64 {
			if err == nil {
				t.Fatalf("signal %d accepted", sig)
			}
			return
		}
		if err != nil {
			if isDefault {
				t.Fatalf("error %v with isDefault", err)
			}
			return
		}
		if !isDefault {
			return
		}
		bit := uint64(1) << (sig - 1)
		for line := range strings.Lines(status) {
			key, value, ok := strings.Cut(strings.TrimRight(line, "\r\n"), ":")
			if !ok || (key != "SigCgt" && key != "SigIgn") {
				continue
			}
			if m, err := strconv.ParseUint(strings.TrimSpace(value), 16, 64); err == nil && m&bit != 0 {
				t.Fatalf("signal %d reported default though %s has its bit: %q", sig, key, status)
			}
		}
	})
}

// FuzzSignalDispositionMasks builds status files from masks, with a name the process chose
// in front: the answer must be what the masks say.
func FuzzSignalDispositionMasks(f *testing.F) {
	f.Add("sh", uint64(0x4), uint64(0x80002), uint8(20))
	f.Add("SigCgt:\tffffffffffffffff", uint64(0), uint64(0), uint8(20))
	f.Add("a) R 1 (b", uint64(1)<<63, uint64(0), uint8(64))
	f.Add("x\\nSigIgn:\t1", uint64(0), uint64(0), uint8(1))
	f.Fuzz(func(t *testing.T, name string, ign, cgt uint64, s uint8) {
		sig := int(s%64) + 1
		// The kernel escapes a name's newlines (and backslashes) in status.
		name = strings.NewReplacer("\\", "\\\\", "\n", "\\n").Replace(name)
		status := fmt.Sprintf("Name:\t%s\nUmask:\t0022\nSigQ:\t0/63417\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\n"+
			"SigBlk:\t0000000000000000\nSigIgn:\t%016x\nSigCgt:\t%016x\nCapInh:\t0000000000000000\n", name, ign, cgt)
		isDefault, err := parseSignalDisposition(strings.NewReader(status), syscall.Signal(sig))
		if len(status) > 60000 {
			return // past bufio.Scanner's line limit; not a name the kernel allows (16 bytes)
		}
		if err != nil {
			t.Fatalf("status %q: %v", status, err)
		}
		if want := (ign|cgt)&(1<<(sig-1)) == 0; isDefault != want {
			t.Fatalf("signal %d, SigIgn %x, SigCgt %x: default = %v, want %v", sig, ign, cgt, isDefault, want)
		}
	})
}

// FuzzParseStatusIdentity reads any status text: no panic, an accepted umask is a
// permission mask, and well-formed Uid:/Gid: lines give their effective ids.
func FuzzParseStatusIdentity(f *testing.F) {
	f.Add("Name:\tbash\nUmask:\t0027\nUid:\t1000\t1001\t1001\t1001\nGid:\t100\t200\t200\t200\nGroups:\t4 24 100 \n")
	f.Add("Umask:\t0022\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n")
	f.Add("Umask:\t01000\nUid:\t1\t1\nGid:\t1\t1\n")
	f.Add("Umask:\t0022\nUid:\t1\t4294967296\nGid:\t1\t1\n")
	f.Add("Umask:\t0022\nUid:\t1\nGid:\t1\t1\n")
	f.Add("Name:\tUid:\t0\t0\t0\t0\nUmask:\t0022\nUid:\t1000\t1000\t1000\t1000\nGid:\t1\t1\n")
	f.Add("Umask:\t-1\nUid:\t1\t-1\nGid:\t1\t+1\nGroups:\t-5\n")
	f.Add("Umask:\t0022\nUid:\t1\t1\nGid:\t1\t1\nUid:\t0\t0\n") // a second Uid: line
	f.Add("")
	f.Fuzz(func(t *testing.T, status string) {
		id, err := parseStatusIdentity(strings.NewReader(status))
		if err != nil {
			if id.UID != 0 || id.GID != 0 || id.Umask != 0 || id.Groups != nil {
				t.Fatalf("error %v with identity %+v", err, id)
			}
			return
		}
		if id.Umask < 0 || id.Umask > 0o777 {
			t.Fatalf("%q: umask %o", status, id.Umask)
		}
		for _, key := range []string{"Uid", "Gid", "Umask"} {
			if !strings.Contains(status, key+":") {
				t.Fatalf("%q accepted without %s:", status, key)
			}
		}
	})
}

// FuzzScanComm lists a fake /proc whose process has a name, command line and cgroup file of
// its choosing, as any user's process can: the listing must keep the kernel's fields apart
// from the name (pid 42, parent 1, state S) however the name is made, e.g. "a) R 1 (b".
func FuzzScanComm(f *testing.F) {
	f.Add("my daemon", []byte("/usr/bin/my-daemon\x00--flag\x00value with space\x00"), "0::/ssi/run-1\n")
	f.Add("a) R 1 (b", []byte(""), "0::/\n")
	f.Add(") Z 0 0 0 (", []byte("\x00\x00"), "4:memory:/x\n0::/a\n0::/b\n")
	f.Add("(", []byte("x"), "")
	f.Add("x\ny", []byte("a\x00\x00b"), "0::")
	f.Add("))))", []byte("\xff\xfe"), "0::/0::/x")
	f.Fuzz(func(t *testing.T, comm string, cmdline []byte, cgroupFile string) {
		// The kernel keeps at most 15 bytes of a name, never a NUL; leave room to spare.
		if len(comm) > 64 || strings.ContainsRune(comm, 0) || len(cmdline) > 4096 || len(cgroupFile) > 4096 {
			return
		}
		root := t.TempDir()
		files := map[string]string{
			"uptime":     "1000.00 1800.00\n",
			"42/stat":    "42 (" + comm + ") S 1 42 42 0 -1 4194560 100 0 0 0 2000 500 0 0 20 0 1 0 50000 1000000 256 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n",
			"42/status":  "Name:\t" + strings.NewReplacer("\\", "\\\\", "\n", "\\n").Replace(comm) + "\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t1000\t1001\t1001\t1001\nGid:\t100\t100\t100\t100\n",
			"42/cmdline": string(cmdline),
			"42/cgroup":  cgroupFile,
		}
		writeFiles(t, root, files)
		infos, err := Scan(root)
		if err != nil {
			t.Fatal(err)
		}
		if len(infos) != 1 {
			t.Fatalf("comm %q: %d processes listed, want 1", comm, len(infos))
		}
		got := infos[0]
		if got.PID != 42 || got.PPID != 1 || got.State != "Ss" || got.UID != 1001 || got.Comm != comm {
			t.Fatalf("comm %q confused the listing: %+v", comm, got)
		}
		if args := strings.TrimRight(string(cmdline), "\x00"); len(cmdline) > 0 {
			if want := strings.ReplaceAll(args, "\x00", " "); got.Command != want {
				t.Fatalf("cmdline %q: Command %q, want %q", cmdline, got.Command, want)
			}
		} else if got.Command != "["+comm+"]" {
			t.Fatalf("no cmdline: Command %q, want [%s]", got.Command, comm)
		}
		// A cgroup's path may hold a newline (mkdir in a delegated subtree): the path must
		// still come from one line, the first unified ("0::") one.
		if strings.Contains(got.Cgroup, "\n") || got.Cgroup != "" &&
			!strings.Contains(cgroupFile, "0::"+got.Cgroup) && !strings.Contains(cgroupFile, "0::/"+got.Cgroup) {
			t.Fatalf("cgroup file %q: Cgroup %q", cgroupFile, got.Cgroup)
		}
	})
}

// FuzzMergeEnv merges a requester's environment with the agent's own variables: each name
// must come out once, the agent's settings must win, and lookupEnv must agree with it.
func FuzzMergeEnv(f *testing.F) {
	f.Add("PATH=/usr/bin\x00HOME=/root", "SSI_NODE=1")
	f.Add("SSI_NODE=999\x00SSI_NODE\x00=x\x00==\x00PATH", "SSI_NODE=2\x00SSI_PARENT_GPID=20000001")
	f.Add("", "")
	f.Add("A=1\x00A=2\x00A", "B=3")
	f.Add("PATH=/evil\x00PATH=/usr/bin", "PATH=/sbin")
	f.Fuzz(func(t *testing.T, envs, extras string) {
		env := strings.Split(envs, "\x00")
		extra := strings.Split(extras, "\x00")
		out := mergeEnv(env, extra...)
		seen := map[string]bool{}
		for _, kv := range out {
			name, _, _ := strings.Cut(kv, "=")
			if seen[name] {
				t.Fatalf("mergeEnv(%q, %q) = %q: %q twice", env, extra, out, name)
			}
			seen[name] = true
		}
		last := map[string]string{}
		for _, kv := range append(append([]string{}, env...), extra...) {
			name, _, _ := strings.Cut(kv, "=")
			last[name] = kv
		}
		for name, kv := range last {
			if !seen[name] {
				t.Fatalf("mergeEnv(%q, %q) = %q lost %q", env, extra, out, name)
			}
			_, value, hasValue := strings.Cut(kv, "=")
			got, ok := lookupEnv(out, name)
			if hasValue && (!ok || got != value) {
				t.Fatalf("mergeEnv(%q, %q) = %q: %s is %q, %v, want %q", env, extra, out, name, got, ok, value)
			}
		}
		if len(out) != len(last) {
			t.Fatalf("mergeEnv(%q, %q) = %q: %d entries for %d names", env, extra, out, len(out), len(last))
		}
	})
}
