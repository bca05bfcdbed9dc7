package fs

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// Every backing operation names its object as (directory descriptor,
// name): the parent directory's O_PATH descriptor, kept on the directory's
// node from its first use until the kernel forgets the node. Resolving a
// name is then one component, not a walk from CIPHERDIR's root; a path of
// any depth works (no PATH_MAX on the backing side); and a directory
// renamed while in use keeps its descriptor.

// dirFd returns the O_PATH descriptor of a directory node. The caller must
// not close it.
func (n *node) dirFd() (int, error) {
	if n.isRoot() {
		return n.r.rootFd, nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.dfd > 0 {
		return n.dfd, nil
	}
	// Child before parent: the lock order is always upward.
	pfd, name, err := n.parentAt()
	if err != nil {
		return -1, err
	}
	fd, err := openat(pfd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return -1, err
	}
	n.dfd = fd
	return fd, nil
}

// parentAt returns the descriptor of n's parent directory and n's name in
// it; for the root, CIPHERDIR's descriptor and ".". A node with no parent
// left (unlinked) has no name: ENOENT.
func (n *node) parentAt() (int, string, error) {
	if n.isRoot() {
		return n.r.rootFd, ".", nil
	}
	name, parent := n.Parent()
	if parent == nil {
		return -1, "", syscall.ENOENT
	}
	pn, ok := parent.Operations().(*node)
	if !ok {
		return -1, "", syscall.EIO
	}
	fd, err := pn.dirFd()
	return fd, name, err
}

// closeDirFd drops a directory node's descriptor (the kernel forgot it).
func (n *node) closeDirFd() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.dfd > 0 {
		unix.Close(n.dfd)
		n.dfd = -1
	}
}

// statxAt stats name in dirfd without following a final symlink, with the
// birth time that tells reused inode numbers apart.
func statxAt(dirfd int, name string, stx *unix.Statx_t) error {
	return retryEINTR(func() error {
		return unix.Statx(dirfd, name, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_BASIC_STATS|unix.STATX_BTIME, stx)
	})
}

// openBeneath opens path, relative to dirfd and of any number of
// components, without leaving dirfd's tree and without following a
// symlink at any component: a directory swapped for a symlink behind the
// mount's back (by whoever can write CIPHERDIR) fails the open (ELOOP or
// EXDEV) instead of leading out of CIPHERDIR. Nor does it cross a mount
// point: its callers (key readahead and prefetching) read directories and
// headers no application asked for, some under the readahead lock, and a
// filesystem mounted inside CIPHERDIR (a FUSE mount whose readdir never
// answers) must not stall every cold open of the mount; applications'
// own opens there still work.
func openBeneath(dirfd int, path string, flags int) (int, error) {
	flags |= unix.O_CLOEXEC | unix.O_NOFOLLOW
	if flags&unix.O_PATH == 0 {
		flags |= unix.O_NOCTTY // openat2 refuses it beside O_PATH
	}
	how := unix.OpenHow{
		Flags:   uint64(flags),
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	}
	var fd int
	err := retryEINTR(func() error {
		var err error
		fd, err = unix.Openat2(dirfd, path, &how)
		return err
	})
	return fd, err
}
