package tests

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
)

// TestMountRefusesChangedConfig: someone who can write CIPHERDIR adds a
// KMS keyring of their own, at their own endpoint, to kmsfs.json. Were it
// used, every new file's data key would be sent to them (Encrypt carries
// the plaintext key). The mount refuses the changed config before it
// contacts any key service, and says why; the pristine config still
// mounts. A change made on purpose is accepted once with --trust-config,
// and from then on mounts without it.
func TestMountRefusesChangedConfig(t *testing.T) {
	t.Parallel()
	requireFUSE(t)
	var calls atomic.Int64
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		http.Error(w, "no", http.StatusForbidden)
	}))
	defer evil.Close()

	v := newVolume(t, nil)
	// Credentials the SDK would sign with, as on a machine with AWS access.
	v.Env = append(v.Env, "AWS_ACCESS_KEY_ID=AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY=example", "AWS_REGION=eu-west-2",
		"AWS_CONFIG_FILE="+os.DevNull, "AWS_SHARED_CREDENTIALS_FILE="+os.DevNull, "AWS_EC2_METADATA_DISABLED=true")
	cfgPath := filepath.Join(v.Dir, "kmsfs.json")
	pristine := readFile(t, cfgPath)

	edit := func(f func(map[string]any)) {
		t.Helper()
		editConfigJSON(t, cfgPath, pristine, f)
	}
	mnt := t.TempDir()
	refused := func(what string) {
		t.Helper()
		out, errOut, code := run(t, v.Env, "mount", v.Dir, mnt)
		if code != cliExitVolume || !strings.Contains(errOut, "differs from the copy of it this machine trusts") || !strings.Contains(errOut, "--trust-config") {
			t.Errorf("mount with %s: exit %d, want %d and an error naming the trusted copy and --trust-config\n%s%s", what, code, cliExitVolume, out, errOut)
		}
		if cliMounted(t, mnt) {
			t.Fatalf("mount with %s: mounted", what)
		}
	}

	const evilARN = "arn:aws:kms:eu-west-2:999999999999:key/00000000-0000-0000-0000-000000000000"
	edit(func(c map[string]any) {
		c["keyrings"] = append(c["keyrings"].([]any), map[string]any{
			"kind": "aws-kms", "key_id": "alias/backup", "key_arn": evilARN, "endpoint": evil.URL})
	})
	refused("an added KMS keyring")
	// With a new volume ID as well, no copy is found by ID: the copy
	// kept for this CIPHERDIR still catches it.
	edit(func(c map[string]any) {
		c["volume_id"] = "0123456789abcdef0123456789abcdef"
		c["keyrings"] = append(c["keyrings"].([]any), map[string]any{
			"kind": "aws-kms", "key_id": "alias/backup", "key_arn": evilARN, "endpoint": evil.URL})
	})
	refused("an added KMS keyring and a new volume ID")
	if n := calls.Load(); n != 0 {
		t.Errorf("the added keyring's endpoint got %d requests, want 0", n)
	}
	_, errOut, _ := run(t, v.Env, "mount", v.Dir, mnt)
	if !strings.Contains(errOut, evilARN) {
		t.Errorf("the refusal does not name the added key %s:\n%s", evilARN, errOut)
	}

	// The same key file under another path: a change the owner may make.
	moved := filepath.Join(t.TempDir(), "moved.key")
	keyFile := localKeyFile(t, v)
	if err := os.WriteFile(moved, readFile(t, keyFile), 0o600); err != nil {
		t.Fatal(err)
	}
	edit(func(c map[string]any) {
		c["keyrings"].([]any)[0].(map[string]any)["key_file"] = moved
	})
	refused("a moved key file")

	m := mountVolume(t, v, "--trust-config")
	m.AllowWarnings = true // the accepted change is logged as a warning
	writeFile(t, m.path("f"), []byte("after the move"))
	if !strings.Contains(m.log.String(), "trusting the changed volume config") {
		t.Errorf("the mount log does not record the accepted change:\n%s", m.log.String())
	}
	if err := m.unmount(); err != nil {
		t.Fatal(err)
	}
	m = mountVolume(t, v)
	if got := readFile(t, m.path("f")); string(got) != "after the move" {
		t.Errorf("read %q after remount", got)
	}
	if err := m.unmount(); err != nil {
		t.Fatal(err)
	}

	// The old config is now the changed one.
	writeFile(t, cfgPath, pristine)
	refused("the config trusted before --trust-config")
}

// TestFirstMountTrustsConfig: a volume init'ed elsewhere (no trusted copy
// here) mounts once its own files attest its keyrings, says so at WARN
// naming its keys, and its config is trusted from then on, compared by
// meaning: a change of spacing is no change.
func TestFirstMountTrustsConfig(t *testing.T) {
	t.Parallel()
	requireFUSE(t)
	v := newVolume(t, nil)
	trusted := trustedDir(v)
	ents, err := os.ReadDir(trusted)
	if err != nil || len(ents) != 2 {
		t.Fatalf("after init, %s holds %v (%v), want the volume's trusted config, by volume ID and by CIPHERDIR", trusted, ents, err)
	}
	st, err := os.Stat(trusted)
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("%s: %v %v, want mode 0700", trusted, st.Mode(), err)
	}
	m := mountVolume(t, v)
	writeFile(t, m.path("f"), []byte("attests the keys"))
	if err := m.unmount(); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(trusted); err != nil {
		t.Fatal(err)
	}
	m = mountVolume(t, v)
	m.AllowWarnings = true
	// The child's stderr reaches m.log through a pipe of its own, read
	// apart from the stdout that said it was mounted: wait for it.
	firstUse := regexp.MustCompile(`level=WARN msg="first mount of this volume here.*keyrings="\[local [0-9a-f]{32}`)
	if !logEventually(m, firstUse.MatchString) {
		t.Errorf("the mount log does not warn that it trusts the config on first use, naming its keys:\n%s", m.log.String())
	}
	if err := m.unmount(); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(trusted, ents[0].Name())); err != nil || !strings.Contains(string(got), `"volume_id"`) {
		t.Errorf("trusted copy after the first mount: %v; want the volume's config", err)
	}

	// Only the spacing changed: the same config.
	cfgPath := filepath.Join(v.Dir, "kmsfs.json")
	var c map[string]any
	if err := json.Unmarshal(readFile(t, cfgPath), &c); err != nil {
		t.Fatal(err)
	}
	compact, _ := json.Marshal(c)
	writeFile(t, cfgPath, compact)
	m = mountVolume(t, v)
	if err := m.unmount(); err != nil {
		t.Fatal(err)
	}
}

// TestFirstUseNeedsAttestation: on a machine with no trusted copy, a
// config is trusted only if a file of the volume has a data key wrapped
// under every keyring it names. Someone who can write CIPHERDIR, reaching
// a host by a path it has no copy for, with a new volume ID and an added
// KMS keyring of theirs, gets no request at their endpoint; nor does a
// volume with no file yet mount without --trust-config.
func TestFirstUseNeedsAttestation(t *testing.T) {
	t.Parallel()
	requireFUSE(t)
	var calls atomic.Int64
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		http.Error(w, "no", http.StatusForbidden)
	}))
	defer evil.Close()
	v := newVolume(t, nil)
	v.Env = append(v.Env, "AWS_ACCESS_KEY_ID=AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY=example", "AWS_REGION=eu-west-2",
		"AWS_CONFIG_FILE="+os.DevNull, "AWS_SHARED_CREDENTIALS_FILE="+os.DevNull, "AWS_EC2_METADATA_DISABLED=true")
	mnt := t.TempDir()

	// A new volume, no file yet, on a machine that has not seen it.
	os.RemoveAll(trustedDir(v))
	_, errOut, code := mountRefused(t, v.Env, v.Dir, mnt)
	if code != cliExitVolume || !strings.Contains(errOut, "--trust-config") || !strings.Contains(errOut, "0 examined") {
		t.Errorf("first mount of an empty volume: exit %d, want %d and a line naming --trust-config\n%s", code, cliExitVolume, errOut)
	}
	m := mountVolume(t, v, "--trust-config")
	m.AllowWarnings = true
	writeFile(t, m.path("f"), []byte("the owner's file"))
	if err := m.unmount(); err != nil {
		t.Fatal(err)
	}

	// The attacker's change, seen by a machine with no copy.
	os.RemoveAll(trustedDir(v))
	cfgPath := filepath.Join(v.Dir, "kmsfs.json")
	var c map[string]any
	if err := json.Unmarshal(readFile(t, cfgPath), &c); err != nil {
		t.Fatal(err)
	}
	const evilARN = "arn:aws:kms:eu-west-2:999999999999:key/00000000-0000-0000-0000-000000000000"
	for _, newID := range []bool{false, true} {
		if newID {
			c["volume_id"] = "0123456789abcdef0123456789abcdef"
		}
		c["keyrings"] = append(c["keyrings"].([]any)[:1], map[string]any{"kind": "aws-kms", "key_id": "alias/backup", "key_arn": evilARN, "endpoint": evil.URL})
		b, _ := json.MarshalIndent(c, "", "  ")
		writeFile(t, cfgPath, b)
		for _, flags := range [][]string{nil, {"--kms-endpoint", evil.URL}} {
			_, errOut, code := mountRefused(t, v.Env, append(flags, v.Dir, mnt)...)
			if code == 0 || cliMounted(t, mnt) {
				t.Fatalf("an added keyring (new volume ID %v, flags %v) was trusted on first use", newID, flags)
			}
			t.Logf("new volume ID %v, flags %v: exit %d: %s", newID, flags, code, strings.TrimSpace(errOut))
		}
	}
	if n := calls.Load(); n != 0 {
		t.Errorf("the added keyring's endpoint got %d requests, want 0", n)
	}
}

// TestFirstUseEndpoint: a KMS endpoint named in a config this machine does
// not trust yet is not used unless the host names it too (the flag, or
// AWS_ENDPOINT_URL_KMS).
func TestFirstUseEndpoint(t *testing.T) {
	t.Parallel()
	requireFUSE(t)
	env := newKMSEnv(t)
	m := env.mount(t)
	writeFile(t, m.path("f"), []byte("attests the key"))
	if err := m.unmount(); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(trustedDir(env.vol))
	mnt := t.TempDir()
	var noEnv []string // the host names no endpoint of its own
	for _, e := range env.vol.Env {
		if !strings.HasPrefix(e, "AWS_ENDPOINT_URL_KMS=") {
			noEnv = append(noEnv, e)
		}
	}
	_, errOut, code := mountRefused(t, noEnv, env.vol.Dir, mnt)
	if code != cliExitVolume || !strings.Contains(errOut, "--kms-endpoint "+env.proxy.Endpoint()) || !strings.Contains(errOut, "AWS_ENDPOINT_URL_KMS") {
		t.Errorf("first use of a config naming an endpoint: exit %d, want %d and a line naming the flag\n%s", code, cliExitVolume, errOut)
	}
	if cliMounted(t, mnt) {
		t.Fatal("mounted")
	}
	for _, how := range []string{"flag", "env"} {
		os.RemoveAll(trustedDir(env.vol))
		var m *mount
		if how == "flag" {
			m = mountVolume(t, env.vol, "--kms-endpoint", env.proxy.Endpoint())
		} else {
			v := *env.vol
			v.Env = append(append([]string(nil), v.Env...), "AWS_ENDPOINT_URL_KMS="+env.proxy.Endpoint())
			m = mountVolume(t, &v)
		}
		m.AllowWarnings = true // the first use
		if got := readFile(t, m.path("f")); string(got) != "attests the key" {
			t.Errorf("%s: read %q", how, got)
		}
		if err := m.unmount(); err != nil {
			t.Fatal(err)
		}
	}
}

// mountRefused runs a kmsfs mount expected to be refused. It detaches
// (-d), so one that mounts after all returns, and is unmounted and
// reported as exit code 0.
func mountRefused(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	out, errOut, code := run(t, env, append([]string{"mount", "-d"}, args...)...)
	if code == 0 {
		run(t, env, "unmount", args[len(args)-1])
	}
	return out, errOut, code
}

// trustedDir is where v's machine keeps its trusted copies.
func trustedDir(v *volume) string {
	for _, e := range v.Env {
		if s, ok := strings.CutPrefix(e, "XDG_CONFIG_HOME="); ok {
			return filepath.Join(s, "kmsfs", "trusted")
		}
	}
	return ""
}

// editConfigJSON writes to path the config base with f's changes to its
// fields.
func editConfigJSON(t *testing.T, path string, base []byte, f func(map[string]any)) {
	t.Helper()
	var c map[string]any
	if err := json.Unmarshal(base, &c); err != nil {
		t.Fatal(err)
	}
	f(c)
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, b)
}
