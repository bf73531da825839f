package fs

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// diskEvent is a change made on the owner's disk, not through the file server.
type diskEvent struct {
	dir  fileID
	name string // "" when the directory itself changed
	mask uint64
	// A rename (FAN_RENAME) from dir/name to where, when that directory is watched too.
	to     fileID
	toName string
}

// diskWatcher reports changes that other processes make on the owner's disk to the directories
// that clients have looked into. It uses fanotify with directory file handles and thread ids.
// Objects in file systems without file handle support (/proc, /sys, other FUSE mounts) are not
// watched; clients do not cache them for long.
//
// The file server's own changes are already pushed to clients synchronously and must not come
// back as events. A change is made on a locked thread between enter and leave; both drain the
// event queue under a lock, so every event that thread causes meanwhile is read while the thread
// is known to be inside a change, and events it caused before or after are not.
type diskWatcher struct {
	log   *slog.Logger
	file  *os.File
	fd    int
	apply func(events []diskEvent, overflow bool)
	limit int

	mu       sync.Mutex
	mask     uint64
	byID     map[fileID]bool // marked (true) or not markable (false)
	byHandle map[string]fileID

	queueMu  sync.Mutex // held while reading the queue
	changing map[int32]int
	buf      []byte

	closing atomic.Bool
	done    chan struct{}
}

const watchMask = unix.FAN_MODIFY | unix.FAN_ATTRIB | unix.FAN_CREATE | unix.FAN_DELETE |
	unix.FAN_MOVED_FROM | unix.FAN_MOVED_TO | unix.FAN_DELETE_SELF | unix.FAN_MOVE_SELF |
	unix.FAN_ONDIR | unix.FAN_EVENT_ON_CHILD | unix.FAN_RENAME

// FAN_RENAME (Linux 5.17) names both ends of a rename in one event, which lets clients follow a
// directory moved on the owner's disk; older kernels refuse the mark with it.
const watchMaskBefore517 = watchMask &^ unix.FAN_RENAME

func newDiskWatcher(log *slog.Logger, apply func([]diskEvent, bool)) (*diskWatcher, error) {
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_NOTIF|unix.FAN_CLOEXEC|unix.FAN_NONBLOCK|
		unix.FAN_REPORT_DFID_NAME|unix.FAN_REPORT_TID, unix.O_RDONLY)
	if err != nil {
		return nil, fmt.Errorf("fanotify_init: %w", err)
	}
	limit := 65536
	if b, err := os.ReadFile("/proc/sys/fs/fanotify/max_user_marks"); err == nil {
		var n int
		if _, err := fmt.Sscan(string(b), &n); err == nil && n/2 < limit {
			limit = n / 2
		}
	}
	w := &diskWatcher{
		log:      log,
		file:     os.NewFile(uintptr(fd), "fanotify"),
		fd:       fd,
		apply:    apply,
		limit:    limit,
		mask:     watchMask,
		byID:     make(map[fileID]bool),
		byHandle: make(map[string]fileID),
		changing: make(map[int32]int),
		buf:      make([]byte, 64<<10),
		done:     make(chan struct{}),
	}
	go w.read()
	return w, nil
}

func (w *diskWatcher) close() {
	w.closing.Store(true)
	w.file.Close()
	<-w.done
}

func (w *diskWatcher) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.byHandle)
}

// watched reports whether dir is already known to be watched, without marking it.
func (w *diskWatcher) known(dir fileID) (watched, known bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	watched, known = w.byID[dir]
	return
}

// watch marks the directory fd refers to (identity id) and reports whether changes in it are
// now reported. It must run with the agent's own credentials: the file server's worker threads
// call it through a fresh goroutine.
func (w *diskWatcher) watch(fd int, id fileID) bool {
	if watched, known := w.known(id); known {
		return watched
	}
	key, err := handleKey(fd)
	ok := err == nil
	w.mu.Lock()
	full := len(w.byHandle) >= w.limit
	mask := w.mask
	w.mu.Unlock()
	if ok && !full {
		err = unix.FanotifyMark(w.fd, unix.FAN_MARK_ADD, mask, unix.AT_FDCWD, procFD(fd))
		if err == unix.EINVAL && mask == watchMask {
			mask = watchMaskBefore517
			err = unix.FanotifyMark(w.fd, unix.FAN_MARK_ADD, mask, unix.AT_FDCWD, procFD(fd))
			if err == nil {
				w.mu.Lock()
				w.mask = mask
				w.mu.Unlock()
			}
		}
		ok = err == nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if full {
		// Not remembered as unmarkable: a slot may free up when directories go away.
		return false
	}
	w.byID[id] = ok
	if ok {
		w.byHandle[key] = id
	}
	return ok
}

// handleKey is how fanotify names a directory in its events: file system id and file handle.
func handleKey(fd int) (string, error) {
	h, _, err := unix.NameToHandleAt(fd, "", unix.AT_EMPTY_PATH)
	if err != nil {
		return "", err
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		return "", err
	}
	return fidKey(sfs.Fsid.Val, uint32(h.Type()), h.Bytes()), nil
}

func fidKey(fsid [2]int32, htype uint32, handle []byte) string {
	b := make([]byte, 0, 12+len(handle))
	b = binary.LittleEndian.AppendUint32(b, uint32(fsid[0]))
	b = binary.LittleEndian.AppendUint32(b, uint32(fsid[1]))
	b = binary.LittleEndian.AppendUint32(b, htype)
	return string(append(b, handle...))
}

func (w *diskWatcher) read() {
	defer close(w.done)
	raw, err := w.file.SyscallConn()
	if err != nil {
		w.log.Warn("disk watcher stopped: changes made directly on this node's disk are no longer pushed to clients", "err", err)
		return
	}
	err = raw.Read(func(uintptr) bool {
		w.drain(0, 0)
		return false // wait for more
	})
	if !w.closing.Load() {
		w.log.Warn("disk watcher stopped: changes made directly on this node's disk are no longer pushed to clients", "err", err)
	}
}

// enter and leave bracket a change the file server makes on thread tid.
func (w *diskWatcher) enter(tid int32) { w.drain(tid, +1) }
func (w *diskWatcher) leave(tid int32) { w.drain(tid, -1) }

// drain reads every queued event and passes on those the file server did not cause, then
// counts thread tid in (+1) or out (-1) of a change.
func (w *diskWatcher) drain(tid int32, delta int) {
	var events []diskEvent
	overflow := false
	w.queueMu.Lock()
	for {
		n, err := unix.Read(w.fd, w.buf)
		if err != nil || n <= 0 {
			break
		}
		e, o := w.parse(w.buf[:n])
		events = append(events, e...)
		overflow = overflow || o
	}
	if delta != 0 {
		if w.changing[tid] += delta; w.changing[tid] <= 0 {
			delete(w.changing, tid)
		}
	}
	w.queueMu.Unlock()
	if len(events) > 0 || overflow {
		w.apply(events, overflow)
	}
}

// parse decodes a buffer of fanotify events, keeping those on watched directories that the
// file server did not cause itself. Called with queueMu held.
func (w *diskWatcher) parse(buf []byte) (events []diskEvent, overflow bool) {
	for len(buf) >= int(unsafe.Sizeof(unix.FanotifyEventMetadata{})) {
		meta := (*unix.FanotifyEventMetadata)(unsafe.Pointer(&buf[0]))
		if meta.Event_len < uint32(meta.Metadata_len) || int(meta.Event_len) > len(buf) {
			break
		}
		event := buf[:meta.Event_len]
		buf = buf[meta.Event_len:]
		if meta.Fd >= 0 {
			unix.Close(int(meta.Fd))
		}
		if meta.Mask&unix.FAN_Q_OVERFLOW != 0 {
			overflow = true
			continue
		}
		own := w.changing[meta.Pid] > 0
		records := parseFIDRecords(event[meta.Metadata_len:])
		if meta.Mask&unix.FAN_RENAME != 0 {
			if e, ok := w.renamed(records); ok && !own {
				events = append(events, e)
			}
			continue
		}
		for _, rec := range records {
			w.mu.Lock()
			dir, ok := w.byHandle[rec.key]
			if ok && meta.Mask&unix.FAN_DELETE_SELF != 0 && (rec.name == "" || rec.name == ".") {
				// The kernel dropped the mark with the directory.
				delete(w.byHandle, rec.key)
				delete(w.byID, dir)
			}
			w.mu.Unlock()
			if !ok || own {
				continue
			}
			name := rec.name
			if name == "." {
				name = ""
			}
			events = append(events, diskEvent{dir: dir, name: name, mask: meta.Mask})
		}
	}
	return events, overflow
}

// renamed makes the event of a rename from its old and new directory records; only renames out
// of a watched directory matter (the MOVED_TO event tells the new one of its new name).
func (w *diskWatcher) renamed(records []fidRecord) (diskEvent, bool) {
	var from, to *fidRecord
	for i := range records {
		switch records[i].kind {
		case unix.FAN_EVENT_INFO_TYPE_OLD_DFID_NAME:
			from = &records[i]
		case unix.FAN_EVENT_INFO_TYPE_NEW_DFID_NAME:
			to = &records[i]
		}
	}
	if from == nil || to == nil || from.name == "" || to.name == "" {
		return diskEvent{}, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	dir, ok := w.byHandle[from.key]
	if !ok {
		return diskEvent{}, false
	}
	e := diskEvent{dir: dir, name: from.name, mask: unix.FAN_RENAME}
	if newDir, ok := w.byHandle[to.key]; ok {
		e.to, e.toName = newDir, to.name
	}
	return e, true
}

type fidRecord struct {
	kind uint8 // FAN_EVENT_INFO_TYPE_*
	key  string
	name string
}

// parseFIDRecords decodes the directory file handle (and entry name) records of one event.
// It is defensive: the buffer comes from the kernel, but a malformed record must not crash.
func parseFIDRecords(b []byte) []fidRecord {
	var out []fidRecord
	for len(b) >= 4 {
		infoType := b[0]
		length := int(binary.LittleEndian.Uint16(b[2:4]))
		if length < 4 || length > len(b) {
			break
		}
		rec := b[:length]
		b = b[length:]
		named := infoType == unix.FAN_EVENT_INFO_TYPE_DFID_NAME ||
			infoType == unix.FAN_EVENT_INFO_TYPE_OLD_DFID_NAME || infoType == unix.FAN_EVENT_INFO_TYPE_NEW_DFID_NAME
		if !named && infoType != unix.FAN_EVENT_INFO_TYPE_DFID {
			continue
		}
		// header(4) fsid(8) handle_bytes(4) handle_type(4) f_handle[handle_bytes] name\0
		if len(rec) < 20 {
			continue
		}
		fsid := [2]int32{int32(binary.LittleEndian.Uint32(rec[4:8])), int32(binary.LittleEndian.Uint32(rec[8:12]))}
		hlen := int(binary.LittleEndian.Uint32(rec[12:16]))
		htype := binary.LittleEndian.Uint32(rec[16:20])
		if hlen < 0 || 20+hlen > len(rec) {
			continue
		}
		r := fidRecord{kind: infoType, key: fidKey(fsid, htype, rec[20:20+hlen])}
		if named {
			name := rec[20+hlen:]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			r.name = string(name)
		}
		out = append(out, r)
	}
	return out
}
