package tests

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/blockcipher"
	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/keyring/agekey"
	"github.com/kmsfs/kmsfs/keyring/kmstest"
	kvolume "github.com/kmsfs/kmsfs/volume"
)

// A recovery recipient is a public key: anyone who can read kmsfs.json
// and write CIPHERDIR can make headers and branch key files whose key
// only the recipient's identity opens, and know that key. These tests
// plant such files as that person would.

// volumeAndRecipient opens the volume in dir and parses recipient.
func volumeAndRecipient(t *testing.T, dir, recipient string) (*kvolume.Volume, *agekey.Recipient) {
	t.Helper()
	vol, err := kvolume.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := agekey.ParseRecipient(recipient)
	if err != nil {
		t.Fatal(err)
	}
	return vol, r
}

// plantForRecipient writes a stored file at rel in the volume in dir,
// holding plain, whose key is wrapped to recipient, after the entries
// claims (copied from another file: they claim the volume's keys, and do
// not open for this one).
func plantForRecipient(t *testing.T, dir, rel, recipient string, plain []byte, claims ...keyring.WrappedKey) {
	t.Helper()
	vol, r := volumeAndRecipient(t, dir, recipient)
	id := blockcipher.NewID()
	dk, w, err := r.GenerateDataKey(context.Background(), vol.FileContext(id))
	if err != nil {
		t.Fatal(err)
	}
	defer dk.Wipe()
	h, err := vol.NewHeader(id, append(claims, w...))
	if err != nil {
		t.Fatal(err)
	}
	slot, c, err := h.Seal(dk.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Wipe()
	// The header slot, the journal area (a hole), the one block.
	stored := append(slot, make([]byte, vol.Layout.JournalSize())...)
	stored = append(stored, c.SealBlock(nil, plain, 0, true)...)
	if err := os.WriteFile(filepath.Join(dir, rel), stored, 0o644); err != nil {
		t.Fatal(err)
	}
}

// plantBranchKey writes a branch key file dated created into the volume
// in dir, wrapped to recipient and, if localKey is not "", to that key
// file's key too (a genuine one, for a test that holds the volume's key).
// It returns the branch ID, hex.
func plantBranchKey(t *testing.T, dir string, created time.Time, recipient, localKey string) string {
	t.Helper()
	vol, r := volumeAndRecipient(t, dir, recipient)
	id := kvolume.NewBranchID(created)
	ec := vol.BranchContext(id)
	dk, w, err := r.GenerateDataKey(context.Background(), ec)
	if err != nil {
		t.Fatal(err)
	}
	defer dk.Wipe()
	if localKey != "" {
		l, err := keyring.LoadLocal(localKey)
		if err != nil {
			t.Fatal(err)
		}
		lw, err := l.Wrap(context.Background(), dk, ec)
		if err != nil {
			t.Fatal(err)
		}
		w = append([]keyring.WrappedKey{lw}, w...)
	}
	h, err := vol.NewBranchHeader(id, w)
	if err != nil {
		t.Fatal(err)
	}
	slot, c, err := h.Seal(dk.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	c.Wipe()
	if err := vol.WriteBranch(id, slot); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(id[:])
}

// TestIdentityRefusesPlanted: the offline commands and rewrap use the
// recovery identity only for a header that has an entry of the volume's
// own keys which those could not answer for; a header planted for the
// recipient alone is damage, with the volume's key at hand or without
// it.
func TestIdentityRefusesPlanted(t *testing.T) {
	t.Parallel()
	const n = 3
	identity, recipient := newAgeIdentity(t)
	base := t.TempDir()
	key := filepath.Join(base, "main.key")
	v := newVolumeIn(t, base, nil, "--local-key", key, "--recipient", recipient)
	fillVolume(t, v, n)
	plantForRecipient(t, v.Dir, "planted", recipient, []byte("the planter's text\n"))
	planted := filepath.Join(v.Dir, "planted")

	for _, lost := range []bool{false, true} {
		if lost {
			os.Rename(key, key+".lost")
		}
		out, errOut, code := run(t, v.Env, "cat", "--identity", identity, planted)
		if code == cliExitOK || out != "" || !strings.Contains(errOut, "no entry for each of the volume's keys") {
			t.Errorf("key lost %v: cat --identity of a planted file: exit %d, %q, %q; want a refusal", lost, code, out, errOut)
		}
		if out, errOut, code := run(t, v.Env, "cat", "--identity", identity, filepath.Join(v.Dir, "f2")); code != cliExitOK || out != string(patterned(2, 100+2*37)) {
			t.Errorf("key lost %v: cat --identity of a genuine file: exit %d, %s", lost, code, errOut)
		}
		dest := filepath.Join(t.TempDir(), "export")
		if _, errOut, code := run(t, v.Env, "export", "--identity", identity, v.Dir, dest); code == cliExitOK || !strings.Contains(errOut, "planted") {
			t.Errorf("key lost %v: export --identity with a planted file: exit %d, %s; want it stopped at the file", lost, code, errOut)
		}
		newKey := filepath.Join(base, "new.key")
		out, errOut, code = run(t, v.Env, "rewrap", "--json", "--identity", identity, "--local-key", newKey, "--recipient", recipient, v.Dir)
		if code == cliExitOK || !strings.Contains(errOut, "planted") {
			t.Errorf("key lost %v: rewrap --identity with a planted file: exit %d\n%s%s\nwant it to fail naming the file", lost, code, out, errOut)
		}
		if lost {
			break
		}
		// Finish that rewrap without the planted file, so the next
		// round starts from a volume under one key.
		os.Rename(planted, filepath.Join(base, "planted.aside"))
		runRewrap(t, v, "--identity", identity, "--local-key", newKey, "--recipient", recipient)
		os.Rename(filepath.Join(base, "planted.aside"), planted)
		key = newKey
	}
}

// TestRewrapPlantedBranchKeys: a branch key file planted for the recovery
// recipient never becomes the volume's: rewrap --identity, with the
// volume's key at hand, leaves it as it is, and ends by making the
// branch key new files go under. A genuine branch key dated a day ahead
// of the clock stops the run with the date named.
func TestRewrapPlantedBranchKeys(t *testing.T) {
	t.Parallel()
	const n = 3
	identity, recipient := newAgeIdentity(t)
	base := t.TempDir()
	oldKey := filepath.Join(base, "old.key")
	v := newVolumeIn(t, base, nil, "--branch-keys", "--local-key", oldKey, "--recipient", recipient)
	fillVolume(t, v, n)
	now := plantBranchKey(t, v.Dir, time.Now(), recipient, "")
	ahead := plantBranchKey(t, v.Dir, time.Date(2262, 1, 1, 0, 0, 0, 0, time.UTC), recipient, "")
	junk := filepath.Join(v.Dir, kvolume.BranchStore, strings.Repeat("7f", blockcipher.IDSize))
	if err := os.WriteFile(junk, []byte("not a branch key"), 0o644); err != nil {
		t.Fatal(err)
	}

	newKey := filepath.Join(base, "new.key")
	s := runRewrap(t, v, "--identity", identity, "--local-key", newKey, "--recipient", recipient)
	if s.BranchRewrap != 1 || len(s.BranchSkipped) != 3 || s.NewBranchKey == "" {
		t.Errorf("summary %+v: want the genuine branch key rewrapped, the three planted ones left, and a new one made", s)
	}
	os.Rename(oldKey, oldKey+".gone")
	checkVolume(t, v, n)
	m := mountVolume(t, v)
	writeFile(t, m.path("after"), []byte("written after the rewrap\n"))
	m.unmount()
	out, errOut, code := run(t, nil, "inspect", filepath.Join(v.Dir, "after"))
	var ins struct {
		WrappedKeys []struct {
			KeyID string `json:"key_id"`
		} `json:"wrapped_keys"`
	}
	if err := json.Unmarshal([]byte(out), &ins); code != cliExitOK || err != nil || len(ins.WrappedKeys) != 1 {
		t.Fatalf("inspect: exit %d, %v\n%s%s", code, err, out, errOut)
	}
	got := ins.WrappedKeys[0].KeyID
	if got != s.NewBranchKey || got == now || got == ahead {
		t.Errorf("a new file is under branch key %s; want %s, the one rewrap made", got, s.NewBranchKey)
	}

	// Genuine (under the volume's key now), but dated a day ahead.
	os.Remove(junk)
	for _, id := range []string{now, ahead} {
		os.Remove(filepath.Join(v.Dir, kvolume.BranchStore, id))
	}
	plantBranchKey(t, v.Dir, time.Now().Add(24*time.Hour), recipient, newKey)
	out, errOut, code = run(t, v.Env, "rewrap", "--local-key", filepath.Join(base, "third.key"), v.Dir)
	if code == cliExitOK || !strings.Contains(errOut, "ahead of this machine's clock") {
		t.Errorf("rewrap with a branch key dated a day ahead: exit %d\n%s%s", code, out, errOut)
	}
}

// TestIdentityWhenKMSKeyDisabled: with the volume's KMS key disabled, the
// recovery identity reads the files (the loss it is for), and still not
// a file planted for the recipient alone.
func TestIdentityWhenKMSKeyDisabled(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	identity, recipient := newAgeIdentity(t)
	v := newVolume(t, srv.Env(), "--kms-key", kmstest.KeyAARN, "--kms-endpoint", srv.Endpoint(), "--recipient", recipient)
	fillVolume(t, v, 2)
	plantForRecipient(t, v.Dir, "planted", recipient, []byte("the planter's text\n"))
	srv.DisableKey(t, kmstest.KeyAARN)
	if _, _, code := run(t, v.Env, "cat", filepath.Join(v.Dir, "d", "f1")); code == cliExitOK {
		t.Error("cat with the key disabled and no identity succeeded")
	}
	if out, errOut, code := run(t, v.Env, "cat", "--identity", identity, filepath.Join(v.Dir, "d", "f1")); code != cliExitOK || out != string(patterned(1, 100+37)) {
		t.Errorf("cat --identity with the KMS key disabled: exit %d, %s", code, errOut)
	}
	if out, errOut, code := run(t, v.Env, "cat", "--identity", identity, filepath.Join(v.Dir, "planted")); code == cliExitOK || out != "" {
		t.Errorf("cat --identity of a planted file with the KMS key disabled: exit %d, %q, %s", code, out, errOut)
	}
	// fsck says which keys came from the identity: the calls the key
	// service refused are not keys it gave.
	out, errOut, _ := run(t, v.Env, "fsck", "--json", "--identity", identity, v.Dir)
	var rep struct {
		Calls    int64 `json:"key_service_calls"`
		Identity int64 `json:"identity_unwraps"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("fsck --json: %v: %s %s", err, out, errOut)
	}
	if rep.Identity == 0 || rep.Calls < rep.Identity {
		t.Errorf("fsck --identity with the KMS key disabled: %d key service calls, %d identity unwraps; want every genuine file's key from the identity", rep.Calls, rep.Identity)
	}
}

// claimsOf returns the entries of the stored file at path but its age
// ones, for plantForRecipient.
func claimsOf(t *testing.T, path string) []keyring.WrappedKey {
	t.Helper()
	var out []keyring.WrappedKey
	for _, w := range cliInspect(t, path).WrappedKeys {
		if w.Keyring == "age" {
			continue
		}
		blob, err := base64.StdEncoding.DecodeString(w.CiphertextBlob)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, keyring.WrappedKey{Kind: keyring.Kind(w.Keyring), KeyID: w.KeyID, Blob: blob})
	}
	return out
}

// TestIdentityPartialLoss: with one of the volume's keys lost and another
// still there, a planted header passes neither by leaving out the entry
// of the key that is there, nor by carrying a copy of another file's (found
// by review); a genuine file still opens.
func TestIdentityPartialLoss(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	identity, recipient := newAgeIdentity(t)
	base := t.TempDir()
	key := filepath.Join(base, "main.key")
	v := newVolumeIn(t, base, srv.Env(), "--kms-key", kmstest.KeyAARN, "--kms-endpoint", srv.Endpoint(), "--local-key", key, "--recipient", recipient)
	fillVolume(t, v, 3)
	claims := claimsOf(t, filepath.Join(v.Dir, "f2")) // KMS, then local
	if len(claims) != 2 {
		t.Fatalf("f2's entries: %+v", claims)
	}
	plantForRecipient(t, v.Dir, "local-only", recipient, []byte("planted\n"), claims[1])
	plantForRecipient(t, v.Dir, "kms-only", recipient, []byte("planted\n"), claims[0])
	plantForRecipient(t, v.Dir, "both", recipient, []byte("planted\n"), claims...)
	cat := func(name string) (string, string, int) {
		return run(t, v.Env, "cat", "--identity", identity, filepath.Join(v.Dir, name))
	}
	check := func(when string, planted ...string) {
		t.Helper()
		for _, p := range planted {
			if out, errOut, code := cat(p); code == cliExitOK || out != "" {
				t.Errorf("%s: cat --identity %s: exit %d, %q, %s; want a refusal", when, p, code, out, errOut)
			}
		}
		if out, errOut, code := cat("f2"); code != cliExitOK || out != string(patterned(2, 100+2*37)) {
			t.Errorf("%s: cat --identity f2: exit %d, %s", when, code, errOut)
		}
	}
	os.Rename(key, key+".lost")
	check("local key lost, KMS there", "local-only", "kms-only", "both")
	os.Rename(key+".lost", key)
	srv.DisableKey(t, kmstest.KeyAARN)
	check("KMS key disabled, local key there", "local-only", "kms-only", "both")
}
