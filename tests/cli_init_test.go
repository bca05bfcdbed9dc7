package tests

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/keyring/kmstest"
)

func TestInitDefaultLocalKey(t *testing.T) {
	t.Parallel()
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
	if c.FormatVersion != 3 || c.KeyMode != "per-file" {
		t.Errorf("format_version %d, key_mode %q: a new volume has version 3, per-file by default", c.FormatVersion, c.KeyMode)
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
	t.Parallel()
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
	t.Parallel()
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
	t.Parallel()
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
	t.Parallel()
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
	t.Parallel()
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
	t.Parallel()
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
	t.Parallel()
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
	t.Parallel()
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
	t.Parallel()
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

// TestInitKMSFlagsWithoutKMSKey: --region and --kms-endpoint without a
// --kms-key would be silently ignored on a local-key volume: refused.
func TestInitKMSFlagsWithoutKMSKey(t *testing.T) {
	t.Parallel()
	for _, flag := range [][]string{{"--region", "eu-west-2"}, {"--kms-endpoint", "http://127.0.0.1:9"}} {
		t.Run(flag[0], func(t *testing.T) {
			base := t.TempDir()
			dir := filepath.Join(base, "cipher")
			xdg := filepath.Join(base, "config")
			out, errOut, code := run(t, []string{"XDG_CONFIG_HOME=" + xdg}, append(append([]string{"init"}, flag...), dir)...)
			cliWantFail(t, "init "+flag[0]+" without --kms-key", out, errOut, code, cliExitUsage, "--kms-key")
			if _, err := os.Lstat(dir); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("a refused init created CIPHERDIR (%v)", err)
			}
		})
	}
}

// TestInitUnknownAWSProfile: an AWS_PROFILE the SDK does not know is a
// key problem (exit 11), not a usage error; mount says the same.
func TestInitUnknownAWSProfile(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	env := append(srv.Env(), "AWS_PROFILE=kmsfs-no-such-profile", "XDG_CONFIG_HOME="+t.TempDir())
	dir := filepath.Join(t.TempDir(), "cipher")
	out, errOut, code := run(t, env, "init", "--kms-key", kmstest.KeyAARN, "--kms-endpoint", srv.Endpoint(), dir)
	cliWantFail(t, "init with an unknown AWS_PROFILE", out, errOut, code, cliExitKey, "kmsfs-no-such-profile", "AWS_PROFILE")

	v := newVolume(t, srv.Env(), "--kms-key", kmstest.KeyAARN, "--kms-endpoint", srv.Endpoint())
	mnt := t.TempDir()
	out, errOut, code = cliRunBounded(t, time.Minute, append(v.Env, "AWS_PROFILE=kmsfs-no-such-profile"), "mount", v.Dir, mnt)
	cliWantFail(t, "mount with an unknown AWS_PROFILE", out, errOut, code, cliExitKey, "kmsfs-no-such-profile")
}
