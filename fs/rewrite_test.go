package fs

import (
	"bytes"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"github.com/kmsfs/kmsfs/volume"
)

// A header slot a kmsfs rewrap left torn is read through the file's
// rewrite record (volume.OpenHeader); without the record it fails.
func TestLoadKeyThroughRewriteRecord(t *testing.T) {
	g := newGatedKeyring(t)
	r := keysTestRoot(t, "", g, keysTestVolume, 4096, 512, nil)
	f := createStored(t, r, "f")
	stored, err := os.ReadFile(f.path)
	if err != nil {
		t.Fatal(err)
	}
	record := filepath.Join(r.vol.Dir, volume.RewrapStore, hex.EncodeToString(f.fileID[:]))
	if err := os.MkdirAll(filepath.Dir(record), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(record, stored[:512], 0o644); err != nil {
		t.Fatal(err)
	}
	torn := bytes.Clone(stored)
	copy(torn[100:300], make([]byte, 200)) // a write cut short inside the entries
	if err := os.WriteFile(f.path, torn, 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := r.loadKey(openStored(t, f.path), [2]uint64{}, nil)
	if err != nil {
		t.Fatalf("loadKey of a torn slot with its record: %v", err)
	}
	if !bytes.Equal(k.dk.Bytes(), f.key) {
		t.Error("loadKey returned another key")
	}
	if got := readBlock0(t, r, openStored(t, f.path), k.c); got != keysTestPlain {
		t.Errorf("block 0 reads %q", got)
	}
	k.wipe()
	os.Remove(record)
	if k, err := r.loadKey(openStored(t, f.path), [2]uint64{}, nil); err == nil {
		k.wipe()
		t.Fatal("a torn slot without a record opened")
	}
}
