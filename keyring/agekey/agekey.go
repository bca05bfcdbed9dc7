// Package agekey wraps data keys to age X25519 recipients
// (filippo.io/age), so that a recovery key can stay offline: a Recipient
// holds only the public key and can wrap but never unwrap; an Identity,
// loaded from the secret key file that age-keygen writes, unwraps. A
// mount needs only the Recipient.
//
// age has no additional data, so the encryption context is bound inside
// the encrypted payload: the blob is an age file (binary header and
// payload, as age.Encrypt writes it) whose 64-byte plaintext is
//
//	SHA-256("kmsfs age wrap v1\x00" ‖ recipient ‖ "\x00" ‖ canonical context) ‖ data key
//
// and Identity.Decrypt refuses a payload whose binding differs from the
// one it computes (docs/FORMAT.md, "age wrapped key blob"). Anyone who
// knows the recipient can make such a blob: it gives confidentiality and
// a way back in, not authenticity, which the header's commitment and MAC
// give once the key is unwrapped.
package agekey

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"strings"

	"filippo.io/age"

	"github.com/kmsfs/kmsfs/keyring"
)

// bindingLabel starts the hashed binding of a blob to its recipient and
// context.
const bindingLabel = "kmsfs age wrap v1\x00"

// payloadSize is binding (32) ‖ data key (32).
const payloadSize = sha256.Size + keyring.DataKeySize

// maxBlob bounds what Decrypt hands to age: an X25519 blob of kmsfs is
// about 250 bytes.
const maxBlob = 4096

// Recipient wraps data keys to one age X25519 recipient. It cannot
// unwrap: Decrypt returns keyring.ErrNoUsableKey. Safe for concurrent use.
type Recipient struct {
	r  *age.X25519Recipient
	id string // the recipient, age1...
}

var (
	_ keyring.Keyring   = (*Recipient)(nil)
	_ keyring.Wrapper   = (*Recipient)(nil)
	_ keyring.Describer = (*Recipient)(nil)
	_ keyring.Keyring   = (*Identity)(nil)
	_ keyring.Describer = (*Identity)(nil)
)

// ParseRecipient parses an age X25519 recipient, "age1...".
func ParseRecipient(s string) (*Recipient, error) {
	r, err := age.ParseX25519Recipient(s)
	if err != nil {
		return nil, fmt.Errorf("age recipient %q: %v", s, err)
	}
	return &Recipient{r: r, id: r.String()}, nil
}

// KeyID returns the recipient string, the key ID of its entries.
func (r *Recipient) KeyID() string { return r.id }

// Describe names the recipient.
func (r *Recipient) Describe() string { return "age recipient " + r.id }

// GenerateDataKey returns a random data key wrapped to the recipient.
func (r *Recipient) GenerateDataKey(ctx context.Context, ec keyring.EncryptionContext) (*keyring.DataKey, []keyring.WrappedKey, error) {
	var raw [keyring.DataKeySize]byte
	rand.Read(raw[:])                     // never fails since Go 1.24
	dk, err := keyring.NewDataKey(raw[:]) // zeroes raw
	if err != nil {
		return nil, nil, err
	}
	w, err := r.Wrap(ctx, dk, ec)
	if err != nil {
		dk.Wipe()
		return nil, nil, err
	}
	return dk, []keyring.WrappedKey{w}, nil
}

// Wrap encrypts dk and its binding to the recipient.
func (r *Recipient) Wrap(_ context.Context, dk *keyring.DataKey, ec keyring.EncryptionContext) (keyring.WrappedKey, error) {
	if dk.Wiped() {
		return keyring.WrappedKey{}, errors.New("keyring: wrap of a wiped data key")
	}
	payload := make([]byte, 0, payloadSize)
	payload = append(payload, binding(r.id, ec)...)
	payload = append(payload, dk.Bytes()...)
	defer clear(payload)
	var blob bytes.Buffer
	w, err := age.Encrypt(&blob, r.r)
	if err == nil {
		_, err = w.Write(payload)
	}
	if err == nil {
		err = w.Close()
	}
	if err != nil {
		return keyring.WrappedKey{}, fmt.Errorf("age recipient %s: wrap: %v", r.id, err)
	}
	return keyring.WrappedKey{Kind: keyring.KindAge, KeyID: r.id, Blob: blob.Bytes()}, nil
}

// Decrypt cannot unwrap without the identity: it always fails with
// keyring.ErrNoUsableKey, so a Multi goes on to its other members.
func (r *Recipient) Decrypt(context.Context, []keyring.WrappedKey, keyring.EncryptionContext) (*keyring.DataKey, error) {
	return nil, fmt.Errorf("age recipient %s (unwrapping needs its identity file): %w", r.id, keyring.ErrNoUsableKey)
}

// Identity unwraps entries wrapped to the recipients of one or more age
// X25519 identities. It cannot generate or wrap. Safe for concurrent use.
type Identity struct {
	path string
	ids  map[string]*age.X25519Identity // by recipient string
}

// LoadIdentity reads an age identity file (age-keygen's output: one
// AGE-SECRET-KEY-1... line per identity, # comments). Like a local key
// file, it must not be readable by group or others. Only X25519
// identities are accepted.
func LoadIdentity(path string) (*Identity, error) {
	// As a key file: a FIFO or a device there must not hang the command
	// or run a driver's open.
	f, err := keyring.OpenRegularFile(path)
	if errors.Is(err, keyring.ErrNotRegular) {
		return nil, fmt.Errorf("identity file %s is not a regular file", path)
	}
	if err != nil {
		return nil, fmt.Errorf("open identity file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("identity file %s has mode %04o, open to group or others: run chmod 600 %s", path, perm, path)
	}
	b, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("read identity file %s: %w", path, err)
	}
	defer clear(b)
	parsed, err := age.ParseIdentities(bytes.NewReader(b))
	if err != nil {
		// age's message quotes no secret: it names the line.
		return nil, fmt.Errorf("identity file %s: %v", path, err)
	}
	id := &Identity{path: path, ids: map[string]*age.X25519Identity{}}
	for _, p := range parsed {
		x, ok := p.(*age.X25519Identity)
		if !ok {
			return nil, fmt.Errorf("identity file %s: only age X25519 identities (AGE-SECRET-KEY-1...) are supported", path)
		}
		id.ids[x.Recipient().String()] = x
	}
	return id, nil
}

// Recipients lists the recipients the identities unwrap for.
func (i *Identity) Recipients() []string {
	out := make([]string, 0, len(i.ids))
	for r := range i.ids {
		out = append(out, r)
	}
	return out
}

// Describe names the file and its recipients, never a secret.
func (i *Identity) Describe() string {
	return "age identity " + i.path + " (" + strings.Join(i.Recipients(), ", ") + ")"
}

// GenerateDataKey is not possible with an identity alone.
func (i *Identity) GenerateDataKey(context.Context, keyring.EncryptionContext) (*keyring.DataKey, []keyring.WrappedKey, error) {
	return nil, nil, errors.New("an age identity only unwraps")
}

// Decrypt unwraps the first age entry naming one of the identities'
// recipients that opens and whose binding matches its recipient and ec.
// No such entry: keyring.ErrNoUsableKey; entries that fail:
// keyring.ErrInvalidCiphertext.
func (i *Identity) Decrypt(_ context.Context, wrapped []keyring.WrappedKey, ec keyring.EncryptionContext) (*keyring.DataKey, error) {
	var lastErr error
	for _, w := range wrapped {
		id := i.ids[w.KeyID]
		if w.Kind != keyring.KindAge || id == nil {
			continue
		}
		dk, err := open(id, w, ec)
		if err == nil {
			return dk, nil
		}
		lastErr = err
	}
	if lastErr != nil {
		return nil, lastErr
	}
	return nil, fmt.Errorf("age identity %s: %w", i.path, keyring.ErrNoUsableKey)
}

func open(id *age.X25519Identity, w keyring.WrappedKey, ec keyring.EncryptionContext) (*keyring.DataKey, error) {
	if len(w.Blob) > maxBlob {
		return nil, fmt.Errorf("age recipient %s: %w (blob of %d bytes)", w.KeyID, keyring.ErrInvalidCiphertext, len(w.Blob))
	}
	r, err := age.Decrypt(bytes.NewReader(w.Blob), id)
	if err != nil {
		return nil, fmt.Errorf("age recipient %s: %w (%v)", w.KeyID, keyring.ErrInvalidCiphertext, err)
	}
	payload := make([]byte, payloadSize+1)
	defer clear(payload)
	n, err := io.ReadFull(r, payload)
	if n != payloadSize || !errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, fmt.Errorf("age recipient %s: %w (payload of the wrong size)", w.KeyID, keyring.ErrInvalidCiphertext)
	}
	if subtle.ConstantTimeCompare(payload[:sha256.Size], binding(w.KeyID, ec)) != 1 {
		return nil, fmt.Errorf("age recipient %s: %w (bound to another context)", w.KeyID, keyring.ErrInvalidCiphertext)
	}
	return keyring.NewDataKey(payload[sha256.Size:payloadSize])
}

// binding is the hash that ties a payload to its recipient and context.
func binding(recipient string, ec keyring.EncryptionContext) []byte {
	h := sha256.New()
	h.Write([]byte(bindingLabel))
	h.Write([]byte(recipient))
	h.Write([]byte{0})
	h.Write(ec.Canonical())
	return h.Sum(nil)
}
