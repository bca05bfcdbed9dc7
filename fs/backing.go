package fs

import (
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/volume"
)

// hidden reports whether name in a directory (atRoot: CIPHERDIR itself)
// must not appear in, or be created through, the plaintext view: kmsfs's
// own names (volume.Reserved).
func hidden(atRoot bool, name string) bool { return volume.Reserved(atRoot, name) }

func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// retryEINTR repeats a syscall interrupted by a signal (the Go runtime's
// preemption signals interrupt slow syscalls on some filesystems).
func retryEINTR(f func() error) error {
	for {
		err := f()
		if err != syscall.EINTR {
			return err
		}
	}
}

func openat(dirfd int, path string, flags int, mode uint32) (int, error) {
	var fd int
	err := retryEINTR(func() error {
		var err error
		// O_NOCTTY: a terminal planted in CIPHERDIR in place of a
		// stored file must not become the daemon's controlling
		// terminal (whose hangup would end the mount).
		fd, err = unix.Openat(dirfd, path, flags|unix.O_CLOEXEC|unix.O_NOCTTY, mode)
		return err
	})
	return fd, err
}

// chmodAt sets the mode of name in dirfd without following a final
// symlink. fchmodat(2) always follows one, and a name that became a
// symlink behind this mount's back (another mount of CIPHERDIR, or anyone
// who can write it) would point the daemon, often root, at any file on
// the machine. A symlink answers EOPNOTSUPP: Linux symlinks have no mode.
func chmodAt(dirfd int, name string, mode uint32) error {
	p, err := unix.BytePtrFromString(name)
	if err != nil {
		return err
	}
	err = retryEINTR(func() error {
		_, _, e := unix.Syscall6(unix.SYS_FCHMODAT2, uintptr(dirfd), uintptr(unsafe.Pointer(p)), uintptr(mode), unix.AT_SYMLINK_NOFOLLOW, 0, 0)
		if e != 0 {
			return e
		}
		return nil
	})
	if err != unix.ENOSYS {
		return err
	}
	return chmodByFd(dirfd, name, mode)
}

// chmodByFd is chmodAt before Linux 6.6 (no fchmodat2): it holds the
// object by a descriptor that does not follow a symlink, and changes the
// mode through that descriptor.
func chmodByFd(dirfd int, name string, mode uint32) error {
	fd, err := openat(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return unix.EOPNOTSUPP
	}
	return chmodFd(fd, mode)
}

// chmodFd sets the mode of the object an O_PATH descriptor holds, which
// must not be a symlink (its /proc link would lead to the symlink itself,
// whose mode Linux does not keep).
func chmodFd(fd int, mode uint32) error {
	return retryEINTR(func() error { return unix.Chmod("/proc/self/fd/"+strconv.Itoa(fd), mode) })
}
