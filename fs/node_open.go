package fs

import (
	"context"
	"errors"
	"strconv"
	"syscall"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

var (
	_ fusefs.NodeOpener   = (*node)(nil)
	_ fusefs.NodeCreater  = (*node)(nil)
	_ fusefs.NodeTmpfiler = (*node)(nil)
)

// backingFlags turns the flags of an open of the plaintext view into the
// flags of the stored file: a writable handle must also read (partial
// blocks are read, merged and re-sealed); O_APPEND is dropped because the
// kernel sends every write with its offset; O_DIRECT is dropped because
// stored blocks are not sector aligned; creation flags are handled here.
func backingFlags(flags uint32) int {
	f := int(flags) &^ (unix.O_ACCMODE | unix.O_APPEND | unix.O_DIRECT | unix.O_CREAT | unix.O_EXCL | unix.O_TRUNC | unix.O_NOCTTY | syscall.O_ASYNC | fuse.FMODE_EXEC)
	if flags&unix.O_ACCMODE == unix.O_RDONLY {
		return f | unix.O_RDONLY | unix.O_NOFOLLOW
	}
	return f | unix.O_RDWR | unix.O_NOFOLLOW
}

func writable(flags uint32) bool { return flags&unix.O_ACCMODE != unix.O_RDONLY }

// openFlags are the kernel flags of every open file. FOPEN_NOFLUSH: a
// close(2) does not send FLUSH. Writes reach the stored file before they
// are acknowledged and locks are the kernel's own (EnableLocks is off), so
// a flush has nothing to do, and skipping it saves a round trip on every
// close: a backup tool reading 10k small files makes four requests per
// file instead of five.
//
// Not FOPEN_KEEP_CACHE: each open drops the file's cached pages, so a file
// that another mount or host changed in CIPHERDIR is read afresh rather
// than served stale until the kernel next compares sizes and mtimes (up
// to attrTimeout later). Keeping the cache would be safe only with this
// mount the sole writer, which kmsfs cannot know; what it would save is a
// re-read of a file opened again while still cached.
const openFlags = fuse.FOPEN_NOFLUSH

// Open opens a regular file: the first open of an inode unwraps its data
// key (one keyring call, shared with concurrent openers).
func (n *node) Open(ctx context.Context, flags uint32) (fusefs.FileHandle, uint32, syscall.Errno) {
	if n.r.opts.ReadOnly && (writable(flags) || flags&unix.O_TRUNC != 0) {
		return nil, 0, syscall.EROFS
	}
	b, err := n.openBacking(backingFlags(flags))
	if err != nil {
		return nil, 0, n.r.errno(err, "open", n.relPath())
	}
	st, err := n.acquireAt(b.fd, true, b.stored)
	if err == nil {
		if err = b.ready(); err != nil {
			n.release(st)
		}
	}
	if err != nil {
		unix.Close(b.fd)
		return nil, 0, n.r.errno(err, "open", n.relPath())
	}
	f := &file{n: n, st: st, fd: b.fd, flags: flags}
	n.listHandle(f)
	if flags&unix.O_TRUNC != 0 {
		if err := f.truncate(0); err != nil {
			f.close()
			return nil, 0, n.r.errno(err, "open O_TRUNC", n.relPath())
		}
	}
	return f, openFlags, 0
}

// backingFd is a stored file openBacking opened, until ready: still
// non-blocking and, where the daemon may, with O_NOATIME.
type backingFd struct {
	fd     int
	stored int64 // its size when opened, from checkSame's statx
	setfl  int   // the status flags ready sets; -1: none to change
}

// openBacking opens n's stored file. It looks first through an O_PATH
// descriptor, which opens nothing, checks that it holds n's own regular
// file (checkSame), and then opens that same file through its
// /proc/self/fd link. Another mount of the CIPHERDIR, or anyone who can
// write it, may have put something else under n's name since the kernel
// looked it up: a device node found there is never opened, so no driver's
// open runs for it (a watchdog armed, a tape rewound), and a FIFO never
// blocks the open. Without /proc it opens by name and checks afterwards.
//
// The open does not block: a lease on the file would otherwise hold it
// for lease-break-time. ready clears O_NONBLOCK again unless the caller
// asked for it. The open also asks for O_NOATIME (ownership or
// CAP_FOWNER, as root): reading the header and the journal is kmsfs's
// business, not an access the user made, and must not move the file's
// atime; ready clears it too. Doing both in the one fcntl of ready saves
// four per cold open over setting and restoring O_NOATIME around each
// read.
func (n *node) openBacking(flags int) (backingFd, error) {
	pfd, name, err := n.parentAt()
	if err != nil {
		return backingFd{fd: -1}, err
	}
	ofd, err := openat(pfd, name, unix.O_PATH|unix.O_NOFOLLOW, 0)
	if err != nil {
		return backingFd{fd: -1}, err
	}
	defer unix.Close(ofd)
	var stx unix.Statx_t
	if err := n.checkSameStatx(ofd, "", &stx); err != nil {
		return backingFd{fd: -1}, err
	}
	extra := unix.O_NONBLOCK | unix.O_NOATIME
	fd, err := n.openHeld(pfd, name, ofd, flags|extra)
	if err == unix.EPERM && flags&unix.O_NOATIME == 0 {
		// Neither the owner nor CAP_FOWNER: the atime may move.
		extra = unix.O_NONBLOCK
		fd, err = n.openHeld(pfd, name, ofd, flags|extra)
	}
	if err != nil {
		return backingFd{fd: -1}, err
	}
	b := backingFd{fd: fd, stored: int64(stx.Size), setfl: -1}
	if extra&^flags != 0 {
		b.setfl = flags &^ (unix.O_ACCMODE | unix.O_CREAT | unix.O_EXCL | unix.O_NOCTTY | unix.O_TRUNC | unix.O_CLOEXEC)
	}
	return b, nil
}

// ready gives the descriptor the status flags its opener asked for.
func (b backingFd) ready() error {
	if b.setfl < 0 {
		return nil
	}
	_, err := unix.FcntlInt(uintptr(b.fd), unix.F_SETFL, b.setfl)
	return err
}

// checkSame checks that the object name leads to in dirfd (name "": the
// object dirfd is) is still n's own. Another mount of the CIPHERDIR, or
// anyone who can write it, may have put a different file under n's name
// since the kernel looked it up. Opened or changed by name, that file
// would be reached with the permissions the kernel checked for n's, and
// written with n's data key, which it cannot authenticate. ESTALE makes
// the kernel look the name up again (or fails a use of an old
// descriptor).
func (n *node) checkSame(dirfd int, name string) error {
	var stx unix.Statx_t
	return n.checkSameStatx(dirfd, name, &stx)
}

// checkSameStatx is checkSame, leaving the object's statx in stx (not
// filled for the root).
func (n *node) checkSameStatx(dirfd int, name string, stx *unix.Statx_t) error {
	if n.isRoot() {
		return nil
	}
	flags := unix.AT_SYMLINK_NOFOLLOW
	if name == "" {
		flags |= unix.AT_EMPTY_PATH
	}
	err := retryEINTR(func() error {
		return unix.Statx(dirfd, name, flags, unix.STATX_BASIC_STATS|unix.STATX_BTIME, stx)
	})
	if err != nil {
		return err
	}
	id := n.r.idFromStat(unix.Mkdev(stx.Dev_major, stx.Dev_minor), stx.Ino, genFromStatx(stx), uint32(stx.Mode))
	if sa := n.StableAttr(); id.Ino != sa.Ino || id.Gen != sa.Gen || id.Mode != sa.Mode {
		n.r.stats.stale.Add(1)
		return syscall.ESTALE
	}
	return nil
}

// openHeld opens the file ofd holds (checked to be n's by the
// caller) with flags. A write-only file cannot be opened for reading and
// writing by its unprivileged owner: like gocryptfs, add the owner's read
// bit for the open and take it away again.
func (n *node) openHeld(pfd int, name string, ofd, flags int) (int, error) {
	fd, err := n.reopen(pfd, name, ofd, flags)
	if err != unix.EACCES || flags&unix.O_ACCMODE != unix.O_RDWR || processUID() == 0 {
		return fd, err
	}
	var st unix.Stat_t
	if unix.Fstat(ofd, &st) != nil || st.Uid != processUID() || st.Mode&0o400 != 0 {
		return fd, err
	}
	if chmodFd(ofd, (st.Mode&0o7777)|0o400) != nil {
		return fd, err
	}
	fd, err = n.reopen(pfd, name, ofd, flags)
	chmodFd(ofd, st.Mode&0o7777)
	return fd, err
}

// reopen opens the object the O_PATH descriptor ofd holds through its
// /proc/self/fd link. Without /proc it opens name in pfd, following no
// symlink, and checks that it got n's file.
func (n *node) reopen(pfd int, name string, ofd, flags int) (int, error) {
	// The link is a symlink of sorts: O_NOFOLLOW would refuse it.
	fd, err := openat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(ofd), flags&^unix.O_NOFOLLOW, 0)
	if err != unix.ENOENT {
		return fd, err
	}
	if fd, err = openat(pfd, name, flags|unix.O_NOFOLLOW, 0); err != nil {
		if err == unix.ELOOP {
			// A symlink took the name since ofd was checked.
			err = syscall.ESTALE
		}
		return -1, err
	}
	if err := n.checkSame(fd, ""); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// Create makes an empty regular file: no header and no keyring call yet
// (a stored file of 0 bytes is a valid empty file, docs/FORMAT.md). The
// header, and so the data key, comes with the first write, under the
// file's own lock: a create never waits for KMS while the kernel holds the
// directory locked, so a slow or unreachable KMS cannot stall `ls` of the
// directory. Two mounts creating one name race on O_EXCL, and on the
// header under an exclusive flock (ensureHeader).
func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fusefs.Inode, fusefs.FileHandle, uint32, syscall.Errno) {
	if hidden(n.isRoot(), name) {
		return nil, nil, 0, syscall.EPERM
	}
	if n.r.opts.ReadOnly {
		return nil, nil, 0, syscall.EROFS
	}
	dirfd, err := n.dirFd()
	fd := -1
	var stx unix.Statx_t
	if err == nil {
		fd, err = n.r.createEmpty(ctx, dirfd, name, mode, &stx)
	}
	if errors.Is(err, unix.EEXIST) && flags&unix.O_EXCL == 0 {
		// Someone else (another mount) created it first: open theirs.
		return n.openExisting(ctx, name, flags, out)
	}
	if err != nil {
		return nil, nil, 0, n.r.errno(err, "create", join(n.relPath(), name))
	}
	return n.newOpenChild(ctx, fd, &stx, flags, out, "create")
}

// newOpenChild makes the inode of a file just created at fd (empty, no
// header), whose statx finishNew took, and its handle.
func (n *node) newOpenChild(ctx context.Context, fd int, stx *unix.Statx_t, flags uint32, out *fuse.EntryOut, op string) (*fusefs.Inode, fusefs.FileHandle, uint32, syscall.Errno) {
	n.r.fillAttr(stx, &out.Attr)
	child := n.newChild(ctx, stx)
	cn := child.Operations().(*node)
	cn.noCaps.Store(true) // a new file has no xattrs
	st, err := cn.acquireNew(fd)
	if err != nil {
		unix.Close(fd)
		return nil, nil, 0, n.r.errno(err, op, n.relPath())
	}
	f := &file{n: cn, st: st, fd: fd, flags: flags}
	cn.listHandle(f)
	return child, f, openFlags, 0
}

// openExisting opens name after a create lost the race to another creator.
func (n *node) openExisting(ctx context.Context, name string, flags uint32, out *fuse.EntryOut) (*fusefs.Inode, fusefs.FileHandle, uint32, syscall.Errno) {
	child, errno := n.Lookup(ctx, name, out)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	cn, ok := child.Operations().(*node)
	switch {
	case child.StableAttr().Mode == unix.S_IFDIR:
		return nil, nil, 0, syscall.EISDIR
	case !ok || child.StableAttr().Mode != unix.S_IFREG:
		return nil, nil, 0, syscall.EEXIST
	}
	fh, fl, errno := cn.Open(ctx, flags&^(unix.O_CREAT|unix.O_EXCL))
	return child, fh, fl, errno
}

// createEmpty creates name in dirfd (O_EXCL), owned by the caller, with
// exactly the mode asked for, and returns a read-write descriptor of it
// and its statx.
func (r *Root) createEmpty(ctx context.Context, dirfd int, name string, mode uint32, stx *unix.Statx_t) (int, error) {
	perm := mode & 0o7777
	fd, err := openat(dirfd, name, unix.O_CREAT|unix.O_EXCL|unix.O_RDWR|unix.O_NOFOLLOW, perm)
	if err != nil {
		return -1, err
	}
	if err := r.finishNew(ctx, dirfd, fd, perm, stx); err != nil {
		unix.Close(fd)
		unix.Unlinkat(dirfd, name, 0)
		return -1, err
	}
	return fd, nil
}

// finishNew gives a new file its owner and its exact mode (the process
// umask, or a chown clearing set-id bits, may have changed it), and
// returns its statx in stx.
func (r *Root) finishNew(ctx context.Context, dirfd, fd int, perm uint32, stx *unix.Statx_t) error {
	if err := r.chownNew(ctx, dirfd, fd, ""); err != nil {
		return err
	}
	// Usually the mode is already exact (the mount runs with umask 0):
	// the statx the new inode needs anyway is cheaper than a chmod,
	// which on ext4 is a journalled inode update per created file.
	if err := statxFd(fd, stx); err != nil {
		return err
	}
	if uint32(stx.Mode)&0o7777 == perm {
		return nil
	}
	if err := retryEINTR(func() error { return unix.Fchmod(fd, perm) }); err != nil {
		return err
	}
	return statxFd(fd, stx)
}

// statxFd stats the object open at fd, with the birth time that tells
// reused inode numbers apart.
func statxFd(fd int, stx *unix.Statx_t) error {
	return retryEINTR(func() error {
		return unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_BASIC_STATS|unix.STATX_BTIME, stx)
	})
}

// chownNew gives a new object the caller's owner when kmsfs runs as root
// (otherwise everything is owned by root), keeping the group of a set-gid
// parent directory as the kernel would. The object is fd, or name in
// dirfd (not following a symlink) when fd is -1.
func (r *Root) chownNew(ctx context.Context, dirfd, fd int, name string) error {
	if processUID() != 0 {
		return nil
	}
	caller, ok := fuse.FromContext(ctx)
	if !ok {
		return nil
	}
	if caller.Uid == 0 && caller.Gid == processGID() {
		// The kernel made the object as it would for the caller: owned
		// by root, in the group of a set-gid parent or else the
		// daemon's own, which is the caller's.
		return nil
	}
	uid, gid := int(caller.Uid), int(caller.Gid)
	var dst unix.Stat_t
	if err := unix.Fstat(dirfd, &dst); err == nil && dst.Mode&unix.S_ISGID != 0 {
		gid = int(dst.Gid)
	}
	if uid == 0 && gid == 0 {
		return nil
	}
	if fd >= 0 {
		return retryEINTR(func() error { return unix.Fchown(fd, uid, gid) })
	}
	return retryEINTR(func() error { return unix.Fchownat(dirfd, name, uid, gid, unix.AT_SYMLINK_NOFOLLOW) })
}

// Tmpfile makes an unnamed file (open with O_TMPFILE) in the directory,
// empty and without a header like any new file.
func (n *node) Tmpfile(ctx context.Context, flags uint32, mode uint32, out *fuse.EntryOut) (*fusefs.Inode, fusefs.FileHandle, uint32, syscall.Errno) {
	if n.r.opts.ReadOnly {
		return nil, nil, 0, syscall.EROFS
	}
	dirfd, err := n.dirFd()
	if err != nil {
		return nil, nil, 0, n.r.errno(err, "tmpfile", n.relPath())
	}
	fd, err := openat(dirfd, ".", unix.O_TMPFILE|unix.O_RDWR, mode&0o7777)
	if err != nil {
		return nil, nil, 0, n.r.errno(err, "tmpfile", n.relPath())
	}
	var stx unix.Statx_t
	if err := n.r.finishNew(ctx, dirfd, fd, mode&0o7777, &stx); err != nil {
		unix.Close(fd)
		return nil, nil, 0, n.r.errno(err, "tmpfile", n.relPath())
	}
	// Keep a descriptor so that linkat can name the file later.
	pathFd, err := openat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(fd), unix.O_PATH, 0)
	if err != nil {
		unix.Close(fd)
		return nil, nil, 0, n.r.errno(err, "tmpfile", n.relPath())
	}
	child, fh, fl, errno := n.newOpenChild(ctx, fd, &stx, flags, out, "tmpfile")
	if errno != 0 {
		unix.Close(pathFd)
		return nil, nil, 0, errno
	}
	cn := child.Operations().(*node)
	cn.mu.Lock()
	if cn.unnamed > 0 {
		unix.Close(cn.unnamed)
	}
	cn.unnamed = pathFd
	cn.mu.Unlock()
	return child, fh, fl, 0
}
