package blockcipher

import (
	"bytes"
	"crypto/aes"
	"encoding/hex"
	"sync"
	"testing"
)

// TestXAESVectors checks the derivation against C2SP XAES-256-GCM's
// known answers (c2sp.org/XAES-256-GCM): the derived key under the first
// 12 bytes of the nonce, then AES-256-GCM with the last 12.
func TestXAESVectors(t *testing.T) {
	for _, tc := range []struct {
		key       byte
		aad, want string
	}{
		{0x01, "", "ce546ef63c9cc60765923609b33a9a1974e96e52daf2fcf7075e2271"},
		{0x03, "c2sp.org/XAES-256-GCM", "986ec1832593df5443a179437fd083bf3fdb41abd740a21f71eb769d"},
	} {
		block, err := aes.NewCipher(bytes.Repeat([]byte{tc.key}, 32))
		if err != nil {
			t.Fatal(err)
		}
		x := newXAES(block)
		nonce := []byte("ABCDEFGHIJKLMNOPQRSTUVWX")
		d := x.derive((*[NonceSize]byte)(nonce[:NonceSize]))
		got := d.aead.Seal(nil, nonce[NonceSize:], []byte("XAES-256-GCM"), []byte(tc.aad))
		if hex.EncodeToString(got) != tc.want {
			t.Errorf("key %#02x: sealed %x, want %s", tc.key, got, tc.want)
		}
		// The stored form of a block: key nonce ‖ nonce ‖ sealed.
		stored := append(append([]byte{}, nonce...), got...)
		plain, err := x.open(nil, stored, []byte(tc.aad))
		if err != nil || string(plain) != "XAES-256-GCM" {
			t.Errorf("key %#02x: open = %q, %v", tc.key, plain, err)
		}
		x.wipe()
	}
}

// TestXAESSessions: a writer draws a new key nonce every sessionSeals
// seals, never more often; a reader opens blocks of every key nonce,
// including ones it has evicted from its cache.
func TestXAESSessions(t *testing.T) {
	h := testHeaderV(t, Version2, 512, 512)
	_, c, err := h.Seal(randomKey())
	if err != nil {
		t.Fatal(err)
	}
	const n = 3*sessionSeals + 10
	plain := randBytes(512)
	stored := make([][]byte, n)
	keyNonces := map[string]int{}
	for i := range stored {
		stored[i] = c.SealBlock(nil, plain, uint64(i), false)
		keyNonces[string(stored[i][:NonceSize])]++
	}
	if len(keyNonces) != 4 {
		t.Fatalf("%d seals used %d key nonces, want 4", n, len(keyNonces))
	}
	for kn, k := range keyNonces {
		if k > sessionSeals {
			t.Errorf("key nonce %x sealed %d blocks, more than %d", kn, k, sessionSeals)
		}
	}
	// Read back out of order, so the small cache misses.
	for _, i := range []int{0, n - 1, sessionSeals + 1, 2*sessionSeals + 3, 5, n - 2} {
		got, err := c.OpenBlock(nil, stored[i], uint64(i), false)
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("block %d: %v", i, err)
		}
	}
	// Concurrent writers and readers (go test -race).
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range sessionSeals / 2 {
				idx := uint64(g*sessionSeals + i)
				s := c.SealBlock(nil, plain, idx, true)
				if got, err := c.OpenBlock(nil, s, idx, true); err != nil || !bytes.Equal(got, plain) {
					t.Errorf("block %d: %v", idx, err)
					return
				}
				if _, err := c.OpenBlock(nil, stored[i], uint64(i), false); err != nil {
					t.Errorf("old block %d: %v", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	c.Wipe()
}
