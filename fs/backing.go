package fs

import (
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// tmpPrefix starts the names of temporary files kmsfs makes in CIPHERDIR
// (a header being created where O_TMPFILE is missing, a config being
// written). They are hidden from the plaintext view.
const tmpPrefix = ".kmsfs-tmp-"

// hidden reports whether name in a directory (atRoot: CIPHERDIR itself)
// must not appear in, or be created through, the plaintext view.
func hidden(atRoot bool, name string) bool {
	if strings.HasPrefix(name, tmpPrefix) {
		return true
	}
	return atRoot && (name == ConfigName || strings.HasPrefix(name, ".kmsfs.json.tmp-"))
}

// rel turns a node path ("" for the root) into a path for *at syscalls.
func rel(p string) string {
	if p == "" {
		return "."
	}
	return p
}

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

func fstatat(dirfd int, path string, st *unix.Stat_t, flags int) error {
	return retryEINTR(func() error { return unix.Fstatat(dirfd, path, st, flags) })
}

func openat(dirfd int, path string, flags int, mode uint32) (int, error) {
	var fd int
	err := retryEINTR(func() error {
		var err error
		fd, err = unix.Openat(dirfd, path, flags|unix.O_CLOEXEC, mode)
		return err
	})
	return fd, err
}
