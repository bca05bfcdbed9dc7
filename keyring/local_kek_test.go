package keyring

import (
	"bytes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"reflect"
	"runtime"
	"testing"
	"time"
	"unsafe"
)

// The KEK is the HKDF of the key file (docs/FORMAT.md), in locked memory,
// and not a data key: LiveKeys does not count it. The AES-GCM state built
// from it for one call is zeroed by the func that comes with it. Once the
// Local is garbage, its slot is zeroed and back in the arena.
func TestLocalKEK(t *testing.T) {
	file := bytes.Repeat([]byte{0x42}, LocalKeyFileSize)
	before := LiveKeys()
	l, err := newLocalFromBytes(bytes.Clone(file))
	if err != nil {
		t.Fatal(err)
	}
	if LiveKeys() != before {
		t.Errorf("LiveKeys went from %d to %d: the KEK counts as a data key", before, LiveKeys())
	}
	want, _ := hkdf.Key(sha256.New, file, nil, "kmsfs local key-encryption key v1", 32)
	if !bytes.Equal(l.kek.b[:], want) {
		t.Fatal("the KEK is not HKDF(key file, \"kmsfs local key-encryption key v1\")")
	}
	if !l.kek.locked {
		t.Error("the KEK is not in locked memory")
	}

	var mem []byte
	l.withAEAD(func(aead cipher.AEAD) {
		rv := reflect.ValueOf(aead)
		mem = unsafe.Slice((*byte)(rv.UnsafePointer()), rv.Type().Elem().Size())
		if !bytes.Contains(mem, want) {
			t.Errorf("the KEK is not in its AES-GCM state (%T): the test cannot see a wipe", aead)
		}
	})
	if !bytes.Equal(mem, make([]byte, len(mem))) {
		t.Error("the AES-GCM state of the KEK is not zeroed after the call")
	}

	slot := l.kek.b
	l = nil
	deadline := time.Now().Add(5 * time.Second)
	for {
		runtime.GC()
		arena.mu.Lock()
		released := false
		for _, s := range arena.slots {
			released = released || &s[0] == &slot[0]
		}
		arena.mu.Unlock()
		if released {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the KEK's slot did not go back to the arena after its Local was collected")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if *slot != [DataKeySize]byte{} {
		t.Error("the KEK's slot went back to the arena not zeroed")
	}
}
