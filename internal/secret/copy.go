package secret

// Copy copies min(len(dst), len(src)) bytes of src to dst, one byte at a
// time through a general-purpose register, and returns how many. Use it,
// never copy or an array assignment, to move secret bytes.
//
// The built-in copy (runtime.memmove) and the assignment of an array or
// struct move 16 to 64 bytes at a time through vector registers: a
// 32-byte key is left whole in X0 and X1 (memmove of 17 to 32 bytes)
// after the copy, and nothing clears them until other code happens to
// reuse them. Whenever the thread takes a signal meanwhile (the
// runtime's preemption signal, SIGURG, arrives many times a second; a
// profiling SIGPROF), the kernel saves every register, the vector ones
// included, in the signal frame on the thread's signal stack, which the
// runtime allocates in the Go heap and never clears; asynchronous
// preemption saves them again on the goroutine's stack. The key stays
// there, in raw form, for the process's life. Through one register at a
// time no more than a byte of it is ever held outside memory that is
// wiped.
//
//go:noinline
func Copy(dst, src []byte) int {
	n := min(len(dst), len(src))
	dst, src = dst[:n], src[:n]
	//lint:ignore S1001 copy is what this avoids: it moves bytes through vector registers.
	for i := range src {
		dst[i] = src[i]
	}
	return n
}

// copyString is Copy of a string (a label: public, but written to a
// buffer that holds secret bytes as well).
func copyString(dst []byte, src string) int {
	n := min(len(dst), len(src))
	for i := range n {
		dst[i] = src[i]
	}
	return n
}

// set makes d a copy of s, word by word, never through vector registers
// (Copy): an HMAC key's inner and outer states are as secret as the key.
func (d *digest) set(s *digest) {
	for i := range d.h {
		d.h[i] = s.h[i]
	}
	Copy(d.x[:], s.x[:])
	d.nx = s.nx
	d.len = s.len
}
