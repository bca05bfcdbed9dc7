package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/volume"
)

// The volume config in CIPHERDIR names the keys that every new file's data
// key is wrapped under, and where to reach them. CIPHERDIR is not trusted
// (docs/THREAT_MODEL.md): whoever can write it could add a keyring of
// their own, or point the volume's KMS endpoint at a server of theirs, and
// be sent every new data key. Nothing inside CIPHERDIR can prove the
// config genuine, since the same person could replace the proof along with
// the keys. So kmsfs keeps a copy of the config it trusts outside
// CIPHERDIR: init writes it, or the first mount on a machine that has
// none (trust on first use, as ssh does with host keys). A mount refuses
// a config that differs from that copy, before it contacts any key
// service, unless --trust-config says the change is the operator's.

// trustDir is where the trusted copies live: $XDG_CONFIG_HOME/kmsfs/trusted,
// else ~/.config/kmsfs/trusted, else, for root without a home (a system
// service), /var/lib/kmsfs/trusted.
func trustDir() (string, error) {
	if d, err := defaultKeyDir(); err == nil {
		return filepath.Join(d, "trusted"), nil
	}
	if os.Geteuid() == 0 {
		return "/var/lib/kmsfs/trusted", nil
	}
	return "", errors.New("no $XDG_CONFIG_HOME or home directory to keep the trusted copy of the volume config in: set XDG_CONFIG_HOME")
}

// trustedCopies are the paths of the trusted copies of a volume's config:
// one named by its volume ID, and two by the CIPHERDIR it was found in
// (hashed): its absolute path as given, and its real path. Those catch a
// config whose volume_id was changed too, which would find no copy by ID
// and be trusted anew. Both paths are needed: whoever can write
// CIPHERDIR's parent could make CIPHERDIR a symlink to a directory of
// their own, whose real path has no copy yet; and a volume named through
// a new spelling of its path (a symlinked parent) still has a copy under
// its real path.
func trustedCopies(volumeID, cipherDir string) ([]string, error) {
	d, err := trustDir()
	if err != nil {
		return nil, err
	}
	if abs, err := filepath.Abs(cipherDir); err == nil {
		cipherDir = abs
	}
	paths := []string{filepath.Join(d, volumeID+".json"), dirCopy(d, cipherDir)}
	if real, err := filepath.EvalSymlinks(cipherDir); err == nil && real != cipherDir {
		paths = append(paths, dirCopy(d, real))
	}
	return paths, nil
}

func dirCopy(trustDir, dir string) string {
	h := sha256.Sum256([]byte(dir))
	return filepath.Join(trustDir, "dir-"+hex.EncodeToString(h[:16])+".json")
}

// keepTrusted records raw, a volume's config, as the one this machine
// trusts, under each of paths: written whole (temporary file, fsync,
// rename), readable only by its owner, in a directory only its owner can
// enter.
func keepTrusted(paths []string, raw []byte) error {
	for _, p := range paths {
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return err
		}
		tmp, err := os.CreateTemp(filepath.Dir(p), ".trusted-*")
		if err != nil {
			return err
		}
		_, err = tmp.Write(raw)
		if err == nil {
			err = tmp.Sync()
		}
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp.Name(), p)
		}
		if err != nil {
			os.Remove(tmp.Name())
			return err
		}
	}
	return nil
}

// trustedKeyring builds the keyring of vol's config once this machine
// trusts the config: it matches the trusted copies (compared by meaning,
// not bytes), or the operator accepts a change (accept, --trust-config),
// or, on a machine with no copy at all, the volume's own files attest
// every keyring it names (attest). A changed config is refused before any
// key service is contacted; so is a first use the files do not attest.
func trustedKeyring(ctx context.Context, vol *volume.Volume, accept bool, ov keyOverrides, log *slog.Logger) (keyring.Keyring, error) {
	kr, _, err := trustedKeyrings(ctx, vol, accept, ov, log)
	return kr, err
}

// trustedKeyrings is trustedKeyring that also returns the members, in
// config order.
func trustedKeyrings(ctx context.Context, vol *volume.Volume, accept bool, ov keyOverrides, log *slog.Logger) (keyring.Keyring, []keyring.Keyring, error) {
	name := filepath.Join(vol.Dir, volume.ConfigName)
	t, err := lookupTrust(vol, accept)
	if err != nil {
		return nil, nil, err
	}
	// Before any key file the untrusted config names is read.
	if t.state == trustNone && !accept && ov.requireTrusted {
		return nil, nil, fail(exitVolume, "this machine has no trusted copy of %s%s, and a mount from fstab or with --require-trusted does not trust a volume on first sight: whoever can write CIPHERDIR could have replaced the whole volume. Mount it once by hand (kmsfs mount CIPHERDIR MOUNTPOINT, as the same user), check the keys it names, and unmount", name, trustedWhere())
	}
	ov.configEndpoint = t.state == trustTrusted || accept
	kr, members, err := buildKeyring(ctx, vol.Config, ov)
	if err != nil {
		return nil, nil, err
	}
	if t.state == trustTrusted {
		if t.missing {
			// Trusted here under another name (a new path to the same
			// CIPHERDIR): remember this one too.
			if canon, err := volume.ConfigBytes(vol.Config); err == nil {
				keepTrusted(t.paths, canon)
			}
		}
		return kr, members, nil
	}
	attestedBy := ""
	if !accept {
		if attestedBy, err = attest(ctx, vol, members); err != nil {
			return nil, nil, err
		}
	}
	canon, err := volume.ConfigBytes(vol.Config)
	if err == nil {
		err = keepTrusted(t.paths, canon)
	}
	if err != nil {
		return nil, nil, fail(exitVolume, "keep a trusted copy of %s: %v", name, err)
	}
	if accept {
		log.Warn("trusting the changed volume config (--trust-config)", "config", name, "copies", strings.Join(t.paths, " "), "keyrings", keyringList(vol.Config.Keyrings))
	} else {
		log.Warn("first mount of this volume here: trusting its config from now on, and refusing a changed one; check that these are your keys", "config", name, "keyrings", keyringList(vol.Config.Keyrings), "attested_by", attestedBy, "copies", strings.Join(t.paths, " "))
	}
	return kr, members, nil
}

// trust is how vol's config compares with this machine's trusted copies.
type trust struct {
	state     trustState
	paths     []string // where the trusted copies are (or go)
	differing string   // for trustDiffers: the copy that differs
	missing   bool     // some of the copies do not exist
}

// trustState says whether this machine trusts a volume's config (kmsfs
// info prints it; mount and the offline commands act on it).
type trustState string

const (
	trustTrusted trustState = "trusted" // a copy exists, and every copy there is means this config
	trustDiffers trustState = "differs" // a copy means another config
	trustNone    trustState = "none"    // no copy: this machine never trusted it
)

// configTrust compares vol's config with the copies this machine trusts,
// by volume ID and by CIPHERDIR, without changing them. Copies are
// compared by meaning (parsed, then encoded the one way kmsfs writes
// configs), so a change of spacing is no change. One matching copy is
// trust enough: the volume was reached by a new path, or a copy was
// removed, but this machine has trusted exactly this config before.
func configTrust(vol *volume.Volume) (trust, error) {
	paths, err := trustedCopies(vol.Config.VolumeID, vol.Dir)
	if err != nil {
		return trust{}, err
	}
	now, err := volume.ConfigBytes(vol.Config)
	if err != nil {
		return trust{}, err
	}
	t := trust{state: trustNone, paths: paths}
	for _, p := range paths {
		old, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) {
			t.missing = true
			continue
		}
		if err != nil {
			return trust{}, fmt.Errorf("read the trusted copy %s: %w", p, err)
		}
		if !sameConfig(old, now) {
			t.state, t.differing = trustDiffers, p
			return t, nil
		}
		t.state = trustTrusted
	}
	return t, nil
}

// lookupTrust is configTrust for a mount: a copy that differs is refused,
// unless accept.
func lookupTrust(vol *volume.Volume, accept bool) (trust, error) {
	name := filepath.Join(vol.Dir, volume.ConfigName)
	t, err := configTrust(vol)
	if err != nil {
		return trust{}, fail(exitVolume, "%s: %v", name, err)
	}
	if t.state == trustDiffers && !accept {
		old, _ := os.ReadFile(t.differing)
		return trust{}, fail(exitVolume, "%s differs from the copy of it this machine trusts (%s): %s. Whoever can write CIPHERDIR can change it to be sent the keys of new files, so kmsfs does not mount it. If you changed it yourself, mount once with --trust-config", name, t.differing, configChange(old, vol.Config))
	}
	return t, nil
}

// sameConfig reports whether old, a trusted copy, means the config whose
// canonical bytes (volume.ConfigBytes) are now.
func sameConfig(old, now []byte) bool {
	prev, err := volume.ParseConfig(old)
	if err != nil {
		return false
	}
	canon, err := volume.ConfigBytes(prev)
	return err == nil && bytes.Equal(canon, now)
}

// configChange says how cfg differs from old, the trusted bytes.
func configChange(old []byte, cfg *volume.Config) string {
	prev, err := volume.ParseConfig(old)
	if err != nil {
		return "the trusted copy does not parse (" + err.Error() + ")"
	}
	was, now := keyringList(prev.Keyrings), keyringList(cfg.Keyrings)
	if prev.VolumeID != cfg.VolumeID {
		return "this directory held volume " + prev.VolumeID + " with keyrings " + was + ", and now names volume " + cfg.VolumeID + " with keyrings " + now + " (if you replaced the volume yourself, --trust-config accepts it)"
	}
	if was != now {
		return "its keyrings were " + was + " and are now " + now
	}
	return "its keyrings are unchanged (" + now + ") but " + otherFieldsChange(old, cfg)
}

// keyringList names keyrings for a log line or an error: kind, key, and
// where it is reached.
func keyringList(specs []volume.KeyringSpec) string {
	var parts []string
	for _, s := range specs {
		d := string(s.Kind) + " " + s.KeyID
		if s.KeyARN != "" && s.KeyARN != s.KeyID {
			d += " (" + s.KeyARN + ")"
		}
		if s.Region != "" {
			d += " region " + s.Region
		}
		if s.Endpoint != "" {
			d += " endpoint " + s.Endpoint
		}
		if s.KeyFile != "" {
			d += " file " + s.KeyFile
		}
		parts = append(parts, d)
	}
	return "[" + strings.Join(parts, "; ") + "]"
}

// trustRerun checks the config of a volume whose keyrings are already the
// ones kmsfs rewrap's flags name: a run after an interrupted one replaced
// kmsfs.json, or one with nothing to do. Its keyrings are the operator's,
// but every other field (volume_id, key_mode, branch_key_rotation, the
// sizes) still comes from CIPHERDIR, and the run ends by trusting them:
// so they must be those of this machine's trusted copies. A copy that
// differs in its keyrings alone is the config before the interrupted run
// (killed between replacing kmsfs.json and the copies). With no copy, the
// volume's files attest the keyrings, as on a first mount; accept
// (--trust-config) takes the config as it is.
func trustRerun(ctx context.Context, vol *volume.Volume, accept bool, members []keyring.Keyring, log *slog.Logger) error {
	name := filepath.Join(vol.Dir, volume.ConfigName)
	t, err := lookupTrust(vol, true)
	if err != nil {
		return err
	}
	switch {
	case t.state == trustTrusted:
		return nil
	case accept:
		log.Warn("trusting the changed volume config (--trust-config)", "config", name, "copies", strings.Join(t.paths, " "), "keyrings", keyringList(vol.Config.Keyrings))
		return nil
	case t.state == trustNone:
		by, err := attest(ctx, vol, members)
		if err != nil {
			return err
		}
		log.Warn("first use of this volume here: trusting its config from now on, and refusing a changed one", "config", name, "keyrings", keyringList(vol.Config.Keyrings), "attested_by", by, "copies", strings.Join(t.paths, " "))
		return nil
	}
	for _, p := range t.paths {
		old, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fail(exitVolume, "%s: read the trusted copy %s: %v", name, p, err)
		}
		if diff := otherFieldsChange(old, vol.Config); diff != "" {
			return fail(exitVolume, "%s names the keyrings of these flags already, but differs from the copy of it this machine trusts (%s) in more than its keyrings: %s. Whoever can write CIPHERDIR can change those, and rewrap would trust them from now on; if you changed them yourself, pass --trust-config", name, p, diff)
		}
	}
	return nil
}

// otherFieldsChange says how cfg differs from old, a trusted copy, in
// fields other than its keyrings; "" if in none.
func otherFieldsChange(old []byte, cfg *volume.Config) string {
	prev, err := volume.ParseConfig(old)
	if err != nil {
		return "the trusted copy does not parse (" + err.Error() + ")"
	}
	// Compared whole, so a field added to Config is not missed; the
	// list below only names what changed.
	same := *prev
	same.Keyrings = cfg.Keyrings
	a, errA := volume.ConfigBytes(&same)
	b, errB := volume.ConfigBytes(cfg)
	if errA == nil && errB == nil && bytes.Equal(a, b) {
		return ""
	}
	var out []string
	for _, f := range []struct {
		name     string
		was, now any
	}{
		{"format_version", prev.FormatVersion, cfg.FormatVersion},
		{"volume_id", prev.VolumeID, cfg.VolumeID},
		{"block_size", prev.BlockSize, cfg.BlockSize},
		{"header_size", prev.HeaderSize, cfg.HeaderSize},
		{"features", strings.Join(prev.Features, ","), strings.Join(cfg.Features, ",")},
		{"key_mode", prev.KeyMode, cfg.KeyMode},
		{"branch_key_rotation", prev.BranchKeyRotation, cfg.BranchKeyRotation},
	} {
		if f.was != f.now {
			out = append(out, fmt.Sprintf("%s was %q and is now %q", f.name, fmt.Sprint(f.was), fmt.Sprint(f.now)))
		}
	}
	if len(out) == 0 {
		return "fields other than its keyrings differ"
	}
	return strings.Join(out, ", ")
}
