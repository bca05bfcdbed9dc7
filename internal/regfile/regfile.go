// Package regfile opens a file only if it is a regular file, without
// opening anything else on the way: the one way kmsfs opens what a hostile
// hand may have placed (the stored files of CIPHERDIR, a key file named by
// a config not trusted yet).
package regfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// ErrNotRegular: what Open found is not a regular file.
var ErrNotRegular = errors.New("not a regular file")

// Open opens name, relative to dirfd (unix.AT_FDCWD for a path), with
// flags (O_RDONLY or O_RDWR), only if it is a regular file. follow says
// whether a symlink as its last component is followed (a user's key file)
// or refused with ELOOP (CIPHERDIR); resolve (openat2's RESOLVE_ flags)
// governs the rest of the path.
//
// It looks first through an O_PATH descriptor, which opens nothing, and
// then opens that same file through /proc/self/fd: a FIFO or a device
// found there is never opened, so no open blocks and no driver runs, even
// if it is swapped in after a listing. The open is O_NONBLOCK (cleared
// after), so a lease on the file fails it at once instead of waiting
// lease-break-time. Without /proc it opens by name and checks that it got
// the same file. Reads set O_NOATIME where the process may.
func Open(dirfd int, name string, resolve uint64, flags int, follow bool) (*os.File, error) {
	nofollow := 0
	if !follow {
		nofollow = unix.O_NOFOLLOW
	}
	how := unix.OpenHow{Flags: uint64(unix.O_PATH | nofollow | unix.O_CLOEXEC), Resolve: resolve}
	pfd, err := unix.Openat2(dirfd, name, &how)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	defer unix.Close(pfd)
	var st unix.Stat_t
	if err := unix.Fstat(pfd, &st); err != nil {
		return nil, &fs.PathError{Op: "stat", Path: name, Err: err}
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
	case unix.S_IFLNK: // O_PATH|O_NOFOLLOW gives the link itself
		return nil, &fs.PathError{Op: "open", Path: name, Err: unix.ELOOP}
	default:
		return nil, &fs.PathError{Op: "open", Path: name, Err: ErrNotRegular}
	}
	openFlags := flags | unix.O_NONBLOCK | unix.O_NOCTTY | unix.O_CLOEXEC
	fd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", pfd), openFlags, 0)
	if errors.Is(err, unix.ENOENT) {
		how.Flags = uint64(openFlags | nofollow)
		fd, err = unix.Openat2(dirfd, name, &how)
		var again unix.Stat_t
		if err == nil && (unix.Fstat(fd, &again) != nil || again.Dev != st.Dev || again.Ino != st.Ino) {
			unix.Close(fd)
			return nil, &fs.PathError{Op: "open", Path: name, Err: errors.New("replaced while it was opened")}
		}
	}
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err == nil {
		fl &^= unix.O_NONBLOCK
		if flags&unix.O_ACCMODE == unix.O_RDONLY {
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl|unix.O_NOATIME); err == nil {
				return os.NewFile(uintptr(fd), name), nil
			}
		}
		unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl) // EPERM for O_NOATIME: not ours
	}
	return os.NewFile(uintptr(fd), name), nil
}
