package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/keyring/agekey"
	"github.com/kmsfs/kmsfs/keyring/awskms"
	"github.com/kmsfs/kmsfs/volume"
)

// keyOverrides are mount-time replacements for fields of the volume config.
type keyOverrides struct {
	region, endpoint keyedValue
	localKey         string
	// configEndpoint says the KMS endpoints named in the config may be
	// used: the config is trusted (trust.go). Otherwise only the flag or
	// AWS_ENDPOINT_URL_KMS may name one.
	configEndpoint bool
	// skipUnavailable leaves out a keyring that cannot be loaded (a key
	// file moved away, a KMS client that cannot be configured), with a
	// warning, as long as one that can unwrap remains: for a read-only
	// mount or an offline command, which only unwrap. A writable mount
	// needs every keyring, since each new file is wrapped under all.
	skipUnavailable bool
	// identityGiven says an age identity unwraps too (--identity of an
	// offline command): the volume's keyrings may all be unavailable.
	identityGiven bool
	log           *slog.Logger // for skipUnavailable's warnings
}

// buildKeyring makes the keyring a volume config names: one provider, or
// a Multi over several in config order. It also returns the providers,
// in config order (without those skipUnavailable left out).
func buildKeyring(ctx context.Context, cfg *volume.Config, ov keyOverrides) (keyring.Keyring, []keyring.Keyring, error) {
	if err := checkOverrides(cfg, ov); err != nil {
		return nil, nil, err
	}
	var members []keyring.Keyring
	var skipped []skippedKeyring
	unwrapping := 0
	for _, spec := range cfg.Keyrings {
		var k keyring.Keyring
		var err error
		switch spec.Kind {
		case keyring.KindLocal:
			k, err = localMember(spec, ov)
		case keyring.KindAWSKMS:
			k, err = kmsMember(ctx, spec, ov)
		case keyring.KindAge:
			k, err = agekey.ParseRecipient(spec.KeyID)
			if err != nil {
				err = fail(exitVolume, "%s: %v", volume.ConfigName, err)
			}
		default:
			err = fail(exitVolume, "unknown keyring kind %q", spec.Kind)
		}
		if err != nil && ov.skipUnavailable && isKeyFailure(err) {
			skipped = append(skipped, skippedKeyring{spec, err})
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		if spec.Kind != keyring.KindAge {
			unwrapping++
		}
		members = append(members, k)
	}
	if unwrapping == 0 && !ov.identityGiven {
		if len(skipped) > 0 {
			return nil, nil, skipped[0].err // what a mount without skipping says
		}
		return nil, nil, fail(exitKey, "none of the volume's keyrings %s can unwrap", keyringList(cfg.Keyrings))
	}
	for _, s := range skipped {
		if ov.log != nil {
			ov.log.Warn("leaving out a keyring that cannot be loaded: the files are read with the others", "keyring", keyringList([]volume.KeyringSpec{s.spec}), "err", s.err.Error())
		}
	}
	switch len(members) {
	case 0:
		return nil, nil, nil
	case 1:
		return members[0], members, nil
	}
	m, err := keyring.NewMulti(members...)
	if err != nil {
		return nil, nil, fail(exitKey, "%v", err)
	}
	return m, members, nil
}

// isKeyFailure reports whether err says a key cannot be loaded (exit
// code 11): what skipUnavailable may leave out. A refusal of the config
// itself (an endpoint this machine does not trust) is never skipped.
func isKeyFailure(err error) bool {
	var ce *cliError
	return errors.As(err, &ce) && ce.code == exitKey
}

// skippedKeyring is a keyring buildKeyring left out, and why.
type skippedKeyring struct {
	spec volume.KeyringSpec
	err  error
}

// kmsNames are the names a KMS keyring of the config goes by, for a
// KEY=VALUE override.
func kmsNames(cfg *volume.Config) [][]string {
	var out [][]string
	for _, spec := range cfg.Keyrings {
		if spec.Kind == keyring.KindAWSKMS {
			out = append(out, []string{spec.KeyID, spec.KeyARN})
		}
	}
	return out
}

// checkOverrides refuses flags that are ambiguous or would change nothing.
func checkOverrides(cfg *volume.Config, ov keyOverrides) error {
	kmsCount, localCount := 0, 0
	for _, spec := range cfg.Keyrings {
		switch spec.Kind {
		case keyring.KindAWSKMS:
			kmsCount++
		case keyring.KindLocal:
			localCount++
		}
	}
	if kmsCount > 1 && (ov.region.all != "" || ov.endpoint.all != "") {
		return fail(exitUsage, "--region and --kms-endpoint are ambiguous: the volume has %d KMS keys: name one with KEY=VALUE (--kms-endpoint %s=URL), once per key", kmsCount, cfg.Keyrings[0].KeyARN)
	}
	if kmsCount == 0 && (ov.region.set() || ov.endpoint.set()) {
		return fail(exitUsage, "--region and --kms-endpoint: this volume has no KMS key")
	}
	for _, v := range []*keyedValue{&ov.region, &ov.endpoint} {
		if key := v.unknownKey(kmsNames(cfg)); key != "" {
			return fail(exitUsage, "--region or --kms-endpoint %s=...: the volume has no KMS key %s (its keys: %s)", key, key, keyringList(cfg.Keyrings))
		}
	}
	if localCount == 0 && ov.localKey != "" {
		return fail(exitUsage, "--local-key: this volume has no local key")
	}
	return nil
}

func localMember(spec volume.KeyringSpec, ov keyOverrides) (*keyring.Local, error) {
	path := spec.KeyFile
	if ov.localKey != "" {
		path = ov.localKey
	}
	l, err := loadLocalKey(path)
	if err != nil {
		return nil, err
	}
	if l.KeyID() != spec.KeyID {
		return nil, fail(exitKey, "key file %s is key %s, but this volume needs key %s: give the right file with --local-key", path, l.KeyID(), spec.KeyID)
	}
	return l, nil
}

// kmsEndpointEnv names the endpoint of the KMS API for the AWS SDK.
const kmsEndpointEnv = "AWS_ENDPOINT_URL_KMS"

func kmsMember(ctx context.Context, spec volume.KeyringSpec, ov keyOverrides) (*awskms.Keyring, error) {
	c := awskms.Config{KeyID: spec.KeyID, KeyARN: spec.KeyARN, Region: spec.Region}
	if r := ov.region.forKey(spec.KeyARN, spec.KeyID); r != "" {
		c.Region = r
	}
	endpoint := ov.endpoint.forKey(spec.KeyARN, spec.KeyID)
	// The host decides where data keys go: the flag, then the config if
	// this machine trusts it, then AWS_ENDPOINT_URL_KMS (which the SDK
	// reads itself), else the SDK's default for the region.
	switch {
	case endpoint != "":
		c.Endpoint = endpoint
	case spec.Endpoint != "" && ov.configEndpoint:
		c.Endpoint = spec.Endpoint
	case os.Getenv(kmsEndpointEnv) != "":
	case spec.Endpoint != "":
		// Whoever can write CIPHERDIR could name their own server here,
		// to be sent every new file's data key (Encrypt carries it).
		return nil, fail(exitVolume, "%s names the KMS endpoint %s for key %s, and this machine does not trust that config yet: kmsfs takes a KMS endpoint from the host, not from CIPHERDIR alone. If it is right, pass --kms-endpoint %s (or set %s), or mount once with --trust-config",
			volume.ConfigName, spec.Endpoint, spec.KeyID, spec.Endpoint, kmsEndpointEnv)
	}
	k, err := awskms.New(ctx, c)
	if err != nil {
		return nil, fail(exitKey, "KMS key %s: %v", spec.KeyID, err)
	}
	return k, nil
}

func loadLocalKey(path string) (*keyring.Local, error) {
	l, err := keyring.LoadLocal(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fail(exitKey, "key file %s does not exist: restore it from your backup, or give its path with --local-key", path)
	}
	if err != nil {
		return nil, fail(exitKey, "%v", err)
	}
	return l, nil
}

// defaultKeyDir is where init puts a volume's local key file when none is
// given: $XDG_CONFIG_HOME/kmsfs, else ~/.config/kmsfs.
func defaultKeyDir() (string, error) {
	if d := os.Getenv("XDG_CONFIG_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "kmsfs"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no $XDG_CONFIG_HOME or home directory for the key file: give one with --local-key")
	}
	return filepath.Join(home, ".config", "kmsfs"), nil
}

// keyError turns a keyring failure into one actionable line.
func keyError(what string, err error) error {
	hint := ""
	switch {
	case errors.Is(err, keyring.ErrAccessDenied):
		hint = ": check the credentials and the key policy (kms:GenerateDataKey, kms:Decrypt)"
	case errors.Is(err, keyring.ErrKeyDisabled):
		hint = ": enable the key, or cancel its deletion"
	case errors.Is(err, keyring.ErrKeyNotFound):
		hint = ": check the key ID and the region"
	case errors.Is(err, keyring.ErrUnreachable):
		hint = ": check the network, the region and --kms-endpoint"
	case errors.Is(err, keyring.ErrThrottled):
		hint = ": KMS is throttling this account; retry later"
	}
	return fail(exitKey, "%s: %v%s", what, err, hint)
}

// loadIdentity loads an age identity file (--identity) for the offline
// commands: it unwraps the entries of the volume's recovery recipients,
// which no mount can. A mount never takes one.
func loadIdentity(path string) (*agekey.Identity, error) {
	id, err := agekey.LoadIdentity(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fail(exitKey, "identity file %s does not exist: give the file age-keygen wrote for the volume's --recipient", path)
	}
	if err != nil {
		return nil, fail(exitKey, "%v", err)
	}
	return id, nil
}

// withIdentity returns the keyring an offline command unwraps with: kr,
// the volume's keyrings, then the identity if one was given (nil: kr
// alone). kr may be nil when none of the volume's keyrings can be loaded
// and the identity is the way in.
func withIdentity(kr keyring.Keyring, id *agekey.Identity) keyring.Keyring {
	switch {
	case id == nil:
		return kr
	case kr == nil:
		return id
	}
	return anyOf{kr, id}
}

// anyOf unwraps with the first keyring that can; it generates with the
// first. Its Decrypt error joins every keyring's, as Multi's does.
type anyOf []keyring.Keyring

func (a anyOf) GenerateDataKey(ctx context.Context, ec keyring.EncryptionContext) (*keyring.DataKey, []keyring.WrappedKey, error) {
	return a[0].GenerateDataKey(ctx, ec)
}

func (a anyOf) Decrypt(ctx context.Context, wrapped []keyring.WrappedKey, ec keyring.EncryptionContext) (*keyring.DataKey, error) {
	var errs []error
	noUsable := 0
	for _, k := range a {
		dk, err := k.Decrypt(ctx, wrapped, ec)
		if err == nil {
			return dk, nil
		}
		if errors.Is(err, keyring.ErrNoUsableKey) {
			noUsable++
			continue
		}
		errs = append(errs, err)
	}
	if noUsable == len(a) {
		return nil, fmt.Errorf("no keyring given: %w", keyring.ErrNoUsableKey)
	}
	return nil, errors.Join(errs...)
}
