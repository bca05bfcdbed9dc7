package main

import (
	"context"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/kmsfs/kmsfs/blockcipher"
	kfs "github.com/kmsfs/kmsfs/fs"
	"github.com/kmsfs/kmsfs/keyring"
)

func cmdInit(args []string, stdout, stderr io.Writer) error {
	fl := newFlagSet("init", "[flags] CIPHERDIR", stderr)
	var kmsKeys stringList
	fl.Var(&kmsKeys, "kms-key", "KMS key `ID|ARN|alias/NAME` to wrap data keys with (repeat for several: any one can unwrap)")
	region := fl.String("region", "", "AWS `region` of the KMS key(s) (default: the SDK's, or the key ARN's)")
	endpoint := fl.String("kms-endpoint", "", "KMS endpoint `URL` (a VPC endpoint, or local-kms)")
	localKey := fl.String("local-key", "", "local key `FILE` (created with mode 0600 if missing); the default when no --kms-key is given is $XDG_CONFIG_HOME/kmsfs/VOLUME_ID.key")
	blockSize := fl.Int("block-size", 4096, "plaintext bytes per encrypted block: a power of two from 512 to 1048576")
	pos, err := parseArgs(fl, args, "CIPHERDIR")
	if err != nil {
		return err
	}
	dir := pos[0]
	if len(kmsKeys) == 0 && (*region != "" || *endpoint != "") {
		return fail(exitUsage, "--region and --kms-endpoint apply to the --kms-key keys: give one, or leave them out for a local-key volume")
	}
	if _, err := blockcipher.NewLayout(blockcipher.MinHeaderSize, *blockSize); err != nil {
		return fail(exitUsage, "--block-size %d: must be a power of two from 512 to 1048576", *blockSize)
	}
	if err := checkInitDir(dir); err != nil {
		return err
	}

	volumeID := blockcipher.NewID()
	volumeHex := hex.EncodeToString(volumeID[:])
	cfg := &kfs.Config{FormatVersion: kfs.ConfigVersion, VolumeID: volumeHex, BlockSize: *blockSize, Features: []string{}}
	ctx := context.Background()

	var members []keyring.Keyring
	var kmsRings []*keyring.AWSKMS
	for _, id := range kmsKeys {
		k, err := keyring.NewAWSKMS(ctx, keyring.AWSKMSConfig{KeyID: id, Region: *region, Endpoint: *endpoint})
		if err != nil {
			return fail(exitUsage, "--kms-key %s: %v", id, err)
		}
		members = append(members, k)
		kmsRings = append(kmsRings, k)
	}
	// A local key: asked for, or the default when there is no KMS key.
	createdKey := ""
	var local *keyring.Local
	keyPath := *localKey
	if keyPath != "" || len(kmsKeys) == 0 {
		if keyPath == "" {
			d, err := defaultKeyDir()
			if err != nil {
				return fail(exitKey, "%v", err)
			}
			keyPath = filepath.Join(d, volumeHex+".key")
		}
		if keyPath, err = filepath.Abs(keyPath); err != nil {
			return err
		}
		if _, err := os.Stat(keyPath); errors.Is(err, os.ErrNotExist) {
			if err := keyring.CreateLocalKeyFile(keyPath); err != nil {
				return fail(exitKey, "%v", err)
			}
			createdKey = keyPath
		}
		if local, err = loadLocalKey(keyPath); err != nil {
			removeCreated(createdKey)
			return err
		}
		members = append(members, local)
	}
	kr := members[0]
	if len(members) > 1 {
		if kr, err = keyring.NewMulti(members...); err != nil {
			removeCreated(createdKey)
			return fail(exitKey, "%v", err)
		}
	}

	// Prove the keys work, and learn the blob sizes, before writing
	// anything: one GenerateDataKey and one Decrypt per key.
	wrapped, err := roundTrip(ctx, kr, members, volumeHex)
	if err != nil {
		removeCreated(createdKey)
		return err
	}
	for _, m := range members {
		switch k := m.(type) {
		case *keyring.AWSKMS:
			cfg.Keyrings = append(cfg.Keyrings, kfs.KeyringSpec{Kind: keyring.KindAWSKMS, KeyID: keyIDOf(k, kmsKeys, kmsRings), KeyARN: k.KeyARN(), Region: *region, Endpoint: *endpoint})
		case *keyring.Local:
			cfg.Keyrings = append(cfg.Keyrings, kfs.KeyringSpec{Kind: keyring.KindLocal, KeyID: k.KeyID(), KeyFile: keyPath})
		}
	}
	cfg.HeaderSize = headerSizeFor(wrapped)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		removeCreated(createdKey)
		return fail(exitVolume, "create %s: %v", dir, err)
	}
	if err := kfs.WriteConfig(dir, cfg); err != nil {
		removeCreated(createdKey)
		return fail(exitVolume, "write %s: %v", filepath.Join(dir, kfs.ConfigName), err)
	}

	fmt.Fprintf(stdout, "Created kmsfs volume %s in %s (block size %d, header %d bytes).\n", volumeHex, dir, cfg.BlockSize, cfg.HeaderSize)
	// Mounts on this machine refuse a config that differs from this copy
	// (trust.go). Without it the first mount trusts what it finds.
	raw, err := kfs.ConfigBytes(cfg)
	var paths []string
	if err == nil {
		paths, err = trustedCopies(volumeHex, dir)
	}
	if err == nil {
		err = keepTrusted(paths, raw)
	}
	if err != nil {
		fmt.Fprintf(stderr, "kmsfs: warning: could not keep a trusted copy of %s (%v): the first mount on this machine will trust the config it finds\n", filepath.Join(dir, kfs.ConfigName), err)
	} else {
		fmt.Fprintf(stdout, "Trusted copy of its config: %s (mounts here refuse a changed %s).\n", paths[0], kfs.ConfigName)
	}
	for _, m := range members {
		if d, ok := m.(keyring.Describer); ok {
			fmt.Fprintf(stdout, "Key: %s\n", d.Describe())
		}
	}
	if createdKey != "" {
		fmt.Fprintf(stdout, "The local key file %s was created: back it up; without it this volume cannot be read.\n", createdKey)
	}
	fmt.Fprintf(stdout, "Mount it with: kmsfs mount %s MOUNTPOINT\n", dir)
	return nil
}

func keyIDOf(k *keyring.AWSKMS, ids []string, rings []*keyring.AWSKMS) string {
	for i, r := range rings {
		if r == k {
			return ids[i]
		}
	}
	return k.KeyARN()
}

func removeCreated(path string) {
	if path != "" {
		os.Remove(path)
	}
}

// checkInitDir refuses an existing volume and a non-empty directory.
func checkInitDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fail(exitVolume, "%v", err)
	}
	for _, e := range entries {
		if e.Name() == kfs.ConfigName {
			return fail(exitVolume, "%s is already a kmsfs volume: mount it with kmsfs mount %s MOUNTPOINT", dir, dir)
		}
	}
	if len(entries) > 0 {
		return fail(exitVolume, "%s is not empty: a new volume needs an empty or missing directory", dir)
	}
	return nil
}

// roundTrip generates a data key under a throwaway file ID and unwraps it
// with each member separately, so a key that can wrap but not unwrap (a
// policy without kms:Decrypt) is caught now, not on the first read.
func roundTrip(ctx context.Context, kr keyring.Keyring, members []keyring.Keyring, volumeHex string) ([]keyring.WrappedKey, error) {
	fileID := blockcipher.NewID()
	ec := keyring.FileContext(volumeHex, hex.EncodeToString(fileID[:]))
	dk, wrapped, err := kr.GenerateDataKey(ctx, ec)
	if err != nil {
		return nil, keyError("generating a data key", err)
	}
	defer dk.Wipe()
	for _, m := range members {
		got, err := m.Decrypt(ctx, wrapped, ec)
		if err != nil {
			return nil, keyError("unwrapping a test data key with "+describe(m), err)
		}
		same := subtle.ConstantTimeCompare(got.Bytes(), dk.Bytes()) == 1
		got.Wipe()
		if !same {
			return nil, fail(exitKey, "%s returned a different data key than was generated", describe(m))
		}
	}
	return wrapped, nil
}

func describe(k keyring.Keyring) string {
	if d, ok := k.(keyring.Describer); ok {
		return d.Describe()
	}
	return fmt.Sprintf("%T", k)
}

// headerSizeFor sizes the header slot from real wrapped keys: the used
// size plus 256 bytes of headroom (KMS blobs vary a little between calls
// and key rotations), rounded up to 256, at least 512 (docs/FORMAT.md).
func headerSizeFor(wrapped []keyring.WrappedKey) int {
	h := blockcipher.Header{}
	for _, w := range wrapped {
		h.Keys = append(h.Keys, blockcipher.KeyEntry{Kind: string(w.Kind), KeyID: w.KeyID, Blob: w.Blob})
	}
	size := (h.UsedSize() + 256 + 255) / 256 * 256
	return max(size, 512)
}
