package keyring

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"

	"github.com/kmsfs/kmsfs/internal/secret"
)

// KindBranch names entries wrapped under a branch key.
const KindBranch Kind = "branch"

// ContextBranch is the encryption context key that binds a branch key to
// its branch ID, in place of ContextFile.
const ContextBranch = "kmsfs:branch"

// BranchContext returns the context a branch key is generated and
// unwrapped under. volumeID and branchID are lowercase hex.
func BranchContext(volumeID, branchID string) EncryptionContext {
	return EncryptionContext{ContextVolume: volumeID, ContextBranch: branchID}
}

// ContextBranchUse, set to BranchUseRead, marks the context of a branch
// key that a rewrap carried over to new keys: it unwraps the files that
// name it and wraps no new file. The key service (or the local or age
// wrap, which binds the whole context) holds a mount to it: an entry
// wrapped under the read-only context opens under no other.
const (
	ContextBranchUse = "kmsfs:branch-use"
	BranchUseRead    = "read"
)

// ReadOnlyBranchContext returns the context of a carried-over branch key.
func ReadOnlyBranchContext(volumeID, branchID string) EncryptionContext {
	ec := BranchContext(volumeID, branchID)
	ec[ContextBranchUse] = BranchUseRead
	return ec
}

// branchBlobVersion is the first byte of every blob Branch produces.
const branchBlobVersion = 1

// branchBlobSize is version(1) ‖ nonce(12) ‖ AES-256-GCM(data key)(32) ‖ tag(16).
const branchBlobSize = 1 + 12 + DataKeySize + 16

// Branch wraps data keys locally under a branch key: a key made by the
// volume's keyrings (KMS) and shared by many files, so that a new file or
// a first open costs no call to the key service. Each data key is still
// random and its own; it is wrapped with AES-256-GCM under a key derived
// (HKDF-SHA256) from the branch key and the whole encryption context, with
// the context as additional data too, so a blob opens under its own
// context only, as with KMS (docs/FORMAT.md, "Branch keys").
//
// A Branch owns its branch key from NewBranch until Wipe. It is safe for
// concurrent use until Wipe, which must not race with other calls.
type Branch struct {
	id  string // branch ID, lowercase hex: the KeyID of its entries
	key *DataKey
}

var (
	_ Keyring   = (*Branch)(nil)
	_ Wrapper   = (*Branch)(nil)
	_ Describer = (*Branch)(nil)
)

// NewBranch returns the keyring of branch key key, named id; it owns key
// from now on.
func NewBranch(id string, key *DataKey) *Branch { return &Branch{id: id, key: key} }

// ID returns the branch ID.
func (b *Branch) ID() string { return b.id }

// Wipe zeroes the branch key. The Branch must not be used afterwards.
func (b *Branch) Wipe() { b.key.Wipe() }

// Describe names the branch key.
func (b *Branch) Describe() string { return "branch key " + b.id }

// withAEAD passes f the AEAD that wraps the data keys of ec: AES-256-GCM
// under the file's wrapping key, derived from the branch key and ec with
// HKDF-SHA256 (docs/FORMAT.md) by package secret, so that no copy of
// either key is left in a hash state or a stack frame. The derivation,
// building the AEAD, f's Seal or Open and its wipe run under one
// secret.Shield.
func (b *Branch) withAEAD(ec EncryptionContext, f func(cipher.AEAD)) error {
	if b.key.Wiped() {
		return errors.New("keyring: branch key used after Wipe")
	}
	var err error
	secret.WithKDF(b.key.Bytes(), ec.Canonical(), func(kdf *secret.KDF) {
		err = kdf.WithAESGCM("kmsfs branch wrap key v1", f)
	})
	return err
}

func (b *Branch) aad(ec EncryptionContext) []byte {
	return append([]byte("kmsfs branch wrap v1\x00"+b.id+"\x00"), ec.Canonical()...)
}

// GenerateDataKey returns a random data key wrapped under the branch key.
func (b *Branch) GenerateDataKey(ctx context.Context, ec EncryptionContext) (*DataKey, []WrappedKey, error) {
	dk := randomDataKey()
	w, err := b.Wrap(ctx, dk, ec)
	if err != nil {
		dk.Wipe()
		return nil, nil, err
	}
	return dk, []WrappedKey{w}, nil
}

// Wrap wraps an existing data key under the branch key.
func (b *Branch) Wrap(_ context.Context, dk *DataKey, ec EncryptionContext) (WrappedKey, error) {
	if dk.Wiped() {
		return WrappedKey{}, errors.New("keyring: wrap of a wiped data key")
	}
	blob := make([]byte, 1+12, branchBlobSize)
	blob[0] = branchBlobVersion
	rand.Read(blob[1:13])
	aad := b.aad(ec)
	if err := b.withAEAD(ec, func(a cipher.AEAD) { blob = a.Seal(blob, blob[1:13], dk.Bytes(), aad) }); err != nil {
		return WrappedKey{}, err
	}
	return WrappedKey{Kind: KindBranch, KeyID: b.id, Blob: blob}, nil
}

// Decrypt unwraps the first branch entry naming this branch key that
// opens under ec; ErrNoUsableKey if none names it.
func (b *Branch) Decrypt(_ context.Context, wrapped []WrappedKey, ec EncryptionContext) (*DataKey, error) {
	var lastErr error
	for _, w := range wrapped {
		if w.Kind != KindBranch || w.KeyID != b.id {
			continue
		}
		if len(w.Blob) != branchBlobSize || w.Blob[0] != branchBlobVersion {
			lastErr = fmt.Errorf("branch key %s: %w (blob of %d bytes)", b.id, ErrInvalidCiphertext, len(w.Blob))
			continue
		}
		dk := newDataKey()
		var openErr error
		aad := b.aad(ec)
		if err := b.withAEAD(ec, func(a cipher.AEAD) { _, openErr = a.Open(dk.b[:0], w.Blob[1:13], w.Blob[13:], aad) }); err != nil {
			dk.Wipe()
			return nil, err
		}
		if openErr != nil {
			dk.Wipe()
			lastErr = fmt.Errorf("branch key %s: %w", b.id, ErrInvalidCiphertext)
			continue
		}
		return dk, nil
	}
	if lastErr != nil {
		return nil, lastErr
	}
	return nil, fmt.Errorf("branch key %s: %w", b.id, ErrNoUsableKey)
}
