package fs

import (
	"context"
	"strconv"
	"syscall"
	"time"
	"unsafe"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

var _ fusefs.NodeSetattrer = (*node)(nil)

// Setattr changes mode, owner, size and times. Through an open handle it
// uses the handle's descriptor (the file may be unlinked); otherwise the
// path. A size change goes through the inode's file state, so a truncate by
// path and writes through open handles are serialised (gocryptfs once
// corrupted files in this race).
func (n *node) Setattr(ctx context.Context, fh fusefs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if n.r.opts.ReadOnly {
		return syscall.EROFS
	}
	t := setattrTarget{n: n, hfd: -1}
	t.f, _ = fh.(*file)
	if t.f == nil {
		// tar and cp -p change an open file's times, owner and mode
		// (futimens, fchown, fchmod), which the kernel sends without a
		// handle: use one of the inode's own, sparing an O_PATH open
		// and its close. Its name must still lead to it, as for
		// openChecked: a node whose name now names another object
		// answers ESTALE, whatever it holds open. (A size change opens
		// a descriptor of its own, writable, in truncate.)
		if _, size := in.GetSize(); !size {
			if fd, done, ok := n.borrowFd(); ok {
				defer done()
				pfd, name, err := n.parentAt()
				switch _, parent := n.Parent(); {
				case err == nil:
					err = n.checkSame(pfd, name)
				case parent == nil && !n.isRoot():
					// Unlinked (or made with O_TMPFILE): no name to
					// check, and the handle's descriptor is n's own.
					err = nil
				}
				if err != nil {
					return n.r.errno(err, "setattr", n.relPath())
				}
				t.hfd = fd
			}
		}
	}
	if t.f == nil && t.hfd < 0 {
		ofd, err := n.openChecked()
		if err != nil {
			return n.r.errno(err, "setattr", n.relPath())
		}
		defer unix.Close(ofd)
		t.ofd = ofd
	}
	for _, step := range []struct {
		op string
		do func(*fuse.SetAttrIn) error
	}{
		{"chmod", t.setMode},
		{"chown", t.setOwner},
		// Size before times, so an explicit mtime is not clobbered.
		{"truncate", t.setSize},
		{"clear set-id bits", t.killPriv},
		{"utimens", t.setTimes},
	} {
		if err := step.do(in); err != nil {
			return n.r.errno(err, step.op, n.relPath())
		}
	}
	if t.f != nil {
		return t.f.Getattr(ctx, out)
	}
	// The attributes of the object just changed, not of whatever has
	// its name by now.
	fd := t.hfd
	if fd < 0 {
		fd = t.ofd
	}
	var stx unix.Statx_t
	if err := statxFd(fd, &stx); err != nil {
		return n.r.errno(err, "setattr", n.relPath())
	}
	n.r.fillAttr(&stx, &out.Attr)
	return 0
}

// openChecked holds n's backing object by an O_PATH descriptor checked to
// be n's own: the kernel checked the caller's rights on it, so no other
// object that took its name since may be changed. Mode, owner, set-id bits
// and times are changed through that descriptor.
func (n *node) openChecked() (int, error) {
	pfd, name, err := n.parentAt()
	if err != nil {
		return -1, err
	}
	ofd, err := openat(pfd, name, unix.O_PATH|unix.O_NOFOLLOW, 0)
	if err != nil {
		return -1, err
	}
	if err := n.checkSame(ofd, ""); err != nil {
		unix.Close(ofd)
		return -1, err
	}
	return ofd, nil
}

// setattrTarget is the object a Setattr changes: an open handle's
// descriptor (f, or hfd lent by another handle of the inode), or else a
// checked O_PATH descriptor (ofd).
type setattrTarget struct {
	n   *node
	f   *file
	hfd int // -1: none
	ofd int
}

// fd returns the open descriptor of the object, if there is one (not an
// O_PATH one).
func (t setattrTarget) fd() (int, bool) {
	switch {
	case t.f != nil:
		return t.f.fd, true
	case t.hfd >= 0:
		return t.hfd, true
	}
	return -1, false
}

func (t setattrTarget) setMode(in *fuse.SetAttrIn) error {
	mode, ok := in.GetMode()
	if !ok {
		return nil
	}
	if fd, ok := t.fd(); ok {
		return retryEINTR(func() error { return unix.Fchmod(fd, mode&0o7777) })
	}
	if t.n.StableAttr().Mode == unix.S_IFLNK {
		return syscall.EOPNOTSUPP // Linux symlinks have no mode
	}
	return chmodFd(t.ofd, mode&0o7777)
}

func (t setattrTarget) setOwner(in *fuse.SetAttrIn) error {
	uid, uok := in.GetUID()
	gid, gok := in.GetGID()
	if !uok && !gok {
		return nil
	}
	suid, sgid := -1, -1
	if uok {
		suid = int(uid)
	}
	if gok {
		sgid = int(gid)
	}
	if fd, ok := t.fd(); ok {
		return retryEINTR(func() error { return unix.Fchown(fd, suid, sgid) })
	}
	return retryEINTR(func() error { return unix.Fchownat(t.ofd, "", suid, sgid, unix.AT_EMPTY_PATH) })
}

func (t setattrTarget) setSize(in *fuse.SetAttrIn) error {
	size, ok := in.GetSize()
	if !ok {
		return nil
	}
	return t.n.truncate(t.f, int64(size))
}

// killPriv clears the set-id bits when the kernel asks. The kernel leaves
// that to the filesystem (CAP_HANDLE_KILLPRIV_V2, see mount.go): on a
// truncate or chown by a caller without CAP_FSETID, and on every write by
// one (killPrivFS). This daemon's own calls run with CAP_FSETID as root,
// so the backing filesystem would keep the bits.
func (t setattrTarget) killPriv(in *fuse.SetAttrIn) error {
	if in.Valid&fuse.FATTR_KILL_SUIDGID == 0 || in.Valid&fuse.FATTR_MODE != 0 || t.n.StableAttr().Mode != unix.S_IFREG {
		return nil
	}
	fd, ok := t.fd()
	if !ok {
		fd = -1
	}
	return killSUIDGID(fd, t.ofd)
}

func (t setattrTarget) setTimes(in *fuse.SetAttrIn) error {
	mtime, mok := in.GetMTime()
	atime, aok := in.GetATime()
	if !mok && !aok {
		return nil
	}
	ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
	if aok {
		ts[0] = timespec(atime, in.Valid&fuse.FATTR_ATIME_NOW != 0)
	}
	if mok {
		ts[1] = timespec(mtime, in.Valid&fuse.FATTR_MTIME_NOW != 0)
	}
	if fd, ok := t.fd(); ok {
		return futimens(fd, ts)
	}
	// The /proc link of an O_PATH descriptor leads to the object itself,
	// a symlink included (not to its target).
	return retryEINTR(func() error {
		return unix.UtimesNanoAt(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(t.ofd), ts, 0)
	})
}

// killSUIDGID clears S_ISUID, and S_ISGID when the group may execute
// (without group execute S_ISGID marks mandatory locking and stays), as
// a write or truncate by an unprivileged user does on a local filesystem.
// fd is an open descriptor of the object, or -1: then ofd is its O_PATH
// descriptor.
func killSUIDGID(fd, ofd int) error {
	var st unix.Stat_t
	open := fd >= 0
	if !open {
		fd = ofd
	}
	err := retryEINTR(func() error { return unix.Fstat(fd, &st) })
	if err != nil {
		return err
	}
	mode := st.Mode & 0o7777
	kill := mode &^ unix.S_ISUID
	if mode&(unix.S_ISGID|unix.S_IXGRP) == unix.S_ISGID|unix.S_IXGRP {
		kill &^= unix.S_ISGID
	}
	if kill == mode {
		return nil
	}
	if open {
		return retryEINTR(func() error { return unix.Fchmod(fd, kill) })
	}
	return chmodFd(ofd, kill)
}

func timespec(t time.Time, now bool) unix.Timespec {
	if now {
		return unix.Timespec{Nsec: unix.UTIME_NOW}
	}
	ts, _ := unix.TimeToTimespec(t)
	return ts
}

// futimens sets the times of an open file: utimensat(fd, NULL, ts, 0).
func futimens(fd int, ts []unix.Timespec) error {
	return retryEINTR(func() error {
		_, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
		if e != 0 {
			return e
		}
		return nil
	})
}

// truncate changes the plaintext size, through the handle when there is
// one. Through a path it joins the inode's file state like an open does;
// shrinking to zero needs no key, any other size unwraps it.
func (n *node) truncate(f *file, size int64) error {
	if n.StableAttr().Mode != unix.S_IFREG {
		if n.StableAttr().Mode == unix.S_IFDIR {
			return syscall.EISDIR
		}
		return syscall.EINVAL
	}
	if size < 0 {
		return syscall.EINVAL
	}
	if f != nil {
		return f.truncate(size)
	}
	b, err := n.openBacking(unix.O_RDWR | unix.O_NOFOLLOW)
	if err != nil {
		return err
	}
	st, err := n.acquireAt(b.fd, size != 0, b.stored)
	if err == nil {
		if err = b.ready(); err != nil {
			n.release(st)
		}
	}
	if err != nil {
		unix.Close(b.fd)
		return err
	}
	tmp := &file{n: n, st: st, fd: b.fd, flags: unix.O_RDWR}
	defer tmp.close()
	return tmp.truncate(size)
}
