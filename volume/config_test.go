package volume_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/volume"
)

const (
	testVolumeID = "0123456789abcdef0123456789abcdef"
	testLocalID  = "fedcba9876543210fedcba9876543210"
	testKeyARN   = "arn:aws:kms:eu-west-2:111122223333:key/a0a0a0a0-0000-4000-8000-00000000000a"
)

// validConfigJSON is a config as `kmsfs init` writes it, with one KMS key
// and a local recovery key.
const validConfigJSON = `{
  "format_version": 1,
  "volume_id": "0123456789abcdef0123456789abcdef",
  "block_size": 4096,
  "header_size": 512,
  "keyrings": [
    {
      "kind": "aws-kms",
      "key_id": "alias/kmsfs-test",
      "key_arn": "arn:aws:kms:eu-west-2:111122223333:key/a0a0a0a0-0000-4000-8000-00000000000a",
      "region": "eu-west-2",
      "endpoint": "http://127.0.0.1:4599"
    },
    {
      "kind": "local",
      "key_id": "fedcba9876543210fedcba9876543210",
      "key_file": "/root/.config/kmsfs/volume.key"
    }
  ],
  "features": []
}
`

func validConfig() *volume.Config {
	return &volume.Config{
		FormatVersion: 1,
		VolumeID:      testVolumeID,
		BlockSize:     4096,
		HeaderSize:    512,
		Keyrings: []volume.KeyringSpec{
			{Kind: keyring.KindAWSKMS, KeyID: "alias/kmsfs-test", KeyARN: testKeyARN, Region: "eu-west-2", Endpoint: "http://127.0.0.1:4599"},
			{Kind: keyring.KindLocal, KeyID: testLocalID, KeyFile: "/root/.config/kmsfs/volume.key"},
		},
		Features: []string{},
	}
}

// configWith returns the valid config as a JSON object with edit applied.
func configWith(t testing.TB, edit func(m map[string]any)) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(validConfigJSON), &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// keyringField sets field of keyring spec i (nil deletes it).
func keyringField(i int, field string, v any) func(map[string]any) {
	return func(m map[string]any) {
		spec := m["keyrings"].([]any)[i].(map[string]any)
		if v == nil {
			delete(spec, field)
		} else {
			spec[field] = v
		}
	}
}

func field(name string, v any) func(map[string]any) {
	return func(m map[string]any) {
		if v == nil {
			delete(m, name)
		} else {
			m[name] = v
		}
	}
}

func TestParseConfigValid(t *testing.T) {
	t.Parallel()
	c, err := volume.ParseConfig([]byte(validConfigJSON))
	if err != nil {
		t.Fatalf("ParseConfig: %v", err)
	}
	if want := validConfig(); !reflect.DeepEqual(c, want) {
		t.Fatalf("ParseConfig = %+v, want %+v", c, want)
	}
	if id, err := c.VolumeIDBytes(); err != nil || fmt.Sprintf("%x", id) != testVolumeID {
		t.Errorf("VolumeIDBytes() = %x, %v", id, err)
	}
	if l := c.Layout(); l.BlockSize != 4096 || l.HeaderSize != 512 {
		t.Errorf("Layout() = %+v", l)
	}
	for name, b := range map[string][]byte{
		"local only": configWith(t, func(m map[string]any) { m["keyrings"] = m["keyrings"].([]any)[1:] }),
		"kms only, no region or endpoint": configWith(t, func(m map[string]any) {
			m["keyrings"] = []any{map[string]any{"kind": "aws-kms", "key_id": testKeyARN, "key_arn": testKeyARN}}
		}),
		"no features field":   configWith(t, field("features", nil)),
		"null features":       []byte(strings.Replace(validConfigJSON, `"features": []`, `"features": null`, 1)),
		"smallest sizes":      configWith(t, func(m map[string]any) { m["block_size"], m["header_size"] = 512, 256 }),
		"largest sizes":       configWith(t, func(m map[string]any) { m["block_size"], m["header_size"] = 1<<20, 256<<10 }),
		"odd header size":     configWith(t, field("header_size", 777)),
		"16 keyrings":         configWith(t, func(m map[string]any) { m["keyrings"] = repeat(m["keyrings"].([]any)[1], 16) }),
		"trailing newlines":   []byte(validConfigJSON + "\n\n \t"),
		"compact":             compact(t, validConfigJSON),
		"reordered fields":    []byte(`{"features":[],"keyrings":[{"key_file":"k","key_id":"` + testLocalID + `","kind":"local"}],"header_size":512,"block_size":4096,"volume_id":"` + testVolumeID + `","format_version":1}`),
		"exactly 1 MiB long":  padTo(t, []byte(validConfigJSON), 1<<20),
		"version 2, per-file": configWith(t, func(m map[string]any) { m["format_version"], m["key_mode"] = 2, "per-file" }),
		"version 2, branch keys": configWith(t, func(m map[string]any) {
			m["format_version"], m["key_mode"], m["branch_key_rotation"] = 2, "branch", "24h0m0s"
		}),
	} {
		if _, err := volume.ParseConfig(b); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestParseConfigRejects(t *testing.T) {
	t.Parallel()
	tooBig := padTo(t, []byte(validConfigJSON), 1<<20+1)
	cases := []struct {
		name string
		in   []byte
		want string // in the error message
	}{
		{"unknown field", configWith(t, field("compression", "zstd")), `unknown field "compression"`},
		{"unknown keyring field", configWith(t, keyringField(1, "passphrase", "x")), `unknown field "passphrase"`},
		{"newline in key_file", configWith(t, keyringField(0, "key_file", "/tmp/x\n[INFO] all good")), "control character"},
		{"escape in region", configWith(t, keyringField(1, "region", "eu-west-2\x1b]0;pwned\x07")), "control character"},
		{"format version 4", configWith(t, field("format_version", 4)), "volume format version 4 is not supported"},
		{"format version 3 without key_mode", configWith(t, field("format_version", 3)), "key_mode"},
		{"format version 2 without key_mode", configWith(t, field("format_version", 2)), "key_mode"},
		{"key_mode in version 1", configWith(t, field("key_mode", "branch")), "need format_version 2"},
		{"unknown key_mode", configWith(t, func(m map[string]any) { m["format_version"] = 2; m["key_mode"] = "per-volume" }), "key_mode"},
		{"branch without rotation", configWith(t, func(m map[string]any) { m["format_version"] = 2; m["key_mode"] = "branch" }), "branch_key_rotation"},
		{"branch rotation too short", configWith(t, func(m map[string]any) {
			m["format_version"], m["key_mode"], m["branch_key_rotation"] = 2, "branch", "10ms"
		}), "branch_key_rotation"},
		{"rotation of a per-file volume", configWith(t, func(m map[string]any) {
			m["format_version"], m["key_mode"], m["branch_key_rotation"] = 2, "per-file", "1h"
		}), "branch_key_rotation"},
		{"format version 0", configWith(t, field("format_version", 0)), "version 0"},
		{"format version 1000", configWith(t, field("format_version", 1000)), "version 1000"},
		{"format version -1", configWith(t, field("format_version", -1)), "version -1"},
		{"no format version", configWith(t, field("format_version", nil)), "no format_version"},
		{"format version as string", configWith(t, field("format_version", "1")), "format_version"},
		{"format version 1.5", configWith(t, field("format_version", 1.5)), "format_version"},
		// A future volume gets "unsupported version", not "unknown field".
		{"version 4 with new fields", configWith(t, func(m map[string]any) { m["format_version"] = 4; m["cipher"] = "x" }), "version 4 is not supported"},
		{"unknown feature", configWith(t, field("features", []string{"compression"})), `feature "compression"`},
		{"second feature unknown", configWith(t, field("features", []string{"a", "b"})), "feature"},
		{"volume id upper case", configWith(t, field("volume_id", strings.ToUpper(testVolumeID))), "volume_id"},
		{"volume id short", configWith(t, field("volume_id", testVolumeID[:30])), "volume_id"},
		{"volume id long", configWith(t, field("volume_id", testVolumeID+"00")), "volume_id"},
		{"volume id odd length", configWith(t, field("volume_id", testVolumeID+"0")), "volume_id"},
		{"volume id not hex", configWith(t, field("volume_id", "0123456789abcdef0123456789abcdeg")), "volume_id"},
		{"volume id empty", configWith(t, field("volume_id", "")), "volume_id"},
		{"volume id missing", configWith(t, field("volume_id", nil)), "volume_id"},
		{"block size 4095", configWith(t, field("block_size", 4095)), "block_size"},
		{"block size 3000", configWith(t, field("block_size", 3000)), "block_size"},
		{"block size 6144", configWith(t, field("block_size", 6144)), "block_size"},
		{"block size 256", configWith(t, field("block_size", 256)), "block_size"},
		{"block size 2 MiB", configWith(t, field("block_size", 2<<20)), "block_size"},
		{"block size 0", configWith(t, field("block_size", 0)), "block_size"},
		{"block size negative", configWith(t, field("block_size", -4096)), "block_size"},
		{"header size 255", configWith(t, field("header_size", 255)), "header_size"},
		{"header size 0", configWith(t, field("header_size", 0)), "header_size"},
		{"header size 256 KiB + 1", configWith(t, field("header_size", 256<<10+1)), "header_size"},
		{"header size negative", configWith(t, field("header_size", -512)), "header_size"},
		{"no keyrings", configWith(t, field("keyrings", []any{})), "no keyring"},
		{"keyrings missing", configWith(t, field("keyrings", nil)), "no keyring"},
		{"17 keyrings", configWith(t, func(m map[string]any) { m["keyrings"] = repeat(m["keyrings"].([]any)[1], 17) }), "at most 16"},
		{"aws-kms without key_arn", configWith(t, keyringField(0, "key_arn", nil)), "key_arn"},
		{"aws-kms without key_id", configWith(t, keyringField(0, "key_id", nil)), "key_id"},
		{"aws-kms with key_file", configWith(t, keyringField(0, "key_file", "/k")), "key_file"},
		{"local without key_file", configWith(t, keyringField(1, "key_file", nil)), "key_file"},
		{"local key_id short", configWith(t, keyringField(1, "key_id", testLocalID[:31])), "key_id"},
		{"local key_id 30 digits", configWith(t, keyringField(1, "key_id", testLocalID[:30])), "key_id"},
		{"local key_id long", configWith(t, keyringField(1, "key_id", testLocalID+"00")), "key_id"},
		{"local key_id not hex", configWith(t, keyringField(1, "key_id", "zedcba9876543210fedcba9876543210")), "key_id"},
		{"local key_id empty", configWith(t, keyringField(1, "key_id", "")), "key_id"},
		// docs/FORMAT.md: IDs are lowercase hex wherever they appear as
		// text; the local keyring's fingerprint never matches this one.
		{"local key_id upper case", configWith(t, keyringField(1, "key_id", strings.ToUpper(testLocalID))), "key_id"},
		{"local with key_arn", configWith(t, keyringField(1, "key_arn", testKeyARN)), "aws-kms fields"},
		{"local with region", configWith(t, keyringField(1, "region", "eu-west-2")), "aws-kms fields"},
		{"unknown kind", configWith(t, keyringField(1, "kind", "gcp-kms")), `"gcp-kms"`},
		{"kind missing", configWith(t, keyringField(1, "kind", nil)), "kind"},
		{"null keyring", configWith(t, func(m map[string]any) { m["keyrings"] = append(m["keyrings"].([]any), nil) }), "keyring 3"},
		{"trailing object", []byte(validConfigJSON + "{}"), ""},
		{"trailing garbage", []byte(validConfigJSON + "x"), ""},
		{"trailing bracket", []byte(strings.TrimSpace(validConfigJSON) + "}"), ""},
		{"two configs", []byte(validConfigJSON + validConfigJSON), ""},
		{"empty", []byte{}, "not valid JSON"},
		{"whitespace", []byte(" \n"), "not valid JSON"},
		{"null", []byte("null"), "no format_version"},
		{"array", []byte("[" + validConfigJSON + "]"), "not valid JSON"},
		{"number", []byte("1"), "not valid JSON"},
		{"text", []byte("format_version = 1"), "not valid JSON"},
		{"truncated", []byte(validConfigJSON[:len(validConfigJSON)/2]), "not valid JSON"},
		{"over 1 MiB", tooBig, fmt.Sprintf("%d bytes", len(tooBig))},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := volume.ParseConfig(c.in)
			if err == nil {
				t.Fatalf("ParseConfig accepted %.200s", c.in)
			}
			if cfg != nil {
				t.Errorf("ParseConfig returned a config with error %v", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not say %q", err, c.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q is not one line", err)
			}
		})
	}
}

func TestValidateRefusesInvalid(t *testing.T) {
	t.Parallel()
	if err := validConfig().Validate(); err != nil {
		t.Fatalf("Validate of a valid config: %v", err)
	}
	for name, edit := range map[string]func(*volume.Config){
		"version":    func(c *volume.Config) { c.FormatVersion = 2 },
		"volume id":  func(c *volume.Config) { c.VolumeID = "x" },
		"block size": func(c *volume.Config) { c.BlockSize = 1000 },
		"keyrings":   func(c *volume.Config) { c.Keyrings = nil },
		"features":   func(c *volume.Config) { c.Features = []string{"x"} },
		"kind":       func(c *volume.Config) { c.Keyrings[0].Kind = "" },
	} {
		c := validConfig()
		edit(c)
		if err := c.Validate(); err == nil {
			t.Errorf("Validate accepted a config with a bad %s", name)
		}
	}
}

func TestWriteConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if _, err := loadConfig(dir); !errors.Is(err, volume.ErrNoConfig) {
		t.Fatalf("LoadConfig of an empty directory: %v, want ErrNoConfig", err)
	}
	c := validConfig()
	if err := volume.WriteConfig(dir, c); err != nil {
		t.Fatalf("WriteConfig: %v", err)
	}
	path := filepath.Join(dir, volume.ConfigName)
	written, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(path); err != nil || st.Mode() != 0o644 {
		t.Errorf("config mode %v (%v), want -rw-r--r--", st.Mode(), err)
	}
	got, err := loadConfig(dir)
	if err != nil {
		t.Fatalf("LoadConfig: %v", err)
	}
	if !reflect.DeepEqual(got, c) {
		t.Errorf("LoadConfig = %+v, want %+v", got, c)
	}
	if !bytes.HasSuffix(written, []byte("}\n")) {
		t.Errorf("config does not end in a newline: %q", written)
	}
	assertOnlyConfig(t, dir)

	// A second write refuses and leaves the first config alone.
	other := validConfig()
	other.VolumeID = "ffffffffffffffffffffffffffffffff"
	err = volume.WriteConfig(dir, other)
	if err == nil {
		t.Fatal("WriteConfig replaced an existing config")
	}
	if !strings.Contains(err.Error(), "already a kmsfs volume") {
		t.Errorf("error %q should say the directory is already a volume", err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(after, written) {
		t.Fatal("a refused WriteConfig changed the config")
	}
	assertOnlyConfig(t, dir)
}

func TestWriteConfigRefusesInvalid(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	c := validConfig()
	c.BlockSize = 3000
	if err := volume.WriteConfig(dir, c); err == nil || !strings.Contains(err.Error(), "block_size") {
		t.Fatalf("WriteConfig of an invalid config: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("a refused WriteConfig left %d files", len(ents))
	}
	if err := volume.WriteConfig(filepath.Join(dir, "missing"), validConfig()); err == nil {
		t.Fatal("WriteConfig into a missing directory succeeded")
	}
}

// Concurrent writers (two `kmsfs init` of one directory): exactly one
// wins, the config is whole and is the winner's, and nothing else is left.
func TestWriteConfigConcurrent(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	const writers = 8
	errs := make([]error, writers)
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() {
			c := validConfig()
			c.VolumeID = fmt.Sprintf("%032x", i+1)
			errs[i] = volume.WriteConfig(dir, c)
		})
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		if err == nil {
			if winner >= 0 {
				t.Fatalf("writers %d and %d both succeeded", winner, i)
			}
			winner = i
		}
	}
	if winner < 0 {
		t.Fatalf("no writer succeeded: %v", errs)
	}
	got, err := loadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("%032x", winner+1); got.VolumeID != want {
		t.Errorf("config has volume %s, the winner wrote %s", got.VolumeID, want)
	}
	assertOnlyConfig(t, dir)
}

func TestLoadConfigInvalid(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, volume.ConfigName), configWith(t, field("format_version", 7)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := loadConfig(dir); err == nil || !strings.Contains(err.Error(), "version 7") || errors.Is(err, volume.ErrNoConfig) {
		t.Fatalf("LoadConfig of a version 7 config: %v", err)
	}
}

func assertOnlyConfig(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if len(names) != 1 || names[0] != volume.ConfigName {
		t.Errorf("directory holds %q, want only %s", names, volume.ConfigName)
	}
}

// FuzzParseConfig: ParseConfig never panics; a config it accepts is
// valid, and marshalling and parsing it again gives the same config.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(validConfigJSON))
	f.Add(compact(f, validConfigJSON))
	f.Add(configWith(f, field("format_version", 2)))
	f.Add(configWith(f, func(m map[string]any) {
		m["format_version"], m["key_mode"], m["branch_key_rotation"] = 2, "branch", "24h0m0s"
	}))
	f.Add(configWith(f, keyringField(1, "key_id", strings.ToUpper(testLocalID))))
	f.Add([]byte(`{"format_version":1}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := volume.ParseConfig(b)
		if err != nil {
			if c != nil {
				t.Fatalf("config returned with error %v", err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("ParseConfig accepted a config that Validate refuses: %v", err)
		}
		out, err := json.Marshal(c)
		if err != nil {
			t.Fatalf("accepted config does not marshal: %v", err)
		}
		again, err := volume.ParseConfig(out)
		if err != nil {
			t.Fatalf("re-marshalled config %s does not parse: %v", out, err)
		}
		if !reflect.DeepEqual(again, c) {
			t.Fatalf("round trip changed the config:\n%+v\n%+v", c, again)
		}
	})
}

func repeat(v any, n int) []any {
	out := make([]any, n)
	for i := range out {
		out[i] = v
	}
	return out
}

func compact(t testing.TB, s string) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := json.Compact(&buf, []byte(s)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// padTo pads a JSON document with trailing spaces to exactly n bytes.
func padTo(t testing.TB, b []byte, n int) []byte {
	t.Helper()
	if len(b) > n {
		t.Fatalf("document of %d bytes is longer than %d", len(b), n)
	}
	return append(bytes.Clone(b), bytes.Repeat([]byte(" "), n-len(b))...)
}

// TestParseConfigStrictKeys: encoding/json alone would accept keys in any
// letter case and let a duplicate win; the config parser does not.
func TestParseConfigStrictKeys(t *testing.T) {
	good := `{"format_version":1,"volume_id":"00112233445566778899aabbccddeeff","block_size":4096,"header_size":512,"keyrings":[{"kind":"local","key_id":"00112233445566778899aabbccddeeff","key_file":"/k"}],"features":[]}`
	if _, err := volume.ParseConfig([]byte(good)); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{
		`{"FORMAT_VERSION":1,"format_version":1,"volume_id":"00112233445566778899aabbccddeeff","block_size":4096,"header_size":512,"keyrings":[{"kind":"local","key_id":"00112233445566778899aabbccddeeff","key_file":"/k"}],"features":[]}`,
		`{"format_version":1,"volume_id":"00112233445566778899aabbccddeeff","volume_id":"00112233445566778899aabbccddeeff","block_size":4096,"header_size":512,"keyrings":[{"kind":"local","key_id":"00112233445566778899aabbccddeeff","key_file":"/k"}],"features":[]}`,
		`{"format_version":1,"volume_id":"00112233445566778899aabbccddeeff","block_size":4096,"header_size":512,"keyrings":[{"Kind":"local","key_id":"00112233445566778899aabbccddeeff","key_file":"/k"}],"features":[]}`,
	} {
		if _, err := volume.ParseConfig([]byte(bad)); err == nil {
			t.Errorf("accepted %s", bad)
		} else {
			t.Log(err)
		}
	}
}

func loadConfig(dir string) (*volume.Config, error) {
	c, _, err := volume.ReadConfig(dir)
	return c, err
}

// The config is hostile input: a FIFO in its place does not hang the
// read, a symlink (to /dev/zero, or anywhere) is refused, and a huge file
// is refused after reading a bounded amount.
func TestReadConfigRefusesUnsafeFiles(t *testing.T) {
	for _, c := range []struct {
		name string
		make func(path string) error
		msg  string
	}{
		{"fifo", func(p string) error { return syscall.Mkfifo(p, 0o600) }, "not a regular file"},
		{"symlink to /dev/zero", func(p string) error { return os.Symlink("/dev/zero", p) }, "symlink"},
		{"symlink to a valid config", func(p string) error {
			q := filepath.Join(filepath.Dir(p), "elsewhere.json")
			if err := os.WriteFile(q, []byte(validConfigJSON), 0o600); err != nil {
				return err
			}
			return os.Symlink(q, p)
		}, "symlink"},
		{"directory", func(p string) error { return os.Mkdir(p, 0o700) }, "not a regular file"},
		// /dev/tty's open fails with ENXIO without a controlling
		// terminal: an error saying so would show the open ran.
		{"device node", func(p string) error { return syscall.Mknod(p, syscall.S_IFCHR|0o600, 5<<8) }, "a device, not a regular file"},
		{"2 MiB", func(p string) error { return os.WriteFile(p, make([]byte, 2<<20), 0o600) }, "larger than any valid config"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := c.make(filepath.Join(dir, volume.ConfigName)); err != nil {
				if c.name == "device node" && os.Getenv("KMSFS_REQUIRE_FUSE") != "1" { // .ci/run runs as root
					t.Skipf("mknod needs CAP_MKNOD: %v", err)
				}
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { _, err := loadConfig(dir); done <- err }()
			select {
			case err := <-done:
				if err == nil || !strings.Contains(err.Error(), c.msg) {
					t.Fatalf("ReadConfig: %v, want an error saying %q", err, c.msg)
				}
			case <-time.After(time.Minute): // a hang, not a slow machine
				t.Fatal("ReadConfig hung")
			}
		})
	}
}
