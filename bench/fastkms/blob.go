package main

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"slices"
)

// A blob (CiphertextBlob) is
//
//	version (1 byte, 1) ‖ len(key ID) (1 byte) ‖ key ID ‖ nonce (12 bytes) ‖
//	AES-256-GCM(key material, plaintext, aad) ‖ tag (16 bytes)
//
// with aad = everything before the nonce ‖ the encryption context, its
// pairs sorted by key, each key and value preceded by its length as a
// uvarint. The blob names its key, as a KMS blob does, so Decrypt needs
// no KeyId; the context is bound without ambiguity ({"ab": "c"} does not
// open what {"a": "bc"} sealed). A 32-byte data key makes a 98-byte blob
// (KMS's are about 184).

const blobVersion = 1

var errBadBlob = errors.New("ciphertext is not a blob of this endpoint, or its context differs")

// key is the one key the endpoint serves.
type key struct {
	id, arn, alias, aliasARN string
	aead                     cipher.AEAD
}

func newKey(region, account, id, alias string) (*key, error) {
	if id == "" || len(id) > 255 {
		return nil, errors.New("key ID must be 1 to 255 bytes")
	}
	material := make([]byte, 32)
	rand.Read(material)
	b, err := aes.NewCipher(material)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(b)
	if err != nil {
		return nil, err
	}
	prefix := "arn:aws:kms:" + region + ":" + account + ":"
	k := &key{id: id, arn: prefix + "key/" + id, aead: aead}
	if alias != "" {
		k.alias, k.aliasARN = alias, prefix+alias
	}
	return k, nil
}

// names reports whether s names k: its ID, its ARN, its alias or the
// alias's ARN.
func (k *key) names(s string) bool {
	return s == k.id || s == k.arn || k.alias != "" && (s == k.alias || s == k.aliasARN)
}

// seal wraps plaintext under k, bound to ec.
func (k *key) seal(plaintext []byte, ec map[string]string) []byte {
	n := 2 + len(k.id)
	blob := make([]byte, n, n+12+len(plaintext)+16)
	blob[0], blob[1] = blobVersion, byte(len(k.id))
	copy(blob[2:], k.id)
	nonce := blob[n : n+12]
	blob = blob[:n+12]
	rand.Read(nonce)
	return k.aead.Seal(blob, nonce, plaintext, aad(blob[:n], ec))
}

// open unwraps a blob sealed by seal under the same context.
func (k *key) open(blob []byte, ec map[string]string) ([]byte, error) {
	n, ok := blobHeader(blob)
	if !ok || string(blob[2:n]) != k.id || len(blob) < n+12+16 {
		return nil, errBadBlob
	}
	pt, err := k.aead.Open(nil, blob[n:n+12], blob[n+12:], aad(blob[:n], ec))
	if err != nil {
		return nil, errBadBlob
	}
	return pt, nil
}

// blobKeyID returns the key ID a blob names, or "".
func blobKeyID(blob []byte) string {
	n, ok := blobHeader(blob)
	if !ok {
		return ""
	}
	return string(blob[2:n])
}

// blobHeader returns the length of a blob's version and key ID.
func blobHeader(blob []byte) (int, bool) {
	if len(blob) < 2 || blob[0] != blobVersion || len(blob) < 2+int(blob[1]) {
		return 0, false
	}
	return 2 + int(blob[1]), true
}

func aad(header []byte, ec map[string]string) []byte {
	keys := make([]string, 0, len(ec))
	size := len(header)
	for k, v := range ec {
		keys = append(keys, k)
		size += len(k) + len(v) + 2*binary.MaxVarintLen64
	}
	slices.Sort(keys)
	b := make([]byte, 0, size)
	b = append(b, header...)
	for _, k := range keys {
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
		b = binary.AppendUvarint(b, uint64(len(ec[k])))
		b = append(b, ec[k]...)
	}
	return b
}
