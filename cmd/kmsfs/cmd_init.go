package main

import (
	"context"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/kmsfs/kmsfs/blockcipher"
	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/keyring/agekey"
	"github.com/kmsfs/kmsfs/keyring/awskms"
	"github.com/kmsfs/kmsfs/volume"
)

func cmdInit(args []string, stdout, stderr io.Writer) error {
	fl := newFlagSet("init", "[flags] CIPHERDIR", stdout)
	var kf keyringFlags
	kf.register(fl)
	blockSize := fl.Int("block-size", 4096, "plaintext bytes per encrypted block: a power of two from 512 to 1048576")
	branchKeys := fl.Bool("branch-keys", false, "wrap file keys under branch keys: one key service call per branch key and mount instead of one per file (see README, key modes)")
	rotation := fl.Duration("branch-key-rotation", 24*time.Hour, "with --branch-keys: how long a branch key wraps new files before a new one is made")
	pos, err := parseArgs(fl, args, "CIPHERDIR")
	if err != nil {
		return err
	}
	dir := pos[0]
	if err := kf.check(); err != nil {
		return err
	}
	if _, err := blockcipher.NewLayout(blockcipher.MinHeaderSize, *blockSize, blockcipher.Version2); err != nil {
		return fail(exitUsage, "--block-size %d: must be a power of two from 512 to 1048576", *blockSize)
	}
	if err := checkInitDir(dir); err != nil {
		return err
	}
	volumeID := blockcipher.NewID()
	cfg := &volume.Config{FormatVersion: volume.ConfigVersion3, KeyMode: volume.KeyModePerFile, VolumeID: hex.EncodeToString(volumeID[:]), BlockSize: *blockSize, Features: []string{}}
	if *branchKeys {
		if *rotation < volume.MinBranchRotation || *rotation > volume.MaxBranchRotation {
			return fail(exitUsage, "--branch-key-rotation %v: want %v to %v", *rotation, volume.MinBranchRotation, volume.MaxBranchRotation)
		}
		cfg.KeyMode, cfg.BranchKeyRotation = volume.KeyModeBranch, rotation.String()
	} else if flagSet(fl, "branch-key-rotation") {
		return fail(exitUsage, "--branch-key-rotation applies to --branch-keys")
	}
	ctx := context.Background()
	keys, err := kf.build(ctx, cfg.VolumeID, buildOptions{defaultLocal: true})
	if err != nil {
		return err
	}
	cfg.Keyrings, cfg.HeaderSize = keys.specs, keys.headerSize
	if err := writeNewVolume(dir, cfg); err != nil {
		removeCreated(keys.createdKey)
		return err
	}
	if cfg.Branch() {
		if err := firstBranchKey(ctx, dir, cfg, keys.kr); err != nil {
			return err
		}
	}
	reportInit(dir, cfg, keys, stdout, stderr)
	return nil
}

// firstBranchKey makes a branch-key volume's first branch key, so that
// its key file, which every keyring of the volume wraps, can vouch for the
// config on other machines before any file exists (attest).
func firstBranchKey(ctx context.Context, dir string, cfg *volume.Config, kr keyring.Keyring) error {
	vol, err := volume.New(dir, cfg)
	if err != nil {
		return err
	}
	bk, err := volume.NewBranchKeyring(vol, kr, time.Minute)
	if err != nil {
		return err
	}
	defer bk.Close()
	dk, _, err := bk.GenerateDataKey(ctx, vol.FileContext(blockcipher.NewID()))
	if err != nil {
		return keyError("making the first branch key", err)
	}
	dk.Wipe()
	return nil
}

// keyringFlags are the flags that choose a volume's keyrings (init,
// rewrap).
type keyringFlags struct {
	kmsKeys, recipients stringList
	region, endpoint    keyedValue
	localKey            string
}

func (kf *keyringFlags) register(fl *flag.FlagSet) {
	fl.Var(&kf.kmsKeys, "kms-key", "KMS key `ID|ARN|alias/NAME` to wrap data keys with (repeat for several: any one can unwrap)")
	fl.Var(&kf.region, "region", "AWS `region` of the KMS keys (default: the SDK's, or the key ARN's), or KEY=REGION for one of them (repeat)")
	fl.Var(&kf.endpoint, "kms-endpoint", "KMS endpoint `URL` (a VPC endpoint, or local-kms) of the KMS keys, or KEY=URL for one of them (repeat)")
	localHelp := "local key `FILE` (created with mode 0600 if missing)"
	if fl.Name() == "init" {
		localHelp += "; the default when no --kms-key is given is $XDG_CONFIG_HOME/kmsfs/VOLUME_ID.key"
	}
	fl.StringVar(&kf.localKey, "local-key", "", localHelp)
	fl.Var(&kf.recipients, "recipient", "age recipient `age1...` (age-keygen) to wrap every data key to as well: a recovery key that stays offline, unwrapped only with its identity file (repeat for several)")
}

func (kf *keyringFlags) check() error {
	if len(kf.kmsKeys) == 0 && (kf.region.set() || kf.endpoint.set()) {
		return fail(exitUsage, "--region and --kms-endpoint apply to the --kms-key keys: give one, or leave them out for a local-key volume")
	}
	var names [][]string
	for _, k := range kf.kmsKeys {
		names = append(names, []string{k})
	}
	for _, v := range []*keyedValue{&kf.region, &kf.endpoint} {
		if key := v.unknownKey(names); key != "" {
			return fail(exitUsage, "--region or --kms-endpoint %s=...: %s is none of the --kms-key keys", key, key)
		}
	}
	for _, r := range kf.recipients {
		if _, err := agekey.ParseRecipient(r); err != nil {
			return fail(exitUsage, "--recipient: %v (an age X25519 recipient, age1..., as age-keygen prints it)", err)
		}
	}
	return nil
}

// volumeKeys are the keyrings the flags chose, proven to work.
type volumeKeys struct {
	kr         keyring.Keyring // the members, under a Multi if more than one
	members    []keyring.Keyring
	specs      []volume.KeyringSpec
	wrapped    []keyring.WrappedKey // what the round trip wrapped
	headerSize int
	createdKey string // a local key file made for them, removed on failure
}

// buildOptions say how keyringFlags.build makes the keyrings.
type buildOptions struct {
	defaultLocal bool             // no --kms-key: make the volume's default local key (init)
	bulk         bool             // KMS clients for many calls (awskms.Config.Bulk)
	identity     *agekey.Identity // checks recipients in the round trip, if it holds theirs
}

// build makes the keyrings the flags name for volume volumeHex (a new
// local key file if asked for, or by default if no KMS key is given),
// proves they work with one round trip, and sizes the header from it.
// Recipients come last: the first keyring generates each data key, and a
// mount asks the keyrings in order.
func (kf *keyringFlags) build(ctx context.Context, volumeHex string, o buildOptions) (*volumeKeys, error) {
	keys := &volumeKeys{}
	for _, id := range kf.kmsKeys {
		k, err := awskms.New(ctx, awskms.Config{KeyID: id, Region: kf.region.forKey(id), Endpoint: kf.endpoint.forKey(id), Bulk: o.bulk})
		if errors.Is(err, awskms.ErrSDKConfig) {
			// An unknown AWS_PROFILE, a broken ~/.aws/config: the
			// environment's credentials, not the command line.
			return nil, fail(exitKey, "--kms-key %s: %v: check AWS_PROFILE and the AWS config files", id, err)
		}
		if err != nil {
			return nil, fail(exitUsage, "--kms-key %s: %v", id, err)
		}
		keys.members = append(keys.members, k)
	}
	if kf.localKey != "" || (o.defaultLocal && len(kf.kmsKeys) == 0) {
		local, path, created, err := localKeyFor(kf.localKey, volumeHex)
		if err != nil {
			return nil, err
		}
		keys.createdKey = created
		keys.members = append(keys.members, local)
		kf.localKey = path
	}
	if len(keys.members) == 0 {
		return nil, fail(exitUsage, "name the keys to wrap data keys with: --kms-key or --local-key (a --recipient only wraps; a mount needs a key it can unwrap with)")
	}
	for _, r := range kf.recipients {
		rk, err := agekey.ParseRecipient(r)
		if err != nil {
			return nil, fail(exitUsage, "--recipient: %v", err)
		}
		keys.members = append(keys.members, rk)
	}
	if err := keys.prove(ctx, volumeHex, o.identity); err != nil {
		removeCreated(keys.createdKey)
		return nil, err
	}
	for i, m := range keys.members {
		switch k := m.(type) {
		case *awskms.Keyring:
			id := kf.kmsKeys[i]
			keys.specs = append(keys.specs, volume.KeyringSpec{Kind: keyring.KindAWSKMS, KeyID: id, KeyARN: k.KeyARN(), Region: kf.region.forKey(id, k.KeyARN()), Endpoint: kf.endpoint.forKey(id, k.KeyARN())})
		case *keyring.Local:
			keys.specs = append(keys.specs, volume.KeyringSpec{Kind: keyring.KindLocal, KeyID: k.KeyID(), KeyFile: kf.localKey})
		case *agekey.Recipient:
			keys.specs = append(keys.specs, volume.KeyringSpec{Kind: keyring.KindAge, KeyID: k.KeyID()})
		}
	}
	return keys, nil
}

// prove runs the round trip (roundTrip) and sizes the header from it.
func (keys *volumeKeys) prove(ctx context.Context, volumeHex string, identity *agekey.Identity) error {
	keys.kr = keys.members[0]
	if len(keys.members) > 1 {
		m, err := keyring.NewMulti(keys.members...)
		if err != nil {
			return fail(exitKey, "%v", err)
		}
		keys.kr = m
	}
	wrapped, err := roundTrip(ctx, keys.kr, unwrappers(keys.members, identity), volumeHex)
	if err != nil {
		return err
	}
	keys.wrapped = wrapped
	if keys.headerSize, err = volume.HeaderSizeFor(wrapped); err != nil {
		return fail(exitKey, "%v", err)
	}
	return nil
}

// unwrappers are the keyrings that can check members' entries: each
// member, but a recipient only through an identity that holds it (else
// it is left out: a recipient cannot unwrap).
func unwrappers(members []keyring.Keyring, identity *agekey.Identity) []keyring.Keyring {
	var out []keyring.Keyring
	for _, m := range members {
		r, ok := m.(*agekey.Recipient)
		if !ok {
			out = append(out, m)
			continue
		}
		if identity != nil && slices.Contains(identity.Recipients(), r.KeyID()) {
			out = append(out, identity)
		}
	}
	return out
}

// localKeyFor loads the local key file at path, creating it if it does not
// exist (path "": the default path for volume volumeHex). It returns the
// key, its absolute path, and that path again if it created the file.
func localKeyFor(path, volumeHex string) (*keyring.Local, string, string, error) {
	if path == "" {
		d, err := defaultKeyDir()
		if err != nil {
			return nil, "", "", fail(exitKey, "%v", err)
		}
		path = filepath.Join(d, volumeHex+".key")
	}
	path, err := filepath.Abs(path)
	if err != nil {
		return nil, "", "", err
	}
	created := ""
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		if err := keyring.CreateLocalKeyFile(path); err != nil {
			return nil, "", "", fail(exitKey, "%v", err)
		}
		created = path
	}
	local, err := loadLocalKey(path)
	if err != nil {
		removeCreated(created)
		return nil, "", "", err
	}
	return local, path, created, nil
}

// writeNewVolume creates dir if needed and writes cfg as its config.
func writeNewVolume(dir string, cfg *volume.Config) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the path is in the line already
		}
		return fail(exitVolume, "cannot create %s (%v): name a directory kmsfs init may create, under an existing, writable parent", dir, err)
	}
	if err := volume.WriteConfig(dir, cfg); err != nil {
		return fail(exitVolume, "write %s: %v", filepath.Join(dir, volume.ConfigName), err)
	}
	return nil
}

// reportInit keeps the trusted copy of the new config and says what was
// made.
func reportInit(dir string, cfg *volume.Config, keys *volumeKeys, stdout, stderr io.Writer) {
	fmt.Fprintf(stdout, "Created kmsfs volume %s in %s (block size %d, header %d bytes).\n", cfg.VolumeID, dir, cfg.BlockSize, cfg.HeaderSize)
	if cfg.Branch() {
		fmt.Fprintf(stdout, "Key mode: branch keys, a new one every %s (its key file is in %s).\n", cfg.BranchKeyRotation, filepath.Join(dir, volume.BranchStore))
	}
	// Mounts on this machine refuse a config that differs from this copy
	// (trust.go). Without it the first mount trusts what it finds.
	raw, err := volume.ConfigBytes(cfg)
	var paths []string
	if err == nil {
		paths, err = trustedCopies(cfg.VolumeID, dir)
	}
	if err == nil {
		err = keepTrusted(paths, raw)
	}
	if err != nil {
		fmt.Fprintf(stderr, "kmsfs: warning: could not keep a trusted copy of %s (%v): the first mount on this machine will trust the config it finds\n", filepath.Join(dir, volume.ConfigName), err)
	} else {
		fmt.Fprintf(stdout, "Trusted copy of its config: %s (mounts here refuse a changed %s).\n", paths[0], volume.ConfigName)
	}
	for _, m := range keys.members {
		fmt.Fprintf(stdout, "Key: %s\n", describe(m))
	}
	if keys.createdKey != "" {
		if len(keys.members) == 1 {
			fmt.Fprintf(stdout, "The local key file %s was created: back it up; without it this volume cannot be read.\n", keys.createdKey)
		} else {
			fmt.Fprintf(stdout, "The local key file %s was created: back it up; without it this volume is read only with its other keys.\n", keys.createdKey)
		}
	}
	fmt.Fprintf(stdout, "Mount it with: kmsfs mount %s MOUNTPOINT\n", dir)
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
	if errors.Is(err, syscall.ENOTDIR) {
		if st, serr := os.Stat(dir); serr == nil && !st.IsDir() {
			return fail(exitVolume, "%s is a file, not a directory: name an empty or missing directory for the new volume", dir)
		}
		return fail(exitVolume, "%s: a parent of it is a file, not a directory: name an empty or missing directory for the new volume", dir)
	}
	if err != nil {
		return fail(exitVolume, "%v", err)
	}
	for _, e := range entries {
		if e.Name() == volume.ConfigName {
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
