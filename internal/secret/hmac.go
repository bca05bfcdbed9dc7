package secret

import "sync"

// work is the memory of one computation: every secret byte it touches is
// here. It comes from pool and is zeroed before it goes back.
type work struct {
	w   [64]uint32      // SHA-256 message schedule
	pad [blockSize]byte // K0 ^ ipad, then K0 ^ opad
	d   digest          // the hash being computed
	prk hmacKey         // HKDF: the pseudorandom key, keyed for Expand
	mk  hmacKey         // a MAC key
	t   [size]byte      // an inner hash; HKDF's T(i)
	out [size]byte      // KDF.Key's result
}

var pool = sync.Pool{New: func() any { return new(work) }}

// testOnlyBeforePut, when set by a test, sees each work area just before
// it goes back to the pool.
var testOnlyBeforePut func(*work)

func getWork() *work { return pool.Get().(*work) }

func putWork(wk *work) {
	*wk = work{}
	if testOnlyBeforePut != nil {
		testOnlyBeforePut(wk)
	}
	pool.Put(wk)
}

// hmacKey is a key prepared for HMAC: SHA-256 states that have hashed the
// key's inner and outer pad blocks (as secret as the key itself).
type hmacKey struct{ inner, outer digest }

// setKey prepares m for HMAC under key (RFC 2104, section 2): K0 is key
// padded with zeros to the block size, or the hash of key if it is
// longer. key may be wk.t or wk.out.
func (wk *work) setKey(m *hmacKey, key []byte) {
	clear(wk.pad[:])
	if len(key) > blockSize {
		wk.d.reset()
		wk.d.write(&wk.w, key)
		wk.d.sum(&wk.w, &wk.t)
		copy(wk.pad[:], wk.t[:])
	} else {
		copy(wk.pad[:], key)
	}
	for i := range wk.pad {
		wk.pad[i] ^= 0x36
	}
	m.inner.reset()
	m.inner.write(&wk.w, wk.pad[:])
	for i := range wk.pad {
		wk.pad[i] ^= 0x36 ^ 0x5c
	}
	m.outer.reset()
	m.outer.write(&wk.w, wk.pad[:])
	clear(wk.pad[:])
}

// macBegin starts an HMAC under m in wk.d: write the message to wk.d,
// then call macEnd.
func (wk *work) macBegin(m *hmacKey) { wk.d = m.inner }

// macEnd finishes the HMAC begun by macBegin and writes it to out, which
// may be &wk.t.
func (wk *work) macEnd(m *hmacKey, out *[size]byte) {
	wk.d.sum(&wk.w, &wk.t)
	wk.d = m.outer
	wk.d.write(&wk.w, wk.t[:])
	wk.d.sum(&wk.w, out)
}

// HMAC writes HMAC-SHA256(key, the concatenation of msg) to out. It
// keeps no copy of key, nor of anything derived from it.
func HMAC(out *[size]byte, key []byte, msg ...[]byte) {
	wk := getWork()
	defer putWork(wk)
	wk.setKey(&wk.mk, key)
	wk.macBegin(&wk.mk)
	for _, p := range msg {
		wk.d.write(&wk.w, p)
	}
	wk.macEnd(&wk.mk, out)
}
