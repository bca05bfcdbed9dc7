package main

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	kfs "github.com/kmsfs/kmsfs/fs"
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

// trustedCopy is the path of the trusted copy of volume volumeID's config.
func trustedCopy(volumeID string) (string, error) {
	d, err := trustDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(d, volumeID+".json"), nil
}

// keepTrusted records raw, a volume's config, as the one this machine
// trusts: written whole (temporary file, fsync, rename), readable only by
// its owner.
func keepTrusted(volumeID string, raw []byte) (string, error) {
	p, err := trustedCopy(volumeID)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), "."+volumeID+".tmp-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
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
		return "", err
	}
	return p, nil
}

// checkTrust compares raw, the config just read from cipherDir (cfg is its
// parse), with the copy this machine trusts. With no copy it keeps one and
// logs what it now trusts. With a different copy it refuses, unless accept
// (--trust-config), which replaces the copy.
func checkTrust(cipherDir string, cfg *kfs.Config, raw []byte, accept bool, log *slog.Logger) error {
	name := filepath.Join(cipherDir, kfs.ConfigName)
	p, err := trustedCopy(cfg.VolumeID)
	if err != nil {
		return fail(exitVolume, "%v", err)
	}
	old, err := os.ReadFile(p)
	switch {
	case err == nil && bytes.Equal(old, raw):
		return nil
	case err == nil && !accept:
		return fail(exitVolume, "%s differs from the copy of it this machine trusts (%s): %s. Whoever can write CIPHERDIR can change it to be sent the keys of new files, so kmsfs does not mount it. If you changed it yourself, mount once with --trust-config", name, p, configChange(old, cfg))
	case err != nil && !errors.Is(err, os.ErrNotExist):
		return fail(exitVolume, "read the trusted copy of %s: %v", name, err)
	}
	if _, werr := keepTrusted(cfg.VolumeID, raw); werr != nil {
		return fail(exitVolume, "keep a trusted copy of %s: %v", name, werr)
	}
	if err == nil {
		log.Warn("trusting the changed volume config (--trust-config)", "config", name, "copy", p, "keyrings", keyringList(cfg.Keyrings))
	} else {
		log.Info("first mount of this volume here: its config is trusted from now on, and a changed one refused", "config", name, "copy", p, "keyrings", keyringList(cfg.Keyrings))
	}
	return nil
}

// configChange says how cfg differs from old, the trusted bytes.
func configChange(old []byte, cfg *kfs.Config) string {
	prev, err := kfs.ParseConfig(old)
	if err != nil {
		return "the trusted copy does not parse (" + err.Error() + ")"
	}
	was, now := keyringList(prev.Keyrings), keyringList(cfg.Keyrings)
	if was != now {
		return "its keyrings were " + was + " and are now " + now
	}
	return "its keyrings are unchanged (" + now + ") but other fields differ"
}

// keyringList names keyrings for a log line or an error: kind, key, and
// where it is reached.
func keyringList(specs []kfs.KeyringSpec) string {
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
