package tests

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/keyring/kmstest"
)

// kmsfs fsck as a user runs it, on volumes written through a mount and
// damaged while nothing is mounted: every tamper case of tamper_test.go,
// tamper_ownbytes_test.go and branch_test.go must be reported, with the
// file and block; clean volumes must pass; the key service is asked once
// per file (once per branch key in a branch-key volume).

// fsckJSON is the document `kmsfs fsck --json` prints (README, "kmsfs
// fsck"), decoded with unknown fields refused: the fields are an
// interface.
type fsckJSON struct {
	CipherDir   string `json:"cipherdir"`
	VolumeID    string `json:"volume_id"`
	KeyMode     string `json:"key_mode"`
	ConfigTrust string `json:"config_trust"`
	Complete    bool   `json:"complete"`
	Error       string `json:"error"`
	Clean       bool   `json:"clean"`
	Checked     struct {
		Files          int   `json:"files"`
		Blocks         int64 `json:"blocks"`
		PlaintextBytes int64 `json:"plaintext_bytes"`
		Directories    int   `json:"directories"`
		Symlinks       int   `json:"symlinks"`
		Special        int   `json:"special"`
		BranchKeys     int   `json:"branch_keys"`
		HardLinks      int   `json:"hard_links"`
	} `json:"checked"`
	KeyServiceCalls int64         `json:"key_service_calls"`
	IdentityUnwraps int64         `json:"identity_unwraps"`
	Seconds         float64       `json:"seconds"`
	Problems        []fsckProblem `json:"problems"`
}

type fsckProblem struct {
	Path        string  `json:"path"`
	Kind        string  `json:"kind"`
	Block       *uint64 `json:"block"`
	Offset      *int64  `json:"offset"`
	Length      int64   `json:"length"`
	StoredSize  *int64  `json:"stored_size"`
	JournalSlot *int    `json:"journal_slot"`
	Message     string  `json:"message"`
	Repaired    string  `json:"repaired"`
}

// fsck runs kmsfs fsck --json on v and decodes its report.
func fsck(t testing.TB, v *volume, flags ...string) (fsckJSON, int, string) {
	t.Helper()
	out, errOut, code := run(t, v.Env, append(append([]string{"fsck", "--json"}, flags...), v.Dir)...)
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	var r fsckJSON
	if err := dec.Decode(&r); err != nil {
		t.Fatalf("kmsfs fsck --json: exit %d, %v\nstdout: %s\nstderr: %s", code, err, out, errOut)
	}
	if r.Problems == nil {
		t.Errorf("problems is null, want a list")
	}
	return r, code, errOut
}

// byPath groups problems by file.
func (r fsckJSON) byPath() map[string][]fsckProblem {
	m := map[string][]fsckProblem{}
	for _, p := range r.Problems {
		m[p.Path] = append(m[p.Path], p)
	}
	return m
}

// badBlocks lists the blocks problems name.
func badBlocks(ps []fsckProblem) []int {
	var out []int
	for _, p := range ps {
		if p.Kind == "block" {
			out = append(out, int(*p.Block))
		}
	}
	slices.Sort(out)
	return out
}

func kinds(ps []fsckProblem) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Kind)
	}
	return out
}

// TestFsckCleanAndStray: a volume written through a mount, with every
// kind of object, is clean; a key service call is made per file with a
// header, and a file with two names is checked once. Leftover temporary files and unknown names in the key store
// are reported as strays, and --repair leaves them alone.
func TestFsckCleanAndStray(t *testing.T) {
	t.Parallel()
	v := newVolume(t, nil)
	g := geometryOf(t, v)
	m := mountVolume(t, v)
	writeFile(t, m.path("a"), patterned(1, 3*g.BlockSize+5))
	writeFile(t, m.path("empty"), nil)
	if err := os.MkdirAll(m.path("d", "e"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, m.path("d", "e", "b"), patterned(2, 10))
	if err := os.Symlink("../a", m.path("d", "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(m.path("a"), m.path("d", "a2")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(m.path("fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(m.path("sparse"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("end"), 50*int64(g.BlockSize)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := m.unmount(); err != nil {
		t.Fatal(err)
	}

	r, code, _ := fsck(t, v)
	if code != cliExitOK || !r.Clean || !r.Complete || len(r.Problems) != 0 {
		t.Fatalf("fsck of a clean volume: exit %d, %+v", code, r)
	}
	c := r.Checked
	if c.Files != 4 || c.HardLinks != 1 || c.Directories != 2 || c.Symlinks != 1 || c.Special != 1 || c.Blocks != 4+1+51 {
		t.Errorf("checked %+v: want 4 files (one with a second name, checked once), 2 directories, 1 symlink, 1 FIFO, 56 blocks", c)
	}
	if r.KeyServiceCalls != 3 || r.KeyMode != "per-file" || r.ConfigTrust != "trusted" || r.VolumeID != g.VolumeID {
		t.Errorf("report %+v: want 3 key service calls (the empty file has no key), per-file, trusted", r)
	}

	// Human output: one summary line on stdout, "clean".
	out, _, code := run(t, v.Env, "fsck", v.Dir)
	if code != cliExitOK || !strings.Contains(out, "clean") || strings.Count(out, "\n") != 1 {
		t.Errorf("fsck: exit %d, stdout %q", code, out)
	}

	strays := []string{"d/.kmsfs-tmp-123", ".kmsfs.json.tmp-9", ".kmsfs/junk"}
	for _, s := range strays {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(v.Dir, s)), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(v.Dir, s), []byte("x"))
	}
	for _, flags := range [][]string{nil, {"--repair"}} {
		r, code, _ = fsck(t, v, flags...)
		var got []string
		for _, p := range r.Problems {
			if p.Kind != "stray" || p.Repaired != "" {
				t.Errorf("fsck %v: problem %+v, want a stray left alone", flags, p)
			}
			got = append(got, p.Path)
		}
		slices.Sort(got)
		want := slices.Sorted(slices.Values(strays))
		if code != cliExitDamage || r.Clean || !slices.Equal(got, want) {
			t.Errorf("fsck %v with strays: exit %d, clean %v, reported %q; want exit 15 and %q", flags, code, r.Clean, got, want)
		}
	}
	for _, s := range strays {
		if _, err := os.Stat(filepath.Join(v.Dir, s)); err != nil {
			t.Errorf("%s: %v after fsck --repair", s, err)
		}
	}
	out, errOut, code := run(t, v.Env, "fsck", v.Dir)
	if code != cliExitDamage || strings.Count(out, "stray") != 3 || !strings.Contains(errOut, "problems") {
		t.Errorf("fsck with strays: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
}

// TestFsckTamper: every case of TestTamper is reported, naming its bad
// blocks (header cases as "header"); no good block and no untouched
// file is reported.
func TestFsckTamper(t *testing.T) {
	t.Parallel()
	vol, _, cases, _ := tamperedVolume(t)
	r, code, _ := fsck(t, vol)
	if code != cliExitDamage || r.Clean || !r.Complete {
		t.Fatalf("fsck: exit %d, clean %v, complete %v", code, r.Clean, r.Complete)
	}
	found := r.byPath()
	for _, tc := range cases {
		ps := found[tc.name]
		if len(ps) == 0 {
			t.Errorf("%s: not reported", tc.name)
			continue
		}
		if tc.openFails {
			if k := kinds(ps); !slices.Equal(k, []string{"header"}) {
				t.Errorf("%s: reported as %q, want [header]", tc.name, k)
			}
			continue
		}
		bad := badBlocks(ps)
		for _, b := range tc.bad {
			if !slices.Contains(bad, b) {
				t.Errorf("%s: block %d not reported (reported %v)", tc.name, b, bad)
			}
		}
		for _, b := range tc.good {
			if slices.Contains(bad, b) {
				t.Errorf("%s: good block %d reported", tc.name, b)
			}
		}
		for _, p := range ps {
			if p.Kind == "block" && (p.Offset == nil || *p.Offset != int64(*p.Block)*4096 || p.Length < 1 || p.Length > 4096) {
				t.Errorf("%s: block problem %+v: want the block's plaintext offset and length", tc.name, p)
			}
		}
	}
	for _, name := range []string{"bystander", "donor"} {
		if ps := found[name]; len(ps) > 0 {
			t.Errorf("the untouched file %s is reported: %+v", name, ps)
		}
	}
	if ps := found["truncate-inside-tag"]; !slices.Contains(kinds(ps), "size") {
		t.Errorf("truncate-inside-tag: %q, want a size problem too", kinds(ps))
	}
	// One unwrap per file, but none for a header that fails before it
	// (its structure, or a key the volume does not use).
	readable := 2 // bystander, donor
	for _, tc := range cases {
		if !tc.openFails {
			readable++
		}
	}
	if r.KeyServiceCalls < int64(readable) || r.KeyServiceCalls > int64(r.Checked.Files) {
		t.Errorf("%d key service calls for %d files, %d of them with sound headers", r.KeyServiceCalls, r.Checked.Files, readable)
	}
}

// TestFsckOwnBytes: the manipulations of TestTamperOwnBytes, checked by
// fsck and read through a read-only mount: every copy that reads with
// EIO is reported, and no copy that reads back true has a bad block.
func TestFsckOwnBytes(t *testing.T) {
	t.Parallel()
	v := newVolume(t, nil)
	g := geometryOf(t, v)
	m := mountVolume(t, v)
	want := writeHistory(t, m.path("f"), int64(g.BlockSize))
	if err := m.unmount(); err != nil {
		t.Fatal(err)
	}
	copies := ownBytesManipulations(g, readFile(t, filepath.Join(v.Dir, "f")))
	for i, b := range copies {
		writeFile(t, filepath.Join(v.Dir, fmt.Sprintf("t%04d", i)), b)
	}
	r, _, _ := fsck(t, v)
	found := r.byPath()
	if len(found["f"]) != 0 {
		t.Fatalf("the untouched file is reported: %+v", found["f"])
	}
	m = mountVolume(t, v, "--read-only")
	m.AllowWarnings = true
	eio, reported := 0, 0
	for i := range copies {
		name := fmt.Sprintf("t%04d", i)
		got, err := os.ReadFile(m.path(name))
		ps := found[name]
		if len(ps) > 0 {
			reported++
		}
		switch {
		case errors.Is(err, syscall.EIO):
			eio++
			if len(ps) == 0 {
				t.Errorf("%s reads with EIO, but fsck reports nothing", name)
			}
		case err != nil:
			t.Fatalf("%s: %v", name, err)
		case bytes.Equal(got, want) || len(got) == 0:
			if b := badBlocks(ps); len(b) > 0 || slices.Contains(kinds(ps), "header") {
				t.Errorf("%s reads back without error, but fsck reports %q", name, kinds(ps))
			}
		default:
			t.Fatalf("%s: read %d bytes that are not the true ones", name, len(got))
		}
	}
	t.Logf("%d copies: %d read with EIO, %d reported by fsck", len(copies), eio, reported)
}

// TestFsckBranchTamper: damaged or foreign branch key files are reported,
// and so is every file under them, at no key service call each; names in
// the store that are not branch keys are strays.
func TestFsckBranchTamper(t *testing.T) {
	t.Parallel()
	v := newVolume(t, nil, "--branch-keys")
	other := newVolume(t, nil, "--branch-keys")
	m := mountVolume(t, v)
	for i := range 3 {
		writeFile(t, m.path(fmt.Sprintf("f%d", i)), patterned(i, 5000))
	}
	if err := m.unmount(); err != nil {
		t.Fatal(err)
	}
	if r, code, _ := fsck(t, v); code != cliExitOK || r.KeyMode != "branch" || r.Checked.BranchKeys != len(branchKeyFiles(t, v)) || r.Checked.Files != 3 {
		t.Fatalf("fsck of a clean branch-key volume: exit %d, %+v", code, r)
	}
	id := branchIDOf(t, filepath.Join(v.Dir, "f0"))
	path := filepath.Join(v.Dir, ".kmsfs", "branch", id)
	orig := readFile(t, path)
	for name, bad := range map[string][]byte{
		"a bit flipped in its MAC":    func() []byte { b := bytes.Clone(orig); b[len(b)-3] ^= 1; return b }(),
		"a bit flipped in its blob":   func() []byte { b := bytes.Clone(orig); b[150] ^= 1; return b }(),
		"cut":                         orig[:100],
		"another volume's branch key": readFile(t, filepath.Join(other.Dir, ".kmsfs", "branch", branchKeyFiles(t, other)[0])),
	} {
		writeFile(t, path, bad)
		r, code, _ := fsck(t, v)
		found := r.byPath()
		if code != cliExitDamage || !slices.Equal(kinds(found[".kmsfs/branch/"+id]), []string{"branch_key"}) {
			t.Errorf("%s: exit %d, the key file reported as %q", name, code, kinds(found[".kmsfs/branch/"+id]))
		}
		for i := range 3 {
			if k := kinds(found[fmt.Sprintf("f%d", i)]); !slices.Equal(k, []string{"header"}) {
				t.Errorf("%s: f%d reported as %q, want [header]", name, i, k)
			}
		}
	}
	writeFile(t, path, orig)
	writeFile(t, filepath.Join(v.Dir, ".kmsfs", "branch", "not-a-branch-id"), nil)
	r, code, _ := fsck(t, v)
	if code != cliExitDamage || len(r.Problems) != 1 || r.Problems[0].Kind != "stray" || r.Problems[0].Path != ".kmsfs/branch/not-a-branch-id" {
		t.Errorf("a stray name in the branch store: exit %d, %+v", code, r.Problems)
	}
}

// TestFsckKMS: on a local-kms volume fsck makes one Decrypt per file with
// a header, and none for a header naming a key the volume does not use;
// in a branch-key volume, one per branch key, however many files. With
// KMS down it stops with exit 11 and says why.
func TestFsckKMS(t *testing.T) {
	t.Parallel()
	env := newKMSEnv(t)
	k := env.mount(t, "--key-pool", "0")
	const n = 20
	for i := range n {
		writeFile(t, k.path(fmt.Sprintf("f%d", i)), patterned(i, 1000*i))
	}
	if err := k.unmount(); err != nil {
		t.Fatal(err)
	}
	env.proxy.Reset()
	r, code, _ := fsck(t, env.vol)
	if code != cliExitOK || r.Checked.Files != n {
		t.Fatalf("fsck: exit %d, %+v", code, r)
	}
	// f0 is empty: no header, no key.
	if d, all := env.proxy.Count("Decrypt"), env.proxy.Total(); d != n-1 || all != n-1 || r.KeyServiceCalls != n-1 {
		t.Errorf("fsck of %d files with a header: %d Decrypt, %d requests in all, %d counted; want %d each", n-1, d, all, r.KeyServiceCalls, n-1)
	}
	t.Logf("fsck of %d files: %d Decrypt requests", n-1, env.proxy.Count("Decrypt"))

	// A header naming key B, which the volume does not use: reported,
	// never sent to KMS.
	c := cipherFile{t: t, path: filepath.Join(env.vol.Dir, "f5")}
	b := c.read()
	idOff, idLen, _, _, _ := headerEntry(t, b)
	copy(b[idOff:idOff+idLen], kmstest.KeyBARN)
	c.write(b)
	env.proxy.Reset()
	r, code, _ = fsck(t, env.vol)
	if p := r.byPath()["f5"]; code != cliExitDamage || len(p) != 1 || p[0].Kind != "header" || env.proxy.Count("Decrypt") != n-2 {
		t.Errorf("a header naming another key: exit %d, %+v, %d Decrypt; want header, %d Decrypt", code, p, env.proxy.Count("Decrypt"), n-2)
	}

	env.proxy.SetFault(kmstest.Fault{Outage: true})
	out, errOut, code := run(t, env.vol.Env, "fsck", env.vol.Dir)
	if code != cliExitKey || !strings.Contains(errOut, "unreachable") || !strings.Contains(out, "stopped") {
		t.Errorf("fsck with KMS down: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	env.proxy.Heal()

	benv := newBranchEnv(t)
	bk := benv.mount(t)
	for i := range n {
		writeFile(t, bk.path(fmt.Sprintf("f%d", i)), patterned(i, 100+i))
	}
	if err := bk.unmount(); err != nil {
		t.Fatal(err)
	}
	benv.proxy.Reset()
	r, code, _ = fsck(t, benv.vol)
	keys := len(branchKeyFiles(t, benv.vol))
	if d := benv.proxy.Count("Decrypt"); code != cliExitOK || d != keys || r.Checked.BranchKeys != keys || r.Checked.Files != n {
		t.Errorf("fsck of a branch-key volume, %d files, %d branch keys: exit %d, %d Decrypt, %+v", n, keys, code, d, r.Checked)
	}
	t.Logf("fsck of %d files under %d branch keys: %d Decrypt requests", n, keys, benv.proxy.Count("Decrypt"))
}

// TestFsckRepair: a journal record written back over a cleared one
// (TestTamperOwnBytes's re-armed record) is reported as a journal
// problem that --repair erases, saying so; the file then checks clean.
func TestFsckRepair(t *testing.T) {
	t.Parallel()
	v := newVolume(t, nil)
	g := geometryOf(t, v)
	m := mountVolume(t, v)
	want := patterned(7, 3*g.BlockSize)
	writeFile(t, m.path("f"), want)
	if err := m.unmount(); err != nil {
		t.Fatal(err)
	}
	c := cipherFile{t: t, path: filepath.Join(v.Dir, "f")}
	b := c.read()
	b[g.HeaderSize+7] = 2 // a record for block 1, with no MAC
	c.write(b)
	r, code, _ := fsck(t, v)
	if p := r.byPath()["f"]; code != cliExitDamage || len(p) != 1 || p[0].Kind != "journal" || p[0].JournalSlot == nil || *p[0].JournalSlot != 0 {
		t.Fatalf("a forged journal record: exit %d, %+v", code, r.Problems)
	}
	out, _, code := run(t, v.Env, "fsck", "--repair", v.Dir)
	if code != cliExitOK || !strings.Contains(out, "repaired: erased") {
		t.Errorf("fsck --repair: exit %d\n%s", code, out)
	}
	if r, code, _ := fsck(t, v); code != cliExitOK || len(r.Problems) != 0 {
		t.Errorf("after --repair: exit %d, %+v", code, r.Problems)
	}
	out, _, code = run(t, v.Env, "cat", filepath.Join(v.Dir, "f"))
	if code != 0 || out != string(want) {
		t.Errorf("cat after --repair: exit %d, %d bytes", code, len(out))
	}
}

// TestOfflineSparseFile: fsck and export of a file whose stored form is
// almost all hole (1 TiB of plaintext, one block of data at its end) read
// its data, not its size: they finish (within the bound of a hung command,
// where decrypting 1 TiB would take hours), export leaves the hole a hole,
// and a damaged last block is still found.
func TestOfflineSparseFile(t *testing.T) {
	t.Parallel()
	v := newVolume(t, nil)
	m := mountVolume(t, v)
	f, err := os.Create(m.path("sparse"))
	if err != nil {
		t.Fatal(err)
	}
	const size = 1 << 40
	if _, err := f.WriteAt([]byte("end"), size-3); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := m.unmount(); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := cliRunBounded(t, 2*time.Minute, v.Env, "fsck", v.Dir); code != cliExitOK {
		t.Fatalf("fsck of a 1 TiB sparse file: exit %d\n%s%s", code, out, errOut)
	}
	dest := filepath.Join(t.TempDir(), "out")
	if out, errOut, code := cliRunBounded(t, 2*time.Minute, v.Env, "export", v.Dir, dest); code != cliExitOK {
		t.Fatalf("export of a 1 TiB sparse file: exit %d\n%s%s", code, out, errOut)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(dest, "sparse"), &st); err != nil || st.Size != size || st.Blocks*512 > 1<<20 {
		t.Errorf("exported file: %v, size %d, %d bytes allocated; want %d, sparse", err, st.Size, st.Blocks*512, int64(size))
	}
	tail := make([]byte, 3)
	if g, err := os.Open(filepath.Join(dest, "sparse")); err == nil {
		g.ReadAt(tail, size-3)
		g.Close()
	}
	if string(tail) != "end" {
		t.Errorf("exported file ends in %q, want \"end\"", tail)
	}
	// Zeros over the last block are damage, not a hole.
	stored, err := os.OpenFile(filepath.Join(v.Dir, "sparse"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	st2, _ := stored.Stat()
	if _, err := stored.WriteAt(make([]byte, 64), st2.Size()-64); err != nil {
		t.Fatal(err)
	}
	stored.Close()
	if r, code, _ := fsck(t, v); code != cliExitDamage || len(r.Problems) != 1 || r.Problems[0].Kind != "block" {
		t.Errorf("fsck of a sparse file with a damaged last block: exit %d, %+v", code, r.Problems)
	}
}

// TestOfflineQuotesNames: file names in CIPHERDIR are the writer's
// choice. Where fsck, export and rewrap print one for a person, a name
// holding \r, \n or an escape sequence is quoted ("a\rb"), so it can
// neither erase nor forge lines on the terminal; an ordinary name is
// printed as it is.
func TestOfflineQuotesNames(t *testing.T) {
	t.Parallel()
	v := newVolume(t, nil)
	g := geometryOf(t, v)
	m := mountVolume(t, v)
	for _, name := range []string{"plain-name", "b", "c"} {
		writeFile(t, m.path(name), patterned(4, 2*g.BlockSize+3))
	}
	if err := m.unmount(); err != nil {
		t.Fatal(err)
	}
	const fake = "kmsfs fsck: all clean"
	evil := map[string]string{"b": "ok\r" + fake + "\n", "c": "x\x1b[2Jy"}
	for from, to := range evil {
		if err := os.Rename(filepath.Join(v.Dir, from), filepath.Join(v.Dir, to)); err != nil {
			t.Fatal(err)
		}
		cipherFile{t: t, path: filepath.Join(v.Dir, to)}.flip(g.blockOff(0) + 50)
	}
	cipherFile{t: t, path: filepath.Join(v.Dir, "plain-name")}.flip(g.blockOff(0) + 50)
	check := func(what, out string) {
		t.Helper()
		for _, name := range evil {
			if !strings.Contains(out, strconv.Quote(name)) {
				t.Errorf("%s does not name %q quoted:\n%s", what, name, out)
			}
		}
		if strings.ContainsAny(out, "\r\x1b") || strings.Contains(out, "\n"+fake) {
			t.Errorf("%s prints a name raw:\n%q", what, out)
		}
	}
	out, errOut, code := run(t, v.Env, "fsck", v.Dir)
	if code != cliExitDamage || !strings.Contains(out, "\nplain-name: block") && !strings.HasPrefix(out, "plain-name: block") {
		t.Errorf("fsck: exit %d, want %d and plain-name unquoted\n%s%s", code, cliExitDamage, out, errOut)
	}
	check("fsck", out)
	_, errOut, code = run(t, v.Env, "export", "--keep-going", v.Dir, filepath.Join(t.TempDir(), "dest"))
	if code != cliExitDamage || !strings.Contains(errOut, "kmsfs: plain-name: block 0") {
		t.Errorf("export --keep-going: exit %d, want %d and plain-name unquoted\n%s", code, cliExitDamage, errOut)
	}
	check("export", errOut)
	// Rewrap reads headers: spoil them.
	cipherFile{t: t, path: filepath.Join(v.Dir, "plain-name")}.flip(60)
	for _, name := range evil {
		cipherFile{t: t, path: filepath.Join(v.Dir, name)}.flip(60)
	}
	away := t.TempDir() // out of CIPHERDIR, so b is the one failure
	for i, name := range []string{"plain-name", evil["c"]} {
		if err := os.Rename(filepath.Join(v.Dir, name), filepath.Join(away, strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	_, errOut, code = run(t, v.Env, "rewrap", "--local-key", filepath.Join(t.TempDir(), "new.key"), v.Dir)
	if code != cliExitError || !strings.Contains(errOut, strconv.Quote(evil["b"])) || strings.ContainsAny(errOut, "\r\x1b") {
		t.Errorf("rewrap of a file whose header is spoiled: exit %d, want %d naming it quoted\n%q", code, cliExitError, errOut)
	}
}
