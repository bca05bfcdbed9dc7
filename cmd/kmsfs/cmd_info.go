package main

import (
	"encoding/json"
	"io"

	"github.com/kmsfs/kmsfs/volume"
)

// infoOutput is the JSON `kmsfs info` prints. The field names are an
// interface (README, "kmsfs info").
type infoOutput struct {
	CipherDir     string `json:"cipherdir"`
	VolumeID      string `json:"volume_id"`
	FormatVersion int    `json:"format_version"`
	BlockSize     int    `json:"block_size"`
	HeaderSize    int    `json:"header_size"`
	// KeyMode is "per-file" or "branch" (a version 1 config is per-file).
	KeyMode string `json:"key_mode"`
	// Branch keys only: how long one wraps new files, and how many key
	// files the store holds.
	BranchKeyRotation string `json:"branch_key_rotation,omitempty"`
	BranchKeys        *int   `json:"branch_keys,omitempty"`
	// The keyrings as the config names them (docs/FORMAT.md).
	Keyrings []volume.KeyringSpec `json:"keyrings"`
	// TrustedCopy compares the config with the copies this machine
	// trusts: "trusted", "differs" or "none".
	TrustedCopy string `json:"trusted_copy"`
}

// cmdInfo prints a volume's settings and whether this machine trusts its
// config. It makes no key service call and reads no file of the volume.
func cmdInfo(args []string, stdout, stderr io.Writer) error {
	fl := newFlagSet("info", "CIPHERDIR", stdout)
	pos, err := parseArgs(fl, args, "CIPHERDIR")
	if err != nil {
		return err
	}
	vol, err := loadVolume(pos[0])
	if err != nil {
		return err
	}
	c := vol.Config
	out := infoOutput{
		CipherDir:     vol.Dir,
		VolumeID:      c.VolumeID,
		FormatVersion: c.FormatVersion,
		BlockSize:     c.BlockSize,
		HeaderSize:    c.HeaderSize,
		KeyMode:       volume.KeyModePerFile,
		Keyrings:      c.Keyrings,
	}
	if c.Branch() {
		ids, err := vol.BranchIDs()
		if err != nil {
			return fail(exitVolume, "%s: %v", vol.Dir, err)
		}
		n := len(ids)
		out.KeyMode, out.BranchKeyRotation, out.BranchKeys = volume.KeyModeBranch, c.Rotation().String(), &n
	}
	t, err := configTrust(vol)
	if err != nil {
		return fail(exitVolume, "%s: %v", volume.ConfigName, err)
	}
	out.TrustedCopy = string(t.state)
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}
