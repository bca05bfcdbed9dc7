package awskms_test

import (
	"context"
	"errors"
	"testing"

	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/keyring/kmstest"
)

// ReEncrypt moves a wrapped key from key A to key B in one call, without
// the data key leaving KMS, and keeps its context.
func TestAWSKMSReEncrypt(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	a := srv.Keyring(t, kmstest.KeyAARN)
	b, p := srv.ViaProxy(t, kmstest.KeyBARN)
	ec := kmstest.FileContext("00000000000000000000000000000007")
	dk, wrapped := kmstest.Generate(t, a, ec)
	if !a.SameService(srv.Keyring(t, kmstest.KeyBARN)) || a.SameService(b) {
		t.Error("SameService: same region and endpoint should be the same service, another endpoint not")
	}

	ctx := context.Background()
	w, err := b.ReEncrypt(ctx, wrapped[0], ec)
	if err != nil {
		t.Fatal(err)
	}
	if w.Kind != keyring.KindAWSKMS || w.KeyID != kmstest.KeyBARN {
		t.Fatalf("new entry %s %s, want %s %s", w.Kind, w.KeyID, keyring.KindAWSKMS, kmstest.KeyBARN)
	}
	if n, all := p.Count("ReEncrypt"), p.Total(); n != 1 || all != 1 {
		t.Errorf("%d ReEncrypt, %d calls in all; want 1, 1", n, all)
	}
	kmstest.MustDecrypt(t, b, []keyring.WrappedKey{w}, ec, dk)
	if _, err := a.Decrypt(ctx, []keyring.WrappedKey{w}, ec); !errors.Is(err, keyring.ErrNoUsableKey) {
		t.Errorf("key A on B's entry: %v, want ErrNoUsableKey", err)
	}

	// Another context, a damaged blob, a source that is not a key ARN.
	if _, err := b.ReEncrypt(ctx, wrapped[0], kmstest.FileContext("00000000000000000000000000000008")); !errors.Is(err, keyring.ErrInvalidCiphertext) {
		t.Errorf("other context: %v, want ErrInvalidCiphertext", err)
	}
	bad := wrapped[0]
	bad.Blob = append([]byte(nil), bad.Blob...)
	bad.Blob[len(bad.Blob)-1] ^= 1
	if _, err := b.ReEncrypt(ctx, bad, ec); !errors.Is(err, keyring.ErrInvalidCiphertext) {
		t.Errorf("damaged blob: %v, want ErrInvalidCiphertext", err)
	}
	alias := wrapped[0]
	alias.KeyID = kmstest.AliasName
	if _, err := b.ReEncrypt(ctx, alias, ec); !errors.Is(err, keyring.ErrNoUsableKey) {
		t.Errorf("source named by alias: %v, want ErrNoUsableKey", err)
	}

	// A disabled destination is ErrKeyDisabled.
	srv.DisableKey(t, kmstest.KeyBARN)
	if _, err := b.ReEncrypt(ctx, wrapped[0], ec); !errors.Is(err, keyring.ErrKeyDisabled) {
		t.Errorf("disabled destination: %v, want ErrKeyDisabled", err)
	}
}
