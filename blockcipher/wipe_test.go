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
	h := testHeader(t, 512, 4096)
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
	rv := reflect.ValueOf(c.aead)
	if rv.Kind() != reflect.Pointer {
		t.Fatalf("the AEAD is a %T, not a pointer", c.aead)
	}
	mem := unsafe.Slice((*byte)(rv.UnsafePointer()), rv.Type().Elem().Size())
	if !bytes.Contains(mem, contentKey) {
		t.Fatalf("the content key is not in the memory of the AEAD (%T, %d bytes): the test cannot see a wipe", c.aead, len(mem))
	}
	stored := c.SealRun(nil, []byte("some plaintext"), 0, true)

	c.Wipe()
	if bytes.Contains(mem, contentKey) || !bytes.Equal(mem, make([]byte, len(mem))) {
		t.Errorf("Wipe left the AES-GCM state of %T non-zero", rv.Interface())
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
