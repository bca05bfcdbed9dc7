package tests

// End-to-end tests of the kmsfs command line through the built binary:
// `kmsfs init`, `kmsfs inspect`, and the ways `kmsfs mount` refuses, stops
// and detaches. Every refusal is checked for its exit code (the table in
// cmd/kmsfs/exitcodes.go), for a single stderr line, and for leaving
// nothing behind.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/keyring/kmstest"
)

// The exit codes of cmd/kmsfs/exitcodes.go: scripts rely on them, so the
// tests spell them out rather than import them.
const (
	cliExitOK      = 0
	cliExitUsage   = 2
	cliExitVolume  = 10
	cliExitKey     = 11
	cliExitMount   = 12
	cliExitInspect = 13
)

// cliConfig is kmsfs.json as docs/FORMAT.md ("Volume config") specifies
// it, decoded with unknown fields refused: a field the document does not
// name fails the test.
type cliConfig struct {
	FormatVersion int             `json:"format_version"`
	VolumeID      string          `json:"volume_id"`
	BlockSize     int             `json:"block_size"`
	HeaderSize    int             `json:"header_size"`
	Keyrings      []cliKeyringCfg `json:"keyrings"`
	Features      []string        `json:"features"`
}

type cliKeyringCfg struct {
	Kind     string `json:"kind"`
	KeyID    string `json:"key_id"`
	KeyARN   string `json:"key_arn"`
	Region   string `json:"region"`
	Endpoint string `json:"endpoint"`
	KeyFile  string `json:"key_file"`
}

var (
	cliHex32    = regexp.MustCompile(`^[0-9a-f]{32}$`)
	cliWarnLine = regexp.MustCompile(`(?m)^.*level=(WARN|ERROR).*$`)
)

// cliReadConfig reads and strictly decodes CIPHERDIR/kmsfs.json and checks
// the fields every volume has.
func cliReadConfig(t *testing.T, dir string) cliConfig {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "kmsfs.json"))
	if err != nil {
		t.Fatalf("read kmsfs.json: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var c cliConfig
	if err := dec.Decode(&c); err != nil {
		t.Fatalf("kmsfs.json does not match docs/FORMAT.md: %v\n%s", err, b)
	}
	if dec.More() {
		t.Fatalf("kmsfs.json has trailing data:\n%s", b)
	}
	if c.FormatVersion != 1 {
		t.Errorf("format_version = %d, want 1", c.FormatVersion)
	}
	if !cliHex32.MatchString(c.VolumeID) {
		t.Errorf("volume_id = %q, want 32 lowercase hex digits", c.VolumeID)
	}
	if c.BlockSize < 512 || c.BlockSize > 1<<20 || c.BlockSize&(c.BlockSize-1) != 0 {
		t.Errorf("block_size = %d, want a power of two from 512 to 1048576", c.BlockSize)
	}
	if c.HeaderSize < 512 || c.HeaderSize > 262144 || c.HeaderSize%256 != 0 {
		t.Errorf("header_size = %d, want a multiple of 256 from 512 to 262144", c.HeaderSize)
	}
	if len(c.Keyrings) == 0 {
		t.Errorf("keyrings is empty")
	}
	if c.Features == nil || len(c.Features) != 0 {
		t.Errorf("features = %v, want [] (version 1 defines none)", c.Features)
	}
	return c
}

// cliOneLine checks that stderr is exactly one line, "kmsfs: ...", and
// returns it.
func cliOneLine(t *testing.T, what, stderr string) string {
	t.Helper()
	s := strings.TrimSuffix(stderr, "\n")
	if s == "" || strings.Contains(s, "\n") || !strings.HasSuffix(stderr, "\n") {
		t.Errorf("%s: stderr is not one line:\n%q", what, stderr)
		return s
	}
	if !strings.HasPrefix(s, "kmsfs: ") {
		t.Errorf("%s: stderr line does not start with \"kmsfs: \": %q", what, s)
	}
	return s
}

// cliWantFail checks a refusal: the exit code, one stderr line containing
// each of want (case-insensitive), and an empty stdout.
func cliWantFail(t *testing.T, what string, stdout, stderr string, code, wantCode int, want ...string) {
	t.Helper()
	if code != wantCode {
		t.Errorf("%s: exit %d, want %d\nstdout: %s\nstderr: %s", what, code, wantCode, stdout, stderr)
	}
	if stdout != "" {
		t.Errorf("%s: stdout should be empty on failure, got %q", what, stdout)
	}
	line := cliOneLine(t, what, stderr)
	t.Logf("%s: exit %d: %s", what, code, line)
	for _, w := range want {
		if !strings.Contains(strings.ToLower(line), strings.ToLower(w)) {
			t.Errorf("%s: stderr %q does not mention %q", what, line, w)
		}
	}
}

// cliMounted reports whether dir is a mount point of this mount namespace.
func cliMounted(t testing.TB, dir string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && cliUnescape(f[4]) == dir {
			return true
		}
	}
	return false
}

// cliUnescape undoes mountinfo's octal escapes (\040 for a space).
func cliUnescape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// cliRunBounded runs kmsfs like run, but gives up after timeout: a command
// expected to fail that mounts and blocks instead is killed, its mount
// removed, and the test failed.
func cliRunBounded(t *testing.T, timeout time.Duration, env []string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, kmsfsBin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 5 * time.Second
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		if len(args) > 0 {
			// A mount that should have failed: take it down again.
			mnt := args[len(args)-1]
			if cliMounted(t, mnt) {
				syscall.Unmount(mnt, syscall.MNT_DETACH)
			}
		}
		t.Fatalf("kmsfs %v did not finish within %v\nstdout: %s\nstderr: %s", args, timeout, out.String(), errb.String())
	}
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run kmsfs %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// cliKeyFiles lists the files under dir (recursively), for "nothing was
// written" checks. A missing dir has none.
func cliKeyFiles(t *testing.T, dir string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) && p == dir {
			return filepath.SkipAll
		}
		if err != nil {
			return err
		}
		if !d.IsDir() {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// cliWriteKey writes a fresh valid 32-byte key file with mode perm.
func cliWriteKey(t *testing.T, path string, perm os.FileMode) []byte {
	t.Helper()
	key := make([]byte, 32)
	rand.Read(key)
	if err := os.WriteFile(path, key, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, perm); err != nil { // not subject to the umask
		t.Fatal(err)
	}
	return key
}

// cliKMSEnv is the environment for kmsfs against srv, with every SDK
// default pointed at endpoint (srv's, or a proxy's).
func cliKMSEnv(srv *kmstest.Server, xdg, endpoint string) []string {
	return append(append([]string{"XDG_CONFIG_HOME=" + xdg}, srv.Env()...), "AWS_ENDPOINT_URL_KMS="+endpoint)
}

func TestInitDefaultLocalKey(t *testing.T) {
	base := t.TempDir()
	xdg := filepath.Join(base, "config")
	dir := filepath.Join(base, "cipher")
	out, errOut, code := run(t, []string{"XDG_CONFIG_HOME=" + xdg}, "init", dir)
	if code != cliExitOK {
		t.Fatalf("init: exit %d\n%s%s", code, out, errOut)
	}
	if errOut != "" {
		t.Errorf("init wrote to stderr on success: %q", errOut)
	}
	c := cliReadConfig(t, dir)
	if c.BlockSize != 4096 {
		t.Errorf("block_size = %d, want the default 4096", c.BlockSize)
	}
	if len(c.Keyrings) != 1 {
		t.Fatalf("keyrings = %+v, want one local keyring", c.Keyrings)
	}
	k := c.Keyrings[0]
	keyPath := filepath.Join(xdg, "kmsfs", c.VolumeID+".key")
	if k.Kind != "local" || k.KeyFile != keyPath || !cliHex32.MatchString(k.KeyID) || k.KeyARN != "" || k.Endpoint != "" {
		t.Errorf("keyring = %+v, want kind local, key_file %s, a 32-hex key_id and no KMS fields", k, keyPath)
	}
	st, err := os.Stat(keyPath)
	if err != nil {
		t.Fatalf("the default key file is missing: %v", err)
	}
	if st.Mode() != 0o600 || st.Size() != 32 {
		t.Errorf("key file %s: mode %v size %d, want -rw------- and 32 bytes", keyPath, st.Mode(), st.Size())
	}
	if !strings.Contains(out, keyPath) {
		t.Errorf("stdout does not name the key file %s:\n%s", keyPath, out)
	}
	if !strings.Contains(out, c.VolumeID) {
		t.Errorf("stdout does not name the volume ID %s:\n%s", c.VolumeID, out)
	}
	// The config holds no secret: the key bytes are not in it.
	key, _ := os.ReadFile(keyPath)
	cfgBytes, _ := os.ReadFile(filepath.Join(dir, "kmsfs.json"))
	if bytes.Contains(cfgBytes, key) || strings.Contains(string(cfgBytes), hex.EncodeToString(key)) ||
		strings.Contains(string(cfgBytes), base64.StdEncoding.EncodeToString(key)) {
		t.Errorf("kmsfs.json contains the key")
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("CIPHERDIR holds %d entries after init, want only kmsfs.json (temporary files left?)", len(ents))
	}
}

func TestInitLocalKeyFlag(t *testing.T) {
	t.Run("existing", func(t *testing.T) {
		base := t.TempDir()
		keyPath := filepath.Join(base, "my.key")
		key := cliWriteKey(t, keyPath, 0o600)
		dir := filepath.Join(base, "cipher")
		xdg := filepath.Join(base, "config")
		out, errOut, code := run(t, []string{"XDG_CONFIG_HOME=" + xdg}, "init", "--local-key", keyPath, dir)
		if code != cliExitOK {
			t.Fatalf("init: exit %d\n%s%s", code, out, errOut)
		}
		c := cliReadConfig(t, dir)
		if len(c.Keyrings) != 1 || c.Keyrings[0].Kind != "local" || c.Keyrings[0].KeyFile != keyPath {
			t.Errorf("keyrings = %+v, want one local keyring with key_file %s", c.Keyrings, keyPath)
		}
		if got, _ := os.ReadFile(keyPath); !bytes.Equal(got, key) {
			t.Errorf("init changed an existing key file")
		}
		if strings.Contains(out, "was created") {
			t.Errorf("stdout claims the existing key file was created:\n%s", out)
		}
		if f := cliKeyFiles(t, xdg); len(f) != 0 {
			t.Errorf("init wrote a default key file although --local-key was given: %v", f)
		}
		// The same key file serves a second volume, with the same key ID.
		dir2 := filepath.Join(base, "cipher2")
		if out, errOut, code := run(t, nil, "init", "--local-key", keyPath, dir2); code != cliExitOK {
			t.Fatalf("second init: exit %d\n%s%s", code, out, errOut)
		}
		if c2 := cliReadConfig(t, dir2); c2.Keyrings[0].KeyID != c.Keyrings[0].KeyID || c2.VolumeID == c.VolumeID {
			t.Errorf("two volumes of one key file: key IDs %s and %s (want equal), volume IDs %s and %s (want different)",
				c.Keyrings[0].KeyID, c2.Keyrings[0].KeyID, c.VolumeID, c2.VolumeID)
		}
	})
	t.Run("new", func(t *testing.T) {
		base := t.TempDir()
		// A relative path in a directory that does not exist yet.
		keyRel := filepath.Join("keys", "sub", "new.key")
		dir := filepath.Join(base, "cipher")
		cmd := exec.Command(kmsfsBin, "init", "--local-key", keyRel, dir)
		cmd.Dir = base
		cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+filepath.Join(base, "config"))
		outb, err := cmd.Output()
		if err != nil {
			t.Fatalf("init: %v\n%s", err, outb)
		}
		keyPath := filepath.Join(base, keyRel)
		st, err := os.Stat(keyPath)
		if err != nil {
			t.Fatalf("--local-key FILE was not created: %v", err)
		}
		if st.Mode() != 0o600 || st.Size() != 32 {
			t.Errorf("new key file: mode %v size %d, want -rw------- and 32 bytes", st.Mode(), st.Size())
		}
		c := cliReadConfig(t, dir)
		if len(c.Keyrings) != 1 || c.Keyrings[0].KeyFile != keyPath {
			t.Errorf("keyrings = %+v, want key_file recorded as the absolute path %s", c.Keyrings, keyPath)
		}
		if !strings.Contains(string(outb), keyPath) {
			t.Errorf("stdout does not name the new key file %s:\n%s", keyPath, outb)
		}
	})
}

func TestInitRefusesOpenKeyFile(t *testing.T) {
	for _, perm := range []os.FileMode{0o640, 0o604, 0o644, 0o660} {
		t.Run(fmt.Sprintf("%04o", perm), func(t *testing.T) {
			base := t.TempDir()
			keyPath := filepath.Join(base, "open.key")
			key := cliWriteKey(t, keyPath, perm)
			dir := filepath.Join(base, "cipher")
			xdg := filepath.Join(base, "config")
			out, errOut, code := run(t, []string{"XDG_CONFIG_HOME=" + xdg}, "init", "--local-key", keyPath, dir)
			cliWantFail(t, "init with an open key file", out, errOut, code, cliExitKey, keyPath, "chmod 600")
			if _, err := os.Lstat(dir); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("init created CIPHERDIR although it refused the key (%v)", err)
			}
			st, _ := os.Stat(keyPath)
			got, _ := os.ReadFile(keyPath)
			if st.Mode().Perm() != perm || !bytes.Equal(got, key) {
				t.Errorf("init changed the refused key file: mode %v", st.Mode())
			}
			if f := cliKeyFiles(t, xdg); len(f) != 0 {
				t.Errorf("init wrote key files: %v", f)
			}
		})
	}
}

func TestInitBlockSize(t *testing.T) {
	for _, bs := range []string{"1000", "256", "2097152", "0", "-4096", "4097"} {
		t.Run(bs, func(t *testing.T) {
			base := t.TempDir()
			dir := filepath.Join(base, "cipher")
			xdg := filepath.Join(base, "config")
			out, errOut, code := run(t, []string{"XDG_CONFIG_HOME=" + xdg}, "init", "--block-size", bs, dir)
			cliWantFail(t, "init --block-size "+bs, out, errOut, code, cliExitUsage, "block-size")
			if _, err := os.Lstat(dir); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("a refused init created CIPHERDIR (%v)", err)
			}
			if f := cliKeyFiles(t, xdg); len(f) != 0 {
				t.Errorf("a refused init wrote key files: %v", f)
			}
		})
	}
	for _, bs := range []int{512, 1 << 20} {
		t.Run(strconv.Itoa(bs), func(t *testing.T) {
			v := newVolume(t, nil, "--block-size", strconv.Itoa(bs))
			if c := cliReadConfig(t, v.Dir); c.BlockSize != bs {
				t.Errorf("block_size = %d, want %d", c.BlockSize, bs)
			}
		})
	}
}

func TestInitRefusesNonEmptyDir(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "data")
	os.Mkdir(dir, 0o755)
	writeFile(t, filepath.Join(dir, "precious.txt"), []byte("not yours"))
	xdg := filepath.Join(base, "config")
	out, errOut, code := run(t, []string{"XDG_CONFIG_HOME=" + xdg}, "init", dir)
	cliWantFail(t, "init of a non-empty dir", out, errOut, code, cliExitVolume, dir, "not empty")
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || string(readFile(t, filepath.Join(dir, "precious.txt"))) != "not yours" {
		t.Errorf("init changed a non-empty directory: %v", ents)
	}
	if f := cliKeyFiles(t, xdg); len(f) != 0 {
		t.Errorf("a refused init wrote key files: %v", f)
	}

	// A directory holding only a hidden file is not empty either.
	dir2 := filepath.Join(base, "hidden")
	os.Mkdir(dir2, 0o755)
	writeFile(t, filepath.Join(dir2, ".x"), nil)
	out, errOut, code = run(t, []string{"XDG_CONFIG_HOME=" + xdg}, "init", dir2)
	cliWantFail(t, "init of a dir with a dotfile", out, errOut, code, cliExitVolume, "not empty")

	// An existing empty directory is fine.
	dir3 := filepath.Join(base, "empty")
	os.Mkdir(dir3, 0o700)
	if out, errOut, code := run(t, []string{"XDG_CONFIG_HOME=" + xdg}, "init", dir3); code != cliExitOK {
		t.Errorf("init of an existing empty dir: exit %d\n%s%s", code, out, errOut)
	}
}

func TestInitRefusesExistingVolume(t *testing.T) {
	v := newVolume(t, nil)
	before := readFile(t, filepath.Join(v.Dir, "kmsfs.json"))
	keysBefore := cliKeyFiles(t, filepath.Join(filepath.Dir(v.Dir), "config"))
	for _, flags := range [][]string{nil, {"--block-size", "512"}, {"--local-key", filepath.Join(t.TempDir(), "k")}} {
		out, errOut, code := run(t, v.Env, append(append([]string{"init"}, flags...), v.Dir)...)
		cliWantFail(t, fmt.Sprintf("init %v of an existing volume", flags), out, errOut, code, cliExitVolume, "already a kmsfs volume", "kmsfs mount")
		if after := readFile(t, filepath.Join(v.Dir, "kmsfs.json")); !bytes.Equal(before, after) {
			t.Errorf("init %v rewrote the config of an existing volume", flags)
		}
		if len(flags) == 2 && flags[0] == "--local-key" {
			if _, err := os.Stat(flags[1]); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("a refused init created the key file %s", flags[1])
			}
		}
	}
	if keysAfter := cliKeyFiles(t, filepath.Join(filepath.Dir(v.Dir), "config")); !slices.Equal(keysBefore, keysAfter) {
		t.Errorf("refused inits wrote key files: before %v, after %v", keysBefore, keysAfter)
	}
}

func TestInitKMSAlias(t *testing.T) {
	srv := kmstest.Start(t)
	base := t.TempDir()
	xdg := filepath.Join(base, "config")
	dir := filepath.Join(base, "cipher")
	out, errOut, code := run(t, cliKMSEnv(srv, xdg, srv.Endpoint()), "init", "--kms-key", kmstest.AliasName, "--kms-endpoint", srv.Endpoint(), dir)
	if code != cliExitOK {
		t.Fatalf("init: exit %d\n%s%s", code, out, errOut)
	}
	c := cliReadConfig(t, dir)
	want := cliKeyringCfg{Kind: "aws-kms", KeyID: kmstest.AliasName, KeyARN: kmstest.KeyAARN, Endpoint: srv.Endpoint()}
	if len(c.Keyrings) != 1 {
		t.Fatalf("keyrings = %+v, want one", c.Keyrings)
	}
	got := c.Keyrings[0]
	if got.Region != "" && got.Region != kmstest.Region {
		t.Errorf("region = %q, want empty or %s", got.Region, kmstest.Region)
	}
	got.Region = ""
	if got != want {
		t.Errorf("keyring = %+v, want %+v (key_id as given, key_arn resolved)", got, want)
	}
	if f := cliKeyFiles(t, xdg); len(f) != 0 {
		t.Errorf("init with only a KMS key wrote local key files: %v", f)
	}
	// Header slot: big enough for a KMS blob (~150-200 bytes) with the
	// documented 256 bytes of headroom.
	if c.HeaderSize < 512 {
		t.Errorf("header_size = %d, too small", c.HeaderSize)
	}

	// Naming the key by its ARN records the ARN in both fields.
	dir2 := filepath.Join(base, "cipher2")
	if out, errOut, code := run(t, cliKMSEnv(srv, xdg, srv.Endpoint()), "init", "--kms-key", kmstest.KeyBARN, "--kms-endpoint", srv.Endpoint(), dir2); code != cliExitOK {
		t.Fatalf("init --kms-key ARN: exit %d\n%s%s", code, out, errOut)
	}
	if k := cliReadConfig(t, dir2).Keyrings[0]; k.KeyID != kmstest.KeyBARN || k.KeyARN != kmstest.KeyBARN {
		t.Errorf("keyring = %+v, want key_id and key_arn %s", k, kmstest.KeyBARN)
	}
}

func TestInitKMSMulti(t *testing.T) {
	srv := kmstest.Start(t)
	base := t.TempDir()
	xdg := filepath.Join(base, "config")
	keyPath := filepath.Join(base, "recovery.key")
	dir := filepath.Join(base, "cipher")
	env := cliKMSEnv(srv, xdg, srv.Endpoint())
	out, errOut, code := run(t, env, "init",
		"--kms-key", kmstest.AliasName, "--kms-key", kmstest.KeyBARN,
		"--local-key", keyPath, "--kms-endpoint", srv.Endpoint(), dir)
	if code != cliExitOK {
		t.Fatalf("init: exit %d\n%s%s", code, out, errOut)
	}
	c := cliReadConfig(t, dir)
	if len(c.Keyrings) != 3 {
		t.Fatalf("keyrings = %+v, want 3", c.Keyrings)
	}
	a, b, l := c.Keyrings[0], c.Keyrings[1], c.Keyrings[2]
	if a.Kind != "aws-kms" || a.KeyID != kmstest.AliasName || a.KeyARN != kmstest.KeyAARN {
		t.Errorf("keyring 1 = %+v, want aws-kms %s -> %s", a, kmstest.AliasName, kmstest.KeyAARN)
	}
	if b.Kind != "aws-kms" || b.KeyID != kmstest.KeyBARN || b.KeyARN != kmstest.KeyBARN {
		t.Errorf("keyring 2 = %+v, want aws-kms %s", b, kmstest.KeyBARN)
	}
	if l.Kind != "local" || l.KeyFile != keyPath || !cliHex32.MatchString(l.KeyID) {
		t.Errorf("keyring 3 = %+v, want local with key_file %s", l, keyPath)
	}
	if st, err := os.Stat(keyPath); err != nil || st.Mode() != 0o600 {
		t.Errorf("recovery key file: %v %v, want mode 0600", st, err)
	}

	// Every file is wrapped under all three; the two KMS blobs unwrap to
	// one data key.
	v := &volume{Dir: dir, Env: env}
	m := mountVolume(t, v)
	data := []byte("wrapped three times\n")
	writeFile(t, m.path("f"), data)
	if got := readFile(t, m.path("f")); !bytes.Equal(got, data) {
		t.Fatalf("read back %q, want %q", got, data)
	}
	ins := cliInspect(t, filepath.Join(dir, "f"))
	if len(ins.WrappedKeys) != 3 {
		t.Fatalf("inspect shows %d wrapped keys, want 3", len(ins.WrappedKeys))
	}
	kinds := []string{ins.WrappedKeys[0].Keyring, ins.WrappedKeys[1].Keyring, ins.WrappedKeys[2].Keyring}
	ids := []string{ins.WrappedKeys[0].KeyID, ins.WrappedKeys[1].KeyID, ins.WrappedKeys[2].KeyID}
	if !slices.Equal(kinds, []string{"aws-kms", "aws-kms", "local"}) || !slices.Equal(ids, []string{kmstest.KeyAARN, kmstest.KeyBARN, l.KeyID}) {
		t.Errorf("wrapped keys = %v %v, want aws-kms %s, aws-kms %s, local %s", kinds, ids, kmstest.KeyAARN, kmstest.KeyBARN, l.KeyID)
	}
	client := srv.Client(t)
	var keys [][]byte
	for _, w := range ins.WrappedKeys[:2] {
		keys = append(keys, cliKMSDecrypt(t, client, w, w.EncryptionContext))
	}
	if !bytes.Equal(keys[0], keys[1]) {
		t.Errorf("the blobs under key A and key B unwrap to different data keys")
	}
}

func TestInitKMSUnreachable(t *testing.T) {
	srv := kmstest.Start(t) // only for its credentials
	closed := kmstest.ClosedEndpoint(t)
	base := t.TempDir()
	xdg := filepath.Join(base, "config")
	keyPath := filepath.Join(base, "new.key")
	dir := filepath.Join(base, "cipher")
	start := time.Now()
	out, errOut, code := cliRunBounded(t, 60*time.Second, cliKMSEnv(srv, xdg, closed),
		"init", "--kms-key", kmstest.KeyAARN, "--kms-endpoint", closed, "--local-key", keyPath, dir)
	elapsed := time.Since(start)
	cliWantFail(t, "init against a closed endpoint", out, errOut, code, cliExitKey, "check the network")
	if elapsed > 30*time.Second {
		t.Errorf("init took %v to give up on a refused connection", elapsed)
	}
	if _, err := os.Lstat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a failed init left CIPHERDIR behind (%v)", err)
	}
	if _, err := os.Lstat(keyPath); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a failed init left the key file it created behind (%v)", err)
	}
	if f := cliKeyFiles(t, xdg); len(f) != 0 {
		t.Errorf("a failed init wrote key files: %v", f)
	}
	t.Logf("init gave up after %v: %s", elapsed.Round(time.Millisecond), strings.TrimSpace(errOut))

	// An existing empty CIPHERDIR stays empty, and a key file that was
	// there before stays.
	os.Mkdir(dir, 0o700)
	key := cliWriteKey(t, keyPath, 0o600)
	out, errOut, code = cliRunBounded(t, 60*time.Second, cliKMSEnv(srv, xdg, closed),
		"init", "--kms-key", kmstest.AliasName, "--kms-endpoint", closed, "--local-key", keyPath, dir)
	cliWantFail(t, "init against a closed endpoint", out, errOut, code, cliExitKey)
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("a failed init wrote into CIPHERDIR: %v", ents)
	}
	if got, err := os.ReadFile(keyPath); err != nil || !bytes.Equal(got, key) {
		t.Errorf("a failed init removed or changed a key file it did not create (%v)", err)
	}
}

func TestInitKMSDisabledKey(t *testing.T) {
	srv := kmstest.Start(t)
	srv.DisableKey(t, kmstest.KeyAID)
	base := t.TempDir()
	xdg := filepath.Join(base, "config")
	for _, key := range []string{kmstest.KeyAARN, kmstest.AliasName} {
		dir := filepath.Join(base, "cipher")
		out, errOut, code := cliRunBounded(t, 60*time.Second, cliKMSEnv(srv, xdg, srv.Endpoint()),
			"init", "--kms-key", key, "--kms-endpoint", srv.Endpoint(), dir)
		cliWantFail(t, "init with disabled key "+key, out, errOut, code, cliExitKey, "disabled")
		if _, err := os.Lstat(dir); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("a failed init left CIPHERDIR behind (%v)", err)
		}
	}
	// Key B still works on the same server.
	if out, errOut, code := run(t, cliKMSEnv(srv, xdg, srv.Endpoint()), "init", "--kms-key", kmstest.KeyBARN, "--kms-endpoint", srv.Endpoint(), filepath.Join(base, "ok")); code != cliExitOK {
		t.Errorf("init with key B: exit %d\n%s%s", code, out, errOut)
	}
}

// cliInspectOut is the JSON of kmsfs inspect.
type cliInspectOut struct {
	FormatVersion int              `json:"format_version"`
	FileID        string           `json:"file_id"`
	BlockSize     int              `json:"block_size"`
	PlaintextSize int64            `json:"plaintext_size"`
	WrappedKeys   []cliWrappedJSON `json:"wrapped_keys"`
	VolumeID      string           `json:"volume_id"`
	HeaderSize    int              `json:"header_size"`
}

type cliWrappedJSON struct {
	Keyring           string            `json:"keyring"`
	KeyID             string            `json:"key_id"`
	CiphertextBlob    string            `json:"ciphertext_blob"`
	EncryptionContext map[string]string `json:"encryption_context"`
}

// cliInspect runs kmsfs inspect on a cipher file, checks the interface
// field names and types, and decodes the output.
func cliInspect(t *testing.T, cipherFile string) cliInspectOut {
	t.Helper()
	out, errOut, code := run(t, nil, "inspect", cipherFile)
	if code != cliExitOK || errOut != "" {
		t.Fatalf("inspect %s: exit %d\nstdout: %s\nstderr: %s", cipherFile, code, out, errOut)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &top); err != nil {
		t.Fatalf("inspect printed no JSON object: %v\n%s", err, out)
	}
	// The interface: these names, with these JSON types.
	required := map[string]byte{"format_version": '0', "file_id": '"', "block_size": '0', "plaintext_size": '0', "wrapped_keys": '['}
	// Also printed, and checked against the config by callers.
	optional := map[string]byte{"volume_id": '"', "header_size": '0'}
	for name, kind := range required {
		raw, ok := top[name]
		if !ok {
			t.Errorf("inspect JSON lacks %q:\n%s", name, out)
			continue
		}
		cliCheckJSONKind(t, name, raw, kind)
	}
	for name, raw := range top {
		if _, ok := required[name]; ok {
			continue
		}
		if kind, ok := optional[name]; ok {
			cliCheckJSONKind(t, name, raw, kind)
			continue
		}
		t.Errorf("inspect JSON has an undocumented field %q", name)
	}
	var entries []map[string]json.RawMessage
	if err := json.Unmarshal(top["wrapped_keys"], &entries); err != nil {
		t.Fatalf("wrapped_keys: %v", err)
	}
	for i, e := range entries {
		names := slices.Sorted(maps.Keys(e))
		if !slices.Equal(names, []string{"ciphertext_blob", "encryption_context", "key_id", "keyring"}) {
			t.Errorf("wrapped_keys[%d] has fields %v, want exactly keyring, key_id, ciphertext_blob, encryption_context", i, names)
		}
		for name, kind := range map[string]byte{"keyring": '"', "key_id": '"', "ciphertext_blob": '"', "encryption_context": '{'} {
			cliCheckJSONKind(t, fmt.Sprintf("wrapped_keys[%d].%s", i, name), e[name], kind)
		}
	}
	var res cliInspectOut
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&res); err != nil {
		t.Fatalf("decode inspect JSON: %v\n%s", err, out)
	}
	if res.FormatVersion != 1 || !cliHex32.MatchString(res.FileID) {
		t.Errorf("inspect: format_version %d, file_id %q; want 1 and 32 hex digits", res.FormatVersion, res.FileID)
	}
	if len(res.WrappedKeys) == 0 {
		t.Errorf("inspect: no wrapped keys")
	}
	for i, w := range res.WrappedKeys {
		if _, err := base64.StdEncoding.DecodeString(w.CiphertextBlob); err != nil || w.CiphertextBlob == "" {
			t.Errorf("wrapped_keys[%d].ciphertext_blob is not standard base64: %v", i, err)
		}
		want := map[string]string{"kmsfs:volume": res.VolumeID, "kmsfs:file": res.FileID}
		if !maps.Equal(w.EncryptionContext, want) {
			t.Errorf("wrapped_keys[%d].encryption_context = %v, want %v", i, w.EncryptionContext, want)
		}
	}
	return res
}

func cliCheckJSONKind(t *testing.T, name string, raw json.RawMessage, kind byte) {
	t.Helper()
	s := bytes.TrimSpace(raw)
	if len(s) == 0 {
		t.Errorf("inspect JSON %s is empty", name)
		return
	}
	got := s[0]
	if got == '-' || (got >= '0' && got <= '9') {
		got = '0'
	}
	if got != kind {
		t.Errorf("inspect JSON %s = %s: wrong JSON type", name, s)
	}
}

// cliKMSDecrypt unwraps an inspect entry with the AWS SDK, naming the key
// and the context as printed, and returns the data key.
func cliKMSDecrypt(t *testing.T, client *kms.Client, w cliWrappedJSON, ec map[string]string) []byte {
	t.Helper()
	blob, err := base64.StdEncoding.DecodeString(w.CiphertextBlob)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := client.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: blob, KeyId: aws.String(w.KeyID), EncryptionContext: ec})
	if err != nil {
		t.Fatalf("KMS Decrypt of the printed blob (key %s, context %v): %v", w.KeyID, ec, err)
	}
	if aws.ToString(out.KeyId) != w.KeyID || len(out.Plaintext) != 32 {
		t.Errorf("Decrypt: key %s and %d bytes, want %s and 32", aws.ToString(out.KeyId), len(out.Plaintext), w.KeyID)
	}
	return out.Plaintext
}

func TestInspectKMSVolume(t *testing.T) {
	srv := kmstest.Start(t)
	proxy := kmstest.NewProxy(t, srv.Endpoint())
	base := t.TempDir()
	env := cliKMSEnv(srv, filepath.Join(base, "config"), proxy.Endpoint())
	v := newVolumeIn(t, base, env, "--kms-key", kmstest.AliasName, "--kms-endpoint", proxy.Endpoint())
	c := cliReadConfig(t, v.Dir)

	sizes := map[string]int{"one": 1, "block": 4096, "block+1": 4097, "big": 300_000}
	m := mountVolume(t, v)
	for name, n := range sizes {
		b := make([]byte, n)
		rand.Read(b)
		writeFile(t, m.path(name), b)
	}
	// A file written and then truncated to 0 keeps its header: plaintext
	// size 0. (A file never written has no header yet: TestInspectRejects.)
	writeFile(t, m.path("empty"), []byte("soon gone"))
	if err := os.Truncate(m.path("empty"), 0); err != nil {
		t.Fatal(err)
	}
	sizes["empty"] = 0
	// A file with a hole: its plaintext size counts the hole.
	f, err := os.Create(m.path("holey"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("end"), 50_000); err != nil {
		t.Fatal(err)
	}
	f.Close()
	sizes["holey"] = 50_003
	if err := m.unmount(); err != nil {
		t.Fatalf("unmount: %v", err)
	}
	if proxy.Count("GenerateDataKey") == 0 {
		t.Fatalf("the mount made no GenerateDataKey call through the proxy: the proxy is not on the path")
	}

	proxy.Reset()
	fileIDs := map[string]string{}
	results := map[string]cliInspectOut{}
	for name, n := range sizes {
		ins := cliInspect(t, filepath.Join(v.Dir, name))
		if ins.PlaintextSize != int64(n) {
			t.Errorf("%s: plaintext_size %d, want %d", name, ins.PlaintextSize, n)
		}
		if ins.BlockSize != c.BlockSize || ins.VolumeID != c.VolumeID || ins.HeaderSize != c.HeaderSize {
			t.Errorf("%s: block_size %d, volume_id %s, header_size %d; the config says %d, %s, %d",
				name, ins.BlockSize, ins.VolumeID, ins.HeaderSize, c.BlockSize, c.VolumeID, c.HeaderSize)
		}
		if len(ins.WrappedKeys) != 1 || ins.WrappedKeys[0].Keyring != "aws-kms" || ins.WrappedKeys[0].KeyID != kmstest.KeyAARN {
			t.Errorf("%s: wrapped keys %+v, want one aws-kms entry naming %s (the ARN, never the alias)", name, ins.WrappedKeys, kmstest.KeyAARN)
		}
		if other, dup := fileIDs[ins.FileID]; dup {
			t.Errorf("%s and %s share file ID %s", name, other, ins.FileID)
		}
		fileIDs[ins.FileID] = name
		results[name] = ins
	}
	if n := proxy.Total(); n != 0 {
		t.Errorf("kmsfs inspect made %d KMS calls, want 0", n)
	}
	if t.Failed() {
		return
	}

	// The printed blob and context are enough to unwrap the data key, with
	// the SDK ...
	client := srv.Client(t)
	big, one := results["big"].WrappedKeys[0], results["one"].WrappedKeys[0]
	kBig := cliKMSDecrypt(t, client, big, big.EncryptionContext)
	kOne := cliKMSDecrypt(t, client, one, one.EncryptionContext)
	if bytes.Equal(kBig, kOne) {
		t.Errorf("two files have the same data key")
	}
	// ... and a wrong context fails: another file's, another volume's, none.
	blob, _ := base64.StdEncoding.DecodeString(big.CiphertextBlob)
	wrongFile := maps.Clone(big.EncryptionContext)
	wrongFile["kmsfs:file"] = results["one"].FileID
	wrongVolume := maps.Clone(big.EncryptionContext)
	wrongVolume["kmsfs:volume"] = strings.Repeat("0", 32)
	withPath := maps.Clone(big.EncryptionContext)
	withPath["path"] = "/big"
	for name, ec := range map[string]map[string]string{"other file": wrongFile, "other volume": wrongVolume, "none": nil, "extra pair": withPath} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		_, err := client.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: blob, KeyId: aws.String(big.KeyID), EncryptionContext: ec})
		cancel()
		var ice *types.InvalidCiphertextException
		if !errors.As(err, &ice) {
			t.Errorf("Decrypt with the %s context: %v, want InvalidCiphertextException", name, err)
		}
	}

	// ... and with the AWS CLI, which needs the blob in a file.
	awsBin, err := exec.LookPath("aws")
	if err != nil {
		t.Logf("no aws CLI on PATH (%v): decrypted with the SDK only", err)
		return
	}
	blobFile := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(blobFile, blob, 0o600); err != nil {
		t.Fatal(err)
	}
	awsDecrypt := func(ec map[string]string) (string, string, error) {
		ecJSON, _ := json.Marshal(ec)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, awsBin, "kms", "decrypt", "--endpoint-url", srv.Endpoint(),
			"--key-id", big.KeyID, "--ciphertext-blob", "fileb://"+blobFile,
			"--encryption-context", string(ecJSON), "--query", "KeyId", "--output", "text")
		cmd.Env = append(append(os.Environ(), srv.Env()...), "AWS_DEFAULT_REGION="+kmstest.Region)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		return strings.TrimSpace(out.String()), errb.String(), err
	}
	out, errOut, err := awsDecrypt(big.EncryptionContext)
	if err != nil || out != kmstest.KeyAARN {
		t.Errorf("aws kms decrypt of the printed blob: %v, KeyId %q (want %s)\n%s", err, out, kmstest.KeyAARN, errOut)
	}
	out, errOut, err = awsDecrypt(wrongFile)
	if err == nil || !strings.Contains(errOut, "InvalidCiphertext") {
		t.Errorf("aws kms decrypt with another file's context: %v, KeyId %q, stderr %q; want InvalidCiphertextException", err, out, errOut)
	}
}

func TestInspectRejects(t *testing.T) {
	v := newVolume(t, nil)
	m := mountVolume(t, v)
	writeFile(t, m.path("one"), []byte("x"))
	if err := m.unmount(); err != nil {
		t.Fatal(err)
	}
	good := readFile(t, filepath.Join(v.Dir, "one"))
	if ins := cliInspect(t, filepath.Join(v.Dir, "one")); ins.PlaintextSize != 1 || len(ins.WrappedKeys) != 1 || ins.WrappedKeys[0].Keyring != "local" {
		t.Errorf("inspect of a local-key file: %+v", ins)
	}

	dir := t.TempDir()
	random := make([]byte, 4096)
	rand.Read(random)
	cases := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "empty"},
		{"text", []byte("hello, this is not a kmsfs file\n"), ""},
		{"random", random, ""},
		// A header cut inside its first 16 bytes (magic, version, sizes)
		// is truncated too, not "version 0" or "bad magic".
		{"partial magic", good[:3], "truncated"},
		{"magic only", good[:6], "truncated"},
		{"cut in prefix", good[:10], "truncated"},
		{"truncated after prefix", good[:20], "truncated"},
		{"truncated header", good[:300], "truncated"},
		{"header minus one", good[:binary.BigEndian.Uint32(good[8:12])-1], "truncated"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			writeFile(t, p, tc.data)
			out, errOut, code := run(t, nil, "inspect", p)
			want := []string{p}
			if tc.want != "" {
				want = append(want, tc.want)
			}
			cliWantFail(t, "inspect "+tc.name, out, errOut, code, cliExitInspect, want...)
		})
	}
	t.Run("directory", func(t *testing.T) {
		out, errOut, code := run(t, nil, "inspect", dir)
		cliWantFail(t, "inspect of a directory", out, errOut, code, cliExitInspect)
	})
	t.Run("missing", func(t *testing.T) {
		out, errOut, code := run(t, nil, "inspect", filepath.Join(dir, "nope"))
		cliWantFail(t, "inspect of a missing file", out, errOut, code, cliExitInspect)
	})
}

func TestMountErrors(t *testing.T) {
	requireFUSE(t)
	v := newVolume(t, nil)
	base := t.TempDir()
	mnt := filepath.Join(base, "mnt")
	os.Mkdir(mnt, 0o755)

	empty := filepath.Join(base, "empty")
	os.Mkdir(empty, 0o755)
	nonEmpty := filepath.Join(base, "nonempty")
	os.Mkdir(nonEmpty, 0o755)
	writeFile(t, filepath.Join(nonEmpty, "data.txt"), []byte("someone's data"))
	otherKey := filepath.Join(base, "other.key")
	cliWriteKey(t, otherKey, 0o600)
	notDir := filepath.Join(base, "file")
	writeFile(t, notDir, nil)

	// A copy of the volume whose config names a future format version.
	future := func(version string) string {
		dst := filepath.Join(base, "v"+version)
		if out, err := exec.Command("cp", "-a", v.Dir, dst).CombinedOutput(); err != nil {
			t.Fatalf("cp -a: %v: %s", err, out)
		}
		p := filepath.Join(dst, "kmsfs.json")
		b := readFile(t, p)
		re := regexp.MustCompile(`"format_version":\s*1,`)
		if !re.Match(b) {
			t.Fatalf("no format_version 1 in %s", b)
		}
		writeFile(t, p, re.ReplaceAll(b, []byte(`"format_version": `+version+`,`)))
		return dst
	}

	// A copy of the volume with its config edited by edit.
	edited := func(name string, edit func([]byte) []byte) string {
		dst := filepath.Join(base, name)
		if out, err := exec.Command("cp", "-a", v.Dir, dst).CombinedOutput(); err != nil {
			t.Fatalf("cp -a: %v: %s", err, out)
		}
		p := filepath.Join(dst, "kmsfs.json")
		writeFile(t, p, edit(readFile(t, p)))
		return dst
	}
	withFeature := edited("feature", func(b []byte) []byte {
		return bytes.Replace(b, []byte(`"features": []`), []byte(`"features": ["compression"]`), 1)
	})
	withField := edited("field", func(b []byte) []byte {
		return bytes.Replace(b, []byte(`"block_size"`), []byte(`"cipher": "rot13", "block_size"`), 1)
	})
	truncatedCfg := edited("truncated", func(b []byte) []byte { return b[:len(b)/2] })
	// The volume's own key, readable by others.
	openKey := filepath.Join(base, "open.key")
	writeFile(t, openKey, readFile(t, cliReadConfig(t, v.Dir).Keyrings[0].KeyFile))
	os.Chmod(openKey, 0o644)

	cases := []struct {
		name      string
		args      []string
		code      int
		mentions  []string
		untouched string // a directory that must not change
	}{
		{"wrong key read-only", []string{"--read-only", "--local-key", otherKey, v.Dir, mnt}, cliExitKey, []string{otherKey}, v.Dir},
		{"key file open to others", []string{"--local-key", openKey, v.Dir, mnt}, cliExitKey, []string{"chmod 600"}, v.Dir},
		{"unknown feature", []string{withFeature, mnt}, cliExitVolume, []string{"compression"}, withFeature},
		{"unknown config field", []string{withField, mnt}, cliExitVolume, []string{"cipher"}, withField},
		{"truncated config", []string{truncatedCfg, mnt}, cliExitVolume, []string{"kmsfs.json"}, truncatedCfg},
		{"missing cipherdir", []string{filepath.Join(base, "nope"), mnt}, cliExitVolume, []string{"does not exist", "kmsfs init"}, ""},
		{"cipherdir is a file", []string{notDir, mnt}, cliExitVolume, []string{"not a directory"}, ""},
		{"empty dir", []string{empty, mnt}, cliExitVolume, []string{"run kmsfs init"}, empty},
		{"non-empty non-volume", []string{nonEmpty, mnt}, cliExitVolume, []string{"not a kmsfs volume"}, nonEmpty},
		{"wrong key", []string{"--local-key", otherKey, v.Dir, mnt}, cliExitKey, []string{otherKey, "--local-key"}, v.Dir},
		{"missing key file", []string{"--local-key", filepath.Join(base, "lost.key"), v.Dir, mnt}, cliExitKey, []string{"does not exist"}, v.Dir},
		{"missing mountpoint", []string{v.Dir, filepath.Join(base, "nomnt")}, cliExitMount, []string{"does not exist", "mkdir"}, v.Dir},
		{"mountpoint is a file", []string{v.Dir, notDir}, cliExitMount, []string{"not a directory"}, v.Dir},
		{"format version 2", []string{future("2"), mnt}, cliExitVolume, []string{"version 2", "not supported"}, ""},
		{"format version 999", []string{future("999"), mnt}, cliExitVolume, []string{"version 999", "not supported"}, ""},
		{"format version 0", []string{future("0"), mnt}, cliExitVolume, []string{"version 0", "not supported"}, ""},
		{"no arguments", []string{v.Dir}, cliExitUsage, []string{"MOUNTPOINT"}, ""},
		{"bad log level", []string{"--log-level", "loud", v.Dir, mnt}, cliExitUsage, []string{"log-level"}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var before map[string]string
			if tc.untouched != "" {
				before = cliSnapshot(t, tc.untouched)
			}
			out, errOut, code := cliRunBounded(t, 30*time.Second, v.Env, append([]string{"mount"}, tc.args...)...)
			cliWantFail(t, "mount "+tc.name, out, errOut, code, tc.code, tc.mentions...)
			if cliMounted(t, mnt) {
				t.Errorf("%s is mounted after a refused mount", mnt)
				syscall.Unmount(mnt, syscall.MNT_DETACH)
			}
			if tc.untouched != "" {
				if after := cliSnapshot(t, tc.untouched); !maps.Equal(before, after) {
					t.Errorf("a refused mount changed %s: %v -> %v", tc.untouched, before, after)
				}
			}
		})
	}

	t.Run("busy mountpoint", func(t *testing.T) {
		m := mountVolume(t, v)
		writeFile(t, m.path("f"), []byte("first mount"))
		v2 := newVolume(t, nil)
		for _, vol := range []*volume{v, v2} {
			out, errOut, code := cliRunBounded(t, 30*time.Second, vol.Env, "mount", vol.Dir, m.Dir)
			cliWantFail(t, "second mount on a busy mountpoint", out, errOut, code, cliExitMount, "already a mount point", "kmsfs unmount")
		}
		// The first mount is unharmed.
		if got := readFile(t, m.path("f")); string(got) != "first mount" {
			t.Errorf("the first mount reads %q after the refused second mount", got)
		}
		select {
		case <-m.done:
			t.Errorf("the first mount exited: %v", m.err)
		default:
		}
	})
}

// cliSnapshot maps each path under dir to a digest of its type and
// content, for "nothing changed" checks.
func cliSnapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	snap := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case d.Type().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			snap[rel] = fmt.Sprintf("file %x", sha256.Sum256(b))
		case d.Type()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			snap[rel] = "symlink " + target
		default:
			snap[rel] = d.Type().String()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

// cliDaemonPIDs finds running kmsfs processes serving mnt: a detached
// mount is not our child, so /proc is the only way to it.
func cliDaemonPIDs(t testing.TB, mnt string) []int {
	t.Helper()
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00")
		if len(args) < 2 || args[0] != kmsfsBin || !slices.Contains(args, mnt) {
			continue
		}
		if cliZombie(pid) {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

// cliZombie reports whether pid has exited but not been reaped (or is gone).
func cliZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] == 'Z'
}

// cliWaitGone polls (bounded) until no kmsfs process serves mnt.
func cliWaitGone(t testing.TB, mnt string, timeout time.Duration) []int {
	deadline := time.Now().Add(timeout)
	for {
		pids := cliDaemonPIDs(t, mnt)
		if len(pids) == 0 || time.Now().After(deadline) {
			return pids
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cliRunDaemon runs `kmsfs mount -d`. Its output goes to files, not pipes:
// the detached child inherits stderr, and a pipe would keep the wait open
// for the daemon's whole life. The daemon's log keeps growing in errPath.
func cliRunDaemon(t *testing.T, env []string, errPath string, args ...string) (stdout, stderr string, code int, elapsed time.Duration) {
	t.Helper()
	outF, _ := os.Create(filepath.Join(t.TempDir(), "stdout"))
	errF, _ := os.Create(errPath)
	defer outF.Close()
	defer errF.Close()
	cmd := exec.Command(kmsfsBin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = outF, errF
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("kmsfs %v did not return within 60s", args)
	}
	elapsed = time.Since(start)
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	o, _ := os.ReadFile(outF.Name())
	e, _ := os.ReadFile(errF.Name())
	return string(o), string(e), code, elapsed
}

func TestMountDaemon(t *testing.T) {
	requireFUSE(t)
	v := newVolume(t, nil)
	mnt := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(mnt, 0o755)
	t.Cleanup(func() {
		// Whatever happened, leave no mount and no daemon behind.
		if cliMounted(t, mnt) {
			t.Errorf("%s still mounted at the end of the test", mnt)
			run(t, nil, "unmount", mnt)
			if cliMounted(t, mnt) {
				syscall.Unmount(mnt, syscall.MNT_DETACH)
			}
		}
		for _, pid := range cliWaitGone(t, mnt, 5*time.Second) {
			t.Errorf("kmsfs daemon %d still running: killing it", pid)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})

	daemonLog := filepath.Join(t.TempDir(), "daemon.log")
	// Once mounted, a daemon logs to --log-file (syslog by default), not
	// to the stderr of whoever started it.
	logFile := filepath.Join(t.TempDir(), "kmsfs.log")
	out, errOut, code, elapsed := cliRunDaemon(t, v.Env, daemonLog, "mount", "-d", "--log-level", "debug", "--log-file", logFile, v.Dir, mnt)
	if code != cliExitOK {
		t.Fatalf("mount -d: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	t.Logf("mount -d returned after %v", elapsed.Round(time.Millisecond))
	if !strings.Contains(out, "mounted") {
		t.Errorf("mount -d stdout = %q, want a mounted line", out)
	}
	// Mounted the moment it returns: no polling here.
	if !cliMounted(t, mnt) {
		t.Fatalf("mount -d returned 0 but %s is not mounted", mnt)
	}
	pids := cliDaemonPIDs(t, mnt)
	if len(pids) != 1 {
		t.Fatalf("want one kmsfs daemon for %s, found %v", mnt, pids)
	}
	data := make([]byte, 10_000)
	rand.Read(data)
	writeFile(t, filepath.Join(mnt, "f"), data)
	if got := readFile(t, filepath.Join(mnt, "f")); !bytes.Equal(got, data) {
		t.Errorf("read back through the daemon mount differs")
	}
	if _, err := os.Stat(filepath.Join(v.Dir, "f")); err != nil {
		t.Errorf("the file is not in CIPHERDIR: %v", err)
	}
	// The daemon is in its own session, not in ours.
	if sid, err := unix.Getsid(pids[0]); err == nil && sid != pids[0] {
		t.Errorf("daemon %d is in session %d, want its own", pids[0], sid)
	}

	out, errOut, code = run(t, nil, "unmount", mnt)
	if code != cliExitOK {
		t.Fatalf("unmount: exit %d\n%s%s", code, out, errOut)
	}
	if cliMounted(t, mnt) {
		t.Errorf("%s still mounted after kmsfs unmount", mnt)
	}
	if left := cliWaitGone(t, mnt, 10*time.Second); len(left) != 0 {
		t.Errorf("daemon %v did not exit after unmount", left)
	}
	logText := string(readFile(t, logFile))
	if w := cliWarnLine.FindAllString(logText, -1); len(w) > 0 {
		t.Errorf("the daemon logged warnings: %v", w)
	}
	if !strings.Contains(logText, "msg=unmounted") {
		t.Errorf("the daemon log has no unmounted line:\n%s", logText)
	}
	// The data is on disk: a new mount reads it.
	m := mountVolume(t, v)
	if got := readFile(t, m.path("f")); !bytes.Equal(got, data) {
		t.Errorf("remount reads different data")
	}
	m.unmount()

	t.Run("bad cipherdir", func(t *testing.T) {
		for _, dir := range []string{filepath.Join(t.TempDir(), "nope"), t.TempDir()} {
			out, errOut, code, _ := cliRunDaemon(t, v.Env, filepath.Join(t.TempDir(), "log"), "mount", "--daemon", dir, mnt)
			cliWantFail(t, "mount -d of a bad CIPHERDIR", out, errOut, code, cliExitVolume, "kmsfs init")
			if cliMounted(t, mnt) {
				t.Errorf("%s mounted", mnt)
			}
			if left := cliDaemonPIDs(t, mnt); len(left) != 0 {
				t.Errorf("a failed mount -d left processes %v", left)
			}
		}
		out, errOut, code, _ := cliRunDaemon(t, v.Env, filepath.Join(t.TempDir(), "log"), "mount", "-d", v.Dir, filepath.Join(t.TempDir(), "nomnt"))
		cliWantFail(t, "mount -d on a missing mountpoint", out, errOut, code, cliExitMount, "does not exist")
	})
}

func TestMountSignals(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(unix.SignalName(sig), func(t *testing.T) {
			v := newVolume(t, nil)
			m := mountVolume(t, v)
			data := make([]byte, 123_457)
			rand.Read(data)
			writeFile(t, m.path("last-words"), data)
			os.Mkdir(m.path("d"), 0o755)
			writeFile(t, m.path("d", "small"), []byte("x"))
			if err := m.cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			select {
			case <-m.done:
			case <-time.After(30 * time.Second):
				t.Fatalf("kmsfs did not exit within 30s of %v", sig)
			}
			if m.err != nil {
				t.Errorf("kmsfs exited with %v after %v, want exit 0\n%s", m.err, sig, m.log.String())
			}
			if cliMounted(t, m.Dir) {
				t.Errorf("%s is still mounted after %v", m.Dir, sig)
				syscall.Unmount(m.Dir, syscall.MNT_DETACH)
			}
			if !strings.Contains(m.log.String(), "unmounted") {
				t.Errorf("log has no unmounted line:\n%s", m.log.String())
			}
			m2 := mountVolume(t, v)
			if got := readFile(t, m2.path("last-words")); !bytes.Equal(got, data) {
				t.Errorf("after %v and remount: read %d bytes, want the %d written before", sig, len(got), len(data))
			}
			if got := readFile(t, m2.path("d", "small")); string(got) != "x" {
				t.Errorf("after %v and remount: d/small = %q", sig, got)
			}
		})
	}
}

func TestMountReadOnly(t *testing.T) {
	v := newVolume(t, nil)
	m := mountVolume(t, v)
	data := []byte("read me, do not write me\n")
	writeFile(t, m.path("file"), data)
	os.Mkdir(m.path("dir"), 0o755)
	writeFile(t, m.path("dir", "inner"), data)
	if err := m.unmount(); err != nil {
		t.Fatal(err)
	}
	before := cliSnapshot(t, v.Dir)

	ro := mountVolume(t, v, "--read-only")
	if got := readFile(t, ro.path("file")); !bytes.Equal(got, data) {
		t.Errorf("read %q, want %q", got, data)
	}
	if got := readFile(t, ro.path("dir", "inner")); !bytes.Equal(got, data) {
		t.Errorf("read dir/inner %q, want %q", got, data)
	}
	if ents, err := os.ReadDir(ro.Dir); err != nil || len(ents) != 2 {
		t.Errorf("readdir: %v %v, want file and dir", ents, err)
	}
	erofs := map[string]func() error{
		"open for writing": func() error {
			f, err := os.OpenFile(ro.path("file"), os.O_WRONLY, 0)
			if err == nil {
				f.Close()
			}
			return err
		},
		"open read-write": func() error {
			f, err := os.OpenFile(ro.path("file"), os.O_RDWR, 0)
			if err == nil {
				f.Close()
			}
			return err
		},
		"open with O_TRUNC": func() error {
			f, err := os.OpenFile(ro.path("file"), os.O_RDONLY|os.O_TRUNC, 0)
			if err == nil {
				f.Close()
			}
			return err
		},
		"create": func() error {
			f, err := os.OpenFile(ro.path("new"), os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o644)
			if err == nil {
				f.Close()
			}
			return err
		},
		"write file":   func() error { return os.WriteFile(ro.path("file"), []byte("x"), 0o644) },
		"unlink":       func() error { return os.Remove(ro.path("file")) },
		"unlink inner": func() error { return os.Remove(ro.path("dir", "inner")) },
		"mkdir":        func() error { return os.Mkdir(ro.path("newdir"), 0o755) },
		"rmdir":        func() error { return unix.Rmdir(ro.path("dir")) },
		"rename":       func() error { return os.Rename(ro.path("file"), ro.path("renamed")) },
		"truncate":     func() error { return os.Truncate(ro.path("file"), 0) },
		"symlink":      func() error { return os.Symlink("file", ro.path("link")) },
		"link":         func() error { return os.Link(ro.path("file"), ro.path("hard")) },
		"chmod":        func() error { return os.Chmod(ro.path("file"), 0o600) },
		"utimes":       func() error { return os.Chtimes(ro.path("file"), time.Now(), time.Now()) },
		"setxattr":     func() error { return unix.Setxattr(ro.path("file"), "user.k", []byte("v"), 0) },
		"mknod fifo":   func() error { return unix.Mkfifo(ro.path("fifo"), 0o644) },
	}
	for _, name := range slices.Sorted(maps.Keys(erofs)) {
		if err := erofs[name](); !errors.Is(err, syscall.EROFS) {
			t.Errorf("%s on a read-only mount: %v, want EROFS", name, err)
		}
	}
	if err := ro.unmount(); err != nil {
		t.Errorf("unmount: %v", err)
	}
	if after := cliSnapshot(t, v.Dir); !maps.Equal(before, after) {
		t.Errorf("a read-only mount changed CIPHERDIR:\nbefore %v\nafter  %v", before, after)
	}
}

// TestCLIFlagErrors: a bad flag is a usage error (exit 2) told in one
// line that points at -h, like every other refusal.
func TestCLIFlagErrors(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cipher")
	mnt := t.TempDir()
	cases := [][]string{
		{"init", "--block-size", "x", dir},
		{"init", "--no-such-flag", dir},
		{"mount", "--no-such-flag", dir, mnt},
		{"mount", "--key-cache-ttl", "soon", dir, mnt},
		{"inspect", "--no-such-flag", dir},
	}
	for _, args := range cases {
		t.Run(strings.Join(args[:2], " "), func(t *testing.T) {
			out, errOut, code := cliRunBounded(t, 30*time.Second, nil, args...)
			cliWantFail(t, "kmsfs "+strings.Join(args, " "), out, errOut, code, cliExitUsage, "kmsfs "+args[0]+" -h")
			if _, err := os.Lstat(dir); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("a usage error created %s", dir)
			}
		})
	}
	// -h is not an error: the usage goes out and the exit is 0.
	out, errOut, code := run(t, nil, "init", "-h")
	if code != cliExitOK || !strings.Contains(out+errOut, "-block-size") {
		t.Errorf("init -h: exit %d, output %q", code, out+errOut)
	}
}

func TestCLIUnmountErrors(t *testing.T) {
	dir := t.TempDir()
	out, errOut, code := run(t, nil, "unmount", dir)
	cliWantFail(t, "unmount of a directory that is not mounted", out, errOut, code, 14, dir, "not mounted")
	out, errOut, code = run(t, nil, "unmount")
	cliWantFail(t, "unmount without a mountpoint", out, errOut, code, cliExitUsage, "MOUNTPOINT")
}

// TestMountKMSErrors: a KMS key that cannot be used fails the mount at
// once, in one line, rather than every later create.
func TestMountKMSErrors(t *testing.T) {
	requireFUSE(t)
	srv := kmstest.Start(t)
	base := t.TempDir()
	env := cliKMSEnv(srv, filepath.Join(base, "config"), srv.Endpoint())
	v := newVolumeIn(t, base, env, "--kms-key", kmstest.AliasName, "--kms-endpoint", srv.Endpoint())
	mnt := filepath.Join(base, "mnt")
	os.Mkdir(mnt, 0o755)

	closed := kmstest.ClosedEndpoint(t)
	start := time.Now()
	out, errOut, code := cliRunBounded(t, 60*time.Second, env, "mount", "--kms-endpoint", closed, v.Dir, mnt)
	cliWantFail(t, "mount with an unreachable KMS", out, errOut, code, cliExitKey, "check the network")
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("mount took %v to give up on a refused connection", d)
	}

	srv.DisableKey(t, kmstest.KeyAID)
	out, errOut, code = cliRunBounded(t, 60*time.Second, env, "mount", v.Dir, mnt)
	cliWantFail(t, "mount with a disabled key", out, errOut, code, cliExitKey, "disabled")
	if cliMounted(t, mnt) {
		t.Errorf("%s mounted", mnt)
		syscall.Unmount(mnt, syscall.MNT_DETACH)
	}
	srv.EnableKey(t, kmstest.KeyAID)
	m := mountVolume(t, v)
	writeFile(t, m.path("f"), []byte("enabled again"))
}

// TestMountDaemonReleasesStderr: once `kmsfs mount -d` has returned, the
// daemon must not hold the caller's stdout or stderr. A caller that
// captures the output (a shell's $(...) with 2>&1, a pipe into a logger,
// exec.Cmd with a buffer) would otherwise wait until the unmount, and once
// the reader goes away, the daemon's next log line is a write to a broken
// pipe on fd 2, which kills a Go program with SIGPIPE: the mount dies.
func TestMountDaemonReleasesStderr(t *testing.T) {
	requireFUSE(t)
	v := newVolume(t, nil)
	mnt := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(mnt, 0o755)
	t.Cleanup(func() {
		if cliMounted(t, mnt) {
			if _, _, code := run(t, nil, "unmount", mnt); code != 0 {
				syscall.Unmount(mnt, syscall.MNT_DETACH)
			}
		}
		for _, pid := range cliWaitGone(t, mnt, 5*time.Second) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cmd := exec.Command(kmsfsBin, "mount", "-d", v.Dir, mnt)
	cmd.Env = append(os.Environ(), v.Env...)
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("mount -d: %v", err)
		}
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("mount -d did not return")
	}
	if !cliMounted(t, mnt) {
		t.Fatalf("mount -d returned 0 but %s is not mounted", mnt)
	}
	// The pipe reaches EOF once no process holds its write end.
	r.SetReadDeadline(time.Now().Add(2 * time.Second))
	got, err := io.ReadAll(r)
	if err != nil {
		t.Errorf("the kmsfs daemon still holds the caller's stdout/stderr after mount -d returned "+
			"(reading the pipe: %v; read so far %q): a caller capturing the output waits until the unmount", err, got)
	}
	r.Close()

	// The reader is gone. Make the daemon log a line (SIGTERM: "unmounting"),
	// and check it unmounts cleanly instead of dying of SIGPIPE with the
	// mount left dead.
	pids := cliDaemonPIDs(t, mnt)
	if len(pids) != 1 {
		t.Fatalf("want one daemon, found %v", pids)
	}
	syscall.Kill(pids[0], syscall.SIGTERM)
	if left := cliWaitGone(t, mnt, 20*time.Second); len(left) != 0 {
		t.Fatalf("daemon %v did not exit after SIGTERM", left)
	}
	if cliMounted(t, mnt) {
		_, err := os.Stat(filepath.Join(mnt, "x"))
		t.Errorf("the daemon exited on SIGTERM but %s is still mounted (stat: %v): it died writing its log to the closed pipe", mnt, err)
		syscall.Unmount(mnt, syscall.MNT_DETACH)
	}
}

// TestMountSignalWithOpenFile: SIGTERM while an application holds a file
// open. The unmount is busy; kmsfs retries, then detaches the mount and
// keeps serving the open file until it is closed, then exits 0. Nothing
// written through the open descriptor, before or after the signal, is
// lost.
func TestMountSignalWithOpenFile(t *testing.T) {
	v := newVolume(t, nil)
	m := mountVolume(t, v)
	m.AllowWarnings = true // the "still busy: detaching" warning is expected
	f, err := os.Create(m.path("open"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	first := make([]byte, 50_000)
	rand.Read(first)
	if _, err := f.Write(first); err != nil {
		t.Fatal(err)
	}
	if err := m.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// kmsfs retries the busy unmount for ~10 s, then detaches.
	deadline := time.Now().Add(30 * time.Second)
	for cliMounted(t, m.Dir) {
		if time.Now().After(deadline) {
			t.Fatalf("%s still mounted 30s after SIGTERM with a file open", m.Dir)
		}
		select {
		case <-m.done:
			t.Fatalf("kmsfs exited (%v) while a file was open and still mounted", m.err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	select {
	case <-m.done:
		t.Fatalf("kmsfs exited (%v) while a file was still open: its writes are lost", m.err)
	default:
	}
	second := []byte("written after the detach")
	if _, err := f.Write(second); err != nil {
		t.Errorf("write to the open file after the detach: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	select {
	case <-m.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("kmsfs did not exit within 30s of the last close")
	}
	if m.err != nil {
		t.Errorf("kmsfs exited with %v, want 0\n%s", m.err, m.log.String())
	}
	m2 := mountVolume(t, v)
	if got := readFile(t, m2.path("open")); !bytes.Equal(got, append(first, second...)) {
		t.Errorf("after remount the file has %d bytes, want %d (all writes through the open descriptor)", len(got), len(first)+len(second))
	}
}
