// Package secrettest gives tests what they look for when they search a
// process's memory for key material: the forms a key takes there besides
// its own bytes.
package secrettest

import (
	"bytes"
	"crypto/aes"
	"fmt"
	"reflect"
	"unsafe"
)

// RoundKeyPairs returns every two consecutive round keys of the AES-256
// schedule of key but the first two (the key itself), as crypto/aes holds
// them (read from an aes.Block's memory), named "round keys R and R+1 of
// the NAME". Any such pair gives the key back, and AES-GCM holds several
// in vector registers at once.
func RoundKeyPairs(name string, key []byte) (map[string][]byte, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	rv := reflect.ValueOf(b)
	mem := unsafe.Slice((*byte)(rv.UnsafePointer()), rv.Type().Elem().Size())
	i := bytes.Index(mem, key)
	if i < 0 || len(key) != 32 {
		return nil, fmt.Errorf("the %s is not a 32-byte key found in its AES key schedule (%T): its round keys cannot be found", name, b)
	}
	sched := bytes.Clone(mem[i : i+15*16])
	out := map[string][]byte{}
	for r := 1; r < 14; r++ {
		out[fmt.Sprintf("round keys %d and %d of the %s", r, r+1, name)] = sched[16*r : 16*r+32]
	}
	return out, nil
}

// WordSwapped gives each secret as SHA-256 (and AES without AES-NI) hold
// it once loaded: as big-endian 32-bit words in little-endian memory,
// named "word-swapped NAME".
func WordSwapped(secrets map[string][]byte) map[string][]byte {
	out := map[string][]byte{}
	for name, b := range secrets {
		w := make([]byte, len(b)/4*4)
		for i := 0; i < len(w); i += 4 {
			w[i], w[i+1], w[i+2], w[i+3] = b[i+3], b[i+2], b[i+1], b[i]
		}
		out["word-swapped "+name] = w
	}
	return out
}
