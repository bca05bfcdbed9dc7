package main

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"time"

	"github.com/kmsfs/kmsfs/blockcipher"
	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/volume"
)

// inspectOutput is the JSON `kmsfs inspect` prints. The field names are an
// interface: scripts depend on them.
type inspectOutput struct {
	FormatVersion int           `json:"format_version"`
	FileID        string        `json:"file_id"`
	VolumeID      string        `json:"volume_id"`
	BlockSize     int           `json:"block_size"`
	HeaderSize    int           `json:"header_size"`
	PlaintextSize int64         `json:"plaintext_size"`
	WrappedKeys   []wrappedJSON `json:"wrapped_keys"`
	// A branch key file (CIPHERDIR/.kmsfs/branch/ID) instead of a file:
	BranchID      string `json:"branch_id,omitempty"`
	BranchCreated string `json:"branch_created,omitempty"` // RFC 3339
}

type wrappedJSON struct {
	Keyring           string            `json:"keyring"`
	KeyID             string            `json:"key_id"`
	CiphertextBlob    string            `json:"ciphertext_blob"`
	EncryptionContext map[string]string `json:"encryption_context"`
	// For keyring "branch": the branch key's file, relative to CIPHERDIR,
	// whose inspect shows how the key service wraps it.
	BranchKeyFile string `json:"branch_key_file,omitempty"`
}

// cmdInspect prints a cipher file's header. It makes no keyring call and
// needs no volume config: the header carries its own sizes.
func cmdInspect(args []string, stdout, stderr io.Writer) error {
	fl := newFlagSet("inspect", "CIPHERFILE", stdout)
	pos, err := parseArgs(fl, args, "CIPHERFILE")
	if err != nil {
		return err
	}
	path := pos[0]
	// Opened only if it is a regular file: a FIFO in CIPHERDIR would
	// block the open, a device's driver would run.
	f, err := keyring.OpenRegularFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		// Not "not a kmsfs file": there is no file at all.
		return fail(exitError, "no such file: %s", path)
	}
	if errors.Is(err, keyring.ErrNotRegular) {
		return fail(exitInspect, "%s is not a regular file", path)
	}
	if err != nil {
		return fail(exitError, "%v", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fail(exitInspect, "%v", err)
	}
	if !st.Mode().IsRegular() {
		return fail(exitInspect, "%s is not a regular file", path)
	}
	if st.Size() == 0 {
		return fail(exitInspect, "%s is empty: it has no header yet (plaintext size 0)", path)
	}
	h, err := volume.ReadAnyHeader(f, st.Size())
	if err != nil {
		return fail(exitInspect, "%s: %v", path, err)
	}
	layout, _ := h.Layout()
	plain, sizeErr := layout.PlainSize(st.Size())
	out := inspectOutput{
		FormatVersion: int(h.Version),
		FileID:        hex.EncodeToString(h.FileID[:]),
		VolumeID:      hex.EncodeToString(h.VolumeID[:]),
		BlockSize:     h.BlockSize,
		HeaderSize:    h.HeaderSize,
		PlaintextSize: plain,
		WrappedKeys:   []wrappedJSON{},
	}
	ec := keyring.FileContext(out.VolumeID, out.FileID)
	if h.Flags&blockcipher.FlagBranchKey != 0 {
		out.FileID, out.BranchID = "", hex.EncodeToString(h.FileID[:])
		out.BranchCreated = volume.BranchCreated(h.FileID).UTC().Format(time.RFC3339Nano)
		out.PlaintextSize = 0
		ec = volume.BranchKeyContextOf(out.VolumeID, h)
	}
	for _, k := range volume.Entries(h) {
		w := wrappedJSON{
			Keyring:           string(k.Kind),
			KeyID:             k.KeyID,
			CiphertextBlob:    base64.StdEncoding.EncodeToString(k.Blob),
			EncryptionContext: ec,
		}
		if k.Kind == keyring.KindBranch {
			w.BranchKeyFile = volume.BranchStore + "/" + k.KeyID
		}
		out.WrappedKeys = append(out.WrappedKeys, w)
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		return err
	}
	if sizeErr != nil {
		return fail(exitInspect, "%s: stored size %d is damaged: %v", path, st.Size(), sizeErr)
	}
	return nil
}
