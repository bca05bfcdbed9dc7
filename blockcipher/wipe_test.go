package blockcipher

import (
	"bytes"
	"crypto/hkdf"
	"crypto/sha256"
	"reflect"
	"testing"
	"unsafe"
)

// Wipe zeroes what a Cipher holds of its keys: the content key was in
// the memory of its AES-GCM state before (the AES-256 key schedule starts
// with the key) and is not after; the record MAC key is zero; using the
// Cipher then panics rather than seal under a zero key.
func TestCipherWipe(t *testing.T) {
	versions(t, testCipherWipe)
}

// memOf is the memory a pointer in an interface points at.
func memOf(t *testing.T, v any) []byte {
	t.Helper()
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer {
		t.Fatalf("%T is not a pointer", v)
	}
	return unsafe.Slice((*byte)(rv.UnsafePointer()), rv.Type().Elem().Size())
}

func testCipherWipe(t *testing.T, v uint16) {
	h := testHeaderV(t, v, 512, 4096)
	key := randomKey()
	_, c, err := h.Seal(key)
	if err != nil {
		t.Fatal(err)
	}
	contentKey, err := hkdf.Key(sha256.New, key, h.FileID[:], labelContent, 32)
	if err != nil {
		t.Fatal(err)
	}
	recordKey, _ := hkdf.Key(sha256.New, key, h.FileID[:], labelRecordMAC, 32)
	if !bytes.Equal(c.recordKey[:], recordKey) {
		t.Fatal("the Cipher's record MAC key is not the derived one")
	}
	var mem []byte
	if v == Version1 {
		mem = memOf(t, c.aead)
	} else {
		mem = memOf(t, c.x.block)
	}
	if !bytes.Contains(mem, contentKey) {
		t.Fatalf("the content key is not in the memory of the AES state (%d bytes): the test cannot see a wipe", len(mem))
	}
	// Seal two sessions' worth, and open a block of the first, so that a
	// Version2 Cipher holds a writer's key and a cached one.
	var stored []byte
	for i := range sessionSeals + 1 {
		stored = c.SealRun(stored[:0], []byte("some plaintext"), uint64(i), true)
	}
	first := c.SealRun(nil, []byte("x"), 0, true)
	if _, err := c.OpenRun(nil, first, 0, true); err != nil {
		t.Fatal(err)
	}
	regions := [][]byte{mem}
	if v == Version2 {
		regions = append(regions, c.x.k1[:], memOf(t, c.x.w.aead))
		for _, d := range c.x.cache {
			regions = append(regions, memOf(t, d.aead))
		}
		if len(regions) < 4 {
			t.Fatalf("%d derived keys held, want a writer's and a cached one", len(regions)-2)
		}
	}
	for i, r := range regions {
		if bytes.Equal(r, make([]byte, len(r))) {
			t.Fatalf("key region %d is zero before Wipe", i)
		}
	}

	c.Wipe()
	if bytes.Contains(mem, contentKey) {
		t.Error("Wipe left the content key")
	}
	for i, r := range regions {
		if !bytes.Equal(r, make([]byte, len(r))) {
			t.Errorf("Wipe left key region %d (of %d bytes) non-zero", i, len(r))
		}
	}
	if c.recordKey != [32]byte{} {
		t.Error("Wipe left the record MAC key")
	}
	c.Wipe() // twice is fine
	for name, use := range map[string]func(){
		"SealRun":   func() { c.SealRun(nil, []byte("x"), 0, true) },
		"OpenRun":   func() { c.OpenRun(nil, stored, 0, true) },
		"RecordMAC": func() { c.RecordMAC([]byte("x")) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s of a wiped Cipher did not panic", name)
				}
			}()
			use()
		}()
	}
}
