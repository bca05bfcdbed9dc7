package keyring

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"sync/atomic"
)

// live counts the DataKeys that exist and are not wiped, wherever they
// are held: an open file, a key pool, a prefetch, a cache, a call in
// flight.
var live atomic.Int64

// LiveKeys returns how many data keys the process holds right now.
func LiveKeys() int64 { return live.Load() }

// DataKey holds the plaintext of one data key. Its bytes live in locked
// memory where the kernel allows (see lockedArena) and are zeroed by Wipe.
// It never prints its bytes, nor anything computed from them: String,
// Format and LogValue show a random ID that names the key in this process
// (a clone keeps it), so that nothing ever hashes the key.
//
// A DataKey is owned by one holder at a time; Wipe is idempotent but must
// not race with Bytes. Use Clone to hand a copy to another owner.
type DataKey struct {
	// b points at the key bytes (a pointer, not a slice, so that even a
	// DataKey copied by value and printed by reflection shows an address,
	// never the bytes). Guarded by the owner; nil after Wipe.
	b      *[DataKeySize]byte
	locked bool    // b is a slot of the locked arena
	id     [4]byte // random, shared by clones; not derived from the key
}

// NewDataKey copies src into a new DataKey and zeroes src, so a buffer
// returned by an SDK does not keep the key. src must be DataKeySize bytes.
func NewDataKey(src []byte) (*DataKey, error) {
	if len(src) != DataKeySize {
		clear(src)
		return nil, fmt.Errorf("data key has %d bytes, want %d", len(src), DataKeySize)
	}
	k := newDataKey()
	copy(k.b[:], src)
	clear(src)
	return k, nil
}

// randomDataKey returns a fresh random data key.
func randomDataKey() *DataKey {
	k := newDataKey()
	rand.Read(k.b[:]) // never fails since Go 1.24
	return k
}

// newDataKey returns a zeroed key with a new ID, counted in LiveKeys.
func newDataKey() *DataKey {
	b, locked := arena.alloc()
	live.Add(1)
	k := &DataKey{b: (*[DataKeySize]byte)(b), locked: locked}
	rand.Read(k.id[:])
	return k
}

// Bytes returns the key bytes, or nil after Wipe. Callers must not keep
// the slice beyond the key's lifetime or copy it into unmanaged memory.
func (k *DataKey) Bytes() []byte {
	if k.b == nil {
		return nil
	}
	return k.b[:]
}

// Clone returns an independent copy that must be wiped separately.
func (k *DataKey) Clone() *DataKey {
	if k.b == nil {
		panic("keyring: internal error: Clone of a wiped DataKey")
	}
	c := newDataKey()
	*c.b = *k.b
	c.id = k.id
	return c
}

// Wipe zeroes the key bytes and releases their memory. Safe to call twice.
func (k *DataKey) Wipe() {
	if k == nil || k.b == nil {
		return
	}
	clear(k.b[:])
	if k.locked {
		arena.release(k.b[:])
	}
	k.b = nil
	live.Add(-1)
}

// Wiped reports whether Wipe has been called.
func (k *DataKey) Wiped() bool { return k.b == nil }

// Locked reports whether the key bytes are in mlocked memory.
func (k *DataKey) Locked() bool { return k.locked }

// String prints the key's random ID only, never key bytes.
func (k *DataKey) String() string {
	if k == nil {
		return "DataKey(nil)"
	}
	return "DataKey(id=" + hex.EncodeToString(k.id[:]) + ")"
}

// Format makes every fmt verb (%v, %x, %s, %#v...) print String().
func (k *DataKey) Format(f fmt.State, _ rune) { fmt.Fprint(f, k.String()) }

// LogValue redacts the key in log/slog output.
func (k *DataKey) LogValue() slog.Value { return slog.StringValue(k.String()) }
