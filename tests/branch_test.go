package tests

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/keyring/kmstest"
)

// Branch keys (kmsfs init --branch-keys): every KMS call is counted at the
// proxy in front of local-kms.

// newBranchEnv is a kmsEnv whose volume is in key mode "branch", with the
// extra init flags given.
func newBranchEnv(t testing.TB, flags ...string) *kmsEnv {
	t.Helper()
	srv := kmstest.Start(t)
	p := kmstest.NewProxy(t, srv.Endpoint())
	args := append([]string{"--branch-keys", "--kms-key", kmstest.KeyAARN, "--kms-endpoint", p.Endpoint()}, flags...)
	vol := newVolume(t, srv.Env(), args...)
	return &kmsEnv{srv: srv, proxy: p, vol: vol}
}

// branchIDOf returns the branch key ID a cipher file's header names.
func branchIDOf(t testing.TB, path string) string {
	t.Helper()
	out, errOut, code := run(t, nil, "inspect", path)
	if code != 0 {
		t.Fatalf("inspect %s: %s", path, errOut)
	}
	var h struct {
		WrappedKeys []struct {
			Keyring string `json:"keyring"`
			KeyID   string `json:"key_id"`
		} `json:"wrapped_keys"`
	}
	if err := json.Unmarshal([]byte(out), &h); err != nil {
		t.Fatal(err)
	}
	if len(h.WrappedKeys) != 1 || h.WrappedKeys[0].Keyring != "branch" {
		t.Fatalf("%s: wrapped keys %+v, want one branch entry", path, h.WrappedKeys)
	}
	return h.WrappedKeys[0].KeyID
}

func branchKeyFiles(t testing.TB, v *volume) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(v.Dir, ".kmsfs", "branch"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// TestBranchKeysCalls: a branch-key volume on KMS makes its first branch
// key at init; a mount unwraps it once; creating, reading, renaming and
// listing 300 files then costs no KMS call, and a remount reading them
// all one. The branch key file names the KMS key and context, so the
// chain from a file to KMS can be checked independently.
func TestBranchKeysCalls(t *testing.T) {
	t.Parallel()
	env := newBranchEnv(t)
	if n := len(branchKeyFiles(t, env.vol)); n != 1 {
		t.Fatalf("init left %d branch key files, want 1", n)
	}
	env.proxy.Reset()
	k := env.mount(t)
	k.reset(t)
	const n = 300
	for i := range n {
		writeFile(t, k.path(fmt.Sprintf("f%d", i)), patterned(i, 100+i))
	}
	for i := range n {
		if got := readFile(t, k.path(fmt.Sprintf("f%d", i))); !bytes.Equal(got, patterned(i, 100+i)) {
			t.Fatalf("f%d differs", i)
		}
	}
	if err := os.Rename(k.path("f0"), k.path("g0")); err != nil {
		t.Fatal(err)
	}
	if ents, err := os.ReadDir(k.Dir); err != nil || len(ents) != n {
		t.Fatalf("listing: %d entries, %v", len(ents), err)
	}
	k.idle(t)
	k.expectCalls(t, fmt.Sprintf("creating, reading, renaming and listing %d files", n), 0, 0)
	if mount := env.proxy.Total(); mount > 1 {
		t.Errorf("the mount itself made %d KMS calls, want at most 1", mount)
	}
	if err := k.unmount(); err != nil {
		t.Fatal(err)
	}

	env.proxy.Reset()
	k = env.mount(t, "--read-only")
	for i := 1; i < n; i++ {
		if got := readFile(t, k.path(fmt.Sprintf("f%d", i))); !bytes.Equal(got, patterned(i, 100+i)) {
			t.Fatalf("f%d differs after remount", i)
		}
	}
	if g, d := env.proxy.Count("GenerateDataKey"), env.proxy.Count("Decrypt"); g != 0 || d != 1 {
		t.Errorf("a read-only remount reading %d files: %d GenerateDataKey, %d Decrypt; want 0, 1", n-1, g, d)
	}
	// The file names its branch key; the branch key file names KMS.
	id := branchIDOf(t, filepath.Join(env.vol.Dir, "f1"))
	out, _, code := run(t, nil, "inspect", filepath.Join(env.vol.Dir, ".kmsfs", "branch", id))
	if code != 0 || !strings.Contains(out, `"branch_id": "`+id+`"`) || !strings.Contains(out, kmstest.KeyAARN) || !strings.Contains(out, `"kmsfs:branch": "`+id+`"`) {
		t.Errorf("inspect of the branch key file:\n%s", out)
	}
}

// TestBranchKeysRotationAndTTL: after the rotation period new files get a
// new branch key (one GenerateDataKey) and older files still read; past
// the TTL a branch key is unwrapped again, once per expiry.
func TestBranchKeysRotationAndTTL(t *testing.T) {
	t.Parallel()
	env := newBranchEnv(t, "--branch-key-rotation", "1s")
	k := env.mount(t, "--branch-key-ttl", "1s")
	writeFile(t, k.path("old"), []byte("old"))
	oldID := branchIDOf(t, filepath.Join(env.vol.Dir, "old"))
	time.Sleep(1100 * time.Millisecond) // the rotation period is time
	env.proxy.Reset()
	writeFile(t, k.path("new"), []byte("new"))
	newID := branchIDOf(t, filepath.Join(env.vol.Dir, "new"))
	// (init made one; the mount may have made another if init was more
	// than the period before it, on a slow machine.)
	if keys := branchKeyFiles(t, env.vol); newID == oldID || !slices.Contains(keys, oldID) || !slices.Contains(keys, newID) {
		t.Fatalf("after the rotation period: new file under %s, old under %s, key files %v", newID, oldID, keys)
	}
	if g := env.proxy.Count("GenerateDataKey"); g != 1 {
		t.Errorf("rotation made %d GenerateDataKey, want 1", g)
	}
	if got := readFile(t, k.path("old")); string(got) != "old" {
		t.Fatalf("old file: %q", got)
	}
	// Each read below comes after the TTL: one Decrypt each.
	for i := range 2 {
		time.Sleep(1100 * time.Millisecond)
		env.proxy.Reset()
		if got := readFile(t, k.path("old")); string(got) != "old" {
			t.Fatalf("old file: %q", got)
		}
		if d := env.proxy.Count("Decrypt"); d != 1 {
			t.Errorf("read %d after the TTL: %d Decrypt, want 1", i, d)
		}
	}
}

// TestBranchKeysDisabledKey: with the KMS key disabled, open files keep
// working, and so do new opens while the branch key is held; once its TTL
// has passed new opens fail with EACCES.
func TestBranchKeysDisabledKey(t *testing.T) {
	t.Parallel()
	env := newBranchEnv(t)
	k := env.mount(t, "--branch-key-ttl", "2s")
	k.AllowWarnings = true
	for i := range 3 {
		writeFile(t, k.path(fmt.Sprintf("f%d", i)), patterned(i, 5000))
	}
	if err := k.unmount(); err != nil {
		t.Fatal(err)
	}
	k = env.mount(t, "--branch-key-ttl", "2s", "--read-only")
	k.AllowWarnings = true
	held, err := os.Open(k.path("f0"))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	start := time.Now()
	env.srv.DisableKey(t, kmstest.KeyAARN)
	if got := readFile(t, k.path("f1")); !bytes.Equal(got, patterned(1, 5000)) && time.Since(start) < 2*time.Second {
		t.Error("a new open within the TTL failed")
	}
	pollUntil(t, 30*time.Second, "new opens to fail with the key disabled", func() bool {
		_, err := os.ReadFile(k.path("f2"))
		return errors.Is(err, syscall.EACCES)
	})
	buf := make([]byte, 5000)
	if n, err := held.ReadAt(buf, 0); n != 5000 || !bytes.Equal(buf, patterned(0, 5000)) {
		t.Errorf("the file open before the key was disabled: %d bytes, %v", n, err)
	}
}

// TestBranchKeysTamper: a damaged, swapped or foreign branch key file
// fails the reads of its files with EIO and a warning; other volumes'
// branch key files cannot stand in for it.
func TestBranchKeysTamper(t *testing.T) {
	t.Parallel()
	v := newVolume(t, nil, "--branch-keys")
	other := newVolume(t, nil, "--branch-keys")
	m := mountVolume(t, v)
	writeFile(t, m.path("f"), []byte("secret"))
	if err := m.unmount(); err != nil {
		t.Fatal(err)
	}
	id := branchIDOf(t, filepath.Join(v.Dir, "f"))
	path := filepath.Join(v.Dir, ".kmsfs", "branch", id)
	orig := readFile(t, path)
	otherFile := readFile(t, filepath.Join(other.Dir, ".kmsfs", "branch", branchKeyFiles(t, other)[0]))
	for name, bad := range map[string][]byte{
		"a bit flipped in its MAC":      func() []byte { b := bytes.Clone(orig); b[len(b)-3] ^= 1; return b }(),
		"a bit flipped in its blob":     func() []byte { b := bytes.Clone(orig); b[150] ^= 1; return b }(),
		"cut":                           orig[:100],
		"another volume's branch key":   otherFile,
		"another branch key of its own": nil, // filled below
	} {
		if bad == nil {
			continue
		}
		writeFile(t, path, bad)
		m := mountVolume(t, v, "--read-only")
		m.AllowWarnings = true
		if _, err := os.ReadFile(m.path("f")); !errors.Is(err, syscall.EIO) && !errors.Is(err, syscall.EACCES) {
			t.Errorf("%s: read %v, want EIO", name, err)
		}
		if err := m.unmount(); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, path, orig)
	m = mountVolume(t, v, "--read-only")
	if got := readFile(t, m.path("f")); string(got) != "secret" {
		t.Fatalf("restored: %q", got)
	}
}

// TestBranchKeysMulti: a branch key wrapped under two KMS keys opens with
// either: with key A disabled, a read-only mount reads through key B.
func TestBranchKeysMulti(t *testing.T) {
	t.Parallel()
	env := newBranchEnv(t, "--kms-key", kmstest.KeyBARN)
	k := env.mount(t)
	writeFile(t, k.path("f"), []byte("two keys"))
	if err := k.unmount(); err != nil {
		t.Fatal(err)
	}
	env.srv.DisableKey(t, kmstest.KeyAARN)
	k = env.mount(t, "--read-only")
	k.AllowWarnings = true
	if got := readFile(t, k.path("f")); string(got) != "two keys" {
		t.Fatalf("read with key A disabled: %q", got)
	}
}
