package secret

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/big"
	"reflect"
	"runtime"
	"testing"
	"unsafe"
)

// The tables are what FIPS 180-4 defines them as: the first 32 bits of
// the fractional parts of the square roots (H(0)) and cube roots (K) of
// the first primes.
func TestConstants(t *testing.T) {
	var primes []int64
	for n := int64(2); len(primes) < 64; n++ {
		if big.NewInt(n).ProbablyPrime(0) {
			primes = append(primes, n)
		}
	}
	frac := func(p int64, k int) uint32 {
		// floor(root_k(p << 32k)) mod 2^32
		x := new(big.Int).Lsh(big.NewInt(p), uint(32*k))
		lo, hi := big.NewInt(0), new(big.Int).Set(x)
		for new(big.Int).Sub(hi, lo).Cmp(big.NewInt(1)) > 0 {
			mid := new(big.Int).Rsh(new(big.Int).Add(lo, hi), 1)
			if new(big.Int).Exp(mid, big.NewInt(int64(k)), nil).Cmp(x) <= 0 {
				lo = mid
			} else {
				hi = mid
			}
		}
		return uint32(lo.Uint64())
	}
	for i, p := range primes[:8] {
		if got := frac(p, 2); initial[i] != got {
			t.Errorf("H(0)[%d] = %08x, want %08x", i, initial[i], got)
		}
	}
	for i, p := range primes {
		if got := frac(p, 3); roundK[i] != got {
			t.Errorf("K[%d] = %08x, want %08x", i, roundK[i], got)
		}
	}
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func sha(msg ...[]byte) [size]byte {
	if useSHANI { // both ways must agree
		a, b := shaWith(sched{}, msg...), shaWith(sched{vec: true}, msg...)
		if a != b {
			panic(fmt.Sprintf("SHA-256 in Go %x, on the SHA extensions %x", a, b))
		}
		return b
	}
	return shaWith(sched{}, msg...)
}

func shaWith(w sched, msg ...[]byte) [size]byte {
	var d digest
	var out [size]byte
	d.reset()
	for _, p := range msg {
		d.write(&w, p)
	}
	d.sum(&w, &out)
	return out
}

func TestSHA256MatchesStdlib(t *testing.T) {
	for n := range 300 {
		msg := randBytes(n)
		want := sha256.Sum256(msg)
		// In one write, and cut in three at varying points.
		if got := sha(msg); got != want {
			t.Fatalf("SHA-256 of %d bytes: %x, want %x", n, got, want)
		}
		a, b := n/3, n-n/5
		if got := sha(msg[:a], msg[a:b], msg[b:]); got != want {
			t.Fatalf("SHA-256 of %d bytes in 3 writes: %x, want %x", n, got, want)
		}
	}
	// FIPS 180-4's own example, "abc" (also in its examples document).
	if got := sha([]byte("abc")); hex.EncodeToString(got[:]) != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" {
		t.Errorf("SHA-256(abc) = %x", got)
	}
	// writeString, across block boundaries.
	var d digest
	var w sched
	var out [size]byte
	s := string(randBytes(150))
	d.reset()
	d.write(&w, []byte("a prefix"))
	d.writeString(&w, s)
	d.sum(&w, &out)
	if out != sha256.Sum256([]byte("a prefix"+s)) {
		t.Errorf("writeString hashes differently from write")
	}
}

func TestHMACMatchesStdlib(t *testing.T) {
	for _, keyLen := range []int{0, 1, 16, 31, 32, 33, 63, 64, 65, 100, 200} {
		for _, msgLen := range []int{0, 1, 55, 56, 64, 119, 120, 512, 1000} {
			key, msg := randBytes(keyLen), randBytes(msgLen)
			m := hmac.New(sha256.New, key)
			m.Write(msg)
			want := m.Sum(nil)
			var got [size]byte
			HMAC(&got, key, msg[:msgLen/2], msg[msgLen/2:])
			if !bytes.Equal(got[:], want) {
				t.Fatalf("HMAC with a %d-byte key over %d bytes: %x, want %x", keyLen, msgLen, got, want)
			}
		}
	}
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func seq(from, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(from + i)
	}
	return b
}

// RFC 5869, appendix A.1-A.3: the SHA-256 test cases.
func TestHKDFRFC5869(t *testing.T) {
	for _, tc := range []struct {
		name            string
		ikm, salt, info []byte
		prk, okm        string
	}{
		{"A.1", bytes.Repeat([]byte{0x0b}, 22), seq(0x00, 13), seq(0xf0, 10),
			"077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5",
			"3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"},
		{"A.2", seq(0x00, 80), seq(0x60, 80), seq(0xb0, 80),
			"06a6b88c5853361a06104c9ceb35b45cef760014904671014a193f40c15fc244",
			"b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71cc30c58179ec3e87c14c01d5c1f3434f1d87"},
		{"A.3", bytes.Repeat([]byte{0x0b}, 22), nil, nil,
			"19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04",
			"8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var prk [size]byte
			salt := tc.salt
			if salt == nil {
				salt = make([]byte, size) // "a string of HashLen zeros"
			}
			HMAC(&prk, salt, tc.ikm)
			if !bytes.Equal(prk[:], unhex(t, tc.prk)) {
				t.Errorf("PRK = %x, want %s", prk, tc.prk)
			}
			okm := make([]byte, len(tc.okm)/2)
			k := NewKDF(tc.ikm, tc.salt)
			k.Expand(okm, string(tc.info))
			k.Wipe()
			if !bytes.Equal(okm, unhex(t, tc.okm)) {
				t.Errorf("OKM = %x, want %s", okm, tc.okm)
			}
			// crypto/hkdf agrees.
			std, err := hkdf.Key(sha256.New, tc.ikm, tc.salt, string(tc.info), len(okm))
			if err != nil || !bytes.Equal(std, okm) {
				t.Errorf("crypto/hkdf gives %x (%v), this package %x", std, err, okm)
			}
		})
	}
}

// The way kmsfs uses HKDF (32-byte key, 16-byte salt or none, several
// labels from one Extract, a MAC under a derived key) gives what
// crypto/hkdf and crypto/hmac give.
func TestKDFMatchesStdlib(t *testing.T) {
	for range 50 {
		secret := randBytes(32)
		for _, salt := range [][]byte{nil, randBytes(16)} {
			k := NewKDF(secret, salt)
			for _, n := range []int{16, 32, 33, 64, 100, MaxExpand} {
				info := string(randBytes(n % 40))
				want, err := hkdf.Key(sha256.New, secret, salt, info, n)
				if err != nil {
					t.Fatal(err)
				}
				got := make([]byte, n)
				k.Expand(got, info)
				if !bytes.Equal(got, want) {
					t.Fatalf("Expand(%d bytes) = %x, want %x", n, got, want)
				}
				if n == 32 && !bytes.Equal(k.Key(info), want) {
					t.Fatalf("Key = %x, want %x", k.Key(info), want)
				}
			}
			body := randBytes(500)
			macKey, _ := hkdf.Key(sha256.New, secret, salt, "mac label", 32)
			m := hmac.New(sha256.New, macKey)
			m.Write(body)
			var got [size]byte
			k.MAC(&got, "mac label", body[:100], body[100:])
			if !bytes.Equal(got[:], m.Sum(nil)) {
				t.Fatalf("MAC = %x, want %x", got, m.Sum(nil))
			}
			k.Wipe()
			k.Wipe()
		}
	}
	defer func() {
		if recover() == nil {
			t.Error("an Expand of more than 255 blocks did not panic")
		}
	}()
	k := NewKDF(randBytes(32), nil)
	defer k.Wipe()
	k.Expand(make([]byte, MaxExpand+1), "")
}

// Every work area goes back to its pool zeroed, whatever it computed.
func TestWorkIsZeroedAfterUse(t *testing.T) {
	puts := 0
	testOnlyBeforePut = func(wk *work) {
		puts++
		if *wk != (work{}) {
			t.Errorf("a work area went back to the pool not zeroed")
		}
	}
	defer func() { testOnlyBeforePut = nil }()
	var out [size]byte
	HMAC(&out, randBytes(32), randBytes(100))
	HMAC(&out, randBytes(100), randBytes(100))
	k := NewKDF(randBytes(32), randBytes(16))
	k.Expand(make([]byte, 100), "x")
	k.Key("y")
	k.MAC(&out, "z", randBytes(600))
	k.Wipe()
	if puts != 3 {
		t.Errorf("%d work areas went back, want 3", puts)
	}
}

// holds reports whether mem holds key, as it is
// or as the big-endian words an AES key schedule may store.
func holds(mem, key []byte) bool {
	if bytes.Contains(mem, key) {
		return true
	}
	swapped := make([]byte, len(key))
	for i := 0; i+4 <= len(key); i += 4 {
		binary.LittleEndian.PutUint32(swapped[i:], binary.BigEndian.Uint32(key[i:]))
	}
	return bytes.Contains(mem, swapped)
}

// Wipe zeroes the AES key schedule of aes.NewCipher and the AES-GCM state
// of cipher.NewGCM: the key is in their memory before and not after. If
// a Go release changes these types so that Wipe cannot clear them, this
// fails: kmsfs relies on it (blockcipher.Cipher.Wipe, keyring.Local).
func TestWipeAESGCM(t *testing.T) {
	key := randBytes(32)
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	sealed := aead.Seal(nil, make([]byte, 12), []byte("plaintext"), nil)
	for name, v := range map[string]any{"aes.NewCipher's Block": block, "cipher.NewGCM's AEAD": aead} {
		mem := memoryOf(t, v)
		if !holds(mem, key) {
			t.Fatalf("the key is not in the memory of %s (%T): the test cannot see a wipe", name, v)
		}
		if !Wipe(v) {
			t.Fatalf("Wipe(%s) did nothing: %T holds pointers, or is no pointer", name, v)
		}
		if holds(mem, key) || !bytes.Equal(mem, make([]byte, len(mem))) {
			t.Errorf("%s (%T) is not zeroed by Wipe", name, v)
		}
	}
	// A wiped AEAD does not work with another key: it panics (its nonce
	// size is now 0), rather than sealing under a zero key.
	defer func() {
		if recover() == nil {
			t.Error("a wiped AEAD opened a message")
		}
	}()
	aead.Open(nil, make([]byte, 12), sealed, nil)
}

// memoryOf is the memory behind the pointer in v.
func memoryOf(t *testing.T, v any) []byte {
	t.Helper()
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		t.Fatalf("%T is not a pointer", v)
	}
	return unsafe.Slice((*byte)(rv.UnsafePointer()), rv.Type().Elem().Size())
}

func TestWipeRefusesPointers(t *testing.T) {
	type withPointer struct {
		n int
		p *int
	}
	type withSlice struct{ b []byte }
	type ok struct {
		a [4]uint32
		n int
		s struct{ x [2]uint8 }
	}
	n := 7
	for _, v := range []any{nil, 5, ok{n: 1}, &withPointer{n: 1, p: &n}, &withSlice{b: []byte{1}}, &[]int{1}, (*ok)(nil), &struct{ s string }{"x"}} {
		if Wipe(v) {
			t.Errorf("Wipe(%T) wiped", v)
		}
	}
	v := &ok{a: [4]uint32{1, 2, 3, 4}, n: 5}
	v.s.x[1] = 9
	if !Wipe(v) || *v != (ok{}) {
		t.Errorf("Wipe of a pointer-free struct left %+v", *v)
	}
}

// TestWithKDF checks that a KDF made under WithKDF (SHA extensions where
// the CPU has them, its AES states built under its Shield) derives what
// NewKDF's does, and that its AES states are those of the derived key.
func TestWithKDF(t *testing.T) {
	ikm, salt := randBytes(32), randBytes(16)
	k := NewKDF(ikm, salt)
	defer k.Wipe()
	var wantMAC [size]byte
	k.MAC(&wantMAC, "mac", []byte("a message"))
	wantKey := bytes.Clone(k.Key("key"))
	nonce := make([]byte, 12)
	wantSealed := func() []byte {
		a, err := AESGCM(wantKey)
		if err != nil {
			t.Fatal(err)
		}
		defer Wipe(a)
		var out []byte
		Shield(func() { out = a.Seal(nil, nonce, []byte("plaintext"), nil) })
		return out
	}()
	WithKDF(ikm, salt, func(k *KDF) {
		if !k.wk.s.vec && useSHANI && runtime.GOOS == "linux" {
			t.Error("WithKDF does not run SHA-256 on the SHA extensions")
		}
		var mac [size]byte
		k.MAC(&mac, "mac", []byte("a message"))
		if mac != wantMAC {
			t.Error("MAC differs from NewKDF's")
		}
		if !bytes.Equal(k.Key("key"), wantKey) {
			t.Error("Key differs from NewKDF's")
		}
		var sealed []byte
		if err := k.WithAESGCM("key", func(a cipher.AEAD) { sealed = a.Seal(nil, nonce, []byte("plaintext"), nil) }); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(sealed, wantSealed) {
			t.Error("WithAESGCM seals differently")
		}
		b, err := k.AESBlock("key")
		if err != nil {
			t.Fatal(err)
		}
		defer Wipe(b)
		var got, want [16]byte
		b.Encrypt(got[:], make([]byte, 16))
		ref, _ := aes.NewCipher(wantKey)
		ref.Encrypt(want[:], make([]byte, 16))
		if got != want {
			t.Error("AESBlock encrypts differently")
		}
	})
	// A KDF outside WithKDF builds no AES state: there is no Shield to
	// build it in.
	defer func() {
		if recover() == nil {
			t.Error("AESGCM of a NewKDF did not panic")
		}
	}()
	k.AESGCM("key")
}
