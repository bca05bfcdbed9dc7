package volume

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/blockcipher"
	"github.com/kmsfs/kmsfs/keyring"
)

// rewrapFixture is a per-file volume over local key old, one stored file
// whose header wraps its key under old, and a Rewrap to local key new.
type rewrapFixture struct {
	v        *Volume
	root     int
	old, new *keyring.Local
	name     string
	stored   []byte // the file as first written
	key      []byte
	rw       Rewrap
}

func newRewrapFixture(t *testing.T) *rewrapFixture {
	t.Helper()
	dir := t.TempDir()
	x := &rewrapFixture{old: testLocal(t), new: testLocal(t), name: "f"}
	id := blockcipher.NewID()
	c := &Config{FormatVersion: ConfigVersion1, VolumeID: hex.EncodeToString(id[:]), BlockSize: 4096, HeaderSize: 512,
		Keyrings: []KeyringSpec{{Kind: keyring.KindLocal, KeyID: x.old.KeyID(), KeyFile: "unused"}}, Features: []string{}}
	v, err := New(dir, c)
	if err != nil {
		t.Fatal(err)
	}
	x.v = v
	fileID := blockcipher.NewID()
	dk, wrapped, err := x.old.GenerateDataKey(context.Background(), v.FileContext(fileID))
	if err != nil {
		t.Fatal(err)
	}
	x.key = bytes.Clone(dk.Bytes())
	h, err := v.NewHeader(fileID, wrapped)
	if err != nil {
		t.Fatal(err)
	}
	slot, _, err := h.Seal(dk.Bytes())
	dk.Wipe()
	if err != nil {
		t.Fatal(err)
	}
	// The blocks do not matter here: only the header changes.
	x.stored = append(slot, bytes.Repeat([]byte{0xa5}, 20000)...)
	x.root, err = unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(x.root) })
	both, err := keyring.NewMulti(x.old, x.new)
	if err != nil {
		t.Fatal(err)
	}
	x.rw = Rewrap{
		Done: func(e []keyring.WrappedKey) bool {
			return len(e) == 1 && e[0].Kind == keyring.KindLocal && e[0].KeyID == x.new.KeyID()
		},
		Unwrap: func(h *blockcipher.Header) (*keyring.DataKey, error) {
			return both.Decrypt(context.Background(), Entries(h), v.FileContext(h.FileID))
		},
		Entries: func(h *blockcipher.Header, dk *keyring.DataKey) ([]keyring.WrappedKey, error) {
			for _, e := range Entries(h) {
				if e.KeyID == x.new.KeyID() {
					return []keyring.WrappedKey{e}, nil
				}
			}
			w, err := x.new.Wrap(context.Background(), dk, v.FileContext(h.FileID))
			return []keyring.WrappedKey{w}, err
		},
	}
	return x
}

func (x *rewrapFixture) reset(t *testing.T) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(x.v.Dir, x.name), x.stored, 0o644); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(filepath.Join(x.v.Dir, RewrapStore))
}

// check opens the file as a reader would with the one keyring k and
// returns which header it found (the slot's or the record's).
func (x *rewrapFixture) check(t *testing.T, k keyring.Keyring, what string) (bool, error) {
	t.Helper()
	f, err := os.Open(filepath.Join(x.v.Dir, x.name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	if st.Size() != int64(len(x.stored)) {
		t.Fatalf("%s: the file is %d bytes, was %d", what, st.Size(), len(x.stored))
	}
	b := make([]byte, len(x.stored))
	f.ReadAt(b, 0)
	if !bytes.Equal(b[512:], x.stored[512:]) {
		t.Fatalf("%s: bytes past the header changed", what)
	}
	h, dk, fromRecord, err := x.v.OpenHeader(f, st.Size(), func(h *blockcipher.Header) (*keyring.DataKey, error) {
		return k.Decrypt(context.Background(), Entries(h), x.v.FileContext(h.FileID))
	})
	if err != nil {
		return false, err
	}
	defer dk.Wipe()
	if !bytes.Equal(dk.Bytes(), x.key) || h.FileID != fileIDOf(x.stored) {
		t.Fatalf("%s: another key or file", what)
	}
	return fromRecord, nil
}

// TestRewriteCrashAtEveryStep kills a header rewrite before each of its
// steps and inside the slot's write at every interesting byte: the file
// then opens under the old key or the new one, with the same data key
// and the bytes past the header untouched, and a second run finishes it:
// the slot holds the new header, the old key no longer opens it, no
// record is left.
func TestRewriteCrashAtEveryStep(t *testing.T) {
	x := newRewrapFixture(t)
	defer func() { testOnlyCrash = nil }()
	either, _ := keyring.NewMulti(x.old, x.new)
	tears := []int{0, 1, 47, 48, 82, 83, 84, 150, 300, 480, 511}
	type crash struct{ step, at int }
	var crashes []crash
	crashes = append(crashes, crash{0, 0})
	for _, n := range tears {
		crashes = append(crashes, crash{1, n})
	}
	crashes = append(crashes, crash{2, 0})
	for _, c := range crashes {
		what := fmt.Sprintf("crash at step %d after %d bytes", c.step, c.at)
		x.reset(t)
		testOnlyCrash = func(step int) int {
			if step == c.step {
				return c.at
			}
			return -1
		}
		if _, err := x.v.RewrapFile(x.root, x.name, x.rw); err == nil {
			t.Fatalf("%s: the rewrite did not stop", what)
		}
		testOnlyCrash = nil
		fromRecord, err := x.check(t, either, what)
		if err != nil {
			t.Fatalf("%s: the file does not open: %v", what, err)
		}
		// A torn slot reads through the record; a slot still whole
		// (old before step 1, new after it) reads as it is.
		// A slot torn after its last byte that differs from the old
		// one's is whole: it is the new slot (the record's).
		cur, _ := os.ReadFile(filepath.Join(x.v.Dir, x.name))
		torn := c.step == 1 && !bytes.Equal(cur[:512], x.stored[:512]) && !bytes.Equal(cur[:512], recordOf(t, x.v))
		if fromRecord != torn {
			t.Errorf("%s: read through the record: %v, want %v", what, fromRecord, torn)
		}
		out, err := x.v.RewrapFile(x.root, x.name, x.rw)
		if err != nil {
			t.Fatalf("%s: second run: %v", what, err)
		}
		t.Logf("%s: second run: outcome %d", what, out)
		if _, err := x.check(t, x.new, what+", then finished"); err != nil {
			t.Fatalf("%s, then finished: the new key does not open it: %v", what, err)
		}
		if _, err := x.check(t, x.old, what+", then finished"); err == nil {
			t.Errorf("%s, then finished: the old key still opens it", what)
		}
		if ents, _ := os.ReadDir(filepath.Join(x.v.Dir, RewrapStore)); len(ents) != 0 {
			t.Errorf("%s, then finished: %d entries left in %s", what, len(ents), RewrapStore)
		}
		// A third run has nothing to do, without unwrapping.
		rw := x.rw
		rw.Unwrap = func(*blockcipher.Header) (*keyring.DataKey, error) {
			t.Fatalf("%s: a finished file was unwrapped again", what)
			return nil, nil
		}
		if out, err := x.v.RewrapFile(x.root, x.name, rw); err != nil || out != RewrapNone {
			t.Errorf("%s: third run: %d, %v", what, out, err)
		}
	}
}

// A record cannot stand in for a slot that verifies, and a forged or
// foreign record is not used.
func TestRewriteRecordUntrusted(t *testing.T) {
	x := newRewrapFixture(t)
	x.reset(t)
	fileID := fileIDOf(x.stored)
	name := filepath.Join(x.v.Dir, RewrapStore, hex.EncodeToString(fileID[:]))
	os.MkdirAll(filepath.Dir(name), 0o755)
	// A record sealed under another key for the same file ID.
	other := testLocal(t)
	dk, wrapped, _ := other.GenerateDataKey(context.Background(), x.v.FileContext(fileID))
	h, _ := x.v.NewHeader(fileID, wrapped)
	forged, _, _ := h.Seal(dk.Bytes())
	dk.Wipe()
	os.WriteFile(name, forged, 0o644)
	// The slot verifies: the record is not consulted.
	if fromRecord, err := x.check(t, x.old, "intact slot"); err != nil || fromRecord {
		t.Fatalf("intact slot with a forged record: %v, record %v", err, fromRecord)
	}
	// A torn slot and the forged record: the old key cannot open it.
	b := slices.Clone(x.stored)
	b[200] ^= 1
	os.WriteFile(filepath.Join(x.v.Dir, x.name), b, 0o644)
	if _, err := x.check(t, x.old, "torn slot, forged record"); err == nil {
		t.Fatal("a forged record was used")
	}
	// A record naming another file ID is refused.
	good := slices.Clone(x.stored[:512])
	good[40] ^= 1
	os.WriteFile(name, good, 0o644)
	if _, err := x.check(t, x.old, "record of another file"); err == nil {
		t.Fatal("a record of another file was used")
	}
}

func fileIDOf(slot []byte) [blockcipher.IDSize]byte {
	var id [blockcipher.IDSize]byte
	copy(id[:], slot[32:48])
	return id
}

// EndRewrap removes the temporary files a rewrap killed inside
// writeWhole left in the rewrap store (TestRewrapKilled found one).
func TestEndRewrapRemovesTemps(t *testing.T) {
	x := newRewrapFixture(t)
	if err := x.v.StartRewrap(nil); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(x.v.Dir, RewrapStore)
	stray := filepath.Join(dir, TempPrefix+"0123-4567")
	if err := os.WriteFile(stray, []byte("half a record"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := x.v.EndRewrap(); err != nil {
		t.Fatal(err)
	}
	// Empty, the store goes too: fsck would list it as a stray.
	if ents, err := os.ReadDir(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("rewrap store after EndRewrap: %v, %v; want it gone", ents, err)
	}
	if strays, err := x.v.StoreStrays(); err != nil || len(strays) != 0 {
		t.Errorf("store strays after EndRewrap: %v, %v", strays, err)
	}
}

// A rewrap store that holds records (an interrupted rewrap) is kmsfs's,
// not a stray.
func TestRewrapStoreIsNoStray(t *testing.T) {
	x := newRewrapFixture(t)
	if err := x.v.StartRewrap(nil); err != nil {
		t.Fatal(err)
	}
	if strays, err := x.v.StoreStrays(); err != nil || len(strays) != 0 {
		t.Errorf("store strays during a rewrap: %v, %v", strays, err)
	}
}

// recordOf returns the one header rewrite record in v's store (nil if
// there is none).
func recordOf(t *testing.T, v *Volume) []byte {
	t.Helper()
	dir := filepath.Join(v.Dir, RewrapStore)
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if e.Name() == rewrapMarker || strings.HasPrefix(e.Name(), TempPrefix) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	return nil
}
