package fs

import (
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/fs/fspb"
)

// fileID is an object's identity on its owner, usable as a map key.
type fileID struct {
	dev, ino uint64
	btime    int64
}

func idFromPB(p *fspb.FileID) fileID {
	if p == nil {
		return fileID{}
	}
	return fileID{dev: p.Dev, ino: p.Ino, btime: p.Btime}
}

func (id fileID) pb() *fspb.FileID {
	return &fspb.FileID{Dev: id.dev, Ino: id.ino, Btime: id.btime}
}

const statxMask = unix.STATX_BASIC_STATS | unix.STATX_BTIME

// statAt stats the resolved object without following a final symlink.
func statAt(r resolved, st *unix.Statx_t) syscall.Errno {
	name, flags := r.at()
	return errnoOf(unix.Statx(r.dir, name, flags|unix.AT_STATX_SYNC_AS_STAT, statxMask, st))
}

func statFD(fd int, st *unix.Statx_t) syscall.Errno {
	return errnoOf(unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW|unix.AT_STATX_SYNC_AS_STAT, statxMask, st))
}

func statxID(st *unix.Statx_t) fileID {
	id := fileID{dev: unix.Mkdev(st.Dev_major, st.Dev_minor), ino: st.Ino}
	if st.Mask&unix.STATX_BTIME != 0 {
		id.btime = st.Btime.Sec*1e9 + int64(st.Btime.Nsec)
	}
	return id
}

func attrFromStatx(st *unix.Statx_t) *fspb.Attr {
	return &fspb.Attr{
		Id:        statxID(st).pb(),
		Mode:      uint32(st.Mode),
		Nlink:     st.Nlink,
		Uid:       st.Uid,
		Gid:       st.Gid,
		Rdev:      unix.Mkdev(st.Rdev_major, st.Rdev_minor),
		Size:      int64(st.Size),
		Blocks:    int64(st.Blocks),
		Blksize:   st.Blksize,
		AtimeSec:  st.Atime.Sec,
		AtimeNsec: st.Atime.Nsec,
		MtimeSec:  st.Mtime.Sec,
		MtimeNsec: st.Mtime.Nsec,
		CtimeSec:  st.Ctime.Sec,
		CtimeNsec: st.Ctime.Nsec,
	}
}

// pseudoFS are file systems whose files report sizes that say nothing about their content and
// change without notice: clients must not cache their data.
var pseudoFS = map[int64]bool{
	unix.PROC_SUPER_MAGIC:    true,
	unix.SYSFS_MAGIC:         true,
	unix.DEBUGFS_MAGIC:       true,
	unix.TRACEFS_MAGIC:       true,
	unix.SECURITYFS_MAGIC:    true,
	unix.CGROUP_SUPER_MAGIC:  true,
	unix.CGROUP2_SUPER_MAGIC: true,
	unix.BPF_FS_MAGIC:        true,
	unix.PSTOREFS_MAGIC:      true,
	unix.EFIVARFS_MAGIC:      true,
	unix.BINFMTFS_MAGIC:      true,
	unix.SELINUX_MAGIC:       true,
	unix.SMACK_MAGIC:         true,
	unix.NSFS_MAGIC:          true,
	unix.DEVPTS_SUPER_MAGIC:  true,
	0x65735543:               true, // fusectl
	0x62656570:               true, // configfs
}

// isDevice reports whether mode is a character or block device: its I/O must go to the owner.
func isDevice(mode uint32) bool {
	t := mode & syscall.S_IFMT
	return t == syscall.S_IFCHR || t == syscall.S_IFBLK
}
