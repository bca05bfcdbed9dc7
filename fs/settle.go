package fs

import (
	"fmt"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/blockcipher"
	"github.com/kmsfs/kmsfs/blockfile"
)

// settle finishes a block rewrite that a crash interrupted (the journal,
// blockfile/journal.go), before anything reads or changes the file. It
// costs two small reads on a clean file. The descriptor may be read-only:
// a repair reopens the file for writing. A read-only mount leaves the
// journal alone; its reads consult it.
func (r *Root) settle(fd int, c *blockcipher.Cipher, path func() string) error {
	stored, err := fdStore(fd).size()
	if err != nil {
		return err
	}
	pending, err := blockfile.File{C: c, S: fdStore(fd)}.JournalPending(stored)
	if err != nil || !pending || r.opts.ReadOnly {
		return err
	}
	wfd, err := openat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(fd), unix.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("reopen to finish an interrupted write: %w", err)
	}
	defer unix.Close(wfd)
	res, err := blockfile.File{C: c, S: fdStore(wfd)}.Settle(stored)
	if err != nil {
		return fmt.Errorf("finish an interrupted write: %w", err)
	}
	r.stats.journalRepaired.Add(int64(len(res.Repaired)))
	r.stats.journalIgnored.Add(int64(res.Ignored))
	for _, b := range res.Repaired {
		r.log.Warn("repaired a block from its journal record: a write to it was interrupted", "path", path(), "block", b)
	}
	if res.Ignored > 0 {
		// A record torn while it was written (its block was never
		// touched), or one that does not authenticate: damage,
		// tampering, or a record of a kmsfs before journal records
		// had a MAC, which is never trusted.
		r.log.Warn("erased journal records that do not authenticate", "path", path(), "records", res.Ignored)
	}
	r.log.Info("finished an interrupted write", "path", path(), "repaired", len(res.Repaired))
	return nil
}

// noatime sets O_NOATIME on fd until the returned func is called: reading
// a header or the journal is kmsfs's business, not an access the user
// made, and must not move the file's atime. (O_NOATIME needs ownership or
// CAP_FOWNER; without it the atime may move.)
func noatime(fd int) (restore func()) {
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil || fl&unix.O_NOATIME != 0 {
		return func() {}
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl|unix.O_NOATIME); err != nil {
		return func() {}
	}
	return func() { unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl) }
}
