package keyring_test

import (
	"context"
	"testing"

	"github.com/kmsfs/kmsfs/keyring"
)

// BenchmarkLocalDecrypt is the keyring's share of a cold file open on a
// local-key volume: one unwrap of a data key.
func BenchmarkLocalDecrypt(b *testing.B) {
	l, err := keyring.NewLocalFromBytes(make([]byte, keyring.LocalKeyFileSize))
	if err != nil {
		b.Fatal(err)
	}
	ec := keyring.FileContext("00112233445566778899aabbccddeeff", "ffeeddccbbaa99887766554433221100")
	dk, wrapped, err := l.GenerateDataKey(context.Background(), ec)
	if err != nil {
		b.Fatal(err)
	}
	dk.Wipe()
	b.ReportAllocs()
	for b.Loop() {
		dk, err := l.Decrypt(context.Background(), wrapped, ec)
		if err != nil {
			b.Fatal(err)
		}
		dk.Wipe()
	}
}

// BenchmarkGenerateDataKey is the keyring's share of a new file: a
// local key against a branch key (per-file wrap under a key derived from
// it).
func BenchmarkGenerateDataKey(b *testing.B) {
	l, err := keyring.NewLocalFromBytes(make([]byte, keyring.LocalKeyFileSize))
	if err != nil {
		b.Fatal(err)
	}
	bk, _, err := l.GenerateDataKey(context.Background(), keyring.EncryptionContext{"kmsfs:branch": "b"})
	if err != nil {
		b.Fatal(err)
	}
	br := keyring.NewBranch("00112233445566778899aabbccddeeff", bk)
	defer br.Wipe()
	ec := keyring.FileContext("00112233445566778899aabbccddeeff", "ffeeddccbbaa99887766554433221100")
	for _, k := range []struct {
		name string
		kr   keyring.Keyring
	}{{"local", l}, {"branch", br}} {
		b.Run(k.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				dk, _, err := k.kr.GenerateDataKey(context.Background(), ec)
				if err != nil {
					b.Fatal(err)
				}
				dk.Wipe()
			}
		})
	}
}
