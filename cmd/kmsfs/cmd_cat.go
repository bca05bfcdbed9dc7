package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/kmsfs/kmsfs/volume"
)

// kmsfs cat writes the plaintext of stored files to stdout, without a
// mount. A FILE is the path of a stored file; its volume is the nearest
// directory above it with a kmsfs.json. Or -C names the volume, and a
// relative FILE is then a path inside it (as with tar -C).

func cmdCat(args []string, stdout, stderr io.Writer) error {
	fl := newFlagSet("cat", "[-C CIPHERDIR] [--keep-going] [flags] FILE...", stdout)
	var o offlineFlags
	o.define(fl)
	var cipherDir string
	fl.StringVar(&cipherDir, "C", "", "the volume's `CIPHERDIR`; a relative FILE is a path inside it (default: each FILE's path, its volume the nearest directory above it with a kmsfs.json)")
	fl.StringVar(&cipherDir, "cipherdir", "", "the volume's `CIPHERDIR`, as -C")
	keepGoing := fl.Bool("keep-going", false, "write a damaged block as zeros, list it on stderr and go on; skip a file that cannot be decrypted")
	files, err := parsePositional(fl, args)
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return fail(exitUsage, "cat needs one or more FILEs, stored files of a volume (see kmsfs cat -h)")
	}
	c := &catRun{o: o, stdout: stdout, stderr: stderr, keepGoing: *keepGoing, keys: map[string]*offlineKeys{}}
	defer c.close()
	if cipherDir != "" {
		if c.vol, err = loadVolume(cipherDir); err != nil {
			return err
		}
	}
	var failed error
	for _, name := range files {
		err := c.cat(name)
		if err == nil {
			continue
		}
		var ce *cliError
		if !*keepGoing || !errors.As(err, &ce) || ce.code == exitKey || ce.code == exitVolume {
			return err
		}
		fmt.Fprintln(stderr, "kmsfs:", oneLine(ce.msg))
		if failed == nil || ce.code == exitDamage {
			failed = err
		}
	}
	if failed != nil {
		var ce *cliError
		errors.As(failed, &ce)
		return fail(ce.code, "cat: not every byte could be written (listed above)")
	}
	return nil
}

type catRun struct {
	o              offlineFlags
	stdout, stderr io.Writer
	keepGoing      bool
	vol            *volume.Volume          // -C, or nil
	keys           map[string]*offlineKeys // by volume directory
}

func (c *catRun) close() {
	for _, k := range c.keys {
		k.close()
	}
}

// cat writes the plaintext of the stored file name to stdout.
func (c *catRun) cat(name string) error {
	vol, rel, err := c.locate(name)
	if err != nil {
		return err
	}
	name = quoteName(name) // from here on, for messages
	ctx := context.Background()
	keys := c.keys[vol.Dir]
	if keys == nil {
		// Once per volume: a volume found from a FILE's path (not -C)
		// must not sit inside one this machine trusts.
		if c.vol == nil {
			if above := trustedAbove(vol); above != "" {
				return fail(exitVolume, "%s is inside %s, a volume this machine trusts, but the config found nearer, in %s, is not trusted here (whoever can write CIPHERDIR could have put it there): name the volume with -C CIPHERDIR", name, above, vol.Dir)
			}
		}
		if keys, err = unwrapKeyring(ctx, vol, c.o, c.stderr); err != nil {
			return err
		}
		c.keys[vol.Dir] = keys
	}
	f, err := vol.Open(rel)
	if errors.Is(err, os.ErrNotExist) {
		return fail(exitError, "no such file: %s", name)
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err // name says which file
	}
	if err != nil {
		return fail(exitError, "%s: %v", name, err)
	}
	defer f.Close()
	pf, err := openPlain(ctx, vol, keys.kr, f)
	var he *headerError
	switch {
	case errors.As(err, &he):
		return fail(exitDamage, "%s cannot be decrypted: %v (kmsfs fsck checks the whole volume)", name, he)
	case keyServiceFailure(err):
		return keyError(name, err)
	case err != nil:
		return fail(exitError, "%s: %v", name, err)
	}
	defer pf.wipe()
	// Before the first byte: a file whose size is not sound stops here
	// (with --keep-going, a final block that fails skips the file, since
	// its size could be anything, terabytes of holes among them).
	if err := pf.finalBlock(); err != nil {
		if msg := pf.finalBlockMessage(name, err); msg != "" {
			return fail(exitDamage, "%s; nothing was written for it", msg)
		}
		return fail(exitError, "%s: %v", name, err)
	}
	if pf.sizeErr != nil && !c.keepGoing {
		return fail(exitDamage, "%s: damaged at plaintext offset %d: the stored file ends in %d bytes that cannot hold a block (it was cut, or appended to); nothing was written for it (--keep-going writes the part before)", name, pf.size, pf.stored-vol.Layout.CipherSize(pf.size))
	}
	damaged := false
	err = pf.read(false, func(_ int64, p []byte) error {
		_, err := c.stdout.Write(p)
		return err
	}, func(idx uint64, off, n int64) error {
		if !c.keepGoing {
			return fail(exitDamage, "%s: block %d (plaintext bytes %d-%d) fails authentication: damaged or tampered with; the output stops before it (--keep-going writes zeros for it and goes on)", name, idx, off, off+n-1)
		}
		damaged = true
		fmt.Fprintf(c.stderr, "kmsfs: %s: block %d (plaintext bytes %d-%d) fails authentication: written as zeros\n", name, idx, off, off+n-1)
		_, err := c.stdout.Write(make([]byte, n))
		return err
	})
	if err != nil {
		var ce *cliError
		if errors.As(err, &ce) {
			return err
		}
		return fail(exitError, "%s: %v", name, err)
	}
	if pf.sizeErr != nil {
		return fail(exitDamage, "%s: damaged at plaintext offset %d: the stored file ends in %d bytes that cannot hold a block (it was cut, or appended to)", name, pf.size, pf.stored-vol.Layout.CipherSize(pf.size))
	}
	if damaged {
		return fail(exitDamage, "%s: damaged blocks were written as zeros", name)
	}
	return nil
}

// locate finds the volume of the stored file name, and name relative to
// its CIPHERDIR.
// trustedAbove returns a directory above vol's for which this machine
// keeps a trusted config, if vol's own config is not trusted here: a
// config planted inside a trusted volume (its real one removed) would
// otherwise choose the keys for the files beside it.
func trustedAbove(vol *volume.Volume) string {
	if t, err := configTrust(vol); err != nil || t.state != trustNone {
		return ""
	}
	d, err := trustDir()
	if err != nil {
		return ""
	}
	for dir, up := vol.Dir, filepath.Dir(vol.Dir); up != dir; dir, up = up, filepath.Dir(up) {
		if _, err := os.Stat(dirCopy(d, up)); err == nil {
			return up
		}
	}
	return ""
}

func (c *catRun) locate(name string) (*volume.Volume, string, error) {
	if c.vol == nil {
		vol, rel, err := volume.Find(name)
		if errors.Is(err, volume.ErrNoConfig) {
			return nil, "", fail(exitVolume, "%s is not inside a kmsfs volume (no directory above it has a %s): name the volume with -C CIPHERDIR", name, volume.ConfigName)
		}
		if err != nil {
			return nil, "", fail(exitVolume, "find the volume of %s: %v", name, err)
		}
		return vol, rel, nil
	}
	// As with tar -C and git -C, a relative FILE starts at the directory
	// -C names.
	abs := name
	if !filepath.IsAbs(abs) {
		abs = filepath.Join(c.vol.Dir, abs)
	}
	rel, err := filepath.Rel(c.vol.Dir, filepath.Clean(abs))
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return nil, "", fail(exitUsage, "%s is not inside %s", name, c.vol.Dir)
	}
	return c.vol, filepath.ToSlash(rel), nil
}
