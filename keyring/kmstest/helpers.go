package kmstest

import (
	"bytes"
	"context"
	"testing"

	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/keyring/awskms"
)

// Test helpers shared by the tests of keyring and its providers.

// NewKeyring builds an AWS KMS keyring from cfg, failing t on error.
func NewKeyring(t testing.TB, cfg awskms.Config) *awskms.Keyring {
	t.Helper()
	k, err := awskms.New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("awskms.New: %v", err)
	}
	return k
}

// ViaProxy returns a keyring for keyID on s that talks through a new
// Proxy, and the proxy.
func (s *Server) ViaProxy(t testing.TB, keyID string) (*awskms.Keyring, *Proxy) {
	t.Helper()
	p := NewProxy(t, s.Endpoint())
	cfg := s.Config(keyID)
	cfg.Endpoint = p.Endpoint()
	return NewKeyring(t, cfg), p
}

// Generate makes a data key with k under ec, failing t on error; the key
// is wiped in t's Cleanup.
func Generate(t testing.TB, k keyring.Keyring, ec keyring.EncryptionContext) (*keyring.DataKey, []keyring.WrappedKey) {
	t.Helper()
	dk, wrapped, err := k.GenerateDataKey(context.Background(), ec)
	if err != nil {
		t.Fatalf("GenerateDataKey: %v", err)
	}
	t.Cleanup(dk.Wipe)
	return dk, wrapped
}

// MustDecrypt unwraps wrapped with k under ec and fails t unless that
// gives want.
func MustDecrypt(t testing.TB, k keyring.Keyring, wrapped []keyring.WrappedKey, ec keyring.EncryptionContext, want *keyring.DataKey) {
	t.Helper()
	got, err := k.Decrypt(context.Background(), wrapped, ec)
	if err != nil {
		t.Fatalf("Decrypt: %v", err)
	}
	defer got.Wipe()
	if !bytes.Equal(got.Bytes(), want.Bytes()) {
		t.Fatalf("Decrypt returned another key: %v, want %v", got, want)
	}
}

// FileContext is the encryption context of file (32 hex digits) in a
// fixed test volume.
func FileContext(file string) keyring.EncryptionContext {
	return keyring.FileContext("0123456789abcdef0123456789abcdef", file)
}
