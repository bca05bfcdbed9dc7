package blockcipher

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"testing"
)

// testHeader returns a header for a fresh Version2 file with one fake
// wrapped key.
func testHeader(t testing.TB, headerSize, blockSize int) *Header {
	t.Helper()
	return testHeaderV(t, Version2, headerSize, blockSize)
}

// testHeaderV is testHeader for a given version.
func testHeaderV(t testing.TB, version uint16, headerSize, blockSize int) *Header {
	t.Helper()
	return &Header{
		Version:    version,
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

// versions runs f once per block framing, as a subtest.
func versions(t *testing.T, f func(t *testing.T, v uint16)) {
	for _, v := range []uint16{Version1, Version2} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) { f(t, v) })
	}
}
