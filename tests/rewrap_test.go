package tests

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/kmsfs/kmsfs/keyring/kmstest"
	kvolume "github.com/kmsfs/kmsfs/volume"
)

// rewrapSummary is the --json output of kmsfs rewrap (README, "Changing
// a volume's keys"), decoded strictly.
type rewrapSummary struct {
	VolumeID       string         `json:"volume_id"`
	DryRun         bool           `json:"dry_run"`
	KeyringsBefore []string       `json:"keyrings_before"`
	KeyringsAfter  []string       `json:"keyrings_after"`
	Files          int            `json:"files"`
	Rewrapped      int            `json:"rewrapped"`
	Finished       int            `json:"finished_interrupted"`
	Unchanged      int            `json:"unchanged"`
	Empty          int            `json:"empty"`
	Failed         int            `json:"failed"`
	Failures       []any          `json:"failures"`
	BranchKeys     int            `json:"branch_keys"`
	BranchRewrap   int            `json:"branch_keys_rewrapped"`
	BranchSkipped  []string       `json:"branch_keys_left"`
	NewBranchKey   string         `json:"new_branch_key"`
	Calls          map[string]int `json:"kms_calls"`
	OfflineWraps   int            `json:"offline_wraps"`
	IdentityKeys   int64          `json:"identity_unwraps"`
	Seconds        float64        `json:"seconds"`
	FilesPerSecond float64        `json:"files_per_second"`
}

// runRewrap runs kmsfs rewrap --json with args and decodes its summary.
func runRewrap(t *testing.T, v *volume, args ...string) rewrapSummary {
	t.Helper()
	out, errOut, code := run(t, v.Env, append(append([]string{"rewrap", "--json"}, args...), v.Dir)...)
	if code != cliExitOK {
		t.Fatalf("kmsfs rewrap %v: exit %d\nstdout: %s\nstderr: %s", args, code, out, errOut)
	}
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	var s rewrapSummary
	if err := dec.Decode(&s); err != nil {
		t.Fatalf("rewrap --json: %v\n%s", err, out)
	}
	return s
}

// fillVolume mounts v, writes n patterned files (one in a directory, one
// hard-linked) and an empty one, and unmounts.
func fillVolume(t *testing.T, v *volume, n int, flags ...string) {
	t.Helper()
	m := mountVolume(t, v, flags...)
	os.Mkdir(m.path("d"), 0o755)
	for i := range n {
		writeFile(t, m.path(rewrapName(i)), patterned(i, 100+i*37))
	}
	if err := os.Link(m.path(rewrapName(0)), m.path("link0")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, m.path("empty"), nil)
	if err := m.unmount(); err != nil {
		t.Fatalf("unmount: %v", err)
	}
}

func rewrapName(i int) string {
	if i == 1 {
		return "d/f1"
	}
	return fmt.Sprintf("f%d", i)
}

// checkVolume mounts v and reads every file fillVolume wrote.
func checkVolume(t *testing.T, v *volume, n int, flags ...string) {
	t.Helper()
	m := mountVolume(t, v, flags...)
	for i := range n {
		if got := readFile(t, m.path(rewrapName(i))); !bytes.Equal(got, patterned(i, 100+i*37)) {
			t.Fatalf("%s: content differs after rewrap", rewrapName(i))
		}
	}
	if got := readFile(t, m.path("link0")); !bytes.Equal(got, patterned(0, 100)) {
		t.Fatal("link0: content differs")
	}
	if err := m.unmount(); err != nil {
		t.Fatalf("unmount: %v", err)
	}
}

// keyIDs lists the key IDs of a cipher file's wrapped keys.
func keyIDs(t *testing.T, path string) []string {
	t.Helper()
	var ids []string
	for _, w := range cliInspect(t, path).WrappedKeys {
		ids = append(ids, w.KeyID)
	}
	return ids
}

// TestRewrapKMS moves a volume from KMS key A to key B: one Decrypt and
// one ReEncrypt per file, counted at the proxy, plus the new key's round
// trip; B then unwraps every file and A none of its new entries; the new
// config is trusted on this machine; a second run costs no file a call.
func TestRewrapKMS(t *testing.T) {
	t.Parallel()
	n := 40
	if s := os.Getenv("KMSFS_REWRAP_FILES"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	env := newKMSEnv(t)
	fillVolume(t, env.vol, n, "--key-pool", "0")
	before, _ := os.ReadFile(filepath.Join(env.vol.Dir, "f5"))

	dry, _, code := run(t, env.vol.Env, "rewrap", "--dry-run", "--kms-key", kmstest.KeyBARN, "--kms-endpoint", env.proxy.Endpoint(), env.vol.Dir)
	if code != cliExitOK || !strings.Contains(dry, fmt.Sprintf("Would rewrap %d of %d files", n, n+1)) {
		t.Errorf("dry run: exit %d\n%s", code, dry)
	}
	env.proxy.Reset()
	s := runRewrap(t, env.vol, "--kms-key", kmstest.KeyBARN, "--kms-endpoint", env.proxy.Endpoint())
	if env.proxy.Total() != 0 && s.DryRun {
		t.Error("dry run")
	}
	re, dec, gen, all := env.proxy.Count("ReEncrypt"), env.proxy.Count("Decrypt"), env.proxy.Count("GenerateDataKey"), env.proxy.Total()
	t.Logf("rewrap of %d files (--parallel 16): %.2fs, %.0f files/s; KMS: %d ReEncrypt, %d Decrypt, %d GenerateDataKey, %d in all",
		n, s.Seconds, s.FilesPerSecond, re, dec, gen, all)
	// Per file: the Decrypt that gives the key for the MAC, the
	// ReEncrypt that makes B's entry. Once: B's round trip.
	if re != n || dec != n+1 || gen != 1 || all != 2*n+2 {
		t.Errorf("KMS saw %d ReEncrypt, %d Decrypt, %d GenerateDataKey, %d in all; want %d, %d, 1, %d", re, dec, gen, all, n, n+1, 2*n+2)
	}
	if s.Rewrapped != n || s.Empty != 1 || s.Files != n+1 || s.Failed != 0 || s.Calls["re_encrypt"] != n || s.Calls["decrypt"] != n {
		t.Errorf("summary %+v", s)
	}
	if c := cliReadConfig(t, env.vol.Dir); len(c.Keyrings) != 1 || c.Keyrings[0].KeyARN != kmstest.KeyBARN {
		t.Errorf("config keyrings %+v, want key B", c.Keyrings)
	}
	after, _ := os.ReadFile(filepath.Join(env.vol.Dir, "f5"))
	cfg := cliReadConfig(t, env.vol.Dir)
	if !bytes.Equal(before[cfg.HeaderSize:], after[cfg.HeaderSize:]) {
		t.Error("the blocks changed: a rewrap must not re-encrypt data")
	}

	// B unwraps the new entry; A cannot.
	ins := cliInspect(t, filepath.Join(env.vol.Dir, "f5"))
	if len(ins.WrappedKeys) != 1 || ins.WrappedKeys[0].KeyID != kmstest.KeyBARN {
		t.Fatalf("f5 wrapped keys %+v, want one under B", ins.WrappedKeys)
	}
	client := env.srv.Client(t)
	cliKMSDecrypt(t, client, ins.WrappedKeys[0], ins.WrappedKeys[0].EncryptionContext)
	blob, _ := base64.StdEncoding.DecodeString(ins.WrappedKeys[0].CiphertextBlob)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := client.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: blob, KeyId: aws.String(kmstest.KeyAARN), EncryptionContext: ins.WrappedKeys[0].EncryptionContext}); err == nil {
		t.Error("key A decrypts the entry rewrap made under key B")
	}

	// This machine trusts the new config: a mount needs no --trust-config.
	checkVolume(t, env.vol, n, "--key-pool", "0")

	// Again: nothing to do; only B's round trip calls KMS.
	env.proxy.Reset()
	s = runRewrap(t, env.vol, "--kms-key", kmstest.KeyBARN, "--kms-endpoint", env.proxy.Endpoint())
	if s.Rewrapped != 0 || s.Unchanged != n || env.proxy.Total() != 2 {
		t.Errorf("second run: %d rewrapped, %d unchanged, %d KMS calls; want 0, %d, 2", s.Rewrapped, s.Unchanged, env.proxy.Total(), n)
	}
}

// TestRewrapKilled kills kmsfs rewrap with SIGKILL in the middle of its
// run: every header is then under the old key or the new one (never a
// mix), mounts refuse the volume until the job is done, and a second run
// finishes only what was left.
func TestRewrapKilled(t *testing.T) {
	t.Parallel()
	const n = 30
	env := newKMSEnv(t)
	fillVolume(t, env.vol, n, "--key-pool", "0")
	env.proxy.SetFault(kmstest.Fault{Op: "ReEncrypt", Latency: 60 * time.Millisecond})
	env.proxy.Reset()
	cmd := exec.Command(kmsfsBin, "rewrap", "--parallel", "2", "--kms-key", kmstest.KeyBARN, "--kms-endpoint", env.proxy.Endpoint(), env.vol.Dir)
	cmd.Env = append(os.Environ(), env.vol.Env...)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pollUntil(t, 30*time.Second, "rewrap to be under way", func() bool { return env.proxy.Count("ReEncrypt") >= 6 })
	cmd.Process.Kill()
	cmd.Wait()
	env.proxy.Heal()

	onA, onB := 0, 0
	for i := range n {
		switch ids := keyIDs(t, filepath.Join(env.vol.Dir, rewrapName(i))); {
		case len(ids) == 1 && ids[0] == kmstest.KeyAARN:
			onA++
		case len(ids) == 1 && ids[0] == kmstest.KeyBARN:
			onB++
		default:
			t.Errorf("%s after the kill: wrapped under %v, want A alone or B alone", rewrapName(i), ids)
		}
	}
	t.Logf("killed after %d ReEncrypt: %d files under A, %d under B", env.proxy.Count("ReEncrypt"), onA, onB)
	if onB == 0 || onA == 0 {
		t.Errorf("the kill did not land mid-run (%d under A, %d under B)", onA, onB)
	}
	mnt := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(mnt, 0o755)
	if _, errOut, code := run(t, env.vol.Env, "mount", env.vol.Dir, mnt); code != cliExitVolume || !strings.Contains(errOut, "rewrap") {
		t.Errorf("mount of a half-rewrapped volume: exit %d, %s; want %d naming the rewrap", code, errOut, cliExitVolume)
	}
	// So do the offline commands: the config's keyrings no longer open
	// every file.
	for _, args := range [][]string{{"fsck"}, {"export", filepath.Join(t.TempDir(), "out")}, {"cat", "-C", env.vol.Dir, rewrapName(0)}} {
		cmdArgs := args
		if args[0] != "cat" {
			cmdArgs = []string{args[0], env.vol.Dir}
			cmdArgs = append(cmdArgs, args[1:]...)
		}
		if _, errOut, code := run(t, env.vol.Env, cmdArgs...); code != cliExitVolume || !strings.Contains(errOut, "interrupted") {
			t.Errorf("%s of a half-rewrapped volume: exit %d, %s; want %d naming the rewrap", args[0], code, errOut, cliExitVolume)
		}
	}
	// Another target is refused until this one is finished.
	if _, errOut, code := run(t, env.vol.Env, "rewrap", "--kms-key", kmstest.KeyAARN, "--kms-endpoint", env.proxy.Endpoint(), env.vol.Dir); code == cliExitOK || !strings.Contains(errOut, "interrupted") {
		t.Errorf("rewrap to another key while one is unfinished: exit %d, %s", code, errOut)
	}

	env.proxy.Reset()
	s := runRewrap(t, env.vol, "--kms-key", kmstest.KeyBARN, "--kms-endpoint", env.proxy.Endpoint())
	if s.Rewrapped+s.Finished != onA || s.Unchanged != onB {
		t.Errorf("second run: %d rewrapped, %d finished, %d unchanged; want %d and %d", s.Rewrapped, s.Finished, s.Unchanged, onA, onB)
	}
	if re := env.proxy.Count("ReEncrypt"); re != onA {
		t.Errorf("second run: %d ReEncrypt, want %d (only the files left)", re, onA)
	}
	if ents, err := os.ReadDir(filepath.Join(env.vol.Dir, ".kmsfs", "rewrap")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("left in .kmsfs/rewrap: %v (%v); want it gone", ents, err)
	}
	if r, code, _ := fsck(t, env.vol); code != cliExitOK || !r.Clean {
		t.Errorf("fsck after the rewrap finished: exit %d, %+v", code, r.Problems)
	}
	checkVolume(t, env.vol, n, "--key-pool", "0")
}

// TestRewrapRefusesMounted: rewrap works on an unmounted volume only.
func TestRewrapRefusesMounted(t *testing.T) {
	t.Parallel()
	v := newVolume(t, nil)
	m := mountVolume(t, v)
	writeFile(t, m.path("f"), []byte("x"))
	newKey := filepath.Join(t.TempDir(), "new.key")
	_, errOut, code := run(t, v.Env, "rewrap", "--local-key", newKey, v.Dir)
	if code != cliExitVolume || !strings.Contains(errOut, "is mounted on "+m.Dir) {
		t.Errorf("rewrap of a mounted volume: exit %d, %q; want %d naming the mountpoint", code, errOut, cliExitVolume)
	}
	if _, err := os.Stat(newKey); err == nil {
		t.Error("the refused rewrap created the new key file")
	}
	// fsck --repair writes too; fsck alone only reads, and runs.
	if _, errOut, code := run(t, v.Env, "fsck", "--repair", v.Dir); code != cliExitVolume || !strings.Contains(errOut, "is mounted on "+m.Dir) {
		t.Errorf("fsck --repair of a mounted volume: exit %d, %q; want %d naming the mountpoint", code, errOut, cliExitVolume)
	}
	if out, errOut, code := run(t, v.Env, "fsck", v.Dir); code != cliExitOK {
		t.Errorf("fsck of a mounted volume: exit %d, %s%s", code, out, errOut)
	}
}

// newAgeIdentity writes a new age identity file and returns its path and
// recipient.
func newAgeIdentity(t *testing.T) (string, string) {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "recovery-identity.txt")
	if err := os.WriteFile(path, []byte("# kmsfs test recovery key\n"+id.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, id.Recipient().String()
}

// TestRecipientRecovery: a volume with a local key and a recovery
// recipient mounts without the identity and wraps every file to the
// recipient too; after the local key is lost, rewrap with --identity
// moves the volume to a new key, and it mounts again.
func TestRecipientRecovery(t *testing.T) {
	t.Parallel()
	const n = 6
	identity, recipient := newAgeIdentity(t)
	base := t.TempDir()
	key := filepath.Join(base, "main.key")
	v := newVolumeIn(t, base, nil, "--local-key", key, "--recipient", recipient)
	c := cliReadConfig(t, v.Dir)
	if len(c.Keyrings) != 2 || c.Keyrings[1].Kind != "age" || c.Keyrings[1].KeyID != recipient {
		t.Fatalf("config keyrings %+v, want local then age %s", c.Keyrings, recipient)
	}
	fillVolume(t, v, n)
	ins := cliInspect(t, filepath.Join(v.Dir, "f3"))
	if len(ins.WrappedKeys) != 2 || ins.WrappedKeys[1].Keyring != "age" || ins.WrappedKeys[1].KeyID != recipient {
		t.Fatalf("f3 wrapped keys %+v, want local and age", ins.WrappedKeys)
	}

	// The main key is lost. No mount can read the volume any more.
	if err := os.Rename(key, key+".lost"); err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(mnt, 0o755)
	if _, errOut, code := run(t, v.Env, "mount", "--read-only", v.Dir, mnt); code != cliExitKey {
		t.Errorf("read-only mount without any key: exit %d, %s; want %d", code, errOut, cliExitKey)
	}
	// The offline commands read the backup with the identity alone.
	if out, errOut, code := run(t, v.Env, "cat", "--identity", identity, filepath.Join(v.Dir, "f3")); code != cliExitOK || out != string(patterned(3, 100+3*37)) {
		t.Errorf("cat --identity without the main key: exit %d, %d bytes, %s", code, len(out), errOut)
	}
	if out, errOut, code := run(t, v.Env, "fsck", "--identity", identity, v.Dir); code != cliExitOK {
		t.Errorf("fsck --identity without the main key: exit %d\n%s%s", code, out, errOut)
	}
	dest := filepath.Join(t.TempDir(), "export")
	if out, errOut, code := run(t, v.Env, "export", "--identity", identity, v.Dir, dest); code != cliExitOK {
		t.Errorf("export --identity without the main key: exit %d\n%s%s", code, out, errOut)
	} else if got := readFile(t, filepath.Join(dest, "d", "f1")); !bytes.Equal(got, patterned(1, 100+37)) {
		t.Error("export --identity: d/f1 differs")
	}
	if _, _, code := run(t, v.Env, "cat", filepath.Join(v.Dir, "f3")); code == cliExitOK {
		t.Error("cat without the main key or the identity succeeded")
	}
	// Without the identity rewrap has nothing to unwrap with.
	newKey := filepath.Join(base, "new.key")
	if _, errOut, code := run(t, v.Env, "rewrap", "--local-key", newKey, "--recipient", recipient, v.Dir); code == cliExitOK {
		t.Fatalf("rewrap without any key succeeded: %s", errOut)
	}
	os.Remove(newKey)
	s := runRewrap(t, v, "--local-key", newKey, "--recipient", recipient, "--identity", identity)
	if s.Rewrapped != n || s.Failed != 0 || s.Calls["decrypt"] != 0 {
		t.Errorf("recovery rewrap: %+v", s)
	}
	checkVolume(t, v, n)
}

// TestRewrapBranchKeys: in a branch-key volume rewrap rewraps the branch
// key files and leaves every file's header as it is.
func TestRewrapBranchKeys(t *testing.T) {
	t.Parallel()
	const n = 5
	base := t.TempDir()
	v := newVolumeIn(t, base, nil, "--branch-keys", "--local-key", filepath.Join(base, "old.key"))
	fillVolume(t, v, n)
	before, _ := os.ReadFile(filepath.Join(v.Dir, "f2"))
	old := inspectEntries(t, filepath.Join(v.Dir, "f2"))[0].KeyID
	s := runRewrap(t, v, "--local-key", filepath.Join(base, "new.key"))
	if s.BranchKeys != 1 || s.BranchRewrap != 1 || s.Rewrapped != 0 || s.Unchanged != n {
		t.Errorf("summary %+v: want the one branch key rewrapped and %d files unchanged", s, n)
	}
	if after, _ := os.ReadFile(filepath.Join(v.Dir, "f2")); !bytes.Equal(before, after) {
		t.Error("a file of a branch-key volume changed")
	}
	os.Rename(filepath.Join(base, "old.key"), filepath.Join(base, "old.key.gone"))
	checkVolume(t, v, n)

	// Carried over, the old branch key is read-only: with the key rewrap
	// made gone (whoever writes CIPHERDIR can remove it), a new file
	// still does not go under it.
	for _, w := range inspectEntries(t, filepath.Join(v.Dir, kvolume.BranchStore, old)) {
		if w.EncryptionContext["kmsfs:branch-use"] != "read" {
			t.Errorf("the carried-over branch key's %s entry is under %v, not its read-only context", w.Keyring, w.EncryptionContext)
		}
	}
	if err := os.Remove(filepath.Join(v.Dir, kvolume.BranchStore, s.NewBranchKey)); err != nil {
		t.Fatal(err)
	}
	m := mountVolume(t, v)
	writeFile(t, m.path("after"), []byte("written after the rewrap\n"))
	m.unmount()
	made := inspectEntries(t, filepath.Join(v.Dir, "after"))[0].KeyID
	if made == old {
		t.Errorf("a new file went under the carried-over branch key %s", old)
	}
	checkVolume(t, v, n)

	// Run again with the same keys (what a volume recovered by a kmsfs
	// before read-only keys needs): the writable key the mount made is
	// under them already, and is made read-only all the same.
	s = runRewrap(t, v, "--local-key", filepath.Join(base, "new.key"))
	if s.BranchRewrap != 1 || s.NewBranchKey == "" {
		t.Errorf("second rewrap, summary %+v: want the mount's writable branch key rewrapped and a new one made", s)
	}
	for _, w := range inspectEntries(t, filepath.Join(v.Dir, kvolume.BranchStore, made)) {
		if w.EncryptionContext["kmsfs:branch-use"] != "read" {
			t.Errorf("after the second rewrap, branch key %s's %s entry is under %v", made, w.Keyring, w.EncryptionContext)
		}
	}
	checkVolume(t, v, n)
}

// inspectEntries returns the wrapped keys kmsfs inspect prints for a
// stored file or a branch key file.
func inspectEntries(t *testing.T, path string) []cliWrappedJSON {
	t.Helper()
	out, errOut, code := run(t, nil, "inspect", path)
	var ins struct {
		WrappedKeys []cliWrappedJSON `json:"wrapped_keys"`
	}
	if err := json.Unmarshal([]byte(out), &ins); code != cliExitOK || err != nil || len(ins.WrappedKeys) == 0 {
		t.Fatalf("inspect %s: exit %d, %v\n%s%s", path, code, err, out, errOut)
	}
	return ins.WrappedKeys
}

// TestMountWithoutRecoveryKey: a local recovery key moved away no longer
// stops a read-only mount; a writable mount says why it needs it.
func TestMountWithoutRecoveryKey(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	base := t.TempDir()
	key := filepath.Join(base, "recovery.key")
	v := newVolumeIn(t, base, srv.Env(), "--kms-key", kmstest.KeyAARN, "--kms-endpoint", srv.Endpoint(), "--local-key", key)
	fillVolume(t, v, 3)
	os.Rename(key, key+".offline")
	mnt := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(mnt, 0o755)
	_, errOut, code := run(t, v.Env, "mount", v.Dir, mnt)
	if code != cliExitKey || !strings.Contains(errOut, key) || !strings.Contains(errOut, "--read-only") {
		t.Errorf("writable mount without the recovery key: exit %d, %q; want %d naming the key file and --read-only", code, errOut, cliExitKey)
	}
	m := mountVolume(t, v, "--read-only")
	m.AllowWarnings = true // the left-out keyring is logged at WARN
	if got := readFile(t, m.path("f2")); !bytes.Equal(got, patterned(2, 100+2*37)) {
		t.Error("read-only mount without the recovery key: content differs")
	}
	if !strings.Contains(m.log.String(), "leaving out a keyring") {
		t.Error("the left-out keyring is not logged")
	}
}

// TestMultiKMSKeyDown: with two KMS keys, one disabled, a read-only mount
// reads with the other; a writable mount names the key and suggests
// --read-only. Per-key --kms-endpoint KEY=URL is accepted, the plain form
// refused as ambiguous.
func TestMultiKMSKeyDown(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	pa := kmstest.NewProxy(t, srv.Endpoint())
	pb := kmstest.NewProxy(t, srv.Endpoint())
	base := t.TempDir()
	v := newVolumeIn(t, base, srv.Env(), "--kms-key", kmstest.KeyAARN, "--kms-key", kmstest.KeyBARN,
		"--kms-endpoint", kmstest.KeyAARN+"="+pa.Endpoint(), "--kms-endpoint", kmstest.KeyBID+"="+pb.Endpoint())
	c := cliReadConfig(t, v.Dir)
	if c.Keyrings[0].Endpoint != pa.Endpoint() || c.Keyrings[1].Endpoint != pb.Endpoint() {
		t.Fatalf("per-key endpoints: %+v", c.Keyrings)
	}
	fillVolume(t, v, 3, "--key-pool", "0")
	if pa.Count("GenerateDataKey") == 0 || pb.Count("Encrypt") == 0 {
		t.Errorf("calls: A's proxy %d GenerateDataKey, B's %d Encrypt; each key should go through its own endpoint", pa.Count("GenerateDataKey"), pb.Count("Encrypt"))
	}

	mnt := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(mnt, 0o755)
	if _, errOut, code := run(t, v.Env, "mount", "--kms-endpoint", srv.Endpoint(), v.Dir, mnt); code != cliExitUsage || !strings.Contains(errOut, "ambiguous") {
		t.Errorf("plain --kms-endpoint with two KMS keys: exit %d, %s", code, errOut)
	}
	srv.DisableKey(t, kmstest.KeyAARN)
	_, errOut, code := run(t, v.Env, "mount", v.Dir, mnt)
	if code != cliExitKey || !strings.Contains(errOut, kmstest.KeyAARN) || !strings.Contains(errOut, "--read-only") {
		t.Errorf("writable mount with key A disabled: exit %d, %q; want %d naming key A and --read-only", code, errOut, cliExitKey)
	}
	m := mountVolume(t, v, "--read-only", "--kms-endpoint", kmstest.KeyAARN+"="+pa.Endpoint(), "--kms-endpoint", kmstest.KeyBARN+"="+pb.Endpoint())
	m.AllowWarnings = true // each open tries key A first
	for i := range 3 {
		if got := readFile(t, m.path(rewrapName(i))); !bytes.Equal(got, patterned(i, 100+i*37)) {
			t.Errorf("%s: content differs with key A disabled", rewrapName(i))
		}
	}
}

// TestRewrapRerunChecksTrust: a rewrap whose flags name the keyrings
// kmsfs.json names already (the run after one killed once it replaced
// kmsfs.json, or one with nothing to do) still checks the config against
// this machine's trusted copies. Only its keyrings may differ from them
// (the interrupted run's old config); a key_mode, rotation or volume ID
// changed in CIPHERDIR is refused, and neither written back nor trusted.
func TestRewrapRerunChecksTrust(t *testing.T) {
	t.Parallel()
	v := newVolume(t, nil)
	newKey := filepath.Join(t.TempDir(), "new.key")
	cfgPath := filepath.Join(v.Dir, "kmsfs.json")
	copies := func() map[string]string {
		out := map[string]string{}
		ents, err := os.ReadDir(trustedDir(v))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			out[e.Name()] = string(readFile(t, filepath.Join(trustedDir(v), e.Name())))
		}
		return out
	}
	restore := func(c map[string]string) {
		for name, b := range c {
			writeFile(t, filepath.Join(trustedDir(v), name), []byte(b))
		}
	}
	before := copies()
	runRewrap(t, v, "--local-key", newKey)
	after, good := copies(), readFile(t, cfgPath)

	// Killed between replacing kmsfs.json and the trusted copies: the
	// copies name the old keyrings, and a second run finishes.
	restore(before)
	runRewrap(t, v, "--local-key", newKey)
	if got := copies(); fmt.Sprint(got) != fmt.Sprint(after) {
		t.Errorf("after the finishing run the trusted copies are\n%v\nwant\n%v", got, after)
	}

	edit := func(f func(map[string]any)) {
		t.Helper()
		editConfigJSON(t, cfgPath, good, f)
	}
	for _, tc := range []struct {
		name        string
		interrupted bool
		edit        func(map[string]any)
		want        string
	}{
		{"key_mode", false, func(c map[string]any) { c["key_mode"], c["branch_key_rotation"] = "branch", "87600h" }, "key_mode"},
		{"key_mode after a kill", true, func(c map[string]any) { c["key_mode"], c["branch_key_rotation"] = "branch", "87600h" }, "key_mode"},
		{"volume_id", false, func(c map[string]any) { c["volume_id"] = "0123456789abcdef0123456789abcdef" }, "volume_id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			trusted := after
			if tc.interrupted {
				trusted = before
			}
			restore(trusted)
			edit(tc.edit)
			tampered := readFile(t, cfgPath)
			out, errOut, code := run(t, v.Env, "rewrap", "--local-key", newKey, v.Dir)
			cliWantFail(t, "rewrap of a config changed beside its keyrings", out, errOut, code, cliExitVolume, tc.want, "--trust-config")
			if got := copies(); fmt.Sprint(got) != fmt.Sprint(trusted) {
				t.Errorf("the refused rewrap changed the trusted copies:\n%v", got)
			}
			if !bytes.Equal(readFile(t, cfgPath), tampered) {
				t.Error("the refused rewrap rewrote kmsfs.json")
			}
			if _, err := os.Stat(filepath.Join(v.Dir, ".kmsfs", "branch")); err == nil {
				t.Error("the refused rewrap made a branch key")
			}
			writeFile(t, cfgPath, good)
		})
	}
}

// TestRewrapStopsOnKeyServiceFailure: the new key refuses ReEncrypt
// (access denied). The run stops at the first file, with the key error's
// exit code (11) and a line saying so, instead of counting a failure per
// file (exit 1) after calling KMS for every one; once the key can be used,
// a second run finishes.
func TestRewrapStopsOnKeyServiceFailure(t *testing.T) {
	t.Parallel()
	const n = 40
	env := newKMSEnv(t)
	fillVolume(t, env.vol, n, "--key-pool", "0")
	env.proxy.SetFault(kmstest.Fault{Op: "ReEncrypt", ErrorCode: "AccessDeniedException"})
	env.proxy.Reset()
	out, errOut, code := run(t, env.vol.Env, "rewrap", "--parallel", "2", "--kms-key", kmstest.KeyBARN, "--kms-endpoint", env.proxy.Endpoint(), env.vol.Dir)
	if code != cliExitKey || !strings.Contains(errOut, "rewrap stopped at") {
		t.Errorf("rewrap with the new key denied: exit %d, want %d and a line saying it stopped\nstdout: %s\nstderr: %s", code, cliExitKey, out, errOut)
	}
	if re := env.proxy.Count("ReEncrypt"); re > 4 {
		t.Errorf("the run made %d ReEncrypt calls after access was denied; want it to stop at once (at most one per worker and a spare)", re)
	}
	env.proxy.Heal()
	s := runRewrap(t, env.vol, "--kms-key", kmstest.KeyBARN, "--kms-endpoint", env.proxy.Endpoint())
	if s.Failed != 0 || s.Rewrapped+s.Finished+s.Unchanged != n {
		t.Errorf("second run: %+v", s)
	}
}
