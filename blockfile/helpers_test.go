package blockfile

import (
	"bytes"
	"crypto/rand"
	"testing"

	"github.com/kmsfs/kmsfs/blockcipher"
)

// testHeader returns a header for a fresh Version2 file with one fake
// wrapped key.
func testHeader(t testing.TB, headerSize, blockSize int) *blockcipher.Header {
	t.Helper()
	return testHeaderV(t, blockcipher.Version2, headerSize, blockSize)
}

// testHeaderV is testHeader for a given version.
func testHeaderV(t testing.TB, version uint16, headerSize, blockSize int) *blockcipher.Header {
	t.Helper()
	return &blockcipher.Header{
		Version:    version,
		HeaderSize: headerSize,
		BlockSize:  blockSize,
		VolumeID:   blockcipher.NewID(),
		FileID:     blockcipher.NewID(),
		Keys: []blockcipher.KeyEntry{{
			Kind:  2,
			KeyID: "0123456789abcdef0123456789abcdef",
			Blob:  bytes.Repeat([]byte{0xb1}, 61),
		}},
	}
}

func randomKey() []byte {
	k := make([]byte, blockcipher.DataKeySize)
	rand.Read(k)
	return k
}

// newTestFile returns a Version2 File over a MemStore holding only a
// header.
func newTestFile(t testing.TB, blockSize int) (File, *MemStore) {
	t.Helper()
	return newTestFileV(t, blockcipher.Version2, blockSize)
}

// newTestFileV is newTestFile for a given version.
func newTestFileV(t testing.TB, version uint16, blockSize int) (File, *MemStore) {
	t.Helper()
	h := testHeaderV(t, version, 512, blockSize)
	slot, c, err := h.Seal(randomKey())
	if err != nil {
		t.Fatal(err)
	}
	m := NewMemStore(slot)
	return File{C: c, S: m}, m
}

func plainSize(t testing.TB, f File, m *MemStore) int64 {
	t.Helper()
	n, err := f.C.Layout().PlainSize(m.Size())
	if err != nil {
		t.Fatalf("stored size %d: %v", m.Size(), err)
	}
	return n
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}
