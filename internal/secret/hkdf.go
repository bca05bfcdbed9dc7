package secret

// A KDF derives keys from one secret with HKDF-SHA256 (RFC 5869): NewKDF
// runs HKDF-Extract once, and each Expand, Key or MAC reuses its
// pseudorandom key. A KDF holds that key in its work area until Wipe,
// which must be called. It is not safe for concurrent use.
type KDF struct{ wk *work }

// NewKDF runs HKDF-Extract(salt, secret); a nil salt is HashLen zeros,
// as the RFC says. It keeps no copy of secret.
func NewKDF(secret, salt []byte) *KDF {
	wk := getWork()
	wk.setKey(&wk.mk, salt)
	wk.macBegin(&wk.mk)
	wk.d.write(&wk.w, secret)
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
			wk.d.write(&wk.w, wk.t[:]) // T(i-1)
		}
		wk.d.writeString(&wk.w, info)
		wk.d.write(&wk.w, []byte{byte(i)})
		wk.macEnd(&wk.prk, &wk.t) // T(i)
		out = out[copy(out, wk.t[:]):]
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
		wk.d.write(&wk.w, p)
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
