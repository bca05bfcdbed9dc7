package blockcipher

import (
	"bytes"
	"crypto/rand"
	"testing"
)

// testHeader returns a header for a fresh file with one fake wrapped key.
func testHeader(t testing.TB, headerSize, blockSize int) *Header {
	t.Helper()
	return &Header{
		Version:    Version,
		HeaderSize: headerSize,
		BlockSize:  blockSize,
		VolumeID:   NewID(),
		FileID:     NewID(),
		Keys: []KeyEntry{{
			Kind:  "local",
			KeyID: "0123456789abcdef0123456789abcdef",
			Blob:  bytes.Repeat([]byte{0xb1}, 61),
		}},
	}
}

func randomKey() []byte {
	k := make([]byte, DataKeySize)
	rand.Read(k)
	return k
}

// newTestFile returns a File over a MemStore holding only a header.
func newTestFile(t testing.TB, blockSize int) (File, *MemStore) {
	t.Helper()
	h := testHeader(t, 512, blockSize)
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
