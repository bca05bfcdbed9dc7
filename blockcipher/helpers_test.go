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
			Kind:  2,
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

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}
