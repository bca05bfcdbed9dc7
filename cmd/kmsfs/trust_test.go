package main

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/kmsfs/kmsfs/volume"
)

// TestTrustSurvivesSymlinkSwap: someone who can write the directory holding
// CIPHERDIR (a share, a sync folder) puts a volume of their own beside it,
// with a new volume ID and a KMS keyring of theirs, and turns CIPHERDIR's
// name into a symlink to it. No copy exists for the new volume ID, nor
// for the new directory's real path; the copy kept for the path the
// operator gives must refuse it (found by review: keyed by the real path,
// it was trusted as a first use).
func TestTrustSurvivesSymlinkSwap(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	share := t.TempDir()
	vol := filepath.Join(share, "vault")
	if err := cmdInit([]string{vol}, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	_, raw, err := loadConfig(vol)
	if err != nil {
		t.Fatal(err)
	}
	if err := trustCopies(vol); err != nil {
		t.Fatalf("the volume as init made it: %v", err)
	}
	other := withOtherVolume(t, raw)
	if err := os.Mkdir(filepath.Join(share, ".other"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(share, ".other", "kmsfs.json"), other, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(vol, filepath.Join(share, ".old")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(".other", vol); err != nil {
		t.Fatal(err)
	}
	_, _, err = loadConfig(vol)
	if err != nil {
		t.Fatal(err)
	}
	if err := trustCopies(vol); err == nil {
		t.Error("a config with an added keyring was trusted after CIPHERDIR became a symlink")
	}
}

// TestTrustSurvivesAliasPath: the volume is made as share/real/vault and
// later mounted as share/alias/vault (alias a symlink to real, as $PWD
// or a unit file may spell it), after its kmsfs.json was rewritten in
// place with a new volume ID and an added keyring. The copy kept under
// the real path must refuse it (found by review: keyed only by the path
// as given, it was trusted as a first use).
func TestTrustSurvivesAliasPath(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	share := t.TempDir()
	if err := os.Mkdir(filepath.Join(share, "real"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("real", filepath.Join(share, "alias")); err != nil {
		t.Fatal(err)
	}
	vol := filepath.Join(share, "real", "vault")
	if err := cmdInit([]string{vol}, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	_, raw, err := loadConfig(vol)
	if err != nil {
		t.Fatal(err)
	}
	evil := withOtherVolume(t, raw)
	if err := os.WriteFile(filepath.Join(vol, "kmsfs.json"), evil, 0o600); err != nil {
		t.Fatal(err)
	}
	// Same directory, same path given to init: refused.
	if err := trustCopies(vol); err == nil {
		t.Error("same path: changed config trusted")
	}
	// Same directory through an alias.
	alias := filepath.Join(share, "alias", "vault")
	if err := trustCopies(alias); err == nil {
		t.Error("a config with a new volume ID and an added keyring, written in place, was trusted as a first use when CIPHERDIR was named through a symlinked parent")
	}
}

// withOtherVolume returns config raw with a new volume ID and an added KMS
// keyring at an endpoint of someone else's: the change the trusted copies
// must catch however CIPHERDIR is named.
func withOtherVolume(t *testing.T, raw []byte) []byte {
	t.Helper()
	var c map[string]any
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	c["volume_id"] = "0123456789abcdef0123456789abcdef"
	c["keyrings"] = append(c["keyrings"].([]any), map[string]any{
		"kind": "aws-kms", "key_id": "alias/other",
		"key_arn":  "arn:aws:kms:eu-west-2:999999999999:key/00000000-0000-0000-0000-000000000000",
		"endpoint": "https://kms.example"})
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// loadConfig is loadVolume for the tests of the trusted copies.
func loadConfig(dir string) (*volume.Config, []byte, error) {
	v, err := loadVolume(dir)
	if err != nil {
		return nil, nil, err
	}
	return v.Config, v.Raw, nil
}

// trustCopies checks the volume in dir against this machine's trusted
// copies alone (lookupTrust), without the first-use attestation that
// would refuse an unknown config anyway.
func trustCopies(dir string) error {
	v, err := loadVolume(dir)
	if err != nil {
		return err
	}
	_, err = lookupTrust(v, false)
	return err
}
