package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/blockcipher"
	"github.com/kmsfs/kmsfs/internal/regfile"
	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/keyring/agekey"
	"github.com/kmsfs/kmsfs/keyring/awskms"
	"github.com/kmsfs/kmsfs/volume"
)

// kmsfs rewrap CIPHERDIR: the keyrings the flags name replace the
// volume's, and every header (in key mode "branch", every branch key
// file) is re-wrapped under them. Data is never re-encrypted: a file
// keeps its data key, so its blocks and its commitment stay; the header
// MAC is recomputed with the key. The steps, each safe to be killed at:
//
//  1. the new keyrings are proven with init's round trip, and must fit
//     the volume's header slot;
//  2. the marker .kmsfs/rewrap/target.json says a rewrap is under way
//     (mounts refuse the volume until it is gone);
//  3. each header is rewritten through a record (volume.RewriteHeader),
//     each branch key file replaced whole; headers already under the new
//     keyrings cost no call, so a second run does only what is left;
//  4. kmsfs.json is replaced (atomically), then this machine's trusted
//     copies, then the marker is removed.
//
// A second run with the same flags after a kill finishes the job: the
// config still names the old keyrings (or, after step 4 began, the new
// ones, which the flags then name too), and files are unwrapped with
// either.

type rewrapFlags struct {
	keys                      keyringFlags
	identity                  string
	parallel                  int
	dryRun, jsonOut, trustCfg bool
}

func cmdRewrap(args []string, stdout, stderr io.Writer) error {
	fl := newFlagSet("rewrap", "[flags] CIPHERDIR", stdout)
	var f rewrapFlags
	f.keys.register(fl)
	fl.StringVar(&f.identity, "identity", "", "age identity `FILE` (age-keygen): unwrap the volume's recovery entries with it too (when the old keys are gone), and check new recipients it holds")
	fl.IntVar(&f.parallel, "parallel", 16, "files rewrapped at once, so at most `N` key service calls in flight")
	fl.BoolVar(&f.dryRun, "dry-run", false, "say what would change; call no key service and write nothing")
	fl.BoolVar(&f.jsonOut, "json", false, "print a JSON summary on stdout")
	fl.BoolVar(&f.trustCfg, "trust-config", false, "trust CIPHERDIR/kmsfs.json as it is now, though it differs from the copy this machine trusts (as kmsfs mount --trust-config)")
	pos, err := parseArgs(fl, args, "CIPHERDIR")
	if err != nil {
		return err
	}
	if f.parallel < 1 || f.parallel > 1024 {
		return fail(exitUsage, "--parallel %d: want 1 to 1024", f.parallel)
	}
	if err := f.keys.check(); err != nil {
		return err
	}
	if len(f.keys.kmsKeys) == 0 && f.keys.localKey == "" {
		return fail(exitUsage, "rewrap needs the new keys: --kms-key (repeatable), --local-key, and any --recipient; they replace the volume's")
	}
	dir, err := filepath.Abs(pos[0])
	if err != nil {
		return err
	}
	vol, err := loadVolume(dir)
	if err != nil {
		return err
	}
	if mnts, err := kmsfsMounts(vol.Dir); err != nil {
		return fail(exitVolume, "look for mounts of %s: %v", vol.Dir, err)
	} else if len(mnts) > 0 {
		return fail(exitVolume, "%s is mounted on %s: unmount it first (kmsfs unmount %s); rewrap works on an unmounted volume", vol.Dir, mnts[0], mnts[0])
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var id *agekey.Identity
	if f.identity != "" {
		if id, err = loadIdentity(f.identity); err != nil {
			return err
		}
	}
	if f.dryRun {
		return rewrapDryRun(vol, &f, stdout)
	}
	return rewrap(context.Background(), vol, &f, id, log, stdout, stderr)
}

// rewrapRun is one rewrap: the new keyrings, the keyrings that unwrap,
// and the counts.
type rewrapRun struct {
	vol     *volume.Volume
	target  []keyring.Keyring    // the new keyrings, in config order
	specs   []volume.KeyringSpec // theirs
	unwrap  keyring.Keyring      // old ∪ new (∪ identity), cheapest first
	byARN   map[string]*awskms.Keyring
	want    [][2]string // (kind, key ID) of the new entries, in order
	calls   callCounts
	mu      sync.Mutex
	failed  []rewrapFailure // guarded by mu
	summary rewrapSummary
}

type rewrapFailure struct {
	Path  string `json:"path"`
	Error string `json:"error"`
}

// callCounts counts the key service calls the files cost (not init's
// round trip of the new keyrings).
type callCounts struct {
	mu                                   sync.Mutex
	decrypt, reEncrypt, encrypt, offline int
	// byIdentity counts the keys the recovery identity unwrapped, where
	// the volume's keys said they were gone (their refused Decrypt calls
	// are counted in decrypt).
	byIdentity atomic.Int64
}

func (c *callCounts) add(p *int) { c.mu.Lock(); *p++; c.mu.Unlock() }

// rewrapSummary is what --json prints.
type rewrapSummary struct {
	VolumeID       string          `json:"volume_id"`
	DryRun         bool            `json:"dry_run"`
	KeyringsBefore []string        `json:"keyrings_before"`
	KeyringsAfter  []string        `json:"keyrings_after"`
	Files          int             `json:"files"`
	Rewrapped      int             `json:"rewrapped"`
	Finished       int             `json:"finished_interrupted"`
	Unchanged      int             `json:"unchanged"`
	Empty          int             `json:"empty"`
	Failed         int             `json:"failed"`
	Failures       []rewrapFailure `json:"failures,omitempty"`
	BranchKeys     int             `json:"branch_keys"`
	BranchRewrap   int             `json:"branch_keys_rewrapped"`
	BranchSkipped  []string        `json:"branch_keys_left,omitempty"` // branch key files that are no branch key of the volume's keys: left as they are
	NewBranchKey   string          `json:"new_branch_key,omitempty"`   // the branch key made at the end, which new files go under
	Calls          map[string]int  `json:"kms_calls"`
	OfflineWraps   int             `json:"offline_wraps"`
	IdentityKeys   int64           `json:"identity_unwraps"`
	Seconds        float64         `json:"seconds"`
	FilesPerSecond float64         `json:"files_per_second"`
}

func rewrap(ctx context.Context, vol *volume.Volume, f *rewrapFlags, id *agekey.Identity, log *slog.Logger, stdout, stderr io.Writer) error {
	start := time.Now()
	keys, err := f.keys.build(ctx, vol.IDHex, buildOptions{bulk: true, identity: id})
	if err != nil {
		return err
	}
	// A local key file made for this run goes again unless the run starts
	// to wrap files to it.
	started := false
	defer func() {
		if !started {
			removeCreated(keys.createdKey)
		}
	}()
	if used, err := volume.HeaderUsedSize(keys.wrapped); err != nil || used+headerSlack > int(vol.Layout.HeaderSize) {
		return fail(exitUsage, "the new keyrings need about %d bytes of header, and this volume's header slot holds %d (chosen at init): name fewer keys", used+headerSlack, vol.Layout.HeaderSize)
	}
	target := *vol.Config
	target.Keyrings = keys.specs
	targetRaw, err := volume.ConfigBytes(&target)
	if err != nil {
		return err
	}
	nowRaw, _ := volume.ConfigBytes(vol.Config)
	if pending, specs := vol.PendingRewrap(); pending && specs != nil && keyringList(specs) != keyringList(keys.specs) {
		return fail(exitVolume, "a rewrap of %s to %s was interrupted: finish it first, with the flags that name those keys", vol.Dir, keyringList(specs))
	}
	r := &rewrapRun{vol: vol, target: keys.members, specs: keys.specs, byARN: map[string]*awskms.Keyring{}}
	var old []keyring.Keyring
	if !bytes.Equal(nowRaw, targetRaw) {
		// The volume's own keyrings, once this machine trusts its config.
		// Any that cannot be loaded is left out: the others, or the new
		// keyrings, or the identity may unwrap.
		ov := keyOverrides{skipUnavailable: true, identityGiven: id != nil, log: log}
		if _, old, err = trustedKeyrings(ctx, vol, f.trustCfg, ov, log); err != nil {
			return err
		}
	} else if err := trustRerun(ctx, vol, f.trustCfg, keys.members, log); err != nil {
		// A run after the config was replaced (the new keyrings unwrap),
		// or one with nothing to do: the fields target keeps from
		// CIPHERDIR are trusted at the end, so they are checked too.
		return err
	}
	r.unwrap = r.unwrapper(old, keys.members, id)
	for _, s := range keys.specs {
		r.want = append(r.want, [2]string{string(s.Kind), specKeyID(s)})
	}
	r.summary = rewrapSummary{VolumeID: vol.IDHex, KeyringsBefore: specList(vol.Config.Keyrings), KeyringsAfter: specList(keys.specs)}

	if err := vol.StartRewrap(keys.specs); err != nil {
		return fail(exitVolume, "%v", err)
	}
	started = true
	if keys.createdKey != "" {
		// Said now, not in the report: a run that fails half way has
		// wrapped files to it already.
		fmt.Fprintf(stderr, "kmsfs: the local key file %s was created: back it up; the files rewrapped to it cannot be read without it\n", keys.createdKey)
	}
	if err := r.run(ctx, f.parallel, stderr); err != nil {
		return err
	}
	if r.summary.Failed > 0 {
		r.report(f.jsonOut, start, stdout)
		return fail(exitError, "%d of %d files could not be rewrapped (first: %s: %s); the others are. Fix the cause and run kmsfs rewrap again with the same flags: it does only what is left. Until then mounts refuse the volume",
			r.summary.Failed, r.summary.Files, quoteName(r.failed[0].Path), r.failed[0].Error)
	}
	if vol.Config.Branch() {
		// New files go under a branch key this run made, not under one
		// it carried over (see BranchKeyring.Rotate).
		bk, err := volume.NewBranchKeyring(vol, keys.kr, time.Minute)
		if err != nil {
			return fail(exitVolume, "%v", err)
		}
		bid, err := bk.Rotate(ctx)
		bk.Close()
		if err != nil {
			return keyError("make a new branch key under the new keys", err)
		}
		r.summary.NewBranchKey = hex.EncodeToString(bid[:])
	}
	// Every header is under the new keyrings: the config says so, then
	// this machine's trusted copies, then the marker goes.
	if err := volume.ReplaceConfig(vol.Dir, &target); err != nil {
		return fail(exitVolume, "write %s: %v (the files are rewrapped: run kmsfs rewrap again to write it)", volume.ConfigName, err)
	}
	paths, err := trustedCopies(vol.IDHex, vol.Dir)
	if err == nil {
		err = keepTrusted(paths, targetRaw)
	}
	if err != nil {
		return fail(exitVolume, "keep the trusted copy of the new %s: %v (run kmsfs rewrap again, or mount once with --trust-config)", volume.ConfigName, err)
	}
	if err := vol.EndRewrap(); err != nil {
		return fail(exitVolume, "remove the rewrap marker: %v", err)
	}
	r.report(f.jsonOut, start, stdout)
	return nil
}

// headerSlack is room kept in the header slot beyond the round trip's
// entries: KMS blobs vary by a few bytes between calls.
const headerSlack = 64

// unwrapper returns the keyring that unwraps the files: old and new
// keyrings, the ones that cost no key service call first, each keyring
// once, then the identity where those cannot answer (recovery). KMS
// keyrings are counted, and remembered by ARN as sources for ReEncrypt.
func (r *rewrapRun) unwrapper(old, target []keyring.Keyring, id *agekey.Identity) keyring.Keyring {
	var offline, kms []keyring.Keyring
	seen := map[string]bool{}
	for _, k := range append(append([]keyring.Keyring{}, old...), target...) {
		switch k := k.(type) {
		case *awskms.Keyring:
			if arn := k.KeyARN(); arn != "" && !seen[arn] {
				seen[arn] = true
				r.byARN[arn] = k
				kms = append(kms, countedDecrypt{k, &r.calls})
			}
		case *keyring.Local:
			if !seen[k.KeyID()] {
				seen[k.KeyID()] = true
				offline = append(offline, k)
			}
		}
	}
	var kr keyring.Keyring
	if all := append(offline, kms...); len(all) > 0 {
		kr = anyOf(all)
	}
	return withIdentity(kr, id, &r.calls.byIdentity, r.vol.Config.Keyrings, r.specs)
}

// countedDecrypt counts a KMS keyring's Decrypt calls.
type countedDecrypt struct {
	*awskms.Keyring
	c *callCounts
}

func (k countedDecrypt) Decrypt(ctx context.Context, w []keyring.WrappedKey, ec keyring.EncryptionContext) (*keyring.DataKey, error) {
	dk, err := k.Keyring.Decrypt(ctx, w, ec)
	if !errors.Is(err, keyring.ErrNoUsableKey) {
		k.c.add(&k.c.decrypt)
	}
	return dk, err
}

func specList(specs []volume.KeyringSpec) []string {
	var out []string
	for _, s := range specs {
		out = append(out, keyringList([]volume.KeyringSpec{s}))
	}
	return out
}

// done reports whether entries are the new keyrings' already (or a
// branch-key volume's file entries, which a rewrap leaves alone).
func (r *rewrapRun) done(entries []keyring.WrappedKey) bool {
	branch := len(entries) > 0
	for _, e := range entries {
		branch = branch && e.Kind == keyring.KindBranch
	}
	if branch {
		return true
	}
	if len(entries) != len(r.want) {
		return false
	}
	for i, e := range entries {
		if string(e.Kind) != r.want[i][0] || e.KeyID != r.want[i][1] {
			return false
		}
	}
	return true
}

// rewrapFor is the volume.Rewrap of headers under context ec(h).
func (r *rewrapRun) rewrapFor(ctx context.Context, ec func(h *blockcipher.Header) keyring.EncryptionContext) volume.Rewrap {
	return volume.Rewrap{
		Done: r.done,
		Unwrap: func(h *blockcipher.Header) (*keyring.DataKey, error) {
			return r.unwrap.Decrypt(ctx, volume.Entries(h), ec(h))
		},
		Entries: func(h *blockcipher.Header, dk *keyring.DataKey) ([]keyring.WrappedKey, error) {
			return r.entries(ctx, volume.Entries(h), dk, ec(h))
		},
	}
}

// entries wraps dk under every new keyring: an entry of the same key is
// kept as it is; a KMS key takes a KMS entry of the same service with
// ReEncrypt; any other is wrapped anew (KMS Encrypt, local, age).
func (r *rewrapRun) entries(ctx context.Context, old []keyring.WrappedKey, dk *keyring.DataKey, ec keyring.EncryptionContext) ([]keyring.WrappedKey, error) {
	var out []keyring.WrappedKey
	for i, m := range r.target {
		if e, ok := findEntry(old, r.want[i]); ok {
			out = append(out, e)
			continue
		}
		if k, ok := m.(*awskms.Keyring); ok {
			if w, ok, err := r.reEncrypt(ctx, k, old, ec); ok || err != nil {
				if err != nil {
					return nil, err
				}
				out = append(out, w)
				continue
			}
			r.calls.add(&r.calls.encrypt)
		} else {
			r.calls.add(&r.calls.offline)
		}
		w, err := m.(keyring.Wrapper).Wrap(ctx, dk, ec)
		if err != nil {
			return nil, err
		}
		out = append(out, w)
	}
	return out, nil
}

// reEncrypt moves an old KMS entry of a trusted key on the same service
// as k to k. ok is false if there is none, or if KMS found the entry
// damaged (the caller then wraps the key it unwrapped).
func (r *rewrapRun) reEncrypt(ctx context.Context, k *awskms.Keyring, old []keyring.WrappedKey, ec keyring.EncryptionContext) (keyring.WrappedKey, bool, error) {
	for _, e := range old {
		src := r.byARN[e.KeyID]
		if e.Kind != keyring.KindAWSKMS || src == nil || !k.SameService(src) {
			continue
		}
		r.calls.add(&r.calls.reEncrypt)
		w, err := k.ReEncrypt(ctx, e, ec)
		if errors.Is(err, keyring.ErrInvalidCiphertext) || errors.Is(err, keyring.ErrNoUsableKey) {
			continue
		}
		return w, err == nil, err
	}
	return keyring.WrappedKey{}, false, nil
}

func findEntry(entries []keyring.WrappedKey, want [2]string) (keyring.WrappedKey, bool) {
	for _, e := range entries {
		if string(e.Kind) == want[0] && e.KeyID == want[1] {
			return e, true
		}
	}
	return keyring.WrappedKey{}, false
}

// run rewraps every branch key file and every file, parallel at a time.
// A key service failure (access denied, a disabled key, throttling after
// the SDK's retries, no answer) stops it, as it stops fsck: the next
// files would fail alike, each after its own calls.
func (r *rewrapRun) run(ctx context.Context, parallel int, stderr io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	files, err := listFiles(r.vol)
	if err != nil {
		return fail(exitVolume, "list the files of %s: %v", r.vol.Dir, err)
	}
	branches, err := r.vol.BranchIDs()
	if err != nil {
		return fail(exitVolume, "list the branch keys of %s: %v", r.vol.Dir, err)
	}
	r.summary.Files, r.summary.BranchKeys = len(files), len(branches)
	now := time.Now()
	for _, id := range branches {
		// Under the context the header's flags name: a key file is
		// unwrapped under its own, and rewritten read-only
		// (volume.RewrapBranch).
		rw := r.rewrapFor(ctx, r.vol.BranchKeyContext)
		created := volume.BranchCreated(id)
		if created.Sub(now) >= volume.MaxBranchClockSkew {
			// Checked once it unwraps: a file that does not is left
			// as it is below, whatever its name says.
			rw.Entries = func(*blockcipher.Header, *keyring.DataKey) ([]keyring.WrappedKey, error) {
				return nil, errBranchAhead
			}
		}
		wrote, err := r.vol.RewrapBranch(id, rw)
		name := volume.BranchStore + "/" + hex.EncodeToString(id[:])
		switch {
		case errors.Is(err, errBranchAhead):
			return fail(exitVolume, "branch key file %s is dated %s, ahead of this machine's clock (%s): rewrap does not carry it over, since a key so dated would wrap new files once its date comes. If this clock is right, the file was planted: move it out of CIPHERDIR and run kmsfs rewrap again; if the clock is wrong, set it first",
				name, created.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
		case err != nil && notABranchKey(err):
			// Mounts ignore it too. Not carried over, it stays what it
			// is: nothing the new keys open.
			r.summary.BranchSkipped = append(r.summary.BranchSkipped, name)
			fmt.Fprintf(stderr, "kmsfs: %s left as it is: it is no branch key of this volume's keys (%v); no file can be read with it: move it out of CIPHERDIR\n", name, err)
		case err != nil:
			return keyError(fmt.Sprintf("rewrap branch key %x", id), err)
		case wrote:
			r.summary.BranchRewrap++
		}
	}
	root, err := unix.Open(r.vol.Dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fail(exitVolume, "open %s: %v", r.vol.Dir, err)
	}
	defer unix.Close(root)
	rw := r.rewrapFor(ctx, func(h *blockcipher.Header) keyring.EncryptionContext { return r.vol.FileContext(h.FileID) })
	prog := newProgress(stderr, "rewrap", len(files), 0)
	work := make(chan string)
	var wg sync.WaitGroup
	var fatal error     // the first key service failure; guarded by r.mu
	var fatalRel string // its file
	for range parallel {
		wg.Go(func() {
			for rel := range work {
				out, err := r.vol.RewrapFile(root, rel, rw)
				if keyServiceFailure(err) {
					r.mu.Lock()
					if fatal == nil && ctx.Err() == nil {
						fatal, fatalRel = err, rel
						cancel()
					}
					r.mu.Unlock()
				}
				if ctx.Err() != nil {
					continue // stopped: left for the next run, not a failure
				}
				r.record(rel, out, err)
				prog.file(0)
			}
		})
	}
	for _, rel := range files {
		if ctx.Err() != nil {
			break
		}
		work <- rel
	}
	close(work)
	wg.Wait()
	prog.done()
	if fatal != nil {
		return keyError(fmt.Sprintf("rewrap stopped at %s (the files done so far stay done; once the key can be used, run it again with the same flags: until then mounts refuse the volume)", quoteName(fatalRel)), fatal)
	}
	return nil
}

// errBranchAhead: a branch key dated ahead of the clock (run).
var errBranchAhead = errors.New("branch key dated ahead of the clock")

// notABranchKey reports whether err, from rewrapping a branch key file,
// says the file is no genuine branch key of the volume (damaged, planted,
// or of another volume) rather than that a key service failed.
func notABranchKey(err error) bool {
	var fe *blockcipher.FormatError
	return errors.As(err, &fe) || errors.Is(err, blockcipher.ErrHeaderAuth) || errors.Is(err, keyring.ErrInvalidCiphertext) ||
		errors.Is(err, keyring.ErrNoUsableKey) || errors.Is(err, regfile.ErrNotRegular) || errors.Is(err, volume.ErrBranchKeyGone)
}

func (r *rewrapRun) record(rel string, out volume.RewrapOutcome, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := &r.summary
	switch {
	case err != nil:
		s.Failed++
		r.failed = append(r.failed, rewrapFailure{Path: rel, Error: err.Error()})
	case out == volume.RewrapRewrote:
		s.Rewrapped++
	case out == volume.RewrapFinished:
		s.Finished++
	case out == volume.RewrapEmpty:
		s.Empty++
	default:
		s.Unchanged++
	}
}

// listFiles lists the regular files of vol (relative paths), each inode
// once: a rewrap visits a hard-linked file once.
func listFiles(vol *volume.Volume) ([]string, error) {
	var out []string
	err := walkFiles(vol, func(e volume.Entry) error {
		out = append(out, e.Rel)
		return nil
	})
	return out, err
}

// walkFiles visits the regular files of vol, each inode once.
func walkFiles(vol *volume.Volume, visit func(volume.Entry) error) error {
	seen := map[[2]uint64]bool{}
	return volume.Walk(vol.Dir, func(e volume.Entry) error {
		if !e.Type.IsRegular() {
			return nil
		}
		var st unix.Stat_t
		if err := unix.Fstatat(e.DirFd, e.Name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
		if st.Nlink > 1 {
			key := [2]uint64{st.Dev, st.Ino}
			if seen[key] {
				return nil
			}
			seen[key] = true
		}
		return visit(e)
	})
}

// report prints the summary: JSON on stdout with --json, else one line.
func (r *rewrapRun) report(jsonOut bool, start time.Time, stdout io.Writer) {
	s := &r.summary
	s.Seconds = time.Since(start).Seconds()
	if s.Seconds > 0 {
		s.FilesPerSecond = float64(s.Files) / s.Seconds
	}
	r.calls.mu.Lock()
	s.Calls = map[string]int{"decrypt": r.calls.decrypt, "re_encrypt": r.calls.reEncrypt, "encrypt": r.calls.encrypt}
	s.OfflineWraps = r.calls.offline
	s.IdentityKeys = r.calls.byIdentity.Load()
	r.calls.mu.Unlock()
	s.Failures = r.failed[:min(len(r.failed), 20)]
	if jsonOut {
		b, _ := json.MarshalIndent(s, "", "  ")
		fmt.Fprintf(stdout, "%s\n", b)
		return
	}
	fmt.Fprintf(stdout, "Rewrapped %d files of %d (%d empty, %d already done, %d finished from an interrupted run, %d failed), %d of %d branch keys, in %.1fs: %d Decrypt, %d ReEncrypt, %d Encrypt.\n",
		s.Rewrapped, s.Files, s.Empty, s.Unchanged, s.Finished, s.Failed, s.BranchRewrap, s.BranchKeys, s.Seconds, s.Calls["decrypt"], s.Calls["re_encrypt"], s.Calls["encrypt"])
	if s.IdentityKeys > 0 {
		fmt.Fprintf(stdout, "%d keys were unwrapped with the recovery identity (the Decrypt calls above include any the key service refused for them).\n", s.IdentityKeys)
	}
	if s.Failed == 0 {
		fmt.Fprintf(stdout, "Keyrings now: %s\n", keyringList(r.specs))
	}
}

// rewrapDryRun says what a rewrap with these flags would change, reading
// only headers: no key service call, no write.
func rewrapDryRun(vol *volume.Volume, f *rewrapFlags, stdout io.Writer) error {
	var want [][2]string
	var after []string
	for _, k := range f.keys.kmsKeys {
		want = append(want, [2]string{string(keyring.KindAWSKMS), k})
		after = append(after, "aws-kms "+k)
	}
	if f.keys.localKey != "" {
		id := "(a new key: " + f.keys.localKey + " would be created)"
		if l, err := keyring.LoadLocal(f.keys.localKey); err == nil {
			id = l.KeyID()
		}
		want = append(want, [2]string{string(keyring.KindLocal), id})
		after = append(after, "local "+id+" file "+f.keys.localKey)
	}
	for _, rc := range f.keys.recipients {
		want = append(want, [2]string{string(keyring.KindAge), rc})
		after = append(after, "age "+rc)
	}
	r := &rewrapRun{vol: vol, want: want}
	s := rewrapSummary{VolumeID: vol.IDHex, DryRun: true, KeyringsBefore: specList(vol.Config.Keyrings), KeyringsAfter: after, Calls: map[string]int{}}
	err := walkFiles(vol, func(e volume.Entry) error {
		s.Files++
		h, err := readHeaderIn(vol, e)
		switch {
		case err != nil:
			s.Failed++
			s.Failures = append(s.Failures, rewrapFailure{Path: e.Rel, Error: err.Error()})
		case h == nil:
			s.Empty++
		case r.done(volume.Entries(h)):
			s.Unchanged++
		default:
			s.Rewrapped++
		}
		return nil
	})
	if err != nil {
		return fail(exitVolume, "list the files of %s: %v", vol.Dir, err)
	}
	ids, _ := vol.BranchIDs()
	s.BranchKeys = len(ids)
	for _, id := range ids {
		if h, err := vol.ReadBranch(id); err == nil && !(volume.ReadOnlyBranch(h) && r.done(volume.Entries(h))) {
			s.BranchRewrap++
		}
	}
	if len(s.Failures) > 20 {
		s.Failures = s.Failures[:20]
	}
	if f.jsonOut {
		b, _ := json.MarshalIndent(s, "", "  ")
		fmt.Fprintf(stdout, "%s\n", b)
		return nil
	}
	fmt.Fprintf(stdout, "Dry run: nothing was changed and no key service was called.\nKeyrings now:   %s\nKeyrings after: [%s]\nWould rewrap %d of %d files (%d empty, %d already under the new keys, %d unreadable) and %d of %d branch keys, then replace %s.\n",
		keyringList(vol.Config.Keyrings), joinList(after), s.Rewrapped, s.Files, s.Empty, s.Unchanged, s.Failed, s.BranchRewrap, s.BranchKeys, volume.ConfigName)
	if pending, _ := vol.PendingRewrap(); pending {
		fmt.Fprintln(stdout, "An interrupted rewrap is pending: this run would finish it.")
	}
	return nil
}

func joinList(s []string) string {
	var b bytes.Buffer
	for i, x := range s {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(x)
	}
	return b.String()
}

// readHeaderIn reads the header of a file Walk visits, without a key.
func readHeaderIn(vol *volume.Volume, e volume.Entry) (*blockcipher.Header, error) {
	f, err := volume.OpenFile(e.DirFd, e.Name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	return vol.ReadHeader(f, st.Size())
}
