package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/volume"
)

// kmsfs export decrypts a whole volume into DEST, without a mount: the
// plaintext view as a tree of ordinary files, with modes, owners (as
// root), times, symlinks, FIFOs, xattrs (not POSIX ACLs, which kmsfs
// refuses), hard links and holes. Sockets and devices are listed, not
// made: a socket is nothing without its server, and a device node from a
// CIPHERDIR someone else could write is not made by root on their word.

func cmdExport(args []string, stdout, stderr io.Writer) error {
	fl := newFlagSet("export", "[--keep-going] [flags] CIPHERDIR DEST", stdout)
	var o offlineFlags
	o.define(fl)
	keepGoing := fl.Bool("keep-going", false, "write damaged blocks as zeros (holes), skip files that cannot be decrypted, list both on stderr and go on")
	pos, err := parseArgs(fl, args, "CIPHERDIR", "DEST")
	if err != nil {
		return err
	}
	start := time.Now()
	vol, err := loadVolume(pos[0])
	if err != nil {
		return err
	}
	dest, files, bytes, err := prepareDest(vol.Dir, pos[1])
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	keys, err := unwrapKeyring(ctx, vol, o, stderr)
	if err != nil {
		return err
	}
	defer keys.close()
	e := &exportRun{vol: vol, keys: keys, dest: dest, keepGoing: *keepGoing, stderr: stderr,
		root: os.Geteuid() == 0, links: map[[2]uint64]string{}, prog: newProgress(stderr, "export", files, bytes)}
	err = e.run(ctx, cancel)
	e.prog.done()
	switch {
	case e.fatal != nil:
		return e.fatal
	case err != nil:
		return fail(exitError, "export stopped: %v; %s holds a partial export", err, dest)
	}
	if n, x := e.droppedSetID.Load(), e.droppedXattrs.Load(); n+x > 0 {
		fmt.Fprintf(stderr, "kmsfs: export: left out %d set-user-ID or set-group-ID bits and %d trusted.* or security.* xattrs (file capabilities, labels): CIPHERDIR's metadata is not authenticated, so export grants no privilege on its word; set them again by hand where they belong\n", n, x)
	}
	n := e.count
	fmt.Fprintf(stdout, "kmsfs export: %s: %d files (%s), %d directories, %d symlinks, %d hard links, %d FIFOs into %s in %.1fs with %d key service calls%s\n",
		vol.Dir, n.files, humanBytes(n.plain), n.dirs, n.symlinks, n.links, n.fifos, dest, time.Since(start).Seconds(), keyCalls(keys), identityNote(keys.byIdentity.Load()))
	switch {
	case e.damaged > 0:
		return fail(exitDamage, "export: %d files are damaged: what could not be read is listed above", e.damaged)
	case e.notKept > 0:
		return fail(exitError, "export: %d things could not be kept in %s (listed above)", e.notKept, dest)
	}
	return nil
}

// identityNote says how many keys the recovery identity unwrapped, if
// any: the key service calls counted before it include any the service
// refused for those keys.
func identityNote(n int64) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprintf(", %d keys unwrapped with the recovery identity", n)
}

func keyCalls(k *offlineKeys) int64 {
	n, _ := k.metrics.Calls("decrypt")
	return n
}

// prepareDest checks DEST: outside CIPHERDIR (after symlinks, and through
// bind mounts), and a new or empty directory, which it makes if need be.
// Nothing is overwritten. It returns DEST's absolute path, and CIPHERDIR's
// regular files and their stored bytes, counted by the same walk.
func prepareDest(cipherDir, dest string) (string, int, int64, error) {
	dest, err := filepath.Abs(dest)
	if err != nil {
		return "", 0, 0, err
	}
	realCipher, err := filepath.EvalSymlinks(cipherDir)
	if err != nil {
		return "", 0, 0, fail(exitVolume, "%s: %v", cipherDir, err)
	}
	// The nearest existing ancestor, resolved, with the rest of the path.
	existing, rest := dest, ""
	for {
		if _, err := os.Lstat(existing); err == nil || existing == filepath.Dir(existing) {
			break
		}
		existing, rest = filepath.Dir(existing), filepath.Join(filepath.Base(existing), rest)
	}
	realDest, err := filepath.EvalSymlinks(existing)
	if err != nil {
		return "", 0, 0, fail(exitUsage, "DEST %s: %v", dest, err)
	}
	realDest = filepath.Join(realDest, rest)
	if realDest == realCipher || strings.HasPrefix(realDest, realCipher+string(filepath.Separator)) {
		return "", 0, 0, fail(exitUsage, "DEST %s is inside CIPHERDIR %s: export to a directory outside it", dest, cipherDir)
	}
	// One walk counts the files (for the progress bar) and looks for
	// DEST's nearest existing directory among CIPHERDIR's.
	var want unix.Stat_t
	if err := unix.Stat(existing, &want); err != nil {
		return "", 0, 0, fail(exitUsage, "DEST %s: %v", dest, err)
	}
	files, bytes, in, err := surveyFiles(cipherDir, &want)
	if err != nil {
		return "", 0, 0, fail(exitVolume, "walk %s: %v", cipherDir, err)
	}
	if in != "" {
		what := "its directory " + in
		if in == "." {
			what = "CIPHERDIR itself"
		}
		return "", 0, 0, fail(exitUsage, "DEST %s is inside CIPHERDIR %s (%s is %s, through a bind mount): export to a directory outside it", dest, cipherDir, existing, what)
	}
	if _, err := os.Lstat(dest); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(dest), 0o700); err != nil {
			return "", 0, 0, fail(exitError, "create DEST: %v", err)
		}
		// Mkdir, not MkdirAll: one made by someone else meanwhile is
		// checked below as any existing DEST, not taken as export's.
		err := os.Mkdir(dest, 0o700)
		if err == nil {
			return dest, files, bytes, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return "", 0, 0, fail(exitError, "create DEST: %v", err)
		}
	}
	if err := checkDestOwner(dest); err != nil {
		return "", 0, 0, err
	}
	if ents, err := os.ReadDir(dest); err != nil {
		return "", 0, 0, fail(exitUsage, "DEST %s: %v", dest, err)
	} else if len(ents) > 0 {
		return "", 0, 0, fail(exitUsage, "DEST %s is not empty: export into a new or empty directory", dest)
	}
	return dest, files, bytes, nil
}

// checkDestOwner refuses an existing DEST that someone else could change
// while export writes beneath it: not owned by this user, or writable by
// group or others (or a symlink someone else owns). Such a one could have
// a subdirectory swapped for a symlink during the run, and files (made by
// root, if export runs as root) land outside DEST. A DEST export makes is
// its own, mode 0700, and stays so until the last file is in.
func checkDestOwner(dest string) error {
	euid := uint32(os.Geteuid())
	var st unix.Stat_t
	if err := unix.Lstat(dest, &st); err != nil {
		return fail(exitUsage, "DEST %s: %v", dest, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		if st.Uid != euid {
			return fail(exitUsage, "DEST %s is a symlink owned by uid %d, not by this user (%d): export into a new directory", dest, st.Uid, euid)
		}
		if err := unix.Stat(dest, &st); err != nil {
			return fail(exitUsage, "DEST %s: %v", dest, err)
		}
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return fail(exitUsage, "DEST %s is not a directory: export into a new or empty directory", dest)
	case st.Uid != euid:
		return fail(exitUsage, "DEST %s is owned by uid %d, not by this user (%d), who could change it during the export: export into a new directory (kmsfs export makes it), or chown it first", dest, st.Uid, euid)
	case st.Mode&0o022 != 0:
		return fail(exitUsage, "DEST %s is writable by group or others (mode %04o), who could change it during the export: export into a new directory (kmsfs export makes it), or chmod go-w it first", dest, st.Mode&0o7777)
	}
	return nil
}

type exportRun struct {
	vol       *volume.Volume
	keys      *offlineKeys
	dest      string
	keepGoing bool
	root      bool // euid 0: owners are kept
	stderr    io.Writer
	prog      *progress

	// Kept by the walk:
	links map[[2]uint64]string // (dev, ino) of a multiply linked object: its first path in DEST
	dirs  []dirMeta            // directories, parents first, to finish once their contents are in

	// Kept by the consumer:
	count   exportCounts
	damaged int   // files with damage (--keep-going)
	notKept int   // metadata DEST did not take
	fatal   error // stops the run: a key service failure, or damage without --keep-going

	// What setMeta (run by the workers) left out on purpose.
	droppedSetID, droppedXattrs atomic.Int64
}

type exportCounts struct {
	files, dirs, symlinks, links, fifos int
	plain                               int64
}

type dirMeta struct {
	target string
	st     unix.Stat_t
	xattrs []xattr
}

// exportResult is what exporting one object did, for the consumer.
type exportResult struct {
	kind    string // "file", "dir", "symlink", "fifo", "link", or "" (not exported)
	stored  int64
	plain   int64
	notes   []string // one line each on stderr: damage, and what was not kept
	damaged bool
	notKept int
	fatal   error
	link    [2]string // for kind "link": the first path, and the new one
}

func (e *exportRun) run(ctx context.Context, cancel func()) error {
	var rootSt unix.Stat_t
	if err := unix.Lstat(e.vol.Dir, &rootSt); err != nil {
		return err
	}
	rootX, err := e.sourceXattrs(e.vol.Dir, false)
	if err != nil {
		return err
	}
	err = runOrdered(offlineWorkers, func(submit func(func() exportResult)) error {
		return volume.Walk(e.vol.Dir, func(en volume.Entry) error {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return e.visit(ctx, en, submit)
		})
	}, func(r exportResult) {
		if r.fatal != nil {
			if e.fatal == nil {
				e.fatal = r.fatal
				cancel()
			}
			return
		}
		if r.kind == "link" {
			if err := os.Link(r.link[0], r.link[1]); err != nil {
				r.notes = append(r.notes, fmt.Sprintf("%s: not exported: a hard link to %s: %v", quoteName(r.link[1]), quoteName(r.link[0]), err))
				r.notKept++
			}
		}
		e.consume(r)
	})
	if e.fatal != nil || err != nil {
		return err
	}
	// Directories last, children before parents, so their times stay.
	for i := len(e.dirs) - 1; i >= 0; i-- {
		d := e.dirs[i]
		e.consume(exportResult{notes: e.setMeta(d.target, &d.st, d.xattrs, false), notKept: -1})
	}
	e.consume(exportResult{notes: e.setMeta(e.dest, &rootSt, rootX, false), notKept: -1})
	return nil
}

// consume counts r and prints its notes. notKept -1 counts each note as
// a thing not kept.
func (e *exportRun) consume(r exportResult) {
	switch r.kind {
	case "file":
		e.prog.file(r.stored)
		e.count.files++
		e.count.plain += r.plain
	case "dir":
		e.count.dirs++
	case "symlink":
		e.count.symlinks++
	case "fifo":
		e.count.fifos++
	case "link":
		// The progress total counts a file once, whatever its names.
		e.count.links++
	}
	if r.notKept < 0 {
		r.notKept = len(r.notes)
	}
	if r.damaged {
		e.damaged++
	}
	e.notKept += r.notKept
	if len(r.notes) > 0 {
		e.prog.clear()
	}
	for _, n := range r.notes {
		fmt.Fprintln(e.stderr, "kmsfs:", oneLine(n))
	}
}

// visit exports one object of the walk: regular files on the workers,
// everything else here (it needs the parent's descriptor, valid only
// now). Results go through submit, in walk order.
func (e *exportRun) visit(ctx context.Context, en volume.Entry, submit func(func() exportResult)) error {
	done := func(r exportResult) { submit(func() exportResult { return r }) }
	target := filepath.Join(e.dest, filepath.FromSlash(en.Rel))
	name := quoteName(en.Rel) // for messages
	var st unix.Stat_t
	if err := unix.Fstatat(en.DirFd, en.Name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		done(e.unreadable(name, err))
		return nil
	}
	if isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR; isDir != en.Type.IsDir() {
		// The walk descends by the listing's type, and DEST is made by
		// this one. A directory swapped for a symlink between the two
		// would have DEST/d made a symlink and the walk write the
		// directory's files through it, outside DEST. So neither.
		done(e.failed(name, errors.New("it changed while it was exported (a directory became something else, or the reverse): export again")))
		if en.Type.IsDir() {
			return volume.SkipDir
		}
		return nil
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR && st.Nlink > 1 {
		id := [2]uint64{st.Dev, st.Ino}
		if first, ok := e.links[id]; ok {
			done(exportResult{kind: "link", link: [2]string{first, target}})
			return nil
		}
		e.links[id] = target
	}
	if testOnlyAfterStat != nil {
		testOnlyAfterStat(en)
	}
	// Its xattrs are read by name, never following it: an object swapped
	// for a symlink since the Fstatat above would otherwise have the
	// xattrs of what it points to, outside CIPHERDIR, read and exported.
	proc := "/proc/self/fd/" + strconv.Itoa(en.DirFd) + "/" + en.Name
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		x, err := e.sourceXattrs(proc, true)
		if err == nil {
			err = os.Mkdir(target, 0o700)
		}
		if err != nil {
			done(e.failed(name, err))
			return volume.SkipDir
		}
		e.dirs = append(e.dirs, dirMeta{target: target, st: st, xattrs: x})
		done(exportResult{kind: "dir"})
	case unix.S_IFLNK:
		to, err := readlinkat(en.DirFd, en.Name)
		var x []xattr
		if err == nil {
			x, err = e.sourceXattrs(proc, true)
		}
		if err == nil {
			err = os.Symlink(to, target)
		}
		if err != nil {
			done(e.failed(name, err))
			return nil
		}
		notes := e.setMeta(target, &st, x, true)
		done(exportResult{kind: "symlink", notes: notes, notKept: len(notes)})
	case unix.S_IFIFO:
		x, err := e.sourceXattrs(proc, true)
		if err == nil {
			err = unix.Mknod(target, unix.S_IFIFO|0o600, 0)
		}
		if err != nil {
			done(e.failed(name, err))
			return nil
		}
		notes := e.setMeta(target, &st, x, false)
		done(exportResult{kind: "fifo", notes: notes, notKept: len(notes)})
	case unix.S_IFREG:
		f, err := volume.OpenFile(en.DirFd, en.Name)
		if err != nil {
			done(e.unreadable(name, err))
			return nil
		}
		submit(func() exportResult { return e.exportFile(ctx, name, f, &st, target) })
	default:
		what := map[uint32]string{unix.S_IFSOCK: "a socket", unix.S_IFCHR: "a character device", unix.S_IFBLK: "a block device"}[st.Mode&unix.S_IFMT]
		done(exportResult{notes: []string{name + ": not exported: " + what + " (export makes no sockets or device nodes)"}})
	}
	return nil
}

// testOnlyAfterStat, if set, runs in visit between its look at an object
// and its reads of it: a test swaps the object there.
var testOnlyAfterStat func(volume.Entry)

// unreadable: an object of CIPHERDIR that cannot be read. Damage with
// --keep-going, otherwise the end of the run.
func (e *exportRun) unreadable(rel string, err error) exportResult {
	if !e.keepGoing {
		return exportResult{fatal: fail(exitError, "export stopped: %s: %v", rel, err)}
	}
	return exportResult{damaged: true, notes: []string{rel + ": not exported: " + err.Error()}}
}

// failed: an object DEST did not take.
func (e *exportRun) failed(rel string, err error) exportResult {
	return exportResult{fatal: fail(exitError, "export stopped: %s: %v", rel, err)}
}

// exportFile decrypts the stored file f into target, sparse where whole
// blocks are zeros, then gives it f's metadata. rel names it in messages
// (quoteName).
func (e *exportRun) exportFile(ctx context.Context, rel string, f *os.File, st *unix.Stat_t, target string) (r exportResult) {
	defer f.Close()
	r = exportResult{kind: "file", stored: st.Size}
	if ctx.Err() != nil {
		return exportResult{}
	}
	x, err := e.sourceXattrs("/proc/self/fd/"+strconv.Itoa(int(f.Fd())), false)
	if err != nil {
		return e.unreadable(rel, err)
	}
	pf, err := openPlain(ctx, e.vol, e.keys.kr, f)
	var he *headerError
	switch {
	case errors.As(err, &he):
		if !e.keepGoing {
			return exportResult{fatal: fail(exitDamage, "export stopped: %s cannot be decrypted: %v; %s holds a partial export (--keep-going exports the rest)", rel, he, e.dest)}
		}
		return exportResult{damaged: true, notes: []string{rel + ": not exported: it cannot be decrypted: " + he.Error()}}
	case keyServiceFailure(err):
		return exportResult{fatal: keyError("export stopped at "+rel, err)}
	case err != nil:
		return e.unreadable(rel, err)
	}
	defer pf.wipe()
	// Before DEST gets the file: a final block that fails leaves its size
	// unknown (it could be terabytes of holes). With --keep-going the
	// file is exported up to the end of the last block before it that
	// authenticates (blockfile.Authentic looks back a bounded way), or
	// not at all; a stored size no writer leaves stops the export here.
	var salvaged string
	if err := pf.finalBlock(); err != nil {
		msg := pf.finalBlockMessage(rel, err)
		switch {
		case msg == "":
			return e.unreadable(rel, err)
		case !e.keepGoing:
			return exportResult{fatal: fail(exitDamage, "export stopped: %s; %s holds a partial export (--keep-going exports the rest)", msg, e.dest)}
		}
		idx, ok, aerr := pf.bf.Authentic(pf.size)
		if aerr != nil {
			return e.unreadable(rel, aerr)
		}
		if !ok {
			return exportResult{damaged: true, notes: []string{msg + ": not exported (no block near its end authenticates)"}}
		}
		pf.upTo = min(int64(idx+1)*e.vol.Layout.BlockSize, pf.size)
		salvaged = fmt.Sprintf("%s: exported up to byte %d, the end of block %d, the last that authenticates", msg, pf.upTo, idx)
	}
	if pf.sizeErr != nil && !e.keepGoing {
		return exportResult{fatal: fail(exitDamage, "export stopped: %s: damaged at plaintext offset %d: the stored file ends in %d bytes that cannot hold a block (it was cut, or appended to); %s holds a partial export (--keep-going exports the readable part)", rel, pf.size, pf.stored-e.vol.Layout.CipherSize(pf.size), e.dest)}
	}
	out, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return e.failed(rel, err)
	}
	bs := int(e.vol.Layout.BlockSize)
	err = pf.read(true, func(off int64, p []byte) error {
		for i := 0; i < len(p); i += bs {
			b := p[i:min(i+bs, len(p))]
			if allZero(b) {
				continue // a hole in DEST
			}
			if _, err := out.WriteAt(b, off+int64(i)); err != nil {
				return err
			}
		}
		return nil
	}, func(idx uint64, off, n int64) error {
		if !e.keepGoing {
			return fail(exitDamage, "export stopped: %s: block %d (plaintext bytes %d-%d) fails authentication: damaged or tampered with; %s holds a partial export (--keep-going writes zeros for it and goes on)", rel, idx, off, off+n-1, e.dest)
		}
		r.damaged = true
		r.notes = append(r.notes, fmt.Sprintf("%s: block %d (plaintext bytes %d-%d) fails authentication: exported as zeros", rel, idx, off, off+n-1))
		return nil
	})
	if err == nil {
		size := pf.size
		if pf.upTo > 0 {
			size = pf.upTo
		}
		err = out.Truncate(size)
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(target)
		var ce *cliError
		if errors.As(err, &ce) {
			return exportResult{fatal: err}
		}
		return e.failed(rel, err)
	}
	if pf.sizeErr != nil {
		msg := fmt.Sprintf("%s: damaged at plaintext offset %d: the stored file ends in %d bytes that cannot hold a block (it was cut, or appended to)", rel, pf.size, pf.stored-e.vol.Layout.CipherSize(pf.size))
		r.damaged = true
		r.notes = append(r.notes, msg+": exported up to there")
	}
	r.plain = pf.size
	if salvaged != "" {
		r.damaged = true
		r.notes = append(r.notes, salvaged)
		r.plain = pf.upTo
	}
	kept := e.setMeta(target, st, x, false)
	r.notes = append(r.notes, kept...)
	r.notKept = len(kept)
	return r
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// setMeta gives the object at target (in DEST) the owner (as root), the
// xattrs, the mode and the times of st, in that order. It returns what
// could not be kept, one line each.
//
// Modes, owners and xattrs in CIPHERDIR are not authenticated: whoever can
// write it can set them. The mount shows them under nosuid, where they
// grant nothing; in DEST they would. So export leaves out the set-user-ID
// and set-group-ID bits of files, and the trusted.* and security.* xattrs
// (file capabilities, overlayfs's redirects, security labels), and says
// how many at the end: set them again by hand where they belong.
func (e *exportRun) setMeta(target string, st *unix.Stat_t, x []xattr, link bool) []string {
	var notes []string
	note := func(what string, err error) {
		notes = append(notes, fmt.Sprintf("%s: %s not kept: %v", quoteName(target), what, err))
	}
	if e.root {
		if err := unix.Lchown(target, int(st.Uid), int(st.Gid)); err != nil {
			note("owner", err)
		}
	}
	for _, a := range x {
		if strings.HasPrefix(a.name, "trusted.") || strings.HasPrefix(a.name, "security.") {
			e.droppedXattrs.Add(1)
			continue
		}
		if err := unix.Lsetxattr(target, a.name, a.value, 0); err != nil {
			note("xattr "+quoteName(a.name), err)
		}
	}
	if !link {
		mode := st.Mode & 0o7777
		if st.Mode&unix.S_IFMT != unix.S_IFDIR && mode&(unix.S_ISUID|unix.S_ISGID) != 0 {
			mode &^= unix.S_ISUID | unix.S_ISGID
			e.droppedSetID.Add(1)
		}
		if err := unix.Chmod(target, mode); err != nil {
			note("mode", err)
		}
	}
	ts := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, target, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		note("times", err)
	}
	return notes
}

// xattr is one extended attribute.
type xattr struct {
	name  string
	value []byte
}

// sourceXattrs reads the xattrs of an object of CIPHERDIR, named by a
// /proc/self/fd path (its own descriptor, or its parent's and its name,
// read with link set, so that a symlink found there is not followed), but
// POSIX ACLs, which kmsfs refuses.
func (e *exportRun) sourceXattrs(path string, link bool) ([]xattr, error) {
	x, err := listXattrs(path, link)
	if errors.Is(err, unix.ENOTSUP) {
		return nil, nil
	}
	return x, err
}

// listXattrs reads every xattr of path (not following it when link), but
// POSIX ACLs.
func listXattrs(path string, link bool) ([]xattr, error) {
	list, get := unix.Listxattr, unix.Getxattr
	if link {
		list, get = unix.Llistxattr, unix.Lgetxattr
	}
	names, err := grow(func(b []byte) (int, error) { return list(path, b) })
	if err != nil || len(names) == 0 {
		return nil, err
	}
	var out []xattr
	for _, n := range strings.Split(strings.TrimSuffix(string(names), "\x00"), "\x00") {
		if n == "system.posix_acl_access" || n == "system.posix_acl_default" {
			continue
		}
		v, err := grow(func(b []byte) (int, error) { return get(path, n, b) })
		if errors.Is(err, unix.ENODATA) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("xattr %s: %w", n, err)
		}
		out = append(out, xattr{name: n, value: v})
	}
	return out, nil
}

// grow calls f with a buffer large enough for its answer (the xattr
// calls' size query, then the call, again if it grew meanwhile).
func grow(f func([]byte) (int, error)) ([]byte, error) {
	for {
		n, err := f(nil)
		if err != nil {
			return nil, err
		}
		b := make([]byte, n)
		n, err = f(b)
		if errors.Is(err, unix.ERANGE) {
			continue
		}
		return b[:n], err
	}
}

// readlinkat reads the target of the symlink name in dirfd.
func readlinkat(dirfd int, name string) (string, error) {
	for size := 256; ; size *= 2 {
		b := make([]byte, size)
		n, err := unix.Readlinkat(dirfd, name, b)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(b[:n]), nil
		}
	}
}
