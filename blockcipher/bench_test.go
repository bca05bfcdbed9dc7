package blockcipher

import (
	"crypto/aes"
	"crypto/cipher"
	"fmt"
	"testing"

	"github.com/kmsfs/kmsfs/internal/secret"
)

// The 4 KiB and 128 KiB runs are the sizes a FUSE write typically brings
// (one page, the kernel's default max_write). BenchmarkRawGCM is plain
// crypto/cipher AES-256-GCM over the same bytes in one call on one core:
// the ceiling SealRun/OpenRun are compared with (go test -bench . -cpu 1,2).

var benchSizes = []int{4 << 10, 128 << 10, 1 << 20}

func benchCipher(b *testing.B) *Cipher { return benchCipherV(b, Version2) }

func benchCipherV(b *testing.B, v uint16) *Cipher {
	h := testHeaderV(b, v, 512, 4096)
	_, c, err := h.Seal(randomKey())
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// BenchmarkSealRun and BenchmarkOpenRun compare the block framings:
// v1 (AES-256-GCM under the content key) and v2 (XAES-256-GCM, a derived
// key per 2^12 seals; the reader's derived key is cached).
func BenchmarkSealRun(b *testing.B) {
	for _, v := range []uint16{Version1, Version2} {
		b.Run(fmt.Sprintf("v%d", v), func(b *testing.B) { benchSealRun(b, v) })
	}
}

func benchSealRun(b *testing.B, v uint16) {
	c := benchCipherV(b, v)
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("%dKiB", n>>10), func(b *testing.B) {
			plain := randBytes(n)
			dst := make([]byte, 0, n+n/4096*Overhead2+Overhead2)
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				c.SealRun(dst[:0], plain, 0, true)
			}
		})
	}
}

func BenchmarkOpenRun(b *testing.B) {
	for _, v := range []uint16{Version1, Version2} {
		b.Run(fmt.Sprintf("v%d", v), func(b *testing.B) { benchOpenRun(b, v) })
	}
}

func benchOpenRun(b *testing.B, v uint16) {
	c := benchCipherV(b, v)
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("%dKiB", n>>10), func(b *testing.B) {
			stored := c.SealRun(nil, randBytes(n), 0, true)
			dst := make([]byte, 0, n)
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.OpenRun(dst[:0], stored, 0, true); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkRawGCM(b *testing.B) {
	block, _ := aes.NewCipher(randomKey())
	aead, _ := cipher.NewGCM(block)
	nonce := make([]byte, 12)
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("seal/%dKiB", n>>10), func(b *testing.B) {
			plain := randBytes(n)
			dst := make([]byte, 0, n+16)
			b.SetBytes(int64(n))
			for b.Loop() {
				aead.Seal(dst[:0], nonce, plain, nil)
			}
		})
		b.Run(fmt.Sprintf("open/%dKiB", n>>10), func(b *testing.B) {
			sealed := aead.Seal(nil, nonce, randBytes(n), nil)
			dst := make([]byte, 0, n)
			b.SetBytes(int64(n))
			for b.Loop() {
				if _, err := aead.Open(dst[:0], nonce, sealed, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkHeaderParse(b *testing.B) {
	h := testHeader(b, 512, 4096)
	slot, _, _ := h.Seal(randomKey())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseHeader(slot); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkHeaderOpen(b *testing.B) {
	h := testHeader(b, 512, 4096)
	key := randomKey()
	slot, _, _ := h.Seal(key)
	parsed, _ := ParseHeader(slot)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := parsed.Open(key); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLayoutSpan(b *testing.B) {
	l, _ := NewLayout(512, 4096, Version2)
	var sink uint64
	for i := 0; b.Loop(); i++ {
		first, n := l.Span(int64(i)*777, 128<<10)
		sink += first + n
		p, _ := l.PlainSize(l.CipherSize(int64(i)))
		sink += uint64(p)
	}
	_ = sink
}

// BenchmarkRecordMAC is one journal record's MAC: the record fields, a
// nonce and a tag (blockfile's recordMAC).
func BenchmarkRecordMAC(b *testing.B) {
	c := benchCipher(b)
	fields := randBytes(17)
	nonce, tag := randBytes(NonceSize), randBytes(TagSize)
	b.ReportAllocs()
	for b.Loop() {
		c.RecordMAC([]byte("kmsfs journal record v2\x00"), fields, nonce, tag)
	}
}

// BenchmarkXAESDerive is one derived key: what a writer pays every 2^12
// seals and a reader on a key nonce it has not cached.
func BenchmarkXAESDerive(b *testing.B) {
	c := benchCipherV(b, Version2)
	var n [NonceSize]byte
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		n[0], n[1] = byte(i), byte(i>>8)
		secret.Wipe(c.x.derive(&n).aead)
	}
}
