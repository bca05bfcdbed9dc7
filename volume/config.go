package volume

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/blockcipher"
	"github.com/kmsfs/kmsfs/internal/regfile"
	"github.com/kmsfs/kmsfs/keyring"
)

// ConfigName is the volume config file at the root of CIPHERDIR. It is
// hidden from the plaintext view.
const ConfigName = "kmsfs.json"

// Volume format versions (docs/FORMAT.md). This kmsfs reads all three
// and makes version 3 volumes; it never changes a volume's version.
const (
	ConfigVersion1 = 1
	ConfigVersion2 = 2 // adds key_mode and branch_key_rotation
	ConfigVersion3 = 3 // as 2; files have header version 2 (XAES-256-GCM blocks)
)

// Key modes (docs/FORMAT.md, "Key modes").
const (
	KeyModePerFile = "per-file"
	KeyModeBranch  = "branch"
)

// Bounds of branch_key_rotation.
const (
	MinBranchRotation = time.Second
	MaxBranchRotation = 10 * 365 * 24 * time.Hour
)

// maxConfigSize bounds what ParseConfig reads: a config with many keyrings
// is a few KiB.
const maxConfigSize = 1 << 20

// Config is the volume config, kmsfs.json (docs/FORMAT.md, "Volume config").
type Config struct {
	FormatVersion int           `json:"format_version"`
	VolumeID      string        `json:"volume_id"`
	BlockSize     int           `json:"block_size"`
	HeaderSize    int           `json:"header_size"`
	Keyrings      []KeyringSpec `json:"keyrings"`
	Features      []string      `json:"features"`
	// Version 2:
	KeyMode           string `json:"key_mode,omitempty"`            // KeyModePerFile or KeyModeBranch
	BranchKeyRotation string `json:"branch_key_rotation,omitempty"` // a Go duration, for KeyModeBranch
}

// Branch reports whether the volume wraps file keys under branch keys.
func (c *Config) Branch() bool { return c.KeyMode == KeyModeBranch }

// Rotation returns how long a branch key wraps new files (0 for a
// per-file volume).
func (c *Config) Rotation() time.Duration {
	d, _ := time.ParseDuration(c.BranchKeyRotation) // validated
	return d
}

// KeyringSpec names one keyring of a volume. No field is secret.
type KeyringSpec struct {
	Kind     keyring.Kind `json:"kind"`
	KeyID    string       `json:"key_id"`
	KeyARN   string       `json:"key_arn,omitempty"`
	Region   string       `json:"region,omitempty"`
	Endpoint string       `json:"endpoint,omitempty"`
	KeyFile  string       `json:"key_file,omitempty"`
}

// ErrNoConfig: the directory has no kmsfs.json.
var ErrNoConfig = errors.New("not a kmsfs volume (no " + ConfigName + ")")

// ErrNewerFormat: the config names a format version this kmsfs does not
// read (a newer kmsfs made it).
var ErrNewerFormat = errors.New("upgrade kmsfs to use it")

// ConfigError is a kmsfs.json that is there but is not a valid config:
// damaged, or changed by hand. Its text says what is wrong.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// ParseConfig decodes and validates a config. It refuses unknown fields,
// unknown versions and features, and trailing data, and never panics.
func ParseConfig(b []byte) (*Config, error) {
	if len(b) > maxConfigSize {
		return nil, fmt.Errorf("%s is %d bytes, larger than any valid config", ConfigName, len(b))
	}
	// Read the version alone first, so a future config with new fields
	// gets "unsupported version" rather than "unknown field".
	var v struct {
		FormatVersion *int `json:"format_version"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("%s is not valid JSON: %v", ConfigName, err)
	}
	if v.FormatVersion == nil {
		return nil, fmt.Errorf("%s has no format_version", ConfigName)
	}
	if *v.FormatVersion < ConfigVersion1 || *v.FormatVersion > ConfigVersion3 {
		return nil, fmt.Errorf("volume format version %d is not supported by this kmsfs (it reads versions 1 to 3): %w", *v.FormatVersion, ErrNewerFormat)
	}
	// encoding/json matches field names case-insensitively and lets a
	// duplicate key win silently; a config is stricter than that.
	if err := checkConfigKeys(b); err != nil {
		return nil, fmt.Errorf("%s: %v", ConfigName, err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%s: %v", ConfigName, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%s: trailing data after the config object", ConfigName)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Validate checks every field (docs/FORMAT.md).
func (c *Config) Validate() error {
	if err := c.validateMode(); err != nil {
		return err
	}
	if _, err := c.VolumeIDBytes(); err != nil {
		return err
	}
	if _, err := blockcipher.NewLayout(c.HeaderSize, c.BlockSize, c.FileVersion()); err != nil {
		// Named as the config's fields, not as the header's.
		var fe *blockcipher.FormatError
		if errors.As(err, &fe) && fe.Msg != "" {
			return fmt.Errorf("%s: %s %s", ConfigName, strings.ReplaceAll(fe.Field, " ", "_"), fe.Msg)
		}
		return fmt.Errorf("%s: %v", ConfigName, err)
	}
	if len(c.Keyrings) == 0 {
		return fmt.Errorf("%s names no keyring", ConfigName)
	}
	if len(c.Keyrings) > blockcipher.MaxKeys {
		return fmt.Errorf("%s names %d keyrings, at most %d are supported", ConfigName, len(c.Keyrings), blockcipher.MaxKeys)
	}
	for i, k := range c.Keyrings {
		if err := k.validate(); err != nil {
			return fmt.Errorf("%s keyring %d: %v", ConfigName, i+1, err)
		}
	}
	if len(c.Features) > 0 {
		return fmt.Errorf("%s uses feature %q, which this kmsfs does not support", ConfigName, c.Features[0])
	}
	return nil
}

// validateMode checks the version and the fields of key modes.
func (c *Config) validateMode() error {
	switch c.FormatVersion {
	case ConfigVersion1:
		if c.KeyMode != "" || c.BranchKeyRotation != "" {
			return fmt.Errorf("%s: key_mode and branch_key_rotation need format_version 2 or 3", ConfigName)
		}
		return nil
	case ConfigVersion2, ConfigVersion3:
	default:
		return fmt.Errorf("volume format version %d is not supported by this kmsfs (it reads versions 1 to 3): %w", c.FormatVersion, ErrNewerFormat)
	}
	switch c.KeyMode {
	case KeyModePerFile:
		if c.BranchKeyRotation != "" {
			return fmt.Errorf("%s: branch_key_rotation is for key_mode %q", ConfigName, KeyModeBranch)
		}
	case KeyModeBranch:
		d, err := time.ParseDuration(c.BranchKeyRotation)
		if err != nil || d < MinBranchRotation || d > MaxBranchRotation {
			return fmt.Errorf("%s: branch_key_rotation %q: want a duration from %v to %v", ConfigName, c.BranchKeyRotation, MinBranchRotation, MaxBranchRotation)
		}
	default:
		return fmt.Errorf("%s: key_mode %q: want %q or %q", ConfigName, c.KeyMode, KeyModePerFile, KeyModeBranch)
	}
	return nil
}

func (k KeyringSpec) validate() error {
	for _, f := range []struct{ name, v string }{{"kind", string(k.Kind)}, {"key_id", k.KeyID}, {"key_arn", k.KeyARN},
		{"region", k.Region}, {"endpoint", k.Endpoint}, {"key_file", k.KeyFile}} {
		// These are printed in messages and logs: a newline or an
		// escape sequence there would forge lines or drive the terminal.
		if !utf8.ValidString(f.v) || strings.IndexFunc(f.v, unicode.IsControl) >= 0 {
			return fmt.Errorf("keyring %s %q holds a control character or is not UTF-8", f.name, f.v)
		}
	}
	switch k.Kind {
	case keyring.KindAWSKMS:
		if k.KeyID == "" || k.KeyARN == "" {
			return errors.New("aws-kms keyring needs key_id and key_arn")
		}
		if k.KeyFile != "" {
			return errors.New("aws-kms keyring has a key_file")
		}
	case keyring.KindLocal:
		if k.KeyFile == "" {
			return errors.New("local keyring needs key_file")
		}
		if id, err := hex.DecodeString(k.KeyID); err != nil || len(id) != 16 || hex.EncodeToString(id) != k.KeyID {
			return errors.New("local keyring key_id must be 32 lowercase hex digits")
		}
		if k.KeyARN != "" || k.Region != "" || k.Endpoint != "" {
			return errors.New("local keyring has aws-kms fields")
		}
	case keyring.KindAge:
		if !validRecipient(k.KeyID) {
			return errors.New("age keyring key_id must be an age X25519 recipient (age1...)")
		}
		if k.KeyARN != "" || k.Region != "" || k.Endpoint != "" || k.KeyFile != "" {
			return errors.New("age keyring has fields other than kind and key_id")
		}
	default:
		return fmt.Errorf("unknown keyring kind %q", k.Kind)
	}
	return nil
}

// validRecipient checks the shape of an age X25519 recipient: "age1" and
// 58 characters of lowercase Bech32 (the key is parsed in full where it is
// used, keyring/agekey).
func validRecipient(s string) bool {
	const bech32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
	if len(s) != 62 || !strings.HasPrefix(s, "age1") {
		return false
	}
	for _, c := range s[4:] {
		if !strings.ContainsRune(bech32, c) {
			return false
		}
	}
	return true
}

// VolumeIDBytes returns the decoded volume ID.
func (c *Config) VolumeIDBytes() ([blockcipher.IDSize]byte, error) {
	var id [blockcipher.IDSize]byte
	b, err := hex.DecodeString(c.VolumeID)
	if err != nil || len(b) != blockcipher.IDSize || hex.EncodeToString(b) != c.VolumeID {
		return id, fmt.Errorf("%s: volume_id must be %d lowercase hex digits", ConfigName, 2*blockcipher.IDSize)
	}
	copy(id[:], b)
	return id, nil
}

// FileVersion is the header version of the volume's files, which says how
// their blocks are sealed: blockcipher.Version2 in a version 3 volume,
// blockcipher.Version1 before.
func (c *Config) FileVersion() uint16 {
	if c.FormatVersion >= ConfigVersion3 {
		return blockcipher.Version2
	}
	return blockcipher.Version1
}

// Layout returns the volume geometry.
func (c *Config) Layout() blockcipher.Layout {
	l, err := blockcipher.NewLayout(c.HeaderSize, c.BlockSize, c.FileVersion())
	if err != nil {
		panic("volume: internal error: Layout of an unvalidated config")
	}
	return l
}

// ReadConfig reads and validates CIPHERDIR/kmsfs.json, returning it parsed
// and as the bytes it was parsed from (for a caller that compares them
// with a copy it trusts). A missing file is ErrNoConfig.
//
// CIPHERDIR is not trusted: the config is opened as the stored files are
// (regfile.Open: looked at through O_PATH first, so a FIFO or a device
// node there is never opened, and no driver's open runs), without
// following a symlink, only if it is a regular file, and at most
// maxConfigSize bytes are read (a symlink to /dev/zero would otherwise
// grow memory without bound).
func ReadConfig(cipherDir string) (*Config, []byte, error) {
	b, err := readConfigFile(cipherDir)
	if err != nil {
		return nil, nil, err
	}
	c, err := ParseConfig(b)
	if err != nil {
		return nil, nil, &ConfigError{err}
	}
	return c, b, nil
}

func readConfigFile(cipherDir string) ([]byte, error) {
	name := filepath.Join(cipherDir, ConfigName)
	f, err := openRegularAt(unix.AT_FDCWD, name, 0, unix.O_RDONLY)
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil, ErrNoConfig
	case errors.Is(err, unix.ELOOP):
		return nil, &ConfigError{fmt.Errorf("%s is a symlink, not a volume config", ConfigName)}
	case errors.Is(err, regfile.ErrNotRegular):
		what := "not a regular file"
		if st, err := os.Lstat(name); err == nil {
			what = typeName(st.Mode()) + ", not a regular file"
		}
		return nil, &ConfigError{fmt.Errorf("%s is %s", ConfigName, what)}
	case err != nil:
		return nil, fmt.Errorf("open %s: %w", ConfigName, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", ConfigName, err)
	}
	return b, nil
}

// ConfigBytes returns the bytes WriteConfig writes for c.
func ConfigBytes(c *Config) ([]byte, error) {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// WriteConfig writes c to CIPHERDIR/kmsfs.json atomically: a temporary
// file in the same directory, fsync, rename, fsync of the directory. It
// refuses to replace an existing config.
func WriteConfig(cipherDir string, c *Config) error {
	return writeConfig(cipherDir, c, false)
}

// ReplaceConfig writes c over CIPHERDIR/kmsfs.json atomically, as
// WriteConfig does, replacing the config there (kmsfs rewrap): a reader
// sees the old config or the new one, never a mix.
func ReplaceConfig(cipherDir string, c *Config) error {
	return writeConfig(cipherDir, c, true)
}

func writeConfig(cipherDir string, c *Config, replace bool) error {
	if err := c.Validate(); err != nil {
		return err
	}
	b, err := ConfigBytes(c)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(cipherDir, configTempPrefix+"*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	final := filepath.Join(cipherDir, ConfigName)
	if replace {
		if err := os.Rename(tmp.Name(), final); err != nil {
			return err
		}
		return syncDir(cipherDir)
	}
	// link(2) fails if the name exists, where rename would replace it.
	if err := os.Link(tmp.Name(), final); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%s is already a kmsfs volume", cipherDir)
		}
		return err
	}
	return syncDir(cipherDir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

var (
	configKeys  = map[string]bool{"format_version": true, "volume_id": true, "block_size": true, "header_size": true, "keyrings": true, "features": true, "key_mode": true, "branch_key_rotation": true}
	keyringKeys = map[string]bool{"kind": true, "key_id": true, "key_arn": true, "region": true, "endpoint": true, "key_file": true}
)

// checkConfigKeys walks the JSON tokens of a config and refuses object keys
// that are not spelled exactly as documented, and duplicate keys.
func checkConfigKeys(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	type frame struct {
		object  bool
		seen    map[string]bool
		allowed map[string]bool
		wantKey bool
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.object && top.wantKey {
			if d, ok := tok.(json.Delim); ok && d == '}' {
				stack = stack[:len(stack)-1]
				if len(stack) > 0 && stack[len(stack)-1].object {
					stack[len(stack)-1].wantKey = true
				}
				continue
			}
			key := tok.(string)
			if top.allowed != nil && !top.allowed[key] {
				return fmt.Errorf("unknown field %q", key)
			}
			if top.seen[key] {
				return fmt.Errorf("field %q appears twice", key)
			}
			top.seen[key] = true
			top.wantKey = false
			continue
		}
		switch d, _ := tok.(json.Delim); d {
		case '{':
			var allowed map[string]bool
			switch {
			case len(stack) == 0:
				allowed = configKeys
			case len(stack) == 2 && !stack[1].object:
				allowed = keyringKeys
			}
			stack = append(stack, &frame{object: true, seen: map[string]bool{}, allowed: allowed, wantKey: true})
			continue
		case '[':
			stack = append(stack, &frame{})
			continue
		case ']':
			stack = stack[:len(stack)-1]
		}
		// A value (or the end of an array) completes a member.
		if len(stack) > 0 && stack[len(stack)-1].object {
			stack[len(stack)-1].wantKey = true
		}
	}
}

// typeName names a file type for a message.
func typeName(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&os.ModeSymlink != 0:
		return "a symlink"
	case m&os.ModeNamedPipe != 0:
		return "a FIFO"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeDevice != 0:
		return "a device"
	}
	return "a special file"
}
