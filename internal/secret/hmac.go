package secret

import "sync"

// work is the memory of one computation: every secret byte it touches is
// here. It comes from pool and is zeroed before it goes back.
type work struct {
	s   sched           // SHA-256's scratch
	pad [blockSize]byte // K0 ^ ipad, then K0 ^ opad
	d   digest          // the hash being computed
	prk hmacKey         // HKDF: the pseudorandom key, keyed for Expand
	mk  hmacKey         // a MAC key
	t   [size]byte      // an inner hash; HKDF's T(i)
	out [size]byte      // KDF.Key's result
	// shielded: the computation runs under a Shield its owner holds
	// (WithKDF), so AES states built from its keys need no Shield of
	// their own.
	shielded bool
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
		wk.d.write(&wk.s, key)
		wk.d.sum(&wk.s, &wk.t)
		Copy(wk.pad[:], wk.t[:])
	} else {
		Copy(wk.pad[:], key)
	}
	for i := range wk.pad {
		wk.pad[i] ^= 0x36
	}
	m.inner.reset()
	m.inner.write(&wk.s, wk.pad[:])
	for i := range wk.pad {
		wk.pad[i] ^= 0x36 ^ 0x5c
	}
	m.outer.reset()
	m.outer.write(&wk.s, wk.pad[:])
	clear(wk.pad[:])
}

// macBegin starts an HMAC under m in wk.d: write the message to wk.d,
// then call macEnd.
func (wk *work) macBegin(m *hmacKey) { wk.d.set(&m.inner) }

// macEnd finishes the HMAC begun by macBegin and writes it to out, which
// may be &wk.t.
func (wk *work) macEnd(m *hmacKey, out *[size]byte) {
	wk.d.sum(&wk.s, &wk.t)
	wk.d.set(&m.outer)
	wk.d.write(&wk.s, wk.t[:])
	wk.d.sum(&wk.s, out)
}

// HMAC writes HMAC-SHA256(key, the concatenation of msg) to out. It
// keeps no copy of key, nor of anything derived from it.
func HMAC(out *[size]byte, key []byte, msg ...[]byte) {
	wk := getWork()
	defer putWork(wk)
	wk.setKey(&wk.mk, key)
	wk.macBegin(&wk.mk)
	for _, p := range msg {
		wk.d.write(&wk.s, p)
	}
	wk.macEnd(&wk.mk, out)
}
