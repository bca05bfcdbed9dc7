package secret

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"testing"
)

// The costs next to the standard library's (which uses SHA-NI or AVX2
// assembly where the CPU has it): one block, an HKDF of one 32-byte key,
// and an HMAC over a 512-byte header.

func BenchmarkCompress(b *testing.B) {
	var h [8]uint32
	w := sched{vec: useSHANI}
	p := randBytes(blockSize)
	b.SetBytes(blockSize)
	for b.Loop() {
		compress(&h, &w, p)
	}
}

func BenchmarkStdlibSHA256Block(b *testing.B) {
	d := sha256.New()
	p := randBytes(blockSize)
	b.SetBytes(blockSize)
	for b.Loop() {
		d.Write(p)
	}
}

func BenchmarkKDFKey(b *testing.B) {
	secret, salt := randBytes(32), randBytes(16)
	b.ReportAllocs()
	for b.Loop() {
		k := NewKDF(secret, salt)
		k.Key("kmsfs v1 content key")
		k.Wipe()
	}
}

// BenchmarkWithKDFKey is BenchmarkKDFKey under WithKDF: a Shield, and
// SHA-256 on the SHA extensions where the CPU has them.
func BenchmarkWithKDFKey(b *testing.B) {
	secret, salt := randBytes(32), randBytes(16)
	b.ReportAllocs()
	for b.Loop() {
		WithKDF(secret, salt, func(k *KDF) { k.Key("kmsfs v1 content key") })
	}
}

func BenchmarkStdlibHKDFKey(b *testing.B) {
	secret, salt := randBytes(32), randBytes(16)
	b.ReportAllocs()
	for b.Loop() {
		hkdf.Key(sha256.New, secret, salt, "kmsfs v1 content key", 32)
	}
}

func BenchmarkHMAC512(b *testing.B) {
	key, msg := randBytes(32), randBytes(512)
	var out [size]byte
	b.ReportAllocs()
	for b.Loop() {
		HMAC(&out, key, msg)
	}
}

func BenchmarkStdlibHMAC512(b *testing.B) {
	key, msg := randBytes(32), randBytes(512)
	b.ReportAllocs()
	for b.Loop() {
		m := hmac.New(sha256.New, key)
		m.Write(msg)
		m.Sum(nil)
	}
}

// What Shield adds to building AES-256-GCM under a key: a locked thread
// and two rt_sigprocmask calls.
func BenchmarkAESGCM(b *testing.B) {
	key := randBytes(32)
	for b.Loop() {
		a, _ := AESGCM(key)
		Wipe(a)
	}
}

func BenchmarkStdlibAESGCM(b *testing.B) {
	key := randBytes(32)
	for b.Loop() {
		block, _ := aes.NewCipher(key)
		a, _ := cipher.NewGCM(block)
		Wipe(block)
		Wipe(a)
	}
}
