package blockcipher

import (
	"crypto/subtle"
	"fmt"

	"github.com/kmsfs/kmsfs/internal/secret"
)

// HKDF labels, one per derived key (docs/FORMAT.md, "Key derivation").
const (
	labelContent    = "kmsfs v1 content key"
	labelCommitment = "kmsfs v1 key commitment"
	labelHeaderMAC  = "kmsfs v1 header mac key"
	labelRecordMAC  = "kmsfs journal record mac key"
)

// DataKeySize is the size of a data key: AES-256.
const DataKeySize = 32

// withKDF runs f with HKDF-Extract of the data key, the file ID as salt;
// each derived key is one Expand of it. The derivation runs in package
// secret, whose buffers are cleared, because crypto/hkdf leaves the data
// key and every derived key in memory it never clears
// (docs/THREAT_MODEL.md, "Limits"), and under one secret.Shield for the
// whole of f, so that SHA-256 may run on the SHA extensions and the
// content key's AES state is built without a Shield of its own.
func withKDF(dataKey []byte, fileID [IDSize]byte, f func(*secret.KDF)) {
	if len(dataKey) != DataKeySize {
		panic("blockcipher: internal error: data key of wrong size")
	}
	secret.WithKDF(dataKey, fileID[:], f)
}

// Seal computes the key commitment and the header MAC of h from dataKey,
// stores them in h, and returns the encoded header slot and the Cipher for
// the file's blocks. dataKey is not retained, nor copied.
func (h *Header) Seal(dataKey []byte) (slot []byte, c *Cipher, err error) {
	withKDF(dataKey, h.FileID, func(kdf *secret.KDF) {
		kdf.Expand(h.Commitment[:], labelCommitment)
		h.MAC = [MACSize]byte{}
		if slot, err = h.Marshal(); err != nil {
			return
		}
		h.MAC = headerMAC(kdf, slot[:len(slot)-MACSize])
		copy(slot[len(slot)-MACSize:], h.MAC[:])
		c, err = newCipher(kdf, h)
	})
	if err != nil {
		return nil, nil, err
	}
	return slot, c, nil
}

// Open checks h against dataKey, the key unwrapped from one of its entries
// (as Verify does), and returns the Cipher for the file's blocks;
// otherwise an error wrapping ErrHeaderAuth. dataKey is not retained, nor
// copied.
func (h *Header) Open(dataKey []byte) (*Cipher, error) {
	if len(dataKey) != DataKeySize {
		return nil, fmt.Errorf("%w: data key has %d bytes", ErrHeaderAuth, len(dataKey))
	}
	var c *Cipher
	var err error
	withKDF(dataKey, h.FileID, func(kdf *secret.KDF) {
		if err = h.verify(kdf); err == nil {
			c, err = newCipher(kdf, h)
		}
	})
	return c, err
}

// Verify checks h against dataKey: first the key commitment (constant
// time), then the header MAC over the slot. It returns nil or an error
// wrapping ErrHeaderAuth. dataKey is not retained, nor copied.
func (h *Header) Verify(dataKey []byte) error {
	if len(dataKey) != DataKeySize {
		return fmt.Errorf("%w: data key has %d bytes", ErrHeaderAuth, len(dataKey))
	}
	var err error
	withKDF(dataKey, h.FileID, func(kdf *secret.KDF) { err = h.verify(kdf) })
	return err
}

func (h *Header) verify(kdf *secret.KDF) error {
	var commitment [CommitmentSize]byte // public: it is stored in the header
	kdf.Expand(commitment[:], labelCommitment)
	if subtle.ConstantTimeCompare(commitment[:], h.Commitment[:]) != 1 {
		return fmt.Errorf("%w: key commitment does not match the unwrapped key", ErrHeaderAuth)
	}
	slot, err := h.Marshal()
	if err != nil {
		return err
	}
	mac := headerMAC(kdf, slot[:len(slot)-MACSize])
	if subtle.ConstantTimeCompare(mac[:], h.MAC[:]) != 1 {
		return fmt.Errorf("%w: header MAC mismatch", ErrHeaderAuth)
	}
	return nil
}

// headerMAC is HMAC-SHA256 over body under the header MAC key, which
// never leaves kdf.
func headerMAC(kdf *secret.KDF, body []byte) [MACSize]byte {
	var mac [MACSize]byte
	kdf.MAC(&mac, labelHeaderMAC, body)
	return mac
}

// newCipher builds the file's Cipher: AES-256-GCM under the content key
// (Version1) or XAES-256-GCM under it (Version2), and the journal record
// MAC key. The content key exists outside the AES state only in kdf's
// memory, until kdf is wiped.
func newCipher(kdf *secret.KDF, h *Header) (*Cipher, error) {
	layout, err := h.Layout()
	if err != nil {
		return nil, err
	}
	c := &Cipher{fileID: h.FileID, layout: layout}
	if layout.Version == Version2 {
		block, err := kdf.AESBlock(labelContent)
		if err != nil {
			return nil, fmt.Errorf("blockcipher: %v", err)
		}
		c.x = newXAES(block)
	} else {
		aead, err := kdf.AESGCM(labelContent)
		if err != nil {
			return nil, fmt.Errorf("blockcipher: %v", err)
		}
		c.aead = aead
	}
	kdf.Expand(c.recordKey[:], labelRecordMAC)
	return c, nil
}

// RecordMACSize is the size of a journal record's MAC.
const RecordMACSize = 16

// RecordMAC returns the MAC that authenticates a journal record of this
// file (docs/FORMAT.md, "Journal"): HMAC-SHA256 under a key derived from
// the data key, over the concatenation of parts, cut to RecordMACSize
// bytes. Whoever cannot unwrap the data key cannot make one. It panics
// after Wipe.
func (c *Cipher) RecordMAC(parts ...[]byte) [RecordMACSize]byte {
	if c.wiped {
		panic("blockcipher: internal error: RecordMAC of a wiped Cipher")
	}
	var mac [32]byte
	secret.HMAC(&mac, c.recordKey[:], parts...)
	return [RecordMACSize]byte(mac[:RecordMACSize])
}

// Wipe zeroes the keys c holds: the AES-GCM state of the content key (its
// key schedule and GHASH table, in the Go heap), or for Version2 its AES
// state, the XAES subkey and every derived key's AES-GCM state; and the
// journal record MAC key. Sealing, opening and RecordMAC panic
// afterwards. Safe to call twice; not safe while another method of c
// runs.
func (c *Cipher) Wipe() {
	if c == nil || c.wiped {
		return
	}
	c.wiped = true
	if c.x != nil {
		c.x.wipe()
	} else {
		secret.Wipe(c.aead)
		c.aead = nil
	}
	clear(c.recordKey[:])
}
