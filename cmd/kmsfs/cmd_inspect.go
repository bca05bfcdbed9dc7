package main

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"

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
}

type wrappedJSON struct {
	Keyring           string            `json:"keyring"`
	KeyID             string            `json:"key_id"`
	CiphertextBlob    string            `json:"ciphertext_blob"`
	EncryptionContext map[string]string `json:"encryption_context"`
}

// cmdInspect prints a cipher file's header. It makes no keyring call and
// needs no volume config: the header carries its own sizes.
func cmdInspect(args []string, stdout, stderr io.Writer) error {
	fl := newFlagSet("inspect", "CIPHERFILE", stderr)
	pos, err := parseArgs(fl, args, "CIPHERFILE")
	if err != nil {
		return err
	}
	path := pos[0]
	f, err := os.Open(path)
	if err != nil {
		return fail(exitInspect, "%v", err)
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
	for _, k := range volume.Entries(h) {
		out.WrappedKeys = append(out.WrappedKeys, wrappedJSON{
			Keyring:           string(k.Kind),
			KeyID:             k.KeyID,
			CiphertextBlob:    base64.StdEncoding.EncodeToString(k.Blob),
			EncryptionContext: ec,
		})
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
