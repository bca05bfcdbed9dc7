// Package keyring generates and unwraps per-file data keys.
//
// A Keyring hands out 32-byte AES-256 data keys together with one or more
// wrapped copies of them (the bytes that are stored in a file header), and
// unwraps such copies again. Providers: Local (a 32-byte key file), Multi
// (wrap under several keyrings, unwrap with any), and in package
// keyring/awskms AWS KMS (or any endpoint speaking its API), the only code
// that imports the AWS SDK. Wrappers: Cache (keys kept for a TTL after
// use), Ahead (keys unwrapped ahead of their first use) and Metrics.
//
// Invariants every provider keeps:
//
//   - Every wrap and unwrap is bound to an EncryptionContext. Unwrapping with
//     a context other than the one used to wrap fails with
//     ErrInvalidCiphertext, exactly as AWS KMS does.
//   - A provider only unwraps entries whose key ID it was configured with, so
//     a header naming a key the volume does not trust is refused
//     (ErrNoUsableKey) instead of being sent to that key.
//   - Plaintext key bytes live only in a *DataKey: in locked memory where the
//     kernel allows, never printed (String, Format and LogValue redact them),
//     zeroed by Wipe. Errors never contain key bytes. LiveKeys counts every
//     DataKey not yet wiped. (Local's key-encryption key is the one other
//     key: in locked memory too, for the keyring's life, not counted.)
//
// The package knows nothing about files or FUSE: a file ID is an opaque value
// in the encryption context.
package keyring

import (
	"context"
	"encoding/binary"
	"errors"
	"slices"
)

// Kind names a provider in a wrapped key entry. The strings are part of the
// volume config and of `kmsfs inspect` output.
type Kind string

const (
	KindAWSKMS Kind = "aws-kms"
	KindLocal  Kind = "local"
	// KindAge names entries wrapped to an age X25519 recipient (package
	// keyring/agekey): anyone can wrap, only the identity's holder unwraps.
	KindAge Kind = "age"
)

// DataKeySize is the size of every data key in bytes (AES-256).
const DataKeySize = 32

// Encryption context keys used by kmsfs. The context binds a data key to its
// volume and file, never to a path, so renames never need the keyring.
const (
	ContextVolume = "kmsfs:volume"
	ContextFile   = "kmsfs:file"
)

// EncryptionContext is the non-secret context bound to a wrapped key
// (AWS KMS EncryptionContext semantics).
type EncryptionContext map[string]string

// FileContext returns the context kmsfs binds a file's data key to.
// volumeID and fileID are the lowercase hex forms of the raw IDs.
func FileContext(volumeID, fileID string) EncryptionContext {
	return EncryptionContext{ContextVolume: volumeID, ContextFile: fileID}
}

// Canonical returns a deterministic encoding of the context: the pairs sorted
// by key, each key and value prefixed by its length as a big-endian uint32.
// Local uses it as AES-GCM additional data.
func (ec EncryptionContext) Canonical() []byte {
	keys := make([]string, 0, len(ec))
	size := 4
	for k, v := range ec {
		keys = append(keys, k)
		size += 8 + len(k) + len(v)
	}
	slices.Sort(keys)
	out := make([]byte, 0, size)
	out = binary.BigEndian.AppendUint32(out, uint32(len(keys)))
	for _, k := range keys {
		v := ec[k]
		out = binary.BigEndian.AppendUint32(out, uint32(len(k)))
		out = append(out, k...)
		out = binary.BigEndian.AppendUint32(out, uint32(len(v)))
		out = append(out, v...)
	}
	return out
}

// WrappedKey is one wrapped copy of a data key, as stored in a file header.
// KeyID is the provider's resolved key identifier: for AWS KMS the key ARN
// (never an alias), for Local the key file's fingerprint.
type WrappedKey struct {
	Kind  Kind
	KeyID string
	Blob  []byte
}

// Keyring generates and unwraps data keys. Implementations are safe for
// concurrent use.
type Keyring interface {
	// GenerateDataKey returns a fresh random data key and its wrapped
	// copies, bound to ec. The caller owns the key and must Wipe it.
	GenerateDataKey(ctx context.Context, ec EncryptionContext) (*DataKey, []WrappedKey, error)

	// Decrypt unwraps the first entry of wrapped that this keyring trusts
	// and can open under ec. It returns ErrNoUsableKey when no entry names
	// a key of this keyring. The caller owns the key and must Wipe it.
	Decrypt(ctx context.Context, wrapped []WrappedKey, ec EncryptionContext) (*DataKey, error)
}

// Describer is implemented by keyrings that can describe their keys without
// any key bytes, for logs and `kmsfs init` output.
type Describer interface {
	Describe() string
}

// Sentinel errors. Providers wrap them with the key ID and the provider's
// reason (fmt.Errorf("...: %w", ErrX)); callers test with errors.Is.
var (
	// ErrAccessDenied: the caller is not allowed to use the key
	// (KMS AccessDeniedException, a key file that cannot be read).
	ErrAccessDenied = errors.New("access denied")
	// ErrKeyDisabled: the key exists but cannot be used: disabled, pending
	// deletion, or in another unusable state (KMS DisabledException,
	// KMSInvalidStateException).
	ErrKeyDisabled = errors.New("key disabled or not usable")
	// ErrKeyNotFound: no such key (KMS NotFoundException).
	ErrKeyNotFound = errors.New("key not found")
	// ErrInvalidCiphertext: the wrapped key is corrupt, belongs to another
	// key, or was bound to another encryption context (KMS
	// InvalidCiphertextException, IncorrectKeyException).
	ErrInvalidCiphertext = errors.New("invalid ciphertext or encryption context")
	// ErrUnreachable: the key service could not be reached within the
	// retry and time budget (network errors, timeouts, 5xx after retries).
	ErrUnreachable = errors.New("key service unreachable")
	// ErrThrottled: the key service kept throttling after the retries.
	ErrThrottled = errors.New("key service throttled the request")
	// ErrNoUsableKey: no wrapped entry names a key this keyring trusts.
	ErrNoUsableKey = errors.New("no wrapped key that this keyring trusts")
)
