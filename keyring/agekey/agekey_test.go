package agekey

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/keyring"
)

// newPair makes an identity file and its recipient keyring.
func newPair(t *testing.T) (*Recipient, string) {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "recovery.txt")
	if err := os.WriteFile(path, []byte("# test identity\n"+id.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := ParseRecipient(id.Recipient().String())
	if err != nil {
		t.Fatal(err)
	}
	return r, path
}

func ctxFor(file string) keyring.EncryptionContext {
	return keyring.FileContext("0123456789abcdef0123456789abcdef", file)
}

func TestRoundTrip(t *testing.T) {
	ctx := context.Background()
	r, path := newPair(t)
	id, err := LoadIdentity(path)
	if err != nil {
		t.Fatal(err)
	}
	ec := ctxFor("00000000000000000000000000000001")
	dk, wrapped, err := r.GenerateDataKey(ctx, ec)
	if err != nil {
		t.Fatal(err)
	}
	defer dk.Wipe()
	if len(wrapped) != 1 || wrapped[0].Kind != keyring.KindAge || wrapped[0].KeyID != r.KeyID() {
		t.Fatalf("entry %+v", wrapped)
	}
	t.Logf("age blob: %d bytes", len(wrapped[0].Blob))
	got, err := id.Decrypt(ctx, wrapped, ec)
	if err != nil {
		t.Fatal(err)
	}
	defer got.Wipe()
	if !bytes.Equal(got.Bytes(), dk.Bytes()) {
		t.Fatal("unwrapped another key")
	}

	// Another context, a flipped byte, another identity: refused.
	if _, err := id.Decrypt(ctx, wrapped, ctxFor("00000000000000000000000000000002")); !errors.Is(err, keyring.ErrInvalidCiphertext) {
		t.Errorf("other context: %v, want ErrInvalidCiphertext", err)
	}
	bad := bytes.Clone(wrapped[0].Blob)
	bad[len(bad)-1] ^= 1
	if _, err := id.Decrypt(ctx, []keyring.WrappedKey{{Kind: keyring.KindAge, KeyID: r.KeyID(), Blob: bad}}, ec); !errors.Is(err, keyring.ErrInvalidCiphertext) {
		t.Errorf("flipped bit: %v, want ErrInvalidCiphertext", err)
	}
	_, otherPath := newPair(t)
	other, err := LoadIdentity(otherPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Decrypt(ctx, wrapped, ec); !errors.Is(err, keyring.ErrNoUsableKey) {
		t.Errorf("other identity: %v, want ErrNoUsableKey", err)
	}
	// An entry claiming the identity's recipient but wrapped to another
	// one does not open.
	r2, _ := newPair(t)
	w2, err := r2.Wrap(ctx, dk, ec)
	if err != nil {
		t.Fatal(err)
	}
	w2.KeyID = r.KeyID()
	if _, err := id.Decrypt(ctx, []keyring.WrappedKey{w2}, ec); !errors.Is(err, keyring.ErrInvalidCiphertext) {
		t.Errorf("entry relabelled to the identity's recipient: %v, want ErrInvalidCiphertext", err)
	}
	// The recipient alone never unwraps.
	if _, err := r.Decrypt(ctx, wrapped, ec); !errors.Is(err, keyring.ErrNoUsableKey) {
		t.Errorf("recipient Decrypt: %v, want ErrNoUsableKey", err)
	}
}

func TestMultiWithRecipient(t *testing.T) {
	ctx := context.Background()
	r, path := newPair(t)
	id, err := LoadIdentity(path)
	if err != nil {
		t.Fatal(err)
	}
	keyPath := filepath.Join(t.TempDir(), "k")
	if err := keyring.CreateLocalKeyFile(keyPath); err != nil {
		t.Fatal(err)
	}
	local, err := keyring.LoadLocal(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	m, err := keyring.NewMulti(local, r)
	if err != nil {
		t.Fatal(err)
	}
	ec := ctxFor("00000000000000000000000000000003")
	dk, wrapped, err := m.GenerateDataKey(ctx, ec)
	if err != nil {
		t.Fatal(err)
	}
	defer dk.Wipe()
	for _, k := range []keyring.Keyring{m, id} {
		got, err := k.Decrypt(ctx, wrapped, ec)
		if err != nil {
			t.Fatalf("%T: %v", k, err)
		}
		if !bytes.Equal(got.Bytes(), dk.Bytes()) {
			t.Errorf("%T unwrapped another key", k)
		}
		got.Wipe()
	}
}

func TestLoadIdentityRefuses(t *testing.T) {
	dir := t.TempDir()
	open := filepath.Join(dir, "open")
	os.WriteFile(open, []byte("AGE-SECRET-KEY-1\n"), 0o644)
	if _, err := LoadIdentity(open); err == nil {
		t.Error("a group-readable identity file was accepted")
	}
	junk := filepath.Join(dir, "junk")
	os.WriteFile(junk, []byte("not a key\n"), 0o600)
	if _, err := LoadIdentity(junk); err == nil {
		t.Error("a file without identities was accepted")
	}
	if _, err := ParseRecipient("age1notarecipient"); err == nil {
		t.Error("a bad recipient was accepted")
	}
	// A FIFO would block the open for good (no writer ever comes).
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadIdentity(fifo); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a FIFO as the identity file: %v", err)
	}
}
