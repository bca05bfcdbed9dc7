package blockcipher

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

func TestHeaderRoundTrip(t *testing.T) {
	h := testHeader(t, 1024, 4096)
	h.Keys = append(h.Keys, KeyEntry{Kind: 1, KeyID: "arn:aws:kms:eu-west-2:111122223333:key/bc436485-5092-42b8-92a3-0aa8b93536dc", Blob: bytes.Repeat([]byte{7}, 184)})
	key := randomKey()
	slot, _, err := h.Seal(key)
	if err != nil {
		t.Fatal(err)
	}
	if len(slot) != 1024 {
		t.Fatalf("slot has %d bytes, want 1024", len(slot))
	}
	got, err := ParseHeader(slot)
	if err != nil {
		t.Fatal(err)
	}
	again, err := got.Marshal()
	if err != nil || !bytes.Equal(again, slot) {
		t.Fatalf("re-marshal differs (err %v)", err)
	}
	if _, err := got.Open(key); err != nil {
		t.Fatalf("Open with the right key: %v", err)
	}
	if _, err := got.Open(randomKey()); !errors.Is(err, ErrHeaderAuth) {
		t.Fatalf("Open with another key: %v, want ErrHeaderAuth", err)
	}
	l, err := ParsePrefix(slot[:PrefixSize])
	if err != nil || l.HeaderSize != 1024 || l.BlockSize != 4096 || l.Version != Version2 {
		t.Fatalf("ParsePrefix = %+v, %v", l, err)
	}
}

// The flags a header may have: none (a file), FlagBranchKey (a branch key
// file), and that with FlagBranchReadOnly (one a rewrap carried over).
// The flags are under the MAC: changing them needs the key.
func TestHeaderFlags(t *testing.T) {
	for _, flags := range []uint16{0, FlagBranchKey, FlagBranchKey | FlagBranchReadOnly} {
		h := testHeader(t, 512, 4096)
		h.Flags = flags
		key := randomKey()
		slot, _, err := h.Seal(key)
		if err != nil {
			t.Fatalf("flags %#04x: %v", flags, err)
		}
		got, err := ParseHeader(slot)
		if err != nil || got.Flags != flags {
			t.Fatalf("flags %#04x: parsed %+v, %v", flags, got, err)
		}
		binary.BigEndian.PutUint16(slot[80:], flags^FlagBranchReadOnly|FlagBranchKey)
		if got, err := ParseHeader(slot); err == nil {
			if err := got.Verify(key); !errors.Is(err, ErrHeaderAuth) {
				t.Fatalf("flags %#04x changed to %#04x: Verify = %v, want ErrHeaderAuth", flags, got.Flags, err)
			}
		}
	}
	h := testHeader(t, 512, 4096)
	h.Flags = FlagBranchReadOnly
	if _, _, err := h.Seal(randomKey()); !errors.Is(err, ErrUnsupportedVersion) {
		t.Fatalf("Seal with the read-only flag alone: %v, want ErrUnsupportedVersion", err)
	}
}

// TestHeaderTamper flips every byte of a sealed header in turn: each flip
// must fail parsing or authentication, never pass.
func TestHeaderTamper(t *testing.T) {
	h := testHeader(t, 256, 4096)
	key := randomKey()
	slot, _, err := h.Seal(key)
	if err != nil {
		t.Fatal(err)
	}
	for i := range slot {
		bad := bytes.Clone(slot)
		bad[i] ^= 0x01
		got, err := ParseHeader(bad)
		if err == nil {
			_, err = got.Open(key)
		}
		if err == nil {
			t.Errorf("flip of byte %d went unnoticed", i)
		}
	}
}

func TestHeaderCommitmentBindsKey(t *testing.T) {
	// Two entries wrapping different keys: whichever a reader unwraps,
	// only the committed key opens the header.
	h := testHeader(t, 512, 4096)
	k1, k2 := randomKey(), randomKey()
	slot, _, err := h.Seal(k1)
	if err != nil {
		t.Fatal(err)
	}
	parsed, _ := ParseHeader(slot)
	if _, err := parsed.Open(k2); !errors.Is(err, ErrHeaderAuth) || !strings.Contains(err.Error(), "commitment") {
		t.Fatalf("Open with the uncommitted key: %v", err)
	}
}

func TestParseHeaderRejects(t *testing.T) {
	h := testHeader(t, 512, 4096)
	slot, _, err := h.Seal(randomKey())
	if err != nil {
		t.Fatal(err)
	}
	mut := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(slot)) }
	cases := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"short magic", slot[:3], ErrTruncated},
		{"bad magic", mut(func(b []byte) []byte { b[0] = 'X'; return b }), ErrBadMagic},
		{"all zero", make([]byte, 512), ErrBadMagic},
		{"version 3", mut(func(b []byte) []byte { binary.BigEndian.PutUint16(b[6:], 3); return b }), ErrUnsupportedVersion},
		{"version 0", mut(func(b []byte) []byte { binary.BigEndian.PutUint16(b[6:], 0); return b }), ErrUnsupportedVersion},
		{"prefix only", slot[:PrefixSize], ErrTruncated},
		{"truncated slot", slot[:511], ErrTruncated},
		{"trailing garbage", append(bytes.Clone(slot), 0), ErrMalformed},
		{"block size not power of two", mut(func(b []byte) []byte { binary.BigEndian.PutUint32(b[12:], 4000); return b }), ErrMalformed},
		{"huge header size", mut(func(b []byte) []byte { binary.BigEndian.PutUint32(b[8:], 1<<31); return b }), ErrMalformed},
		{"read-only flag on a file", mut(func(b []byte) []byte { b[81] = FlagBranchReadOnly; return b }), ErrUnsupportedVersion},
		{"unknown flag", mut(func(b []byte) []byte { b[81] = 4; return b }), ErrUnsupportedVersion},
		{"unknown high flag", mut(func(b []byte) []byte { b[80] = 0x80; return b }), ErrUnsupportedVersion},
		{"zero keys", mut(func(b []byte) []byte { b[82] = 0; return b }), ErrMalformed},
		{"too many keys", mut(func(b []byte) []byte { b[82] = MaxKeys + 1; return b }), ErrMalformed},
		{"keys past slot", mut(func(b []byte) []byte { b[82] = 9; return b }), ErrMalformed},
		{"kind code 0", mut(func(b []byte) []byte { b[fixedSize] = 0; return b }), ErrMalformed},
		{"key ID too long", mut(func(b []byte) []byte { binary.BigEndian.PutUint16(b[fixedSize+1:], 0xffff); return b }), ErrMalformed},
		{"empty key ID", mut(func(b []byte) []byte { binary.BigEndian.PutUint16(b[fixedSize+1:], 0); return b }), ErrMalformed},
		{"blob too long", mut(func(b []byte) []byte { binary.BigEndian.PutUint16(b[fixedSize+3+32:], MaxBlobLen+1); return b }), ErrMalformed},
		{"blob past slot", mut(func(b []byte) []byte { binary.BigEndian.PutUint16(b[fixedSize+3+32:], 500); return b }), ErrMalformed},
		{"padding not zero", mut(func(b []byte) []byte { b[400] = 1; return b }), ErrMalformed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h, err := ParseHeader(tc.in)
			if h != nil || !errors.Is(err, tc.want) {
				t.Fatalf("ParseHeader = %v, %v; want error %v", h, err, tc.want)
			}
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("error %T is not a *FormatError", err)
			}
		})
	}
}

func TestMarshalRefusesWhatDoesNotFit(t *testing.T) {
	h := testHeader(t, 256, 4096)
	h.Keys[0].Blob = make([]byte, 300)
	if _, _, err := h.Seal(randomKey()); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "slot holds 256") {
		t.Fatalf("Seal of an oversize entry: %v", err)
	}
	h = testHeader(t, 512, 4096)
	h.Keys[0].Kind = 0
	if _, err := h.Marshal(); !errors.Is(err, ErrMalformed) {
		t.Fatalf("Marshal of kind code 0: %v", err)
	}
}
