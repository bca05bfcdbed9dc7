package blockcipher

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
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

func derive(dataKey []byte, fileID [IDSize]byte, label string, n int) []byte {
	if len(dataKey) != DataKeySize {
		panic("blockcipher: internal error: data key of wrong size")
	}
	k, err := hkdf.Key(sha256.New, dataKey, fileID[:], label, n)
	if err != nil {
		panic("blockcipher: internal error: hkdf: " + err.Error())
	}
	return k
}

// Seal computes the key commitment and the header MAC of h from dataKey,
// stores them in h, and returns the encoded header slot and the Cipher for
// the file's blocks. dataKey is not retained.
func (h *Header) Seal(dataKey []byte) ([]byte, *Cipher, error) {
	commitment := derive(dataKey, h.FileID, labelCommitment, CommitmentSize)
	copy(h.Commitment[:], commitment)
	h.MAC = [MACSize]byte{}
	slot, err := h.Marshal()
	if err != nil {
		return nil, nil, err
	}
	mac := headerMAC(dataKey, h.FileID, slot[:len(slot)-MACSize])
	copy(h.MAC[:], mac)
	copy(slot[len(slot)-MACSize:], mac)
	c, err := newCipher(dataKey, h)
	if err != nil {
		return nil, nil, err
	}
	return slot, c, nil
}

// Open checks h against dataKey, the key unwrapped from one of its entries
// (Verify), and returns the Cipher for the file's blocks; otherwise an
// error wrapping ErrHeaderAuth. dataKey is not retained.
func (h *Header) Open(dataKey []byte) (*Cipher, error) {
	if err := h.Verify(dataKey); err != nil {
		return nil, err
	}
	return newCipher(dataKey, h)
}

// Verify checks h against dataKey: first the key commitment (constant
// time), then the header MAC over the slot. It returns nil or an error
// wrapping ErrHeaderAuth. dataKey is not retained.
func (h *Header) Verify(dataKey []byte) error {
	if len(dataKey) != DataKeySize {
		return fmt.Errorf("%w: data key has %d bytes", ErrHeaderAuth, len(dataKey))
	}
	commitment := derive(dataKey, h.FileID, labelCommitment, CommitmentSize)
	if subtle.ConstantTimeCompare(commitment, h.Commitment[:]) != 1 {
		return fmt.Errorf("%w: key commitment does not match the unwrapped key", ErrHeaderAuth)
	}
	slot, err := h.Marshal()
	if err != nil {
		return err
	}
	mac := headerMAC(dataKey, h.FileID, slot[:len(slot)-MACSize])
	if !hmac.Equal(mac, h.MAC[:]) {
		return fmt.Errorf("%w: header MAC mismatch", ErrHeaderAuth)
	}
	return nil
}

func headerMAC(dataKey []byte, fileID [IDSize]byte, body []byte) []byte {
	key := derive(dataKey, fileID, labelHeaderMAC, 32)
	defer clear(key)
	m := hmac.New(sha256.New, key)
	m.Write(body)
	return m.Sum(nil)
}

func newCipher(dataKey []byte, h *Header) (*Cipher, error) {
	layout, err := h.Layout()
	if err != nil {
		return nil, err
	}
	key := derive(dataKey, h.FileID, labelContent, 32)
	defer clear(key)
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("blockcipher: %v", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("blockcipher: %v", err)
	}
	c := &Cipher{aead: aead, fileID: h.FileID, layout: layout}
	copy(c.recordKey[:], derive(dataKey, h.FileID, labelRecordMAC, 32))
	return c, nil
}

// RecordMACSize is the size of a journal record's MAC.
const RecordMACSize = 16

// RecordMAC returns the MAC that authenticates a journal record of this
// file (docs/FORMAT.md, "Journal"): HMAC-SHA256 under a key derived from
// the data key, over the concatenation of parts, cut to RecordMACSize
// bytes. Whoever cannot unwrap the data key cannot make one.
func (c *Cipher) RecordMAC(parts ...[]byte) [RecordMACSize]byte {
	m := hmac.New(sha256.New, c.recordKey[:])
	for _, p := range parts {
		m.Write(p)
	}
	var out [RecordMACSize]byte
	copy(out[:], m.Sum(nil))
	return out
}
