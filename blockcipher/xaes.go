package blockcipher

import (
	"crypto/cipher"
	"crypto/rand"
	"crypto/subtle"
	"sync"
	"sync/atomic"

	"github.com/kmsfs/kmsfs/internal/secret"
)

// XAES-256-GCM (C2SP, c2sp.org/XAES-256-GCM) extends AES-256-GCM to a
// 192-bit nonce N: the first half of N and the key K derive a fresh
// AES-256 key Kx with three AES calls (a CMAC-style KDF in counter mode,
// NIST SP 800-108r1), and the second half is the AES-GCM nonce under Kx.
// Version2 blocks are sealed this way under the file's content key.
//
// Deriving Kx for every block would cost a key schedule and a GHASH
// table per write, so a writer keeps one key nonce (and its Kx) for up to
// sessionSeals seals and then draws a new one; a reader keeps the last few
// derived keys it met. Each block still stores its whole 24-byte nonce, so
// how a writer groups its seals is invisible to readers and to the format.
// FORMAT.md, "Usage limits", has the arithmetic.

// sessionSeals is how many blocks a writer seals under one derived key
// before it draws a new key nonce.
const sessionSeals = 1 << 12

// readCacheSize is how many derived keys a file keeps for opening blocks,
// besides its writer's: a file written in one go has one key nonce per
// sessionSeals blocks, so sequential reads meet a new one that rarely.
const readCacheSize = 8

// xaes is a file's XAES-256-GCM state.
type xaes struct {
	// mu guards everything below. Seal and Open hold it shared while they
	// use a derived AEAD, so that one is wiped (rotation, eviction, Wipe)
	// only under the exclusive lock, when nobody uses it.
	mu    sync.RWMutex
	block cipher.Block // AES-256 under the content key K; nil after wipe
	k1    *[16]byte    // the subkey K1 (a secret: it is derived from K)
	w     *derived     // the writer's current key, or nil
	cache []*derived   // recent keys met by readers, newest last
}

// derived is one key nonce and the AES-GCM state under its derived key.
type derived struct {
	nonce [NonceSize]byte
	aead  cipher.AEAD
	seals atomic.Uint64 // how many blocks the writer sealed under it
}

// newXAES takes the content key (kept only inside the AES state, which
// the caller must not wipe) and precomputes K1.
func newXAES(block cipher.Block) *xaes {
	x := &xaes{block: block, k1: new([16]byte)}
	// L = AES-256_K(0¹²⁸); K1 = L << 1, xor 0x87 into the last byte
	// if the bit shifted out was 1 (the CMAC subkey). The AES call
	// leaves L in a vector register: Shield.
	secret.Shield(func() { block.Encrypt(x.k1[:], x.k1[:]) })
	msb := x.k1[0] >> 7
	for i := range 15 {
		x.k1[i] = x.k1[i]<<1 | x.k1[i+1]>>7
	}
	x.k1[15] = x.k1[15]<<1 ^ byte(subtle.ConstantTimeSelect(int(msb), 0x87, 0))
	return x
}

// scratch holds the derivation's secret intermediates on the heap, where
// they are cleared after use (docs/THREAT_MODEL.md): never on a stack.
type scratch struct {
	m [2][16]byte
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// derive returns the AES-GCM state under the key that K derives for key
// nonce n: Kx = AES_K(M1 ⊕ K1) ‖ AES_K(M2 ⊕ K1), Mi = 0x00 ‖ i ‖ "X" ‖
// 0x00 ‖ n. The caller holds mu (shared or exclusive). The AES calls
// leave halves of Kx in vector registers: secret.AESGCMFrom computes Kx
// and builds the AES-GCM state under one secret.Shield.
func (x *xaes) derive(n *[NonceSize]byte) *derived {
	s := scratchPool.Get().(*scratch)
	defer func() { clear(s.m[0][:]); clear(s.m[1][:]); scratchPool.Put(s) }()
	aead, err := secret.AESGCMFrom(func(kx []byte) {
		for i := range 2 {
			m := &s.m[i]
			m[0], m[1], m[2], m[3] = 0, byte(i+1), 'X', 0
			copy(m[4:], n[:])
			subtle.XORBytes(m[:], m[:], x.k1[:])
			x.block.Encrypt(kx[16*i:16*(i+1)], m[:])
		}
	})
	if err != nil {
		panic("blockcipher: internal error: " + err.Error())
	}
	return &derived{nonce: *n, aead: aead}
}

// seal appends key nonce ‖ nonce ‖ ciphertext ‖ tag to dst; nonce is the
// block's random AES-GCM nonce.
func (x *xaes) seal(dst, nonce, plain, aad []byte) []byte {
	x.mu.RLock()
	w := x.w
	if w == nil || w.seals.Add(1) > sessionSeals {
		x.mu.RUnlock()
		x.rotate(w)
		return x.seal(dst, nonce, plain, aad)
	}
	defer x.mu.RUnlock()
	dst = append(dst, w.nonce[:]...)
	dst = append(dst, nonce...)
	return w.aead.Seal(dst, nonce, plain, aad)
}

// rotate replaces the writer's key old (if it is still current) with one
// under a fresh random key nonce. old goes to the readers' cache: blocks
// just sealed under it are likely read soon.
func (x *xaes) rotate(old *derived) {
	var n [NonceSize]byte
	rand.Read(n[:])
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.block == nil {
		panic("blockcipher: internal error: seal with a wiped Cipher")
	}
	if x.w != old {
		return // another writer rotated first
	}
	if old != nil {
		x.remember(old)
	}
	x.w = x.derive(&n)
}

// remember adds d to the readers' cache, wiping the oldest key it drops.
// The caller holds mu exclusively.
func (x *xaes) remember(d *derived) {
	if len(x.cache) == readCacheSize {
		secret.Wipe(x.cache[0].aead)
		x.cache = append(x.cache[:0], x.cache[1:]...)
	}
	x.cache = append(x.cache, d)
}

// find returns the derived key for key nonce n if the file holds it. The
// caller holds mu.
func (x *xaes) find(n []byte) *derived {
	if x.w != nil && string(x.w.nonce[:]) == string(n) {
		return x.w
	}
	for i := len(x.cache) - 1; i >= 0; i-- {
		if string(x.cache[i].nonce[:]) == string(n) {
			return x.cache[i]
		}
	}
	return nil
}

// open opens stored (key nonce ‖ nonce ‖ ciphertext ‖ tag, len(stored) >
// Overhead2), appending the plaintext to dst.
func (x *xaes) open(dst, stored, aad []byte) ([]byte, error) {
	kn := stored[:NonceSize]
	nonce := stored[NonceSize : 2*NonceSize]
	x.mu.RLock()
	if x.block == nil {
		x.mu.RUnlock()
		panic("blockcipher: internal error: open with a wiped Cipher")
	}
	if d := x.find(kn); d != nil {
		defer x.mu.RUnlock()
		return d.aead.Open(dst, nonce, stored[2*NonceSize:], aad)
	}
	x.mu.RUnlock()
	x.mu.Lock()
	defer x.mu.Unlock()
	d := x.find(kn)
	if d == nil {
		d = x.derive((*[NonceSize]byte)(kn))
		x.remember(d)
	}
	return d.aead.Open(dst, nonce, stored[2*NonceSize:], aad)
}

// wipe zeroes K's AES state, K1 and every derived key. Not safe while
// another method runs (Cipher.Wipe's contract).
func (x *xaes) wipe() {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.block == nil {
		return
	}
	secret.Wipe(x.block)
	x.block = nil
	clear(x.k1[:])
	if x.w != nil {
		secret.Wipe(x.w.aead)
		x.w = nil
	}
	for _, d := range x.cache {
		secret.Wipe(d.aead)
	}
	x.cache = nil
}
