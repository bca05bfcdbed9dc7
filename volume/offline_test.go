package volume

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/blockcipher"
	"github.com/kmsfs/kmsfs/keyring"
)

// What the offline commands (kmsfs fsck, cat, export) need of a volume:
// every name, kmsfs's own included; a file by its path, beneath CIPHERDIR
// and through no symlink; the volume above a path; the strays of the key
// store; a file's cipher from its header; branch keys loaded ahead.

func perFileVolume(t *testing.T, dir string, l *keyring.Local) *Volume {
	t.Helper()
	id := blockcipher.NewID()
	c := &Config{FormatVersion: ConfigVersion1, VolumeID: hex.EncodeToString(id[:]), BlockSize: 4096, HeaderSize: 512,
		Keyrings: []KeyringSpec{{Kind: keyring.KindLocal, KeyID: l.KeyID(), KeyFile: "unused"}}, Features: []string{}}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := WriteConfig(dir, c); err != nil {
		t.Fatal(err)
	}
	v, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func mustDo(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestWalkAllVisitsReservedNames(t *testing.T) {
	dir := t.TempDir()
	mustDo(t, os.MkdirAll(filepath.Join(dir, StoreName, "branch"), 0o755))
	mustDo(t, os.WriteFile(filepath.Join(dir, ConfigName), nil, 0o644))
	mustDo(t, os.Mkdir(filepath.Join(dir, "d"), 0o755))
	mustDo(t, os.WriteFile(filepath.Join(dir, "d", TempPrefix+"x"), nil, 0o644))
	mustDo(t, os.WriteFile(filepath.Join(dir, "d", "f"), nil, 0o644))
	type seen struct {
		rel      string
		reserved bool
	}
	var got []seen
	mustDo(t, WalkAll(dir, func(e Entry) error { got = append(got, seen{e.Rel, e.Reserved}); return nil }))
	want := []seen{{StoreName, true}, {"d", false}, {"d/" + TempPrefix + "x", true}, {"d/f", false}, {ConfigName, true}}
	if !slices.Equal(got, want) {
		t.Fatalf("WalkAll visited %v, want %v (and nothing inside %s)", got, want, StoreName)
	}
}

func TestOpenBeneath(t *testing.T) {
	v := perFileVolume(t, t.TempDir(), testLocal(t))
	outside := t.TempDir()
	mustDo(t, os.WriteFile(filepath.Join(outside, "secret"), []byte("x"), 0o644))
	mustDo(t, os.MkdirAll(filepath.Join(v.Dir, "a", "b"), 0o755))
	mustDo(t, os.WriteFile(filepath.Join(v.Dir, "a", "b", "f"), []byte("stored"), 0o644))
	mustDo(t, os.Symlink(outside, filepath.Join(v.Dir, "out")))
	mustDo(t, os.Symlink("b/f", filepath.Join(v.Dir, "a", "link")))
	f, err := v.Open("a/b/f")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	for _, rel := range []string{"out/secret", "a/link", "../x", "/etc/passwd", ConfigName, "a/" + TempPrefix + "1", "a", "missing"} {
		if f, err := v.Open(rel); err == nil {
			f.Close()
			t.Errorf("Open(%q) succeeded", rel)
		}
	}
	if _, err := v.Open("missing"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open of a missing file: %v, want ErrNotExist", err)
	}
}

func TestFind(t *testing.T) {
	base := t.TempDir()
	v := perFileVolume(t, filepath.Join(base, "vol"), testLocal(t))
	mustDo(t, os.MkdirAll(filepath.Join(v.Dir, "docs"), 0o755))
	// A stored file named like the config, below the root: no config.
	mustDo(t, os.WriteFile(filepath.Join(v.Dir, "docs", ConfigName), []byte("\x00KMSFS"), 0o644))
	got, rel, err := Find(filepath.Join(v.Dir, "docs", "a.txt"))
	if err != nil || got.Dir != v.Dir || rel != "docs/a.txt" {
		t.Fatalf("Find = %v, %q, %v; want %s, docs/a.txt", got, rel, err, v.Dir)
	}
	if _, _, err := Find(filepath.Join(base, "elsewhere", "f")); !errors.Is(err, ErrNoConfig) {
		t.Fatalf("Find outside any volume: %v, want ErrNoConfig", err)
	}
	// A valid config planted in a directory of the volume (naming keys
	// of the planter's) is refused, not taken as the nearer volume.
	planted := perFileVolume(t, filepath.Join(v.Dir, "docs", "inner"), testLocal(t))
	if got, _, err := Find(filepath.Join(planted.Dir, "f")); err == nil || !strings.Contains(err.Error(), "-C CIPHERDIR") {
		t.Fatalf("Find below a planted config found %v (err %v); want an error", got != nil, err)
	}
}

// Find reads no kmsfs.json through a symlinked directory: not one inside
// the volume (a directory swapped for a symlink to a config elsewhere),
// nor a CIPHERDIR reached through one (named with -C instead).
func TestFindFollowsNoSymlink(t *testing.T) {
	base := t.TempDir()
	v := perFileVolume(t, filepath.Join(base, "vol"), testLocal(t))
	elsewhere := perFileVolume(t, filepath.Join(base, "elsewhere"), testLocal(t))
	mustDo(t, os.MkdirAll(filepath.Join(v.Dir, "d"), 0o755))
	mustDo(t, os.Symlink(elsewhere.Dir, filepath.Join(v.Dir, "d", "sub")))
	mustDo(t, os.Symlink(filepath.Join(base, "nothing"), filepath.Join(v.Dir, "empty")))
	mustDo(t, os.Symlink(v.Dir, filepath.Join(base, "link-to-vol")))
	for _, p := range []string{
		filepath.Join(v.Dir, "d", "sub", "f"),
		filepath.Join(v.Dir, "empty", "f"),
		filepath.Join(base, "link-to-vol", "f"),
	} {
		got, _, err := Find(p)
		if err == nil || !strings.Contains(err.Error(), "symlink") {
			dir := ""
			if got != nil {
				dir = got.Dir
			}
			t.Errorf("Find(%s) = %q, %v; want an error naming the symlink", p, dir, err)
		}
	}
}

// A symlink where a directory of kmsfs's store belongs makes nothing
// outside CIPHERDIR: not the store's subdirectory, not a record.
func TestStoreSymlinkCreatesNothingOutside(t *testing.T) {
	for _, link := range []string{StoreName, RewrapStore} {
		t.Run(link, func(t *testing.T) {
			x := newRewrapFixture(t)
			outside := t.TempDir()
			mustDo(t, os.MkdirAll(filepath.Dir(filepath.Join(x.v.Dir, link)), 0o755))
			mustDo(t, os.Symlink(outside, filepath.Join(x.v.Dir, link)))
			if err := x.v.StartRewrap(nil); err == nil || !strings.Contains(err.Error(), "symlink") {
				t.Errorf("StartRewrap through a symlinked %s: %v, want a refusal", link, err)
			}
			if ents, _ := os.ReadDir(outside); len(ents) != 0 {
				t.Errorf("made %v outside CIPHERDIR", ents)
			}
		})
	}
}

func TestStoreStrays(t *testing.T) {
	l := testLocal(t)
	per := perFileVolume(t, t.TempDir(), l)
	if s, err := per.StoreStrays(); err != nil || s != nil {
		t.Fatalf("a volume without a store: %v, %v", s, err)
	}
	mustDo(t, os.MkdirAll(filepath.Join(per.Dir, BranchStore), 0o755))
	if s, err := per.StoreStrays(); err != nil || !slices.Equal(s, []string{BranchStore}) {
		t.Fatalf("a store in a per-file volume: %v, %v", s, err)
	}

	v := branchVolume(t, t.TempDir(), l)
	k := newTestBranchKeyring(t, v, l, time.Hour, &clock{t: time.Now()})
	newBranchFiles(t, k, v, 1)
	if s, err := v.StoreStrays(); err != nil || s != nil {
		t.Fatalf("a branch volume's own store: %v, %v", s, err)
	}
	mustDo(t, os.WriteFile(filepath.Join(v.Dir, StoreName, "extra"), nil, 0o644))
	mustDo(t, os.WriteFile(filepath.Join(v.Dir, BranchStore, "not-an-id"), nil, 0o644))
	mustDo(t, os.Mkdir(filepath.Join(v.Dir, BranchStore, hex.EncodeToString(bytes.Repeat([]byte{1}, 16))), 0o755))
	s, err := v.StoreStrays()
	want := []string{StoreName + "/extra", BranchStore + "/01010101010101010101010101010101", BranchStore + "/not-an-id"}
	if err != nil || !slices.Equal(s, want) {
		t.Fatalf("StoreStrays = %v, %v; want %v", s, err, want)
	}
}

// Unwrap makes one keyring call and checks the header; a header with
// another file's MAC is refused after that call.
func TestUnwrap(t *testing.T) {
	l := testLocal(t)
	v := perFileVolume(t, t.TempDir(), l)
	inner := &countingKeyring{Keyring: l}
	id := blockcipher.NewID()
	dk, wrapped, err := l.GenerateDataKey(context.Background(), v.FileContext(id))
	if err != nil {
		t.Fatal(err)
	}
	h, err := v.NewHeader(id, wrapped)
	if err != nil {
		t.Fatal(err)
	}
	slot, sealed, err := h.Seal(dk.Bytes())
	dk.Wipe()
	if err != nil {
		t.Fatal(err)
	}
	read, err := v.ReadHeader(bytes.NewReader(slot), int64(len(slot)))
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.Unwrap(context.Background(), inner, read)
	if err != nil || c.FileID() != sealed.FileID() || inner.decrypts.Load() != 1 {
		t.Fatalf("Unwrap: %v, %d calls", err, inner.decrypts.Load())
	}
	read.MAC[0] ^= 1
	if _, err := v.Unwrap(context.Background(), inner, read); !errors.Is(err, blockcipher.ErrHeaderAuth) {
		t.Fatalf("Unwrap of a header with a bad MAC: %v", err)
	}
}

// Load unwraps a branch key once; files under it then cost no call. A
// damaged key file fails Load.
func TestBranchKeyringLoad(t *testing.T) {
	l := testLocal(t)
	v := branchVolume(t, t.TempDir(), l)
	c := &clock{t: time.Now()}
	files := newBranchFiles(t, newTestBranchKeyring(t, v, l, time.Hour, c), v, 5)
	inner := &countingKeyring{Keyring: l}
	k := newTestBranchKeyring(t, v, inner, time.Hour, c)
	ids, _ := v.BranchIDs()
	mustDo(t, k.Load(context.Background(), ids[0]))
	checkBranchFiles(t, k, files)
	if n := inner.decrypts.Load(); n != 1 {
		t.Fatalf("Load and 5 files: %d inner calls, want 1", n)
	}
	p := filepath.Join(v.Dir, BranchStore, hex.EncodeToString(ids[0][:]))
	b, _ := os.ReadFile(p)
	b[len(b)-1] ^= 1
	mustDo(t, os.WriteFile(p, b, 0o644))
	k2 := newTestBranchKeyring(t, v, l, time.Hour, c)
	if err := k2.Load(context.Background(), ids[0]); !errors.Is(err, blockcipher.ErrHeaderAuth) {
		t.Fatalf("Load of a damaged branch key file: %v", err)
	}
}
