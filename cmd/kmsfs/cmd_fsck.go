package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/blockfile"
	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/volume"
)

// kmsfs fsck checks an unmounted volume offline: every header (one
// unwrap per file; in a branch-key volume one per branch key), every
// block, every stored size, every journal, the branch key files, and
// what in CIPHERDIR is not the volume's. It writes nothing unless
// --repair, which only settles interrupted writes (blockfile.Settle) and
// says what it did.

// The kinds of problem fsck reports: the "kind" field of its JSON.
const (
	problemHeader      = "header"            // unreadable, malformed, or fails to unwrap or verify: no byte of the file can be read
	problemBlock       = "block"             // a block fails authentication
	problemSize        = "size"              // a stored size no writer produces
	problemInterrupted = "interrupted_write" // the journal holds a write that was cut short (reads still work; --repair settles it)
	problemJournal     = "journal"           // a journal slot holds a record that does not authenticate (no read uses it; --repair erases it)
	problemBranchKey   = "branch_key"        // a branch key file that cannot be read, unwrapped or verified
	problemStray       = "stray"             // in CIPHERDIR, but not part of the volume
	problemUnreadable  = "unreadable"        // could not be read (permissions, I/O error)
)

// fsckProblem is one thing fsck found. The field names are an interface
// (README, "kmsfs fsck").
type fsckProblem struct {
	Path        string  `json:"path"` // relative to CIPHERDIR
	Kind        string  `json:"kind"`
	Block       *uint64 `json:"block,omitempty"`
	Offset      *int64  `json:"offset,omitempty"` // plaintext offset of the block
	Length      int64   `json:"length,omitempty"` // its plaintext bytes
	StoredSize  *int64  `json:"stored_size,omitempty"`
	JournalSlot *int    `json:"journal_slot,omitempty"`
	Message     string  `json:"message"`
	Repaired    string  `json:"repaired,omitempty"` // what --repair did about it
}

// fsckCounts says what was checked.
type fsckCounts struct {
	Files          int   `json:"files"` // regular files
	Blocks         int64 `json:"blocks"`
	PlaintextBytes int64 `json:"plaintext_bytes"`
	Directories    int   `json:"directories"`
	Symlinks       int   `json:"symlinks"`
	Special        int   `json:"special"`    // FIFOs, sockets, devices
	HardLinks      int   `json:"hard_links"` // names of a regular file beyond its first, not checked again
	BranchKeys     int   `json:"branch_keys"`
}

// fsckReport is the JSON document of kmsfs fsck --json.
type fsckReport struct {
	CipherDir       string        `json:"cipherdir"`
	VolumeID        string        `json:"volume_id"`
	KeyMode         string        `json:"key_mode"`
	ConfigTrust     string        `json:"config_trust"` // trusted, none, or differs (with --trust-config)
	Complete        bool          `json:"complete"`     // false: stopped early, error says why
	Error           string        `json:"error,omitempty"`
	Clean           bool          `json:"clean"` // complete, and no problem left unrepaired
	Checked         fsckCounts    `json:"checked"`
	KeyServiceCalls int64         `json:"key_service_calls"`
	IdentityUnwraps int64         `json:"identity_unwraps"`
	Seconds         float64       `json:"seconds"`
	Problems        []fsckProblem `json:"problems"`
}

type fsckRun struct {
	vol    *volume.Volume
	keys   *offlineKeys
	repair bool
	// badBranch holds the branch keys that failed their check: a file
	// under only those is reported without another key service call.
	badBranch map[string]bool
	report    fsckReport
	stdout    io.Writer
	human     bool
	prog      *progress
	fatal     error // a key service failure: the run stops
	// linked holds the (dev, ino) of each regular file with more than
	// one name seen so far: it is checked and counted at its first name.
	linked map[[2]uint64]bool
}

func cmdFsck(args []string, stdout, stderr io.Writer) error {
	fl := newFlagSet("fsck", "[--json] [--repair] [flags] CIPHERDIR", stdout)
	var o offlineFlags
	o.define(fl)
	asJSON := fl.Bool("json", false, "print one JSON document (README, \"kmsfs fsck\") instead of lines")
	repair := fl.Bool("repair", false, "settle interrupted writes (the journal), and say so; nothing else is changed")
	pos, err := parseArgs(fl, args, "CIPHERDIR")
	if err != nil {
		return err
	}
	start := time.Now()
	vol, err := loadVolume(pos[0])
	if err != nil {
		return err
	}
	if *repair {
		// A mount settles its own files' journals; a repair beside it
		// would race the writes it has in flight.
		if mnts, err := kmsfsMounts(vol.Dir); err != nil {
			return fail(exitVolume, "look for mounts of %s: %v", vol.Dir, err)
		} else if len(mnts) > 0 {
			return fail(exitVolume, "%s is mounted on %s: unmount it first (kmsfs unmount %s); fsck --repair works on an unmounted volume (fsck without --repair only reads)", vol.Dir, mnts[0], mnts[0])
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	keys, err := unwrapKeyring(ctx, vol, o, stderr)
	if err != nil {
		return err
	}
	defer keys.close()
	r := &fsckRun{vol: vol, keys: keys, repair: *repair, badBranch: map[string]bool{}, linked: map[[2]uint64]bool{}, stdout: stdout, human: !*asJSON}
	r.report = fsckReport{CipherDir: vol.Dir, VolumeID: vol.IDHex, KeyMode: volume.KeyModePerFile, ConfigTrust: string(keys.trust), Problems: []fsckProblem{}}
	if vol.Config.Branch() {
		r.report.KeyMode = volume.KeyModeBranch
	}
	err = r.run(ctx, cancel, stderr)
	r.report.Seconds = time.Since(start).Seconds()
	r.report.KeyServiceCalls, _ = keys.metrics.Calls("decrypt")
	r.report.IdentityUnwraps = keys.byIdentity.Load()
	r.report.Complete = err == nil
	r.report.Clean = err == nil
	for _, p := range r.report.Problems {
		r.report.Clean = r.report.Clean && p.Repaired != ""
	}
	if err != nil {
		r.report.Error = err.Error()
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r.report); err != nil {
			return err
		}
	} else {
		r.summary()
	}
	switch {
	case err != nil:
		return err
	case !r.report.Clean:
		return fail(exitDamage, "fsck found problems in %s", vol.Dir)
	}
	return nil
}

// run checks the branch keys, the key store, then every object.
func (r *fsckRun) run(ctx context.Context, cancel func(), stderr io.Writer) error {
	if err := r.checkBranchKeys(ctx); err != nil {
		return err
	}
	strays, err := r.vol.StoreStrays()
	if err != nil {
		r.add(fsckProblem{Path: volume.StoreName, Kind: problemUnreadable, Message: err.Error()})
	}
	for _, s := range strays {
		r.add(fsckProblem{Path: s, Kind: problemStray, Message: "not a branch key file of this volume: kmsfs ignores it (remove it once you know what it is)"})
	}
	files, bytes, err := countFiles(r.vol.Dir)
	if err != nil {
		return fail(exitVolume, "walk %s: %v", r.vol.Dir, err)
	}
	r.prog = newProgress(stderr, "fsck", files, bytes)
	defer r.prog.done()
	err = runOrdered(offlineWorkers, func(submit func(func() fileCheck)) error {
		return volume.WalkAll(r.vol.Dir, func(e volume.Entry) error {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return r.visit(ctx, e, submit)
		})
	}, func(c fileCheck) {
		if c.skipped {
			return
		}
		if c.fatal != nil {
			if r.fatal == nil {
				r.fatal = c.fatal
				cancel()
			}
			return
		}
		n := &r.report.Checked
		switch c.object {
		case objectFile:
			r.prog.file(c.stored)
			n.Files++
			n.Blocks += c.blocks
			n.PlaintextBytes += c.plain
		case objectDir:
			n.Directories++
		case objectSymlink:
			n.Symlinks++
		case objectSpecial:
			n.Special++
		case objectLink:
			n.HardLinks++
		}
		for _, p := range c.problems {
			r.add(p)
		}
	})
	if r.fatal != nil {
		return keyError("fsck stopped: a key cannot be used", r.fatal)
	}
	if err != nil {
		return fail(exitError, "walk %s: %v", r.vol.Dir, err)
	}
	return nil
}

// countFiles counts the regular files of the volume and their stored
// bytes, for the progress report.
func countFiles(dir string) (files int, bytes int64, err error) {
	files, bytes, _, err = surveyFiles(dir, nil)
	return files, bytes, err
}

// surveyFiles is countFiles that also finds, among dir and its
// directories, the one that is the directory want, if want is not nil:
// its path relative to dir ("." for dir itself), or "". Export looks so
// for DEST, which a bind mount can put inside CIPHERDIR where no check of
// paths sees it. The count stops where it is found.
func surveyFiles(dir string, want *unix.Stat_t) (files int, bytes int64, found string, err error) {
	var st unix.Stat_t
	is := func() bool { return want != nil && st.Dev == want.Dev && st.Ino == want.Ino }
	linked := map[[2]uint64]bool{}
	if unix.Stat(dir, &st) == nil && is() {
		return 0, 0, ".", nil
	}
	errFound := errors.New("found")
	err = volume.Walk(dir, func(e volume.Entry) error {
		switch {
		case e.Type.IsRegular():
			if unix.Fstatat(e.DirFd, e.Name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil {
				if st.Nlink > 1 {
					id := [2]uint64{st.Dev, st.Ino}
					if linked[id] {
						return nil
					}
					linked[id] = true
				}
				files++
				bytes += st.Size
			}
		case want != nil && e.Type.IsDir():
			if unix.Fstatat(e.DirFd, e.Name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && is() {
				found = e.Rel
				return errFound
			}
		}
		return nil
	})
	if errors.Is(err, errFound) {
		err = nil
	}
	return files, bytes, found, err
}

// visit sorts one object of the walk. Everything it finds goes through
// submit, so that the report is kept by one goroutine, in walk order;
// regular files are checked by the workers.
func (r *fsckRun) visit(ctx context.Context, e volume.Entry, submit func(func() fileCheck)) error {
	found := func(c fileCheck) { submit(func() fileCheck { return c }) }
	problem := func(kind, msg string) fileCheck {
		return fileCheck{problems: []fsckProblem{{Path: e.Rel, Kind: kind, Message: msg}}}
	}
	switch {
	case e.Reserved:
		if e.IsRoot && (e.Name == volume.ConfigName || e.Name == volume.StoreName) {
			return nil // read already (the config), or checked (the store)
		}
		what := "a kmsfs temporary file, left by an interrupted kmsfs or put here by someone else"
		if e.IsRoot && !strings.HasPrefix(e.Name, volume.TempPrefix) {
			what = "a volume config being written when kmsfs init was interrupted"
		}
		found(problem(problemStray, what+": not part of the volume (remove it once you know what it is)"))
	case e.Type.IsDir():
		// Walk would stop at a directory it cannot open: report it and
		// go on with the rest.
		fd, err := unix.Openat(e.DirFd, e.Name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			found(problem(problemUnreadable, "directory: "+err.Error()))
			return volume.SkipDir
		}
		unix.Close(fd)
		found(fileCheck{object: objectDir})
	case e.Type&fs.ModeSymlink != 0:
		found(fileCheck{object: objectSymlink})
	case e.Type.IsRegular():
		f, err := volume.OpenFile(e.DirFd, e.Name)
		if err != nil {
			found(problem(problemUnreadable, err.Error()))
			return nil
		}
		var st unix.Stat_t
		if unix.Fstat(int(f.Fd()), &st) == nil && st.Nlink > 1 {
			id := [2]uint64{st.Dev, st.Ino}
			if r.linked[id] {
				f.Close()
				found(fileCheck{object: objectLink})
				return nil
			}
			r.linked[id] = true
		}
		submit(func() fileCheck { return r.checkFile(ctx, e.Rel, f) })
	default:
		// FIFOs, sockets and devices are made through the mount
		// (mknod) and stored as themselves: nothing to check.
		found(fileCheck{object: objectSpecial})
	}
	return nil
}

// checkBranchKeys unwraps and verifies every branch key file (one key
// service call each), and holds them for the files under them.
func (r *fsckRun) checkBranchKeys(ctx context.Context) error {
	if r.keys.branch == nil {
		return nil
	}
	ids, err := r.vol.BranchIDs()
	if err != nil {
		r.add(fsckProblem{Path: volume.BranchStore, Kind: problemUnreadable, Message: err.Error()})
		return nil
	}
	for _, id := range ids {
		name := hex.EncodeToString(id[:])
		r.report.Checked.BranchKeys++
		err := r.keys.branch.Load(ctx, id)
		if err == nil {
			continue
		}
		if keyServiceFailure(err) {
			return keyError("fsck stopped: a key cannot be used", err)
		}
		r.badBranch[name] = true
		r.add(fsckProblem{Path: volume.BranchStore + "/" + name, Kind: problemBranchKey,
			Message: "branch key file: " + err.Error() + ": every file under this branch key is unreadable"})
	}
	return nil
}

// fileCheck is what checking one object found.
type fileCheck struct {
	object                int // objectFile, ...; 0 for what is not the volume's
	stored, plain, blocks int64
	problems              []fsckProblem
	fatal                 error // a key service failure: the run stops
	skipped               bool  // not checked: the run was stopping
}

const (
	objectFile = 1 + iota
	objectDir
	objectSymlink
	objectSpecial
	objectLink // another name of a regular file checked at its first
)

func (r *fsckRun) checkFile(ctx context.Context, rel string, f *os.File) (c fileCheck) {
	defer f.Close()
	c.object = objectFile
	add := func(p fsckProblem) { p.Path = rel; c.problems = append(c.problems, p) }
	if st, err := f.Stat(); err == nil {
		c.stored = st.Size()
	}
	if ctx.Err() != nil {
		c.skipped = true
		return c
	}
	if msg := r.underBadBranch(f, c.stored); msg != "" {
		add(fsckProblem{Kind: problemHeader, Message: msg})
		return c
	}
	pf, err := openPlain(ctx, r.vol, r.keys.kr, f)
	var he *headerError
	switch {
	case errors.As(err, &he):
		add(fsckProblem{Kind: problemHeader, Message: headerMessage(he)})
		return c
	case keyServiceFailure(err):
		c.fatal = err
		return c
	case err != nil:
		add(fsckProblem{Kind: problemUnreadable, Message: err.Error()})
		return c
	}
	defer pf.wipe()
	c.plain = pf.size
	if pf.stored == 0 {
		return c
	}
	l := r.vol.Layout
	c.blocks = int64(l.BlockCount(pf.size))
	if pf.sizeErr != nil {
		stored := pf.stored
		add(fsckProblem{Kind: problemSize, StoredSize: &stored,
			Message: fmt.Sprintf("stored size %d is not one kmsfs writes: the last %d bytes cannot hold a block (the file was cut, or appended to); the %d plaintext bytes before them are checked",
				stored, stored-l.CipherSize(pf.size), pf.size)})
	}
	slots, err := pf.bf.Journal(pf.stored)
	if err != nil {
		add(fsckProblem{Kind: problemUnreadable, Message: "journal: " + err.Error()})
		return c
	}
	var journal []fsckProblem
	for _, s := range slots {
		slot, block := s.Slot, s.Block
		switch {
		case !s.Valid:
			journal = append(journal, fsckProblem{Kind: problemJournal, JournalSlot: &slot,
				Message: fmt.Sprintf("journal slot %d holds a record that does not authenticate (torn as it was written, damaged, or forged): no read uses it", slot)})
		case s.Torn:
			journal = append(journal, fsckProblem{Kind: problemInterrupted, Block: &block, JournalSlot: &slot,
				Message: fmt.Sprintf("a write to block %d was interrupted and tore it: reads take the block from its journal record until the record is put in place", block)})
		default:
			journal = append(journal, fsckProblem{Kind: problemInterrupted, Block: &block, JournalSlot: &slot,
				Message: fmt.Sprintf("a write to block %d was interrupted after the block was in place: its journal record is left over", block)})
		}
	}
	err = pf.read(true, func(int64, []byte) error { return nil }, func(idx uint64, off, n int64) error {
		add(fsckProblem{Kind: problemBlock, Block: &idx, Offset: &off, Length: n,
			Message: fmt.Sprintf("block %d (plaintext bytes %d-%d) fails authentication: damaged (torn by a crash, or changed by someone)", idx, off, off+n-1)})
		return nil
	})
	if err != nil {
		add(fsckProblem{Kind: problemUnreadable, Message: err.Error()})
	}
	if r.repair && len(journal) > 0 {
		r.settle(f, pf, journal)
	}
	for _, p := range journal {
		add(p)
	}
	return c
}

// underBadBranch says why a file is unreadable without a key service
// call, if its header wraps its key only under branch keys that failed
// their check; "" otherwise.
func (r *fsckRun) underBadBranch(f *os.File, stored int64) string {
	if len(r.badBranch) == 0 || stored == 0 {
		return ""
	}
	h, err := r.vol.ReadHeader(f, stored)
	if err != nil {
		return ""
	}
	var names []string
	for _, w := range volume.Entries(h) {
		if w.Kind != keyring.KindBranch || !r.badBranch[w.KeyID] {
			return ""
		}
		names = append(names, w.KeyID)
	}
	return "its data key is wrapped under branch key " + strings.Join(names, " and ") + ", which failed its check (" + volume.BranchStore + "/" + names[0] + ")"
}

// headerMessage says what is wrong with a header.
func headerMessage(he *headerError) string {
	switch {
	case errors.Is(he, keyring.ErrNoUsableKey):
		return "no wrapped key in the header names a key of this volume's config: " + he.err.Error()
	case errors.Is(he, keyring.ErrInvalidCiphertext):
		return "the key service does not unwrap its data key for this file (damaged, or moved from another file or volume): " + he.err.Error()
	}
	return he.err.Error()
}

// settle finishes what the journal holds (blockfile.File.Settle), through
// a descriptor of the same file opened for writing, and notes on each of
// the journal's problems what was done.
func (r *fsckRun) settle(f *os.File, pf *plainFile, journal []fsckProblem) {
	w, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), os.O_RDWR, 0)
	if err == nil {
		defer w.Close()
		_, err = blockfile.File{C: pf.bf.C, S: w}.Settle(pf.stored)
		if err == nil {
			err = w.Sync()
		}
	}
	for i := range journal {
		p := &journal[i]
		switch {
		case err != nil:
			p.Message += "; --repair failed: " + err.Error()
		case p.Kind == problemJournal:
			p.Repaired = "erased the slot"
		case strings.Contains(p.Message, "tore it"):
			p.Repaired = fmt.Sprintf("put block %d in place from its journal record, and erased the record", *p.Block)
		default:
			p.Repaired = "erased the left-over record"
		}
	}
}

// add records a problem and, in human mode, prints it at once.
func (r *fsckRun) add(p fsckProblem) {
	r.report.Problems = append(r.report.Problems, p)
	if !r.human {
		return
	}
	if r.prog != nil {
		r.prog.clear()
	}
	line := quoteName(p.Path) + ": " + p.Kind + ": " + p.Message
	if p.Repaired != "" {
		line += "; repaired: " + p.Repaired
	}
	fmt.Fprintln(r.stdout, oneLine(line))
}

// summary prints the closing line of a human report.
func (r *fsckRun) summary() {
	rep, c := &r.report, r.report.Checked
	files := map[string]bool{}
	left, repaired, repairable := 0, 0, 0
	for _, p := range rep.Problems {
		switch {
		case p.Repaired != "":
			repaired++
		default:
			files[p.Path] = true
			left++
			if p.Kind == problemInterrupted || p.Kind == problemJournal {
				repairable++
			}
		}
	}
	what := fmt.Sprintf("%d files (%d blocks, %s of plaintext), %d directories, %d symlinks, %d other", c.Files, c.Blocks, humanBytes(c.PlaintextBytes), c.Directories, c.Symlinks, c.Special)
	if c.HardLinks > 0 {
		what += fmt.Sprintf(", %d more names of files (hard links)", c.HardLinks)
	}
	if rep.KeyMode == volume.KeyModeBranch {
		what += fmt.Sprintf(", %d branch keys", c.BranchKeys)
	}
	verdict := "clean"
	switch {
	case !rep.Complete:
		verdict = fmt.Sprintf("stopped early with %s found so far", plural(left, "problem"))
	case left > 0:
		verdict = fmt.Sprintf("%s in %s", plural(left, "problem"), plural(len(files), "object"))
		if repairable > 0 && !r.repair {
			verdict += fmt.Sprintf(" (%d can be settled with --repair)", repairable)
		}
	}
	if repaired > 0 {
		verdict += fmt.Sprintf("; %d repaired", repaired)
	}
	fmt.Fprintf(r.stdout, "kmsfs fsck: %s: checked %s in %.1fs with %d key service calls%s: %s\n", rep.CipherDir, what, rep.Seconds, rep.KeyServiceCalls, identityNote(rep.IdentityUnwraps), verdict)
}

// plural spells n things, with an s unless n is 1.
func plural(n int, thing string) string {
	if n == 1 {
		return "1 " + thing
	}
	return fmt.Sprintf("%d %ss", n, thing)
}
