package fs

import (
	"io"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/blockfile"
)

// fdStore is a stored file open at a descriptor: the blockfile.Store of
// an open file.
type fdStore int

var (
	_ blockfile.Store        = fdStore(0)
	_ blockfile.Preallocator = fdStore(0)
)

func (s fdStore) ReadAt(p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) {
		m, err := unix.Pread(int(s), p[n:], off+int64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		if m == 0 {
			return n, io.EOF
		}
		n += m
	}
	return n, nil
}

// eofStore is an fdStore on a backing filesystem whose short reads of a
// regular file happen only at its end (shortEOFFS): one pread per read,
// where fdStore makes a second to see the end.
type eofStore struct{ fdStore }

func (s eofStore) ReadAt(p []byte, off int64) (int, error) {
	for {
		m, err := unix.Pread(int(s.fdStore), p, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		if m < len(p) {
			return m, io.EOF
		}
		return m, nil
	}
}

func (s fdStore) WriteAt(p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) {
		m, err := unix.Pwrite(int(s), p[n:], off+int64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		n += m
	}
	return n, nil
}

func (s fdStore) writeFull(p []byte, off int64) error {
	_, err := s.WriteAt(p, off)
	return err
}

func (s fdStore) Truncate(size int64) error {
	return retryEINTR(func() error { return unix.Ftruncate(int(s), size) })
}

// Preallocate reserves the stored range before it is written, so a full
// disk fails the write before any stored byte changes (as gocryptfs does).
// Filesystems without fallocate skip it.
func (s fdStore) Preallocate(off, length int64) error {
	err := retryEINTR(func() error { return unix.Fallocate(int(s), unix.FALLOC_FL_KEEP_SIZE, off, length) })
	if err == unix.EOPNOTSUPP || err == unix.ENOSYS {
		return nil
	}
	return err
}

func (s fdStore) size() (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(s), &st); err != nil {
		return 0, err
	}
	return st.Size, nil
}
