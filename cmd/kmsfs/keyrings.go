package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync/atomic"

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
	// requireTrusted refuses a config this machine has no trusted copy
	// of, rather than trusting it on first use (mount --require-trusted).
	requireTrusted bool
	log            *slog.Logger // for skipUnavailable's warnings
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
	if unwrapping == 0 {
		return nil, nil, nil // only the identity unwraps
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
	home := homeDir()
	if home == "" {
		return "", fmt.Errorf("no $XDG_CONFIG_HOME or home directory for the key file: give one with --local-key")
	}
	return filepath.Join(home, ".config", "kmsfs"), nil
}

// homeDir is $HOME, or where it is unset (systemd gives mount units and
// services none) the home directory the password database gives the
// effective user, so that a mount at boot finds what kmsfs init kept
// under /root. "" if neither.
func homeDir() string {
	if h := os.Getenv("HOME"); h != "" {
		return h
	}
	if u, err := user.LookupId(strconv.Itoa(os.Geteuid())); err == nil && filepath.IsAbs(u.HomeDir) {
		return u.HomeDir
	}
	return ""
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
// the volume's keyrings, then the identity where they cannot answer (see
// recovery); id nil: kr alone. kr is nil when none of the volume's
// keyrings that unwrap can be loaded. sets are the keyring sets a genuine
// header is wrapped under (unwrappingKeys of each).
func withIdentity(kr keyring.Keyring, id *agekey.Identity, used *atomic.Int64, sets ...[]volume.KeyringSpec) keyring.Keyring {
	if id == nil {
		return kr
	}
	r := recovery{kr: kr, id: id, used: used}
	for _, s := range sets {
		r.sets = append(r.sets, unwrappingKeys(s))
	}
	return r
}

// unwrappingKeys are the (kind, key ID) a header entry of each of specs'
// keyrings that unwrap names (a recipient does not unwrap).
func unwrappingKeys(specs []volume.KeyringSpec) [][2]string {
	var out [][2]string
	for _, s := range specs {
		if s.Kind != keyring.KindAge {
			out = append(out, [2]string{string(s.Kind), specKeyID(s)})
		}
	}
	return out
}

// specKeyID is the key ID a header entry of spec's keyring names.
func specKeyID(s volume.KeyringSpec) string {
	if s.Kind == keyring.KindAWSKMS {
		return s.KeyARN
	}
	return s.KeyID
}

// recovery unwraps with the volume's keyrings, and with the identity only
// where every one of them had an entry and could not answer for it.
//
// A recipient is a public key, in kmsfs.json for anyone to read, and age
// does not say who wrapped to it. Whoever can write CIPHERDIR can make a
// header, or a branch key file, whose key the identity opens, for a key
// they know, with entries that merely claim the volume's keys beside it.
// Taking it would export their plaintext as the volume's, and a rewrap
// would wrap it under the new keys: a branch key planted so would then
// wrap every new file. kmsfs writes an entry for every keyring of the
// config into every header, so the identity is asked only for a header
// that has an entry for each of the volume's keys (of the config, or of
// the rewrap's target), and only when those the command holds said the
// key is gone: disabled, deleted, access denied, or its key file not
// loaded. Any of them that is there checks its entry, so a planted header
// passes only where none of the volume's keys can answer: the loss the
// identity is for. A header short of an entry, or with one a key finds
// invalid (made for another file, or forged), is refused; so is one a key
// service could not answer for now (throttled, unreachable): run again.
//
// Where none of the volume's keys can answer, nothing tells a planted
// entry from a genuine one (docs/THREAT_MODEL.md).
type recovery struct {
	kr   keyring.Keyring // nil: none of the volume's keyrings loaded
	id   *agekey.Identity
	sets [][][2]string // a genuine header has an entry for each key of one
	used *atomic.Int64 // counts the keys the identity unwrapped; may be nil
}

func (r recovery) GenerateDataKey(ctx context.Context, ec keyring.EncryptionContext) (*keyring.DataKey, []keyring.WrappedKey, error) {
	if r.kr == nil {
		return nil, nil, errors.New("no keyring of the volume is loaded to wrap with")
	}
	return r.kr.GenerateDataKey(ctx, ec)
}

func (r recovery) Decrypt(ctx context.Context, wrapped []keyring.WrappedKey, ec keyring.EncryptionContext) (*keyring.DataKey, error) {
	err := fmt.Errorf("no keyring of the volume loaded: %w", keyring.ErrNoUsableKey)
	if r.kr != nil {
		var dk *keyring.DataKey
		if dk, err = r.kr.Decrypt(ctx, wrapped, ec); err == nil {
			return dk, nil
		}
	}
	switch {
	case errors.Is(err, keyring.ErrInvalidCiphertext):
		return nil, fmt.Errorf("%w (the recovery identity is not used where the volume's keys find an entry invalid)", err)
	case errors.Is(err, keyring.ErrUnreachable), errors.Is(err, keyring.ErrThrottled):
		return nil, err // it may yet answer: run again
	case !errors.Is(err, keyring.ErrNoUsableKey) && !keyUnavailable(err):
		return nil, err
	}
	if !r.complete(wrapped) {
		return nil, plainError{"no entry for each of the volume's keys, though kmsfs writes one for each: planted or damaged (the recovery identity is not used for it)", keyring.ErrNoUsableKey}
	}
	dk, idErr := r.id.Decrypt(ctx, wrapped, ec)
	if idErr != nil {
		return nil, errors.Join(err, idErr)
	}
	if r.used != nil {
		r.used.Add(1)
	}
	return dk, nil
}

// complete reports whether wrapped has an entry for every key of one of
// the sets.
func (r recovery) complete(wrapped []keyring.WrappedKey) bool {
	has := map[[2]string]bool{}
	for _, w := range wrapped {
		has[[2]string{string(w.Kind), w.KeyID}] = true
	}
	for _, set := range r.sets {
		all := len(set) > 0
		for _, k := range set {
			all = all && has[k]
		}
		if all {
			return true
		}
	}
	return false
}

// plainError says msg and wraps err, without err's text.
type plainError struct {
	msg string
	err error
}

func (e plainError) Error() string { return e.msg }
func (e plainError) Unwrap() error { return e.err }

// keyUnavailable reports whether err says a key is gone (rather than that
// an entry is not genuine, or that a key service could not answer now).
func keyUnavailable(err error) bool {
	for _, e := range []error{keyring.ErrAccessDenied, keyring.ErrKeyDisabled, keyring.ErrKeyNotFound} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
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
