package tests

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
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
		var c map[string]any
		if err := json.Unmarshal(pristine, &c); err != nil {
			t.Fatal(err)
		}
		f(c)
		b, err := json.MarshalIndent(c, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, cfgPath, b)
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
// here) mounts, and its config is trusted from then on.
func TestFirstMountTrustsConfig(t *testing.T) {
	t.Parallel()
	requireFUSE(t)
	v := newVolume(t, nil)
	xdg := ""
	for _, e := range v.Env {
		if s, ok := strings.CutPrefix(e, "XDG_CONFIG_HOME="); ok {
			xdg = s
		}
	}
	trusted := filepath.Join(xdg, "kmsfs", "trusted")
	ents, err := os.ReadDir(trusted)
	if err != nil || len(ents) != 2 {
		t.Fatalf("after init, %s holds %v (%v), want the volume's trusted config, by volume ID and by CIPHERDIR", trusted, ents, err)
	}
	st, err := os.Stat(trusted)
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("%s: %v %v, want mode 0700", trusted, st.Mode(), err)
	}
	if err := os.RemoveAll(trusted); err != nil {
		t.Fatal(err)
	}
	m := mountVolume(t, v)
	if !strings.Contains(m.log.String(), "first mount of this volume here") {
		t.Errorf("the mount log does not say it trusts the config on first use:\n%s", m.log.String())
	}
	if err := m.unmount(); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(trusted, ents[0].Name())); err != nil || string(got) != string(readFile(t, filepath.Join(v.Dir, "kmsfs.json"))) {
		t.Errorf("trusted copy after the first mount: %v; want the volume's config", err)
	}
}
