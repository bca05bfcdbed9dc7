package volume

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/internal/regfile"
)

// Entry is one object Walk visits.
type Entry struct {
	Rel    string      // path relative to CIPHERDIR, slash-separated
	DirFd  int         // descriptor of the parent directory; valid only during the visit
	Name   string      // the name in that directory
	Type   fs.FileMode // the type bits of the directory entry
	IsRoot bool        // the parent is CIPHERDIR itself
	// Reserved: one of kmsfs's own names (Reserved), visited by WalkAll
	// only, and never descended into.
	Reserved bool
}

// SkipDir, returned by a visit of a directory, skips its contents.
var SkipDir = fs.SkipDir

// Walk visits every object below CIPHERDIR but kmsfs's own (Reserved),
// each directory before its contents, names in lexical order. Every
// directory is opened relative to its parent's descriptor without
// following a symlink, so one swapped for a symlink while the walk runs
// fails that branch with an error instead of leading out of CIPHERDIR.
// A visit returning SkipDir skips a directory's contents; any other error
// stops the walk and is returned.
func Walk(cipherDir string, visit func(Entry) error) error {
	return walk(cipherDir, false, visit)
}

// WalkAll is Walk, but it also visits kmsfs's own names (the config, the
// key store, temporary files), with Entry.Reserved set, without
// descending into them: for kmsfs fsck, which looks for leftovers there.
func WalkAll(cipherDir string, visit func(Entry) error) error {
	return walk(cipherDir, true, visit)
}

func walk(cipherDir string, all bool, visit func(Entry) error) error {
	fd, err := unix.Open(cipherDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", cipherDir, err)
	}
	err = walkDir(fd, "", 0, all, visit)
	if errors.Is(err, SkipDir) {
		err = nil
	}
	return err
}

// MaxWalkDepth bounds how deep Walk descends. Each level holds a
// descriptor and its path, so a tree made deep on purpose (CIPHERDIR is
// hostile) would exhaust descriptors and memory; no path 2048 levels deep
// fits in PATH_MAX (4096 bytes), so no tool could name a file there.
const MaxWalkDepth = 2048

// walkDir visits the entries of the directory open at fd (rel its path,
// depth its level below CIPHERDIR) and closes fd.
func walkDir(fd int, rel string, depth int, all bool, visit func(Entry) error) error {
	d := os.NewFile(uintptr(fd), rel)
	defer d.Close()
	entries, err := d.ReadDir(-1)
	if err != nil {
		return fmt.Errorf("read directory %q: %w", rel, err)
	}
	slices.SortFunc(entries, func(a, b fs.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
	for _, e := range entries {
		reserved := Reserved(rel == "", e.Name())
		if reserved && !all {
			continue
		}
		p := e.Name()
		if rel != "" {
			p = rel + "/" + p
		}
		err := visit(Entry{Rel: p, DirFd: fd, Name: e.Name(), Type: e.Type(), IsRoot: rel == "", Reserved: reserved})
		if e.Type() != fs.ModeDir || reserved {
			if err != nil && !errors.Is(err, SkipDir) {
				return err
			}
			continue
		}
		if errors.Is(err, SkipDir) {
			continue
		}
		if err != nil {
			return err
		}
		if depth+1 >= MaxWalkDepth {
			return fmt.Errorf("directory %q is %d levels deep: kmsfs walks no deeper than %d (no path that deep fits in PATH_MAX)", p, depth+2, MaxWalkDepth)
		}
		sub, err := unix.Openat(fd, e.Name(), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open directory %q: %w", p, err)
		}
		if err := walkDir(sub, p, depth+1, all, visit); err != nil {
			return err
		}
	}
	return nil
}

// OpenFile opens name in the directory dirfd for reading, the way every
// reader of CIPHERDIR must: without following a symlink, without blocking
// (a FIFO put where a file was would hang the open, and its reads), and
// only if it is a regular file. Its reads do not move the stored file's
// atime where the caller may ask for that (O_NOATIME: the owner, or
// CAP_FOWNER): reading a header or checking blocks is kmsfs's business,
// not an access of the file.
func OpenFile(dirfd int, name string) (*os.File, error) {
	return openRegularAt(dirfd, name, 0, unix.O_RDONLY)
}

// openRegularAt opens name below dirfd with flags (O_RDONLY or O_RDWR) if
// it is a regular file, following no symlink in its last component and
// resolving the rest as resolve says; nothing else is ever opened
// (regfile.Open).
func openRegularAt(dirfd int, name string, resolve uint64, flags int) (*os.File, error) {
	return regfile.Open(dirfd, name, resolve, flags, false)
}
