package secret

import (
	"crypto/aes"
	"crypto/cipher"
)

// A KDF derives keys from one secret with HKDF-SHA256 (RFC 5869): NewKDF
// runs HKDF-Extract once, and each Expand, Key or MAC reuses its
// pseudorandom key. A KDF holds that key in its work area until Wipe,
// which must be called. It is not safe for concurrent use.
type KDF struct{ wk *work }

// NewKDF runs HKDF-Extract(salt, secret); a nil salt is HashLen zeros,
// as the RFC says. It keeps no copy of secret.
func NewKDF(secret, salt []byte) *KDF { return newKDF(secret, salt, false, false) }

// WithKDF runs f with NewKDF(secret, salt), all under one Shield, and
// wipes the KDF when f returns; f must not keep it, nor hand it to
// another goroutine (which would run outside the Shield). Inside, SHA-256
// runs on the SHA extensions where the CPU has them and the signals are
// blocked, and the KDF's AESBlock, AESGCM and WithAESGCM build under this
// Shield rather than their own: a file's whole key setup costs one
// Shield.
func WithKDF(secret, salt []byte, f func(*KDF)) {
	// Shield's body, so that the SHA extensions run only where the
	// signals are blocked indeed.
	old, blocked := shield()
	defer unshield(old, blocked)
	k := newKDF(secret, salt, true, blocked && useSHANI)
	defer k.Wipe()
	f(k)
}

func newKDF(secret, salt []byte, shielded, vec bool) *KDF {
	wk := getWork()
	wk.shielded, wk.s.vec = shielded, vec
	wk.setKey(&wk.mk, salt)
	wk.macBegin(&wk.mk)
	wk.d.write(&wk.s, secret)
	wk.macEnd(&wk.mk, &wk.t) // PRK
	wk.setKey(&wk.prk, wk.t[:])
	clear(wk.t[:])
	wk.mk = hmacKey{}
	return &KDF{wk: wk}
}

// MaxExpand is the most bytes one HKDF-Expand can give: 255 × HashLen.
const MaxExpand = 255 * size

// Expand fills out with HKDF-Expand(PRK, info, len(out)). It panics if
// out is longer than MaxExpand or k was wiped.
func (k *KDF) Expand(out []byte, info string) {
	if len(out) > MaxExpand {
		panic("secret: internal error: HKDF-Expand of more than 255 blocks")
	}
	wk := k.wk
	for i := 1; len(out) > 0; i++ {
		wk.macBegin(&wk.prk)
		if i > 1 {
			wk.d.write(&wk.s, wk.t[:]) // T(i-1)
		}
		wk.d.writeString(&wk.s, info)
		wk.d.write(&wk.s, []byte{byte(i)})
		wk.macEnd(&wk.prk, &wk.t) // T(i)
		out = out[Copy(out, wk.t[:]):]
	}
	clear(wk.t[:])
}

// Key returns HKDF-Expand(PRK, info, 32) in k's own memory: valid until
// the next call on k, zeroed by Wipe. Use it for a key that is only
// handed on (to aes.NewCipher, say), never kept.
func (k *KDF) Key(info string) []byte {
	k.Expand(k.wk.out[:], info)
	return k.wk.out[:]
}

// MAC writes HMAC-SHA256 under the 32-byte key HKDF-Expand(PRK, info, 32)
// over the concatenation of msg to out. The MAC key never leaves k.
func (k *KDF) MAC(out *[size]byte, info string, msg ...[]byte) {
	wk := k.wk
	k.Expand(wk.out[:], info)
	wk.setKey(&wk.mk, wk.out[:])
	clear(wk.out[:])
	wk.macBegin(&wk.mk)
	for _, p := range msg {
		wk.d.write(&wk.s, p)
	}
	wk.macEnd(&wk.mk, out)
	wk.mk = hmacKey{}
}

// Wipe zeroes everything k holds. Safe to call twice; k is unusable
// after.
func (k *KDF) Wipe() {
	if k.wk != nil {
		putWork(k.wk)
		k.wk = nil
	}
}

// AESBlock returns the AES block cipher under Key(info), built under
// WithKDF's Shield; the caller wipes it with Wipe and calls it under
// Shield. It panics outside WithKDF.
func (k *KDF) AESBlock(info string) (cipher.Block, error) {
	key := k.shieldedKey(info)
	defer clear(key)
	return aes.NewCipher(key)
}

// AESGCM returns AES-256-GCM under Key(info), built under WithKDF's
// Shield; the caller wipes it with Wipe and makes every Seal and Open
// under Shield. It panics outside WithKDF.
func (k *KDF) AESGCM(info string) (cipher.AEAD, error) {
	key := k.shieldedKey(info)
	defer clear(key)
	return newAESGCM(key)
}

// WithAESGCM runs f with AESGCM(info), still under WithKDF's Shield,
// and wipes it when f returns. It panics outside WithKDF.
func (k *KDF) WithAESGCM(info string, f func(cipher.AEAD)) error {
	aead, err := k.AESGCM(info)
	if err != nil {
		return err
	}
	defer Wipe(aead)
	f(aead)
	return nil
}

// shieldedKey is Key(info), for an AES state built in WithKDF's Shield.
func (k *KDF) shieldedKey(info string) []byte {
	if !k.wk.shielded {
		panic("secret: internal error: an AES state from a KDF outside WithKDF")
	}
	return k.Key(info)
}
