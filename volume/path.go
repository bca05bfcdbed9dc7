package volume

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Open opens the stored file rel (a path relative to v.Dir) for reading
// as OpenFile does, and beneath CIPHERDIR following no symlink at any
// depth: a directory swapped for a symlink fails the open instead of
// leading out of CIPHERDIR. kmsfs's own names (Reserved) are refused.
func (v *Volume) Open(rel string) (*os.File, error) {
	rel = filepath.ToSlash(filepath.Clean(rel))
	if rel == "." || filepath.IsAbs(rel) || rel == ".." || strings.HasPrefix(rel, "../") {
		return nil, &fs.PathError{Op: "open", Path: rel, Err: errors.New("not a path inside CIPHERDIR")}
	}
	for i, name := range strings.Split(rel, "/") {
		if Reserved(i == 0, name) {
			return nil, &fs.PathError{Op: "open", Path: rel, Err: errors.New("one of kmsfs's own names, not a file of the volume")}
		}
	}
	root, err := unix.Open(v.Dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: v.Dir, Err: err}
	}
	defer unix.Close(root)
	f, err := openRegularAt(root, rel, unix.RESOLVE_BENEATH|unix.RESOLVE_NO_SYMLINKS|unix.RESOLVE_NO_MAGICLINKS, unix.O_RDONLY)
	if errors.Is(err, unix.ELOOP) {
		err = &fs.PathError{Op: "open", Path: rel, Err: errors.New("a symlink, or beneath one: kmsfs follows no symlink inside CIPHERDIR")}
	}
	return f, err
}

// Find returns the volume whose CIPHERDIR holds path, and path relative
// to it: the nearest directory above path whose kmsfs.json is a volume
// config. (Below the root, a file of that name is a stored file of the
// volume, whose bytes are no config.) The directories above path are
// found lexically, from its absolute form, and none of them is followed
// if it is a symlink: a directory of the volume swapped for one would
// otherwise have a kmsfs.json outside CIPHERDIR read, and decide where
// the volume starts. A volume above a symlink is an error (kmsfs follows
// no symlink inside CIPHERDIR), and so is a symlink with no volume above
// it (a CIPHERDIR reached through a symlink is named with -C). A volume
// config in a directory above the one found is an error: nested configs
// are no layout kmsfs makes, and a planted one could choose the keys.
// Without a volume above path it returns ErrNoConfig, or the error of the
// first config found that did not parse.
func Find(path string) (*Volume, string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, "", err
	}
	var firstErr error
	symlink := "" // the nearest directory above path that is a symlink
	for dir := filepath.Dir(abs); ; dir = filepath.Dir(dir) {
		st, err := os.Lstat(dir)
		if err == nil && st.Mode()&os.ModeSymlink != 0 {
			if symlink == "" {
				symlink = dir
			}
		} else if v, err := Open(dir); err == nil {
			if symlink != "" {
				return nil, "", fmt.Errorf("%s is a symlink inside the volume %s, and kmsfs follows no symlink inside CIPHERDIR: name the file by its path in the volume", symlink, v.Dir)
			}
			// A config above this one makes this one suspect: whoever
			// can write CIPHERDIR could put a config naming keys of
			// theirs in a directory of it, and a file under them.
			// Any kmsfs.json counts, valid or not: the planter could
			// have spoiled the real one.
			for up := filepath.Dir(dir); up != dir; dir, up = up, filepath.Dir(up) {
				if _, err := os.Lstat(filepath.Join(up, ConfigName)); err == nil {
					return nil, "", fmt.Errorf("%s and %s both hold a %s, and a volume's directories hold no config of their own: name the volume with -C CIPHERDIR", up, v.Dir, ConfigName)
				}
			}
			rel, err := filepath.Rel(v.Dir, abs)
			return v, filepath.ToSlash(rel), err
		} else if !errors.Is(err, ErrNoConfig) && firstErr == nil {
			firstErr = fmt.Errorf("%s: %w", dir, err)
		}
		if dir == filepath.Dir(dir) {
			break
		}
	}
	if symlink != "" {
		return nil, "", fmt.Errorf("no directory above %s holds a %s without following a symlink, and %s is one: if it leads to CIPHERDIR, name the volume with -C CIPHERDIR", path, ConfigName, symlink)
	}
	if firstErr != nil {
		return nil, "", firstErr
	}
	return nil, "", ErrNoConfig
}
