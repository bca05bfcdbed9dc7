package tests

// Frozen volumes (docs/FORMAT.md, "Golden files"): made once by an
// earlier kmsfs and committed, each must mount and read back unchanged
// with every later kmsfs, as gocryptfs's tests/example_filesystems do:
// testdata/volume-v1 (format version 1, a per-file volume),
// testdata/volume-v2-branch (format version 2, branch keys), and
// testdata/volume-v3 and volume-v3-branch (format version 3: header
// version 2, XAES-256-GCM blocks), and volume-v3-branch-rewrapped
// (volume-v3-branch's content after a kmsfs rewrap to another local key:
// its files' branch key is read-only, docs/FORMAT.md "Read-only branch
// keys").
//
// Never regenerate a committed one; a new format version adds a new one:
//
//	go test ./tests -run TestFrozenVolume -update-volume=volume-v3

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

var updateVolume = flag.String("update-volume", "", "generate the frozen volume of this name in tests/testdata (a new format version only)")

// frozenVolume is one committed volume: testdata/NAME, its local key
// NAME.key and its manifest NAME.sha256.
type frozenVolume struct {
	name      string
	version   int
	initFlags []string
	// rewrap: after writing, the generator runs kmsfs rewrap to a new
	// local key, which the committed key file is.
	rewrap bool
}

var frozenVolumes = []frozenVolume{
	{name: "volume-v1", version: 1},
	{name: "volume-v2-branch", version: 2, initFlags: []string{"--branch-keys"}},
	{name: "volume-v3", version: 3},
	{name: "volume-v3-branch", version: 3, initFlags: []string{"--branch-keys"}},
	{name: "volume-v3-branch-rewrapped", version: 3, initFlags: []string{"--branch-keys"}, rewrap: true},
}

func (f frozenVolume) dir() string      { return "testdata/" + f.name }
func (f frozenVolume) key() string      { return "testdata/" + f.name + ".key" }
func (f frozenVolume) manifest() string { return "testdata/" + f.name + ".sha256" }

const (

	// The sparse file: data, a hole of whole blocks, data (block size 4096).
	frozenSparseHead = 64 << 10  // bytes 0 .. 64 KiB
	frozenSparseTail = 136 << 10 // bytes 136 KiB .. 200 KiB
	frozenSparseSize = 200 << 10
)

// The links of the frozen volume. Git keeps symlinks but not hard links, so
// frozenCopy restores the hard link after copying (the names' cipher files
// are byte-identical: one cipher file under two names).
var (
	frozenSymlink     = [2]string{"symlink", "subdir/nested.txt"}  // name, target
	frozenHardLink    = [2]string{"hardlink", "subdir/nested.txt"} // new name, existing name
	frozenDirectories = []string{"subdir"}
)

// frozenContents is what the generator writes, name -> plaintext: fixed
// pseudo-random bytes, so the manifest does not change when the volume is
// regenerated (the ciphertext does: nonces and keys are random).
func frozenContents() map[string][]byte {
	rng := rand.New(rand.NewChaCha8([32]byte{'k', 'm', 's', 'f', 's', ' ', 'v', '1'}))
	bytesOf := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	sparse := make([]byte, frozenSparseSize)
	copy(sparse, bytesOf(frozenSparseHead))
	copy(sparse[frozenSparseTail:], bytesOf(frozenSparseSize-frozenSparseTail))
	return map[string][]byte{
		"empty":             {},
		"one-byte":          {'!'},
		"block-4096":        bytesOf(4096),
		"block-4097":        bytesOf(4097),
		"sparse-200k":       sparse,
		"subdir/nested.txt": []byte(strings.Repeat("a file in a subdirectory of the frozen kmsfs v1 volume\n", 40)),
	}
}

func TestFrozenVolume(t *testing.T) {
	t.Parallel()
	for _, fv := range frozenVolumes {
		t.Run(fv.name, func(t *testing.T) {
			if *updateVolume == fv.name {
				frozenGenerate(t, fv)
			}
			frozenCheck(t, fv)
		})
	}
}

func frozenCheck(t *testing.T, fv frozenVolume) {
	manifest := frozenReadManifest(t, fv)

	// The committed volume is never mounted itself: a copy is.
	cipher := frozenCopy(t, fv)
	keyFile := filepath.Join(t.TempDir(), fv.name+".key")
	if err := os.WriteFile(keyFile, readFile(t, fv.key()), 0o600); err != nil {
		t.Fatal(err)
	}
	c := cliReadConfig(t, cipher)
	if c.FormatVersion != fv.version || c.BlockSize != 4096 || len(c.Keyrings) != 1 || c.Keyrings[0].Kind != "local" {
		t.Fatalf("frozen config: %+v, want a version %d local-key volume with 4096-byte blocks", c, fv.version)
	}
	frozenCheckHoles(t, cipher, volumeGeometry{FormatVersion: c.FormatVersion, HeaderSize: c.HeaderSize, BlockSize: c.BlockSize})

	// "empty" was written and truncated to 0: exactly a header.
	// "never-written" was created and never written: no header at all.
	if st, err := os.Stat(filepath.Join(cipher, "empty")); err != nil || st.Size() != int64(c.HeaderSize) {
		t.Errorf("cipher file of empty: %v, want %d bytes (a header only)", err, c.HeaderSize)
	}
	if st, err := os.Stat(filepath.Join(cipher, "never-written")); err != nil || st.Size() != 0 {
		t.Errorf("cipher file of never-written: %v, want 0 bytes", err)
	}

	// A machine that has never seen the volume: its files attest its
	// config, which the mount says at WARN.
	v := &volume{Dir: cipher, Env: []string{"XDG_CONFIG_HOME=" + t.TempDir()}}
	m := mountVolume(t, v, "--local-key", keyFile)
	m.AllowWarnings = true
	m.waitLog("first mount of this volume here")
	if w := warnLine.FindAllString(m.log.String(), -1); len(w) != 1 || !strings.Contains(w[0], "first mount of this volume here") {
		t.Errorf("warnings: %q, want the first-use one alone", w)
	}

	// The tree is exactly the manifest, the directory and the symlink.
	var got []string
	err := filepath.WalkDir(m.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != m.Dir {
			rel, _ := filepath.Rel(m.Dir, p)
			got = append(got, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := append([]string{frozenSymlink[0]}, frozenDirectories...)
	for name := range manifest {
		want = append(want, name)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("the mounted tree is %v, want %v", got, want)
	}

	for name, sum := range manifest {
		b, err := os.ReadFile(m.path(name))
		if err != nil {
			t.Errorf("read %s: %v", name, err)
			continue
		}
		if h := sha256.Sum256(b); hex.EncodeToString(h[:]) != sum {
			t.Errorf("%s: %d bytes with SHA-256 %x, want %s", name, len(b), h, sum)
		}
		st, err := os.Stat(m.path(name))
		if err != nil || st.Size() != int64(len(b)) {
			t.Errorf("%s: stat size %v (%v), read %d bytes", name, st.Size(), err, len(b))
		}
	}
	if target, err := os.Readlink(m.path(frozenSymlink[0])); err != nil || target != frozenSymlink[1] {
		t.Errorf("readlink %s = %q, %v; want %q", frozenSymlink[0], target, err, frozenSymlink[1])
	}
	if b, err := os.ReadFile(m.path(frozenSymlink[0])); err != nil || !bytes.Equal(b, readFile(t, m.path(frozenSymlink[1]))) {
		t.Errorf("reading through the symlink: %v", err)
	}
	var a, b syscall.Stat_t
	if err := syscall.Stat(m.path(frozenHardLink[0]), &a); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat(m.path(frozenHardLink[1]), &b); err != nil {
		t.Fatal(err)
	}
	if a.Nlink != 2 || b.Nlink != 2 || a.Ino != b.Ino {
		t.Errorf("hard link: %s nlink %d ino %d, %s nlink %d ino %d; want nlink 2 and one inode",
			frozenHardLink[0], a.Nlink, a.Ino, frozenHardLink[1], b.Nlink, b.Ino)
	}
	if _, err := os.Lstat(m.path("kmsfs.json")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("kmsfs.json is visible in the mount (%v)", err)
	}
	// An old volume takes new files too.
	writeFile(t, m.path("new"), []byte("written by this kmsfs"))
	if got := readFile(t, m.path("new")); string(got) != "written by this kmsfs" {
		t.Errorf("new file reads %q", got)
	}
	if fv.rewrap {
		if err := m.unmount(); err != nil {
			t.Fatalf("unmount: %v", err)
		}
		frozenCheckReadOnlyBranch(t, cipher)
	}
}

// frozenCheckReadOnlyBranch checks a rewrapped branch-key volume: its
// files name a branch key file marked read-only, whose wrap is under the
// read context, and the file a mount wrote after is under the writable
// branch key the rewrap made.
func frozenCheckReadOnlyBranch(t *testing.T, cipher string) {
	t.Helper()
	type inspected struct {
		BranchID    string `json:"branch_id"`
		WrappedKeys []struct {
			Keyring           string            `json:"keyring"`
			KeyID             string            `json:"key_id"`
			EncryptionContext map[string]string `json:"encryption_context"`
		} `json:"wrapped_keys"`
	}
	inspect := func(path string) inspected {
		out, errOut, code := run(t, nil, "inspect", path)
		var res inspected
		if code != cliExitOK || json.Unmarshal([]byte(out), &res) != nil || len(res.WrappedKeys) == 0 {
			t.Fatalf("inspect %s: exit %d\n%s%s", path, code, out, errOut)
		}
		return res
	}
	branchOf := func(name string) string {
		w := inspect(filepath.Join(cipher, name)).WrappedKeys[0]
		if w.Keyring != "branch" {
			t.Fatalf("%s is wrapped by keyring %q, want branch", name, w.Keyring)
		}
		return w.KeyID
	}
	old, written := branchOf("one-byte"), branchOf("new")
	if old == written {
		t.Errorf("the new file went under the rewrapped volume's carried-over branch key %s", old)
	}
	for id, wantUse := range map[string]string{old: "read", written: ""} {
		bk := inspect(filepath.Join(cipher, ".kmsfs", "branch", id))
		for _, w := range bk.WrappedKeys {
			if use := w.EncryptionContext["kmsfs:branch-use"]; use != wantUse || w.EncryptionContext["kmsfs:branch"] != id {
				t.Errorf("branch key file %s: an entry's context %v, want kmsfs:branch %s and kmsfs:branch-use %q", id, w.EncryptionContext, id, wantUse)
			}
		}
	}
}

// frozenCopy copies the frozen volume to a temporary directory (cp -a, so
// symlinks stay symlinks) and restores the hard link git drops.
func frozenCopy(t *testing.T, fv frozenVolume) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "cipher")
	if out, err := exec.Command("cp", "-a", fv.dir(), dst).CombinedOutput(); err != nil {
		t.Fatalf("cp -a %s: %v: %s", fv.dir(), err, out)
	}
	link, orig := filepath.Join(dst, frozenHardLink[0]), filepath.Join(dst, frozenHardLink[1])
	var a, b syscall.Stat_t
	if err := syscall.Stat(link, &a); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat(orig, &b); err != nil {
		t.Fatal(err)
	}
	if a.Ino != b.Ino {
		if !bytes.Equal(readFile(t, link), readFile(t, orig)) {
			t.Fatalf("%s and %s differ in the frozen volume: they must be one cipher file", frozenHardLink[0], frozenHardLink[1])
		}
		if err := os.Remove(link); err != nil {
			t.Fatal(err)
		}
		if err := os.Link(orig, link); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// frozenCheckHoles checks the cipher file of the sparse file: the blocks
// of the hole are stored as all-zero blocks (docs/FORMAT.md, "Holes"), the
// others are not.
func frozenCheckHoles(t *testing.T, cipher string, g volumeGeometry) {
	t.Helper()
	b := readFile(t, filepath.Join(cipher, "sparse-200k"))
	headerSize, blockSize := g.HeaderSize, g.BlockSize
	stored := int(g.stored())
	dataOff := int(g.dataOff())
	if want := dataOff + frozenSparseSize/blockSize*stored; len(b) != want {
		t.Fatalf("cipher file of sparse-200k is %d bytes, want %d", len(b), want)
	}
	if !bytes.Equal(b[headerSize:dataOff], make([]byte, dataOff-headerSize)) {
		t.Errorf("sparse-200k: the journal area is not empty")
	}
	zero := make([]byte, stored)
	for i := 0; i < frozenSparseSize/blockSize; i++ {
		blk := b[dataOff+i*stored : dataOff+(i+1)*stored]
		hole := i >= frozenSparseHead/blockSize && i < frozenSparseTail/blockSize
		if hole != bytes.Equal(blk, zero) {
			t.Errorf("sparse-200k stored block %d: all zero %v, want %v", i, !hole, hole)
		}
	}
}

func frozenReadManifest(t *testing.T, fv frozenVolume) map[string]string {
	t.Helper()
	frozenManifest := fv.manifest()
	f, err := os.Open(frozenManifest)
	if err != nil {
		t.Fatalf("%v (generate the frozen volume with -update-volume)", err)
	}
	defer f.Close()
	m := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		sum, name, ok := strings.Cut(sc.Text(), "  ")
		if !ok || len(sum) != 64 {
			t.Fatalf("%s: bad line %q (want sha256sum format)", frozenManifest, sc.Text())
		}
		m[name] = sum
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(m) == 0 {
		t.Fatalf("%s is empty", frozenManifest)
	}
	return m
}

// frozenGenerate makes the frozen volume through a real mount and replaces
// testdata with it.
func frozenGenerate(t *testing.T, fv frozenVolume) {
	frozenDir, frozenKey, frozenManifest := fv.dir(), fv.key(), fv.manifest()
	base := t.TempDir()
	keyFile := filepath.Join(base, fv.name+".key")
	v := newVolumeIn(t, base, nil, append([]string{"--local-key", keyFile}, fv.initFlags...)...)
	m := mountVolume(t, v)
	contents := frozenContents()
	for _, d := range frozenDirectories {
		if err := os.Mkdir(m.path(d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, b := range contents {
		if name == "sparse-200k" {
			continue
		}
		writeFile(t, m.path(name), b)
	}
	// "empty" is a header-only file: written once, then truncated to 0
	// (a file never written has no header at all: "never-written").
	writeFile(t, m.path("empty"), []byte("gone"))
	if err := os.Truncate(m.path("empty"), 0); err != nil {
		t.Fatal(err)
	}
	writeFile(t, m.path("never-written"), nil)
	// The sparse file: the head, then the tail past a hole, never writing
	// the hole itself.
	sp := contents["sparse-200k"]
	f, err := os.Create(m.path("sparse-200k"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(sp[:frozenSparseHead], 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(sp[frozenSparseTail:], frozenSparseTail); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(frozenSymlink[1], m.path(frozenSymlink[0])); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(m.path(frozenHardLink[1]), m.path(frozenHardLink[0])); err != nil {
		t.Fatal(err)
	}
	if err := m.unmount(); err != nil {
		t.Fatalf("unmount: %v", err)
	}
	if fv.rewrap {
		keyFile = filepath.Join(base, fv.name+".new.key")
		if out, errOut, code := run(t, v.Env, "rewrap", "--local-key", keyFile, v.Dir); code != cliExitOK {
			t.Fatalf("rewrap: exit %d\n%s%s", code, out, errOut)
		}
	}

	var manifest strings.Builder
	names := []string{frozenHardLink[0], "never-written"}
	for name := range contents {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		b := contents[name]
		if name == frozenHardLink[0] {
			b = contents[frozenHardLink[1]]
		}
		fmt.Fprintf(&manifest, "%x  %s\n", sha256.Sum256(b), name)
	}

	// The config records where the key file was; the test gives it with
	// --local-key, so the temporary path is only informative.
	cfg := readFile(t, filepath.Join(v.Dir, "kmsfs.json"))
	if !json.Valid(cfg) {
		t.Fatalf("kmsfs.json is not JSON")
	}
	if err := os.RemoveAll(frozenDir); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(frozenDir), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", v.Dir, frozenDir).CombinedOutput(); err != nil {
		t.Fatalf("cp -a: %v: %s", err, out)
	}
	if err := os.WriteFile(frozenKey, readFile(t, keyFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(frozenManifest, []byte(manifest.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s, %s and %s", frozenDir, frozenKey, frozenManifest)
}
