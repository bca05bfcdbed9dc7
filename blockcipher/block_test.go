package blockcipher

import (
	"bytes"
	"errors"
	"testing"
)

func sealedFile(t *testing.T, v uint16, plain []byte) (*Header, []byte, *Cipher, []byte) {
	t.Helper()
	h := testHeaderV(t, v, 512, 4096)
	key := randomKey()
	slot, c, err := h.Seal(key)
	if err != nil {
		t.Fatal(err)
	}
	stored := c.SealRun(nil, plain, 0, true)
	return h, slot, c, stored
}

func TestSealOpenRun(t *testing.T) {
	versions(t, func(t *testing.T, v uint16) {
		for _, n := range []int{1, 4095, 4096, 4097, 64 << 10, 128<<10 + 5, 1 << 20} {
			plain := randBytes(n)
			_, _, c, stored := sealedFile(t, v, plain)
			if want := c.Layout().CipherSize(int64(n)) - c.Layout().DataOff(); int64(len(stored)) != want {
				t.Fatalf("%d bytes: stored %d, want %d", n, len(stored), want)
			}
			got, err := c.OpenRun(nil, stored, 0, true)
			if err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("%d bytes: round trip failed: %v", n, err)
			}
		}
	})
}

func TestNoncesDiffer(t *testing.T) {
	versions(t, func(t *testing.T, v uint16) {
		_, _, c, _ := sealedFile(t, v, nil)
		plain := make([]byte, 4096*8)
		a := c.SealRun(nil, plain, 0, false)
		b := c.SealRun(nil, plain, 0, false)
		seen := map[string]bool{}
		for _, s := range [][]byte{a, b} {
			for i := 0; i < len(s); i += 4096 + int(c.Layout().Overhead()) {
				n := string(s[i : i+int(c.Layout().Overhead())-TagSize])
				if seen[n] {
					t.Fatal("nonce reused")
				}
				seen[n] = true
			}
		}
	})
}

func wantAuth(t *testing.T, err error, block uint64) {
	t.Helper()
	var be *BlockError
	if !errors.Is(err, ErrAuth) || !errors.As(err, &be) || be.Block != block {
		t.Fatalf("error %v, want ErrAuth at block %d", err, block)
	}
}

func TestTamper(t *testing.T) {
	versions(t, func(t *testing.T, v uint16) {
		plain := randBytes(3*4096 + 100)
		_, _, c, stored := sealedFile(t, v, plain)
		sbs := 4096 + int(c.Layout().Overhead())
		_, _, other, otherStored := sealedFile(t, v, plain)

		flip := func(i int) []byte { b := bytes.Clone(stored); b[i] ^= 0x80; return b }
		cases := []struct {
			name   string
			stored []byte
			c      *Cipher
			block  uint64
		}{
			{"nonce bit", flip(sbs + 3), c, 1},
			{"ciphertext bit", flip(sbs + 2*NonceSize + 100), c, 1},
			{"second nonce bit", flip(sbs + NonceSize + 3), c, 1},
			{"tag bit", flip(2*sbs - 1), c, 1},
			{"last block tag bit", flip(len(stored) - 1), c, 3},
			{"swap blocks 0 and 1", append(append(bytes.Clone(stored[sbs:2*sbs]), stored[:sbs]...), stored[2*sbs:]...), c, 0},
			{"block from another file", append(append(bytes.Clone(stored[:sbs]), otherStored[sbs:2*sbs]...), stored[2*sbs:]...), c, 1},
			{"other file's cipher", stored, other, 0},
			{"truncated inside last block", stored[:len(stored)-10], c, 3},
			{"truncated at block boundary", stored[:3*sbs], c, 2},
			{"last block dropped and zeros appended", append(bytes.Clone(stored[:3*sbs]), make([]byte, 128)...), c, 3},
			{"middle block zeroed nonce", func() []byte { b := bytes.Clone(stored); copy(b[sbs:], make([]byte, sbs-4096-TagSize)); return b }(), c, 1},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				out, err := tc.c.OpenRun(nil, tc.stored, 0, true)
				if len(out) != 0 {
					t.Fatalf("returned %d bytes despite the error", len(out))
				}
				wantAuth(t, err, tc.block)
			})
		}
	})
}

func TestHeaderSwapFailsBlocks(t *testing.T) {
	versions(t, func(t *testing.T, v uint16) {
		plain := randBytes(5000)
		h, _, _, stored := sealedFile(t, v, plain)
		_, slotB, _, _ := sealedFile(t, v, plain)
		// File B's header on file A's blocks: whoever unwraps B's key gets a
		// cipher bound to B's file ID, and A's blocks fail.
		hb, err := ParseHeader(slotB)
		if err != nil {
			t.Fatal(err)
		}
		if hb.FileID == h.FileID {
			t.Fatal("file IDs collide")
		}
		// Simulate: the reader holds B's key (the only one B's header opens with).
		key := randomKey()
		hb2 := testHeaderV(t, v, 512, 4096)
		_, cb, _ := hb2.Seal(key)
		_, err = cb.OpenRun(nil, stored, 0, true)
		wantAuth(t, err, 0)
	})
}

func TestHole(t *testing.T) {
	versions(t, func(t *testing.T, v uint16) {
		_, _, c, _ := sealedFile(t, v, nil)
		hole := make([]byte, 4096+int(c.Layout().Overhead()))
		got, err := c.OpenBlock(nil, hole, 5, false)
		if err != nil || len(got) != 4096 || !bytes.Equal(got, make([]byte, 4096)) {
			t.Fatalf("hole: %d bytes, %v", len(got), err)
		}
		// A final block cannot be a hole: zeros appended to a file are caught.
		_, err = c.OpenBlock(nil, hole, 5, true)
		wantAuth(t, err, 5)
		// A short all-zero block is damage, not a hole.
		_, err = c.OpenBlock(nil, hole[:100], 5, false)
		wantAuth(t, err, 5)
	})
}

func TestLastFlag(t *testing.T) {
	versions(t, func(t *testing.T, v uint16) {
		_, _, c, _ := sealedFile(t, v, nil)
		p := randBytes(4096)
		middle := c.SealBlock(nil, p, 2, false)
		final := c.SealBlock(nil, p, 2, true)
		// A middle block read as the final one: the file was cut at a block
		// boundary.
		_, err := c.OpenBlock(nil, middle, 2, true)
		wantAuth(t, err, 2)
		// A final block in the middle: left by a crash while extending.
		if got, err := c.OpenBlock(nil, final, 2, false); err != nil || !bytes.Equal(got, p) {
			t.Fatalf("final block in the middle: %v", err)
		}
		// Right index only.
		_, err = c.OpenBlock(nil, middle, 3, false)
		wantAuth(t, err, 3)
	})
}

func TestOpenShortened(t *testing.T) {
	versions(t, func(t *testing.T, v uint16) {
		_, _, c, _ := sealedFile(t, v, nil)
		for _, n := range []int{1, 100, 4095} {
			p := randBytes(n)
			b := c.SealBlock(nil, p, 4, true)
			b = append(b, make([]byte, 4096+int(c.Layout().Overhead())-len(b))...)
			got, err := c.OpenBlock(nil, b, 4, false)
			want := append(bytes.Clone(p), make([]byte, 4096-n)...)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("%d bytes: %v", n, err)
			}
			// Sealed as a middle block, the same shape is not accepted.
			m := c.SealBlock(nil, p, 4, false)
			m = append(m, make([]byte, 4096+int(c.Layout().Overhead())-len(m))...)
			_, err = c.OpenBlock(nil, m, 4, false)
			wantAuth(t, err, 4)
		}
	})
}
