package secret

import (
	"crypto/aes"
	"crypto/cipher"
	"runtime"
	"sync"
)

// Shield runs f with the thread's asynchronous signals blocked, and
// zeroes the vector registers before they are let through again. f is
// standard library code that moves key bytes through vector registers
// in a way this package cannot change: aes.NewCipher's key expansion,
// cipher.NewGCM's copy of the key schedule (a struct assignment of the
// whole schedule, whose first 32 bytes are the key), AES-GCM's Seal and
// Open (which hold up to seven round keys in registers at once; two in a
// row give the key), an AES call whose output is itself a key.
//
// A signal the thread takes while such code runs makes the kernel save
// every register in the signal frame on the thread's signal stack (Go
// heap, never cleared), and asynchronous preemption saves them again on
// the goroutine's stack (Copy's comment): the key stays there, whole,
// until a later signal happens to overwrite that frame. Blocked, a signal
// waits until f is done and the registers hold zeros. Synchronous
// signals (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP) are not blocked,
// so a fault in f is still a Go panic, nor are the two with which every
// thread is made to change credentials (asyncSignals).
//
// The cost is two system calls and a locked thread for f's duration,
// about 0.45 µs; a goroutine that waits in f (for a lock) holds its
// thread meanwhile.
func Shield(f func()) {
	old, blocked := shield()
	defer unshield(old, blocked)
	f()
}

// shield locks the thread and blocks its asynchronous signals (blocked:
// whether that worked); unshield undoes it.
func shield() (old uint64, blocked bool) {
	runtime.LockOSThread()
	return blockSignals()
}

// unshield zeroes the vector registers, lets the signals through, and
// unlocks the thread.
func unshield(old uint64, blocked bool) {
	zeroVectors()
	if blocked {
		restoreSignals(old)
	}
	runtime.UnlockOSThread()
}

// AESGCM returns AES-GCM under key (16, 24 or 32 bytes), built under
// Shield, with aes.NewCipher's key schedule wiped: the only copy of the
// key left is the one inside the AEAD, which the caller wipes with Wipe
// once done with it. Its Seal and Open belong under Shield too.
func AESGCM(key []byte) (aead cipher.AEAD, err error) {
	Shield(func() { aead, err = newAESGCM(key) })
	return aead, err
}

// WithAESGCM builds AES-GCM under key, passes it to f and wipes it, all
// under one Shield: for a key that wraps another (a key-encryption key),
// used for one Seal or Open and dropped. AES-GCM's Seal and Open load
// several round keys into vector registers at once, and any two in a row
// give the key back (the key schedule runs backwards), so they need the
// Shield as much as the build does.
func WithAESGCM(key []byte, f func(cipher.AEAD)) error {
	var err error
	Shield(func() {
		var aead cipher.AEAD
		if aead, err = newAESGCM(key); err != nil {
			return
		}
		defer Wipe(aead)
		f(aead)
	})
	return err
}

// AESGCMFrom returns AES-256-GCM under the key that derive writes into
// the 32-byte slice it is given, all under one Shield: for a key that is
// itself computed with AES (an XAES-256-GCM derived key). The slice is
// zeroed before AESGCMFrom returns.
func AESGCMFrom(derive func(key []byte)) (aead cipher.AEAD, err error) {
	k := keyPool.Get().(*[32]byte)
	defer func() { clear(k[:]); keyPool.Put(k) }()
	Shield(func() {
		derive(k[:])
		aead, err = newAESGCM(k[:])
	})
	return aead, err
}

// keyPool holds AESGCMFrom's key buffers: heap memory, cleared after use,
// never a stack.
var keyPool = sync.Pool{New: func() any { return new([32]byte) }}

// newAESGCM is AESGCM without the Shield, for callers inside one.
func newAESGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	Wipe(block) // NewGCM made its own copy of the key schedule
	return aead, err
}

// AESBlock returns the AES block cipher under key, built under Shield;
// the caller calls it under Shield and wipes it with Wipe.
func AESBlock(key []byte) (block cipher.Block, err error) {
	Shield(func() { block, err = aes.NewCipher(key) })
	return block, err
}
