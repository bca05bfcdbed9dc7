package volume_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/kmsfs/kmsfs/blockcipher"
	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/volume"
)

func testVolume(t *testing.T) *volume.Volume {
	t.Helper()
	c := validConfig()
	v, err := volume.New(t.TempDir(), c)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func sealedSlot(t *testing.T, v *volume.Volume, wrapped []keyring.WrappedKey) []byte {
	t.Helper()
	h, err := v.NewHeader(blockcipher.NewID(), wrapped)
	if err != nil {
		t.Fatal(err)
	}
	slot, _, err := h.Seal(bytes.Repeat([]byte{7}, blockcipher.DataKeySize))
	if err != nil {
		t.Fatal(err)
	}
	return slot
}

var testWrapped = []keyring.WrappedKey{
	{Kind: keyring.KindAWSKMS, KeyID: testKeyARN, Blob: bytes.Repeat([]byte{1}, 184)},
	{Kind: keyring.KindLocal, KeyID: testLocalID, Blob: bytes.Repeat([]byte{2}, 61)},
}

func TestHeaderRoundTrip(t *testing.T) {
	v := testVolume(t)
	slot := sealedSlot(t, v, testWrapped)
	for name, read := range map[string]func() (*blockcipher.Header, error){
		"ReadHeader": func() (*blockcipher.Header, error) { return v.ReadHeader(bytes.NewReader(slot), int64(len(slot))) },
		"ReadAnyHeader": func() (*blockcipher.Header, error) {
			return volume.ReadAnyHeader(bytes.NewReader(slot), int64(len(slot)))
		},
	} {
		h, err := read()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got := volume.Entries(h)
		if len(got) != 2 || got[0].Kind != keyring.KindAWSKMS || got[1].Kind != keyring.KindLocal ||
			got[0].KeyID != testKeyARN || !bytes.Equal(got[1].Blob, testWrapped[1].Blob) {
			t.Fatalf("%s: entries %+v", name, got)
		}
	}
	if h, err := v.ReadHeader(bytes.NewReader(nil), 0); h != nil || err != nil {
		t.Fatalf("ReadHeader of an empty file: %v, %v", h, err)
	}
}

func TestReadHeaderRefuses(t *testing.T) {
	v := testVolume(t)
	slot := sealedSlot(t, v, testWrapped)
	other := testVolume(t)
	other.ID[0] ^= 1
	otherSlot := sealedSlot(t, other, testWrapped)
	unknownKind := bytes.Clone(slot)
	unknownKind[83] = 9 // the first entry's kind code
	// The same volume at format version 3, whose files have header
	// version 2: a version 1 header (sealed, so only its version
	// differs) does not belong in it, nor the other way round.
	c3 := validConfig()
	c3.FormatVersion, c3.KeyMode = volume.ConfigVersion3, volume.KeyModePerFile
	v3, err := volume.New(t.TempDir(), c3)
	if err != nil {
		t.Fatal(err)
	}
	if v3.Layout.Version != blockcipher.Version2 || v.Layout.Version != blockcipher.Version1 {
		t.Fatalf("layout versions %d (config 3) and %d (config 1)", v3.Layout.Version, v.Layout.Version)
	}
	v3Slot := sealedSlot(t, v3, testWrapped)
	var fe *blockcipher.FormatError
	for _, c := range []struct {
		name string
		b    []byte
		is   error
	}{
		{"another volume", otherSlot, blockcipher.ErrHeaderAuth},
		{"unknown kind code", unknownKind, blockcipher.ErrMalformed},
		{"cut", slot[:300], blockcipher.ErrTruncated},
		{"header version 2 in a version 1 volume", v3Slot, blockcipher.ErrHeaderAuth},
	} {
		_, err := v.ReadHeader(bytes.NewReader(c.b), int64(len(c.b)))
		if !errors.Is(err, c.is) {
			t.Errorf("%s: %v, want %v", c.name, err, c.is)
		}
	}
	if _, err := v3.ReadHeader(bytes.NewReader(slot), int64(len(slot))); !errors.Is(err, blockcipher.ErrHeaderAuth) {
		t.Errorf("a version 1 header in a version 3 volume: %v", err)
	}
	if _, err := volume.ReadAnyHeader(bytes.NewReader(unknownKind), int64(len(unknownKind))); !errors.As(err, &fe) {
		t.Errorf("ReadAnyHeader of an unknown kind code: %v", err)
	}
	if _, err := v.NewHeader(blockcipher.NewID(), []keyring.WrappedKey{{Kind: "gpg", KeyID: "x", Blob: []byte{1}}}); err == nil {
		t.Error("NewHeader with an unknown kind succeeded")
	}
}

func TestHeaderSizeFor(t *testing.T) {
	n, err := volume.HeaderSizeFor(testWrapped)
	if err != nil || n%256 != 0 || n < 512 {
		t.Fatalf("HeaderSizeFor = %d, %v", n, err)
	}
	many := make([]keyring.WrappedKey, 16)
	for i := range many {
		many[i] = keyring.WrappedKey{Kind: keyring.KindAWSKMS, KeyID: testKeyARN, Blob: make([]byte, blockcipher.MaxBlobLen)}
	}
	if n, err := volume.HeaderSizeFor(many); err != nil || n > blockcipher.MaxHeaderSize {
		t.Fatalf("HeaderSizeFor of 16 large entries = %d, %v", n, err)
	}
}
