package proc

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Identity is who a process runs as, in the terms Start needs.
type Identity struct {
	UID, GID uint32
	Groups   []uint32 // supplementary groups
	Umask    int
}

// IdentityOf reads the effective uid and gid, supplementary groups and umask of pid from
// /proc/<pid>/status. The agent uses it on the peer pid of a client connection
// (SO_PEERCRED), so the work runs with exactly the groups and umask the client has now,
// including groups gained with newgrp or sg that the user database does not show.
func IdentityOf(pid int) (Identity, error) {
	f, err := os.Open(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return Identity{}, fmt.Errorf("read identity of pid %d: %w", pid, err)
	}
	defer f.Close()
	id, err := parseStatusIdentity(f)
	if err != nil {
		return Identity{}, fmt.Errorf("read identity of pid %d: %w", pid, err)
	}
	return id, nil
}

// UmaskOf returns the umask of pid from the "Umask:" line of /proc/<pid>/status.
func UmaskOf(pid int) (int, error) {
	id, err := IdentityOf(pid)
	return id.Umask, err
}

// parseStatusIdentity reads the Uid:, Gid:, Groups: and Umask: lines of a proc status file.
// Uid: and Gid: list real, effective, saved and filesystem ids; the effective one counts.
func parseStatusIdentity(r io.Reader) (Identity, error) {
	var id Identity
	var seen struct{ uid, gid, umask bool }
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(value)
		switch key {
		case "Uid", "Gid":
			if len(fields) < 2 {
				return Identity{}, fmt.Errorf("malformed %s: line %q", key, sc.Text())
			}
			v, err := strconv.ParseUint(fields[1], 10, 32)
			if err != nil {
				return Identity{}, fmt.Errorf("malformed %s: line %q", key, sc.Text())
			}
			if key == "Uid" {
				id.UID, seen.uid = uint32(v), true
			} else {
				id.GID, seen.gid = uint32(v), true
			}
		case "Groups":
			for _, f := range fields {
				v, err := strconv.ParseUint(f, 10, 32)
				if err != nil {
					return Identity{}, fmt.Errorf("malformed Groups: line %q", sc.Text())
				}
				id.Groups = append(id.Groups, uint32(v))
			}
		case "Umask":
			if len(fields) != 1 {
				return Identity{}, fmt.Errorf("malformed Umask: line %q", sc.Text())
			}
			v, err := strconv.ParseUint(fields[0], 8, 32)
			if err != nil || v > 0o777 {
				return Identity{}, fmt.Errorf("malformed Umask: line %q", sc.Text())
			}
			id.Umask, seen.umask = int(v), true
		}
	}
	if err := sc.Err(); err != nil {
		return Identity{}, err
	}
	if !seen.uid || !seen.gid || !seen.umask {
		return Identity{}, errors.New("status lacks Uid:, Gid: or Umask: (Umask: needs Linux 4.7 or later)")
	}
	return id, nil
}

// UserName returns the login name of uid, or the uid in decimal if it has none (as ps does).
func UserName(uid uint32) string {
	if u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10)); err == nil {
		return u.Username
	}
	// os/user may have failed for a reason other than an unknown uid (a broken NSS module
	// under cgo); the files are the last word.
	if name, _, err := lookupPasswd("/etc/passwd", uid); err == nil {
		return name
	}
	return strconv.FormatUint(uint64(uid), 10)
}

// Groups returns the group list a login of uid with primary group gid gets: gid first, then
// every group of the user database listing the user as a member. It uses os/user and falls
// back to reading /etc/passwd and /etc/group itself when os/user fails.
// Prefer IdentityOf(peerPID) when the caller is a live process: it reflects newgrp and sg.
func Groups(uid uint32, gid uint32) ([]uint32, error) {
	groups, err := groupsFromOSUser(uid)
	if err != nil {
		groups, err = groupsFromFiles("/etc/passwd", "/etc/group", uid)
	}
	if err != nil {
		return nil, fmt.Errorf("look up groups of uid %d: %w", uid, err)
	}
	out := []uint32{gid}
	for _, g := range groups {
		if !slices.Contains(out, g) {
			out = append(out, g)
		}
	}
	return out, nil
}

func groupsFromOSUser(uid uint32) ([]uint32, error) {
	u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
	if err != nil {
		return nil, err
	}
	ids, err := u.GroupIds()
	if err != nil {
		return nil, err
	}
	out := make([]uint32, 0, len(ids))
	for _, s := range ids {
		v, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("group id %q is not numeric", s)
		}
		out = append(out, uint32(v))
	}
	return out, nil
}

func groupsFromFiles(passwdPath, groupPath string, uid uint32) ([]uint32, error) {
	name, primary, err := lookupPasswd(passwdPath, uid)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(groupPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	member, err := parseGroupMembership(f, name)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", groupPath, err)
	}
	return append([]uint32{primary}, member...), nil
}

func lookupPasswd(path string, uid uint32) (name string, gid uint32, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	name, gid, err = parsePasswd(f, uid)
	if err != nil {
		return "", 0, fmt.Errorf("read %s: %w", path, err)
	}
	return name, gid, nil
}

// parsePasswd finds uid in passwd(5) lines "name:x:uid:gid:gecos:home:shell".
func parsePasswd(r io.Reader, uid uint32) (name string, gid uint32, err error) {
	want := strconv.FormatUint(uint64(uid), 10)
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) < 4 || strings.HasPrefix(fields[0], "#") || fields[2] != want {
			continue
		}
		g, err := strconv.ParseUint(fields[3], 10, 32)
		if err != nil {
			continue
		}
		return fields[0], uint32(g), nil
	}
	if err := sc.Err(); err != nil {
		return "", 0, err
	}
	return "", 0, fmt.Errorf("no user with uid %d", uid)
}

// parseGroupMembership returns the gids of group(5) lines "name:x:gid:user1,user2" that list
// user as a member.
func parseGroupMembership(r io.Reader, userName string) ([]uint32, error) {
	var out []uint32
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) < 4 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		if !slices.Contains(strings.Split(fields[3], ","), userName) {
			continue
		}
		g, err := strconv.ParseUint(fields[2], 10, 32)
		if err != nil {
			continue
		}
		out = append(out, uint32(g))
	}
	return out, sc.Err()
}

// NiceOf returns the nice value of pid (-20 to 19), field 19 of /proc/<pid>/stat, which the
// kernel vouches for as it does the uid.
func NiceOf(pid int) (int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	return parseStatNice(string(b))
}

// parseStatNice reads the nice field of a /proc/<pid>/stat line; the command name before it
// is in parentheses and may hold anything, so fields are counted from the last ')'.
func parseStatNice(stat string) (int, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("malformed stat: no command name")
	}
	f := strings.Fields(stat[i+1:])
	const niceField = 19 - 3 // fields counted from 1; after ')' comes field 3, the state
	if len(f) <= niceField {
		return 0, fmt.Errorf("malformed stat: %d fields after the command name", len(f))
	}
	n, err := strconv.Atoi(f[niceField])
	if err != nil || n < -20 || n > 19 {
		return 0, fmt.Errorf("malformed stat: nice %q", f[niceField])
	}
	return n, nil
}
