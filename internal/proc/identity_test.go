package proc

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestParseStatusIdentity(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Identity
		wantErr bool
	}{
		{
			name: "full",
			in:   "Name:\tbash\nUmask:\t0027\nUid:\t1000\t1001\t1001\t1001\nGid:\t100\t200\t200\t200\nGroups:\t4 24 100 \n",
			want: Identity{UID: 1001, GID: 200, Groups: []uint32{4, 24, 100}, Umask: 0o027},
		},
		{
			name: "no groups",
			in:   "Umask:\t0000\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n",
			want: Identity{Umask: 0},
		},
		{name: "no umask (old kernel)", in: "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n", wantErr: true},
		{name: "bad umask", in: "Umask:\t9\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n", wantErr: true},
		{name: "bad uid", in: "Umask:\t0022\nUid:\tx\ty\nGid:\t0\t0\t0\t0\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStatusIdentity(strings.NewReader(tt.in))
			if tt.wantErr {
				if err == nil {
					t.Fatalf("got %+v, want an error", got)
				}
				return
			}
			if err != nil || got.UID != tt.want.UID || got.GID != tt.want.GID || got.Umask != tt.want.Umask || !slices.Equal(got.Groups, tt.want.Groups) {
				t.Fatalf("got %+v, %v, want %+v", got, err, tt.want)
			}
		})
	}
}

func TestIdentityOfSelf(t *testing.T) {
	id, err := IdentityOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if id.UID != uint32(os.Geteuid()) || id.GID != uint32(os.Getegid()) {
		t.Errorf("IdentityOf(self) = %+v, want uid %d gid %d", id, os.Geteuid(), os.Getegid())
	}
	if _, err := IdentityOf(-1); err == nil {
		t.Error("IdentityOf(-1) succeeded")
	}
}

const testPasswd = `# comment
root:x:0:0:root:/root:/bin/bash
alice:x:1000:1000:Alice:/home/alice:/bin/bash
broken:x:1001:notanumber::/:/bin/sh
bob:x:1002:100::/home/bob:/bin/sh
`

const testGroup = `root:x:0:
users:x:100:alice,carol
alice:x:1000:
wheel:x:10:bob,alice
audio:x:29:alicette
`

func TestParsePasswdAndGroup(t *testing.T) {
	tests := []struct {
		uid        uint32
		wantName   string
		wantGID    uint32
		wantMember []uint32
		wantErr    bool
	}{
		{uid: 0, wantName: "root", wantGID: 0},
		{uid: 1000, wantName: "alice", wantGID: 1000, wantMember: []uint32{100, 10}},
		{uid: 1002, wantName: "bob", wantGID: 100, wantMember: []uint32{10}},
		{uid: 1001, wantErr: true},
		{uid: 4242, wantErr: true},
	}
	for _, tt := range tests {
		name, gid, err := parsePasswd(strings.NewReader(testPasswd), tt.uid)
		if tt.wantErr {
			if err == nil {
				t.Errorf("uid %d: got %q, want an error", tt.uid, name)
			}
			continue
		}
		if err != nil || name != tt.wantName || gid != tt.wantGID {
			t.Errorf("uid %d: parsePasswd = %q %d %v, want %q %d", tt.uid, name, gid, err, tt.wantName, tt.wantGID)
		}
		member, err := parseGroupMembership(strings.NewReader(testGroup), name)
		if err != nil || !slices.Equal(member, tt.wantMember) {
			t.Errorf("%s: groups %v, %v, want %v", name, member, err, tt.wantMember)
		}
	}
}

func TestGroupsFromFiles(t *testing.T) {
	dir := t.TempDir()
	passwd, group := filepath.Join(dir, "passwd"), filepath.Join(dir, "group")
	if err := os.WriteFile(passwd, []byte(testPasswd), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(group, []byte(testGroup), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := groupsFromFiles(passwd, group, 1000)
	if err != nil || !slices.Equal(got, []uint32{1000, 100, 10}) {
		t.Errorf("groupsFromFiles(alice) = %v, %v, want [1000 100 10]", got, err)
	}
}

func TestGroupsPutsPrimaryFirst(t *testing.T) {
	got, err := Groups(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) == 0 || got[0] != 0 {
		t.Errorf("Groups(root) = %v, want gid 0 first", got)
	}
	if got, err := Groups(65534, 12345); err != nil || got[0] != 12345 {
		t.Errorf("Groups(nobody, 12345) = %v, %v, want 12345 first", got, err)
	}
	if UserName(0) != "root" || UserName(4_000_000) != "4000000" {
		t.Errorf("UserName(0) = %q, UserName(4000000) = %q", UserName(0), UserName(4_000_000))
	}
}

func TestParseStatNice(t *testing.T) {
	for stat, want := range map[string]int{
		"42 (sleep) S 1 42 42 0 -1 4194304 85 0 0 0 0 0 0 0 20 0 1 0 12345 2351104 128":     0,
		"42 (a) b) (c) S 1 42 42 0 -1 4194304 85 0 0 0 0 0 0 0 39 19 1 0 12345 2351104 128": 19,
		"42 (x) R 1 42 42 0 -1 4194304 85 0 0 0 0 0 0 0 0 -20 1 0 12345 2351104 128":        -20,
	} {
		if got, err := parseStatNice(stat); err != nil || got != want {
			t.Errorf("parseStatNice(%q) = %d, %v; want %d", stat, got, err, want)
		}
	}
	for _, bad := range []string{"", "42 (x) R 1 2", "42 (x) R 1 42 42 0 -1 4194304 85 0 0 0 0 0 0 0 0 nice 1"} {
		if _, err := parseStatNice(bad); err == nil {
			t.Errorf("parseStatNice(%q): no error", bad)
		}
	}
}
