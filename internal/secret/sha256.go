package secret

import "encoding/binary"

// SHA-256 as FIPS 180-4 specifies it (sections 4.1.2, 4.2.2, 5.1.1,
// 5.3.3, 6.2). Every byte it reads or writes is in memory its caller
// owns: the chaining state and block buffer in a digest, the message
// schedule in a *[64]uint32. Nothing is copied onto the stack but the
// eight working variables (registers, spilled at most as single words).

const (
	size      = 32 // digest size in bytes
	blockSize = 64 // message block size in bytes
)

// initial is H(0), the first 32 bits of the fractional parts of the
// square roots of the first 8 primes (FIPS 180-4, 5.3.3).
var initial = [8]uint32{
	0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
}

// roundK are K(0)..K(63), the first 32 bits of the fractional parts of
// the cube roots of the first 64 primes (FIPS 180-4, 4.2.2).
var roundK = [64]uint32{
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
}

// digest is a SHA-256 computation in progress.
type digest struct {
	h   [8]uint32
	x   [blockSize]byte // a partial block: x[:nx]
	nx  int
	len uint64 // bytes written
}

func (d *digest) reset() {
	d.h = initial
	d.nx = 0
	d.len = 0
}

// write hashes p; w is scratch for the message schedule.
func (d *digest) write(w *sched, p []byte) {
	d.len += uint64(len(p))
	if d.nx > 0 {
		n := Copy(d.x[d.nx:], p)
		d.nx += n
		p = p[n:]
		if d.nx < blockSize {
			return
		}
		compress(&d.h, w, d.x[:])
		d.nx = 0
	}
	for len(p) >= blockSize {
		compress(&d.h, w, p[:blockSize])
		p = p[blockSize:]
	}
	d.nx = Copy(d.x[:], p)
}

// writeString is write of a string, without converting it.
func (d *digest) writeString(w *sched, s string) {
	for len(s) > 0 {
		n := copyString(d.x[d.nx:], s)
		d.nx += n
		d.len += uint64(n)
		s = s[n:]
		if d.nx == blockSize {
			compress(&d.h, w, d.x[:])
			d.nx = 0
		}
	}
}

// sum pads the message (FIPS 180-4, 5.1.1), hashes the final block(s)
// and writes the digest to out. d is used up: reset it to reuse it.
func (d *digest) sum(w *sched, out *[size]byte) {
	bits := d.len << 3
	d.x[d.nx] = 0x80
	clear(d.x[d.nx+1:])
	if d.nx >= blockSize-8 {
		compress(&d.h, w, d.x[:])
		clear(d.x[:])
	}
	binary.BigEndian.PutUint64(d.x[blockSize-8:], bits)
	compress(&d.h, w, d.x[:])
	// By index: ranging over d.h by value copies the array (the digest)
	// onto the stack, which the race detector's build does.
	for i := range d.h {
		binary.BigEndian.PutUint32(out[4*i:], d.h[i])
	}
}

// sched is the scratch compress works in.
type sched struct {
	w [64]uint32 // the message schedule, in Go
	// vec: the caller runs under Shield on a CPU with the SHA extensions,
	// so compress may hold the block, the state and the schedule in
	// vector registers, where a signal would otherwise find them.
	vec bool
}

// compress hashes one 64-byte block p into h (FIPS 180-4, 6.2.2), with s
// as its scratch: in Go, or on the SHA extensions where s.vec allows
// (about 6× faster; the schedule stays in vector registers, which it
// zeroes before it returns).
func compress(h *[8]uint32, s *sched, p []byte) {
	_ = p[blockSize-1]
	if s.vec {
		compressSHANI(h, &p[0])
		return
	}
	compressGeneric(h, &s.w, p)
}

// compressGeneric is compress in Go.
func compressGeneric(h *[8]uint32, w *[64]uint32, p []byte) {
	_ = p[blockSize-1]
	for t := range 16 {
		w[t] = binary.BigEndian.Uint32(p[4*t:])
	}
	for t := 16; t < 64; t++ {
		x, y := w[t-2], w[t-15]
		s1 := (x>>17 | x<<15) ^ (x>>19 | x<<13) ^ x>>10
		s0 := (y>>7 | y<<25) ^ (y>>18 | y<<14) ^ y>>3
		w[t] = s1 + w[t-7] + s0 + w[t-16]
	}
	a, b, c, dd, e, f, g, hh := h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]
	for t := range 64 {
		t1 := hh + ((e>>6 | e<<26) ^ (e>>11 | e<<21) ^ (e>>25 | e<<7)) + ((e & f) ^ (^e & g)) + roundK[t] + w[t]
		t2 := ((a>>2 | a<<30) ^ (a>>13 | a<<19) ^ (a>>22 | a<<10)) + ((a & b) ^ (a & c) ^ (b & c))
		hh, g, f, e, dd, c, b, a = g, f, e, dd+t1, c, b, a, t1+t2
	}
	h[0] += a
	h[1] += b
	h[2] += c
	h[3] += dd
	h[4] += e
	h[5] += f
	h[6] += g
	h[7] += hh
}
