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
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"

	"github.com/kmsfs/kmsfs/keyring/kmstest"
)

// The exit codes of cmd/kmsfs/exitcodes.go: scripts rely on them, so the
// tests spell them out rather than import them.
const (
	cliExitOK      = 0
	cliExitError   = 1
	cliExitUsage   = 2
	cliExitVolume  = 10
	cliExitKey     = 11
	cliExitMount   = 12
	cliExitInspect = 13
	cliExitDamage  = 15
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
	// Version 2:
	KeyMode           string `json:"key_mode"`
	BranchKeyRotation string `json:"branch_key_rotation"`
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
	switch {
	case c.FormatVersion == 1 && c.KeyMode == "" && c.BranchKeyRotation == "":
	case c.FormatVersion >= 2 && c.FormatVersion <= 3 && c.KeyMode == "per-file" && c.BranchKeyRotation == "":
	case c.FormatVersion >= 2 && c.FormatVersion <= 3 && c.KeyMode == "branch" && c.BranchKeyRotation != "":
	default:
		t.Errorf("format_version %d, key_mode %q, branch_key_rotation %q: want version 1 without them, or 2 or 3 with a key mode", c.FormatVersion, c.KeyMode, c.BranchKeyRotation)
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
	mounts, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(dir))
	if err != nil {
		t.Fatal(err)
	}
	return len(mounts) > 0
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

// cliKeyFiles lists the files under dir (recursively), but not the
// trusted copies of volume configs (kmsfs/trusted), for "no key file was
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
		if d.IsDir() && d.Name() == "trusted" && filepath.Base(filepath.Dir(p)) == "kmsfs" {
			return filepath.SkipDir // trusted copies of configs, no keys
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
