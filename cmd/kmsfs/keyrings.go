package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/keyring/awskms"
	"github.com/kmsfs/kmsfs/volume"
)

// keyOverrides are mount-time replacements for fields of the volume config.
type keyOverrides struct {
	region, endpoint, localKey string
	// configEndpoint says the KMS endpoints named in the config may be
	// used: the config is trusted (trust.go). Otherwise only the flag or
	// AWS_ENDPOINT_URL_KMS may name one.
	configEndpoint bool
}

// buildKeyring makes the keyring a volume config names: one provider, or
// a Multi over several in config order. It also returns the providers,
// in config order.
func buildKeyring(ctx context.Context, cfg *volume.Config, ov keyOverrides) (keyring.Keyring, []keyring.Keyring, error) {
	if err := checkOverrides(cfg, ov); err != nil {
		return nil, nil, err
	}
	var members []keyring.Keyring
	for _, spec := range cfg.Keyrings {
		var k keyring.Keyring
		var err error
		switch spec.Kind {
		case keyring.KindLocal:
			k, err = localMember(spec, ov)
		case keyring.KindAWSKMS:
			k, err = kmsMember(ctx, spec, ov)
		default:
			err = fail(exitVolume, "unknown keyring kind %q", spec.Kind)
		}
		if err != nil {
			return nil, nil, err
		}
		members = append(members, k)
	}
	if len(members) == 1 {
		return members[0], members, nil
	}
	m, err := keyring.NewMulti(members...)
	if err != nil {
		return nil, nil, fail(exitKey, "%v", err)
	}
	return m, members, nil
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
	if kmsCount > 1 && (ov.region != "" || ov.endpoint != "") {
		return fail(exitUsage, "--region and --kms-endpoint are ambiguous: the volume has %d KMS keys", kmsCount)
	}
	if kmsCount == 0 && (ov.region != "" || ov.endpoint != "") {
		return fail(exitUsage, "--region and --kms-endpoint: this volume has no KMS key")
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
	if ov.region != "" {
		c.Region = ov.region
	}
	// The host decides where data keys go: the flag, then the config if
	// this machine trusts it, then AWS_ENDPOINT_URL_KMS (which the SDK
	// reads itself), else the SDK's default for the region.
	switch {
	case ov.endpoint != "":
		c.Endpoint = ov.endpoint
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
