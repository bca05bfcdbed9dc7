package keyring

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/internal/regfile"
	"github.com/kmsfs/kmsfs/internal/secret"
)

// LocalKeyFileSize is the size of a local key file: 32 raw random bytes.
const LocalKeyFileSize = 32

// localBlobVersion is the first byte of every blob Local produces.
const localBlobVersion = 1

// localBlobSize is version(1) ‖ nonce(12) ‖ AES-256-GCM(data key)(32) ‖ tag(16).
const localBlobSize = 1 + 12 + DataKeySize + 16

// Local wraps data keys with a key-encryption key derived from a 32-byte key
// file. The encryption context is the AES-GCM additional data, so a blob
// opened under another context fails with ErrInvalidCiphertext, as with KMS.
// It is the default for machines without AWS. Safe for concurrent use.
//
// The key-encryption key (KEK) is kept for the keyring's life in a slot of
// the locked arena, like a data key but not counted in LiveKeys; the key
// file's bytes are not kept. Each Wrap and Decrypt builds the AES-GCM
// state of the KEK, in the Go heap, and zeroes it before returning.
type Local struct {
	path  string
	keyID string // hex fingerprint of the key file
	kek   *localKEK
}

// localKEK is the slot of the KEK: the one place that holds it.
type localKEK struct {
	b      *[DataKeySize]byte
	locked bool
}

// withAEAD passes f AES-256-GCM under the KEK, and zeroes its state (key
// schedule, GHASH table) as soon as f returns; building it, f's Seal or
// Open and the wipe run under one secret.Shield. l is kept alive (and so
// its KEK unwiped) until then.
func (l *Local) withAEAD(f func(cipher.AEAD)) {
	if err := secret.WithAESGCM(l.kek.b[:], f); err != nil {
		panic("keyring: internal error: " + err.Error())
	}
	runtime.KeepAlive(l)
}

// wipe zeroes the KEK and gives its slot back. It runs when the Local is
// garbage (runtime.AddCleanup), so it must not refer to the Local.
func (k *localKEK) wipe() {
	clear(k.b[:])
	if k.locked {
		arena.release(k.b[:])
	}
	k.b = nil
}

var (
	_ Keyring   = (*Local)(nil)
	_ Wrapper   = (*Local)(nil)
	_ Describer = (*Local)(nil)
)

// CreateLocalKeyFile writes a new random key file at path with mode 0600,
// creating missing parent directories with mode 0700. It refuses to
// overwrite an existing file.
func CreateLocalKeyFile(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create key file directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create key file: %w", err)
	}
	key := make([]byte, LocalKeyFileSize)
	rand.Read(key)
	_, err = f.Write(key)
	clear(key)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("write key file %s: %w", path, err)
	}
	return nil
}

// ErrNotRegular: a file that must be a regular file is not.
var ErrNotRegular = regfile.ErrNotRegular

// OpenRegularFile opens the file at path for reading only if it is a
// regular file (following symlinks): the path may come from a config that
// is not trusted yet, and a FIFO there would block the open, a device's
// driver would run (regfile.Open).
func OpenRegularFile(path string) (*os.File, error) {
	return regfile.Open(unix.AT_FDCWD, path, 0, unix.O_RDONLY, true)
}

// LoadLocal reads the key file at path. It refuses a file that group or
// others may read or write (a key file must be mode 0600 or stricter) and a
// file that is not exactly LocalKeyFileSize bytes.
func LoadLocal(path string) (*Local, error) {
	f, err := OpenRegularFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrPermission) {
			return nil, fmt.Errorf("open key file: %w (%v)", ErrAccessDenied, err)
		}
		return nil, fmt.Errorf("open key file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat key file: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("key file %s is not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("key file %s has mode %04o, open to group or others: run chmod 600 %s", path, perm, path)
	}
	// The key file's bytes go straight into a locked slot (read(2) into
	// it, no copy), are used once to derive the KEK and the key ID, and
	// are zeroed.
	slot, locked := arena.alloc()
	defer func() {
		clear(slot)
		if locked {
			arena.release(slot)
		}
	}()
	n, err := io.ReadFull(f, slot)
	if err == nil {
		var more [1]byte
		if m, _ := f.Read(more[:]); m > 0 {
			n++
		}
	}
	if err != io.ErrUnexpectedEOF && err != nil && err != io.EOF {
		return nil, fmt.Errorf("read key file %s: %w", path, err)
	}
	if n != LocalKeyFileSize {
		return nil, fmt.Errorf("key file %s is not a kmsfs key file: it must hold exactly %d bytes", path, LocalKeyFileSize)
	}
	return newLocal(path, slot)
}

// newLocalFromBytes builds a Local keyring from raw key bytes (tests).
// It does not keep key.
func newLocalFromBytes(key []byte) (*Local, error) {
	if len(key) != LocalKeyFileSize {
		return nil, fmt.Errorf("local key must be %d bytes", LocalKeyFileSize)
	}
	return newLocal("", key)
}

// newLocal derives the KEK and the key ID from key, the key file's bytes
// (docs/FORMAT.md, "Local wrapped key blob"), with package secret's HKDF:
// crypto/hkdf would leave the key file's bytes, the pseudorandom key and
// the KEK in memory it never clears. It does not keep key.
func newLocal(path string, key []byte) (*Local, error) {
	kdf := secret.NewKDF(key, nil)
	defer kdf.Wipe()
	b, locked := arena.alloc()
	kek := &localKEK{b: (*[DataKeySize]byte)(b), locked: locked}
	kdf.Expand(kek.b[:], "kmsfs local key-encryption key v1")
	var id [16]byte // public: stored in headers and the config
	kdf.Expand(id[:], "kmsfs local key id v1")
	l := &Local{path: path, keyID: hex.EncodeToString(id[:]), kek: kek}
	runtime.AddCleanup(l, (*localKEK).wipe, kek)
	return l, nil
}

// KeyID returns the key's fingerprint: a public value stored in headers and
// in the volume config to name the key without revealing it.
func (l *Local) KeyID() string { return l.keyID }

// Describe names the key file and its fingerprint.
func (l *Local) Describe() string {
	if l.path == "" {
		return "local key " + l.keyID
	}
	return "local key " + l.keyID + " (" + l.path + ")"
}

func (l *Local) aad(ec EncryptionContext) []byte {
	aad := []byte("kmsfs local wrap v1\x00" + l.keyID + "\x00")
	return append(aad, ec.Canonical()...)
}

// GenerateDataKey returns a random data key wrapped under the local key.
func (l *Local) GenerateDataKey(ctx context.Context, ec EncryptionContext) (*DataKey, []WrappedKey, error) {
	dk := randomDataKey()
	w, err := l.Wrap(ctx, dk, ec)
	if err != nil {
		dk.Wipe()
		return nil, nil, err
	}
	return dk, []WrappedKey{w}, nil
}

// Wrap wraps an existing data key under the local key.
func (l *Local) Wrap(_ context.Context, dk *DataKey, ec EncryptionContext) (WrappedKey, error) {
	if dk.Wiped() {
		return WrappedKey{}, errors.New("keyring: wrap of a wiped data key")
	}
	blob := make([]byte, 1+12, localBlobSize)
	blob[0] = localBlobVersion
	rand.Read(blob[1:13])
	aad := l.aad(ec)
	l.withAEAD(func(aead cipher.AEAD) { blob = aead.Seal(blob, blob[1:13], dk.Bytes(), aad) })
	return WrappedKey{Kind: KindLocal, KeyID: l.keyID, Blob: blob}, nil
}

// Decrypt unwraps the first local entry naming this key that opens.
// A damaged entry does not stop it: a later entry under the same key may
// still open.
func (l *Local) Decrypt(_ context.Context, wrapped []WrappedKey, ec EncryptionContext) (*DataKey, error) {
	var lastErr error
	var blobs [][]byte
	for _, w := range wrapped {
		if w.Kind != KindLocal || w.KeyID != l.keyID {
			continue
		}
		if len(w.Blob) != localBlobSize || w.Blob[0] != localBlobVersion {
			lastErr = fmt.Errorf("local key %s: %w (blob of %d bytes)", l.keyID, ErrInvalidCiphertext, len(w.Blob))
			continue
		}
		blobs = append(blobs, w.Blob)
	}
	if len(blobs) == 0 {
		if lastErr != nil {
			return nil, lastErr
		}
		return nil, fmt.Errorf("local key %s: %w", l.keyID, ErrNoUsableKey)
	}
	aad := l.aad(ec)
	var dk *DataKey
	l.withAEAD(func(aead cipher.AEAD) {
		for _, blob := range blobs {
			k := newDataKey()
			if _, err := aead.Open(k.b[:0], blob[1:13], blob[13:], aad); err != nil {
				k.Wipe()
				continue
			}
			dk = k
			return
		}
	})
	if dk == nil {
		return nil, fmt.Errorf("local key %s: %w", l.keyID, ErrInvalidCiphertext)
	}
	return dk, nil
}
