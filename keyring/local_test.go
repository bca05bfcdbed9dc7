package keyring_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/keyring"
)

// newLocal creates a key file in a temporary directory and loads it.
func newLocal(t *testing.T) (*keyring.Local, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kmsfs.key")
	if err := keyring.CreateLocalKeyFile(path); err != nil {
		t.Fatalf("CreateLocalKeyFile: %v", err)
	}
	l, err := keyring.LoadLocal(path)
	if err != nil {
		t.Fatalf("LoadLocal: %v", err)
	}
	return l, path
}

func TestCreateLocalKeyFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "dir", "kmsfs.key")
	if err := keyring.CreateLocalKeyFile(path); err != nil {
		t.Fatalf("CreateLocalKeyFile: %v", err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode() != 0o600 {
		t.Errorf("key file mode %v, want -rw-------", st.Mode())
	}
	if st.Size() != keyring.LocalKeyFileSize {
		t.Errorf("key file of %d bytes, want %d", st.Size(), keyring.LocalKeyFileSize)
	}
	if st, err := os.Stat(filepath.Dir(path)); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("created parent directory: %v, err %v; want mode 0700", st.Mode(), err)
	}
	key, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if isZero(key) {
		t.Error("key file is all zeros")
	}

	// A second create refuses, and the key survives.
	err = keyring.CreateLocalKeyFile(path)
	if err == nil {
		t.Fatal("CreateLocalKeyFile over an existing key file succeeded")
	}
	if !errors.Is(err, fs.ErrExist) {
		t.Errorf("overwrite error %v, want fs.ErrExist", err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(after, key) {
		t.Fatal("a refused CreateLocalKeyFile changed the key file")
	}

	// Two key files are two keys.
	other := filepath.Join(dir, "other.key")
	if err := keyring.CreateLocalKeyFile(other); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(other); bytes.Equal(b, key) {
		t.Fatal("two key files hold the same key")
	}
}

func TestLoadLocalRefusesOpenPermissions(t *testing.T) {
	t.Parallel()
	_, path := newLocal(t)
	for _, mode := range []os.FileMode{0o640, 0o604, 0o644, 0o660, 0o602, 0o620, 0o666, 0o610} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		l, err := keyring.LoadLocal(path)
		if err == nil || l != nil {
			t.Errorf("LoadLocal of a %04o key file: keyring %v, err %v; want an error", mode, l, err)
			continue
		}
		msg := err.Error()
		for _, want := range []string{path, fmt.Sprintf("%04o", mode), "chmod 600"} {
			if !strings.Contains(msg, want) {
				t.Errorf("mode %04o: error %q does not say %q", mode, msg, want)
			}
		}
	}
	for _, mode := range []os.FileMode{0o600, 0o400, 0o700} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		if _, err := keyring.LoadLocal(path); err != nil {
			t.Errorf("LoadLocal of a %04o key file: %v", mode, err)
		}
	}
}

func TestLoadLocalRefusesWrongSize(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, size := range []int{0, 1, keyring.LocalKeyFileSize - 1, keyring.LocalKeyFileSize + 1, 64, 4096} {
		path := filepath.Join(dir, fmt.Sprintf("key-%d", size))
		if err := os.WriteFile(path, bytes.Repeat([]byte{0x42}, size), 0o600); err != nil {
			t.Fatal(err)
		}
		l, err := keyring.LoadLocal(path)
		if err == nil || l != nil {
			t.Errorf("LoadLocal of a %d-byte file: keyring %v, err %v; want an error", size, l, err)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, path) || !strings.Contains(msg, "exactly 32 bytes") {
			t.Errorf("%d-byte file: error %q should name the file and the size it must have", size, msg)
		}
	}
}

func TestLoadLocalRefusesOthers(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if _, err := keyring.LoadLocal(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing key file: %v, want fs.ErrNotExist", err)
	}
	sub := filepath.Join(dir, "dir")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := keyring.LoadLocal(sub); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory as key file: %v, want 'not a regular file'", err)
	}
	// A FIFO (a config not trusted yet may name one) is refused without
	// an open, which would wait for a writer forever.
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := keyring.LoadLocal(fifo); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, keyring.ErrNotRegular) {
			t.Errorf("FIFO as key file: %v, want ErrNotRegular", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("LoadLocal of a FIFO blocks")
	}
}

func TestLocalRoundTrip(t *testing.T) {
	t.Parallel()
	l, _ := newLocal(t)
	ec := keyring.FileContext("0123456789abcdef0123456789abcdef", "00000000000000000000000000000001")
	dk, wrapped, err := l.GenerateDataKey(context.Background(), ec)
	if err != nil {
		t.Fatalf("GenerateDataKey: %v", err)
	}
	defer dk.Wipe()
	if len(dk.Bytes()) != keyring.DataKeySize || isZero(dk.Bytes()) {
		t.Fatalf("generated key of %d bytes, zero=%v", len(dk.Bytes()), isZero(dk.Bytes()))
	}
	if len(wrapped) != 1 {
		t.Fatalf("%d wrapped keys, want 1", len(wrapped))
	}
	w := wrapped[0]
	if w.Kind != keyring.KindLocal || w.KeyID != l.KeyID() {
		t.Errorf("entry %s %s, want %s %s", w.Kind, w.KeyID, keyring.KindLocal, l.KeyID())
	}
	if len(w.Blob) != 61 || w.Blob[0] != 1 {
		t.Errorf("blob of %d bytes, version %d; docs/FORMAT.md says 61 bytes, version 1", len(w.Blob), w.Blob[0])
	}
	if bytes.Contains(w.Blob, dk.Bytes()) {
		t.Fatal("blob holds the key in plaintext")
	}
	got, err := l.Decrypt(context.Background(), wrapped, ec)
	if err != nil {
		t.Fatalf("Decrypt: %v", err)
	}
	defer got.Wipe()
	if !bytes.Equal(got.Bytes(), dk.Bytes()) {
		t.Fatal("Decrypt returned another key")
	}

	// Wrap of an existing key opens to that key; two wraps differ (nonce).
	w1, err := l.Wrap(context.Background(), dk, ec)
	if err != nil {
		t.Fatal(err)
	}
	w2, err := l.Wrap(context.Background(), dk, ec)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(w1.Blob, w2.Blob) {
		t.Error("two wraps of one key are identical: nonce not random")
	}
	got2, err := l.Decrypt(context.Background(), []keyring.WrappedKey{w2}, ec)
	if err != nil {
		t.Fatal(err)
	}
	defer got2.Wipe()
	if !bytes.Equal(got2.Bytes(), dk.Bytes()) {
		t.Fatal("Wrap then Decrypt returned another key")
	}
	wiped := dk.Clone()
	wiped.Wipe()
	if _, err := l.Wrap(context.Background(), wiped, ec); err == nil {
		t.Error("Wrap of a wiped key succeeded")
	}

	// Keys are fresh each time.
	dk2, _, err := l.GenerateDataKey(context.Background(), ec)
	if err != nil {
		t.Fatal(err)
	}
	defer dk2.Wipe()
	if bytes.Equal(dk2.Bytes(), dk.Bytes()) {
		t.Fatal("two GenerateDataKey calls gave the same key")
	}
}

func TestLocalWrongContext(t *testing.T) {
	t.Parallel()
	l, _ := newLocal(t)
	vol, file := "0123456789abcdef0123456789abcdef", "00000000000000000000000000000001"
	ec := keyring.FileContext(vol, file)
	dk, wrapped, err := l.GenerateDataKey(context.Background(), ec)
	if err != nil {
		t.Fatal(err)
	}
	defer dk.Wipe()
	for name, other := range map[string]keyring.EncryptionContext{
		"other file":    keyring.FileContext(vol, "00000000000000000000000000000002"),
		"other volume":  keyring.FileContext("f123456789abcdef0123456789abcdef", file),
		"swapped":       keyring.FileContext(file, vol),
		"empty":         {},
		"nil":           nil,
		"extra pair":    {keyring.ContextVolume: vol, keyring.ContextFile: file, "x": ""},
		"volume only":   {keyring.ContextVolume: vol},
		"renamed key":   {keyring.ContextVolume: vol, "kmsfs:File": file},
		"value + NUL":   keyring.FileContext(vol, file+"\x00"),
		"upper-case id": keyring.FileContext(strings.ToUpper(vol), file),
	} {
		got, err := l.Decrypt(context.Background(), wrapped, other)
		if !errors.Is(err, keyring.ErrInvalidCiphertext) || got != nil {
			t.Errorf("%s: key %v, err %v; want ErrInvalidCiphertext", name, got, err)
		}
	}
}

func TestLocalOtherKey(t *testing.T) {
	t.Parallel()
	a, _ := newLocal(t)
	b, _ := newLocal(t)
	if a.KeyID() == b.KeyID() {
		t.Fatal("two key files have the same key ID")
	}
	ec := keyring.FileContext("0123456789abcdef0123456789abcdef", "00000000000000000000000000000003")
	dk, wrapped, err := a.GenerateDataKey(context.Background(), ec)
	if err != nil {
		t.Fatal(err)
	}
	defer dk.Wipe()

	// The entry names a's key: b does not try it.
	got, err := b.Decrypt(context.Background(), wrapped, ec)
	if !errors.Is(err, keyring.ErrNoUsableKey) || got != nil {
		t.Fatalf("blob of another key file: key %v, err %v; want ErrNoUsableKey", got, err)
	}
	if errors.Is(err, keyring.ErrInvalidCiphertext) {
		t.Errorf("ErrNoUsableKey error also matches ErrInvalidCiphertext: %v", err)
	}

	// A forged entry naming b's key ID with a's blob fails to open.
	forged := []keyring.WrappedKey{{Kind: keyring.KindLocal, KeyID: b.KeyID(), Blob: wrapped[0].Blob}}
	got, err = b.Decrypt(context.Background(), forged, ec)
	if !errors.Is(err, keyring.ErrInvalidCiphertext) || got != nil {
		t.Fatalf("forged key ID: key %v, err %v; want ErrInvalidCiphertext", got, err)
	}

	// Entries of another kind naming the same ID are not local entries.
	otherKind := []keyring.WrappedKey{{Kind: keyring.KindAWSKMS, KeyID: a.KeyID(), Blob: wrapped[0].Blob}}
	if _, err := a.Decrypt(context.Background(), otherKind, ec); !errors.Is(err, keyring.ErrNoUsableKey) {
		t.Errorf("aws-kms entry naming the local key ID: %v, want ErrNoUsableKey", err)
	}
	if _, err := a.Decrypt(context.Background(), nil, ec); !errors.Is(err, keyring.ErrNoUsableKey) {
		t.Errorf("no entries: %v, want ErrNoUsableKey", err)
	}

	// The entry of a is found among others, wherever it is.
	mixed := []keyring.WrappedKey{otherKind[0], {Kind: keyring.KindLocal, KeyID: b.KeyID(), Blob: []byte{1}}, wrapped[0]}
	got, err = a.Decrypt(context.Background(), mixed, ec)
	if err != nil {
		t.Fatalf("entry after others: %v", err)
	}
	defer got.Wipe()
	if !bytes.Equal(got.Bytes(), dk.Bytes()) {
		t.Fatal("entry after others opened to another key")
	}
}

func TestLocalCorruptBlob(t *testing.T) {
	t.Parallel()
	l, _ := newLocal(t)
	ec := keyring.FileContext("0123456789abcdef0123456789abcdef", "00000000000000000000000000000004")
	dk, wrapped, err := l.GenerateDataKey(context.Background(), ec)
	if err != nil {
		t.Fatal(err)
	}
	defer dk.Wipe()
	blob := wrapped[0].Blob
	try := func(name string, b []byte) {
		t.Helper()
		w := []keyring.WrappedKey{{Kind: keyring.KindLocal, KeyID: l.KeyID(), Blob: b}}
		got, err := l.Decrypt(context.Background(), w, ec)
		if !errors.Is(err, keyring.ErrInvalidCiphertext) || got != nil {
			t.Errorf("%s: key %v, err %v; want ErrInvalidCiphertext", name, got, err)
		}
	}
	for i := range blob {
		for _, bit := range []byte{0x01, 0x80} {
			b := bytes.Clone(blob)
			b[i] ^= bit
			try("bit flip", b)
		}
	}
	try("empty", nil)
	try("one byte", blob[:1])
	try("cut by one", blob[:len(blob)-1])
	try("one more", append(bytes.Clone(blob), 0))
	try("zeros", make([]byte, len(blob)))
	v2 := bytes.Clone(blob)
	v2[0] = 2
	try("version 2", v2)
}

func TestLocalSameFileSameKeyID(t *testing.T) {
	t.Parallel()
	l1, path := newLocal(t)
	l2, err := keyring.LoadLocal(path)
	if err != nil {
		t.Fatal(err)
	}
	if l1.KeyID() != l2.KeyID() {
		t.Fatalf("one key file loaded twice: key IDs %s and %s", l1.KeyID(), l2.KeyID())
	}
	if id := l1.KeyID(); len(id) != 32 || strings.ToLower(id) != id || strings.Trim(id, "0123456789abcdef") != "" {
		t.Errorf("key ID %q is not 32 lowercase hex digits", id)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	l3, err := keyring.NewLocalFromBytes(raw)
	if err != nil {
		t.Fatal(err)
	}
	if l3.KeyID() != l1.KeyID() {
		t.Errorf("NewLocalFromBytes of the file's bytes: key ID %s, want %s", l3.KeyID(), l1.KeyID())
	}
	for _, s := range []string{l1.Describe(), l1.KeyID()} {
		assertNoKey(t, "Describe/KeyID", s, raw)
	}
	if d := l1.Describe(); !strings.Contains(d, l1.KeyID()) || !strings.Contains(d, path) {
		t.Errorf("Describe() = %q, want the key ID and the path", d)
	}

	// A blob of one load opens with the other (a second mount).
	ec := keyring.FileContext("0123456789abcdef0123456789abcdef", "00000000000000000000000000000005")
	dk, wrapped, err := l1.GenerateDataKey(context.Background(), ec)
	if err != nil {
		t.Fatal(err)
	}
	defer dk.Wipe()
	got, err := l2.Decrypt(context.Background(), wrapped, ec)
	if err != nil {
		t.Fatalf("second load of the key file: %v", err)
	}
	defer got.Wipe()
	if !bytes.Equal(got.Bytes(), dk.Bytes()) {
		t.Fatal("second load opened another key")
	}
	for _, n := range []int{0, 31, 33} {
		if _, err := keyring.NewLocalFromBytes(make([]byte, n)); err == nil {
			t.Errorf("NewLocalFromBytes of %d bytes succeeded", n)
		}
	}
}

// The canonical context is unambiguous: contexts whose keys and values
// concatenate to the same bytes are different contexts. (local-kms
// concatenates them, so {"ab":"c"} and {"a":"bc"} collide there.)
func TestEncryptionContextCanonicalUnambiguous(t *testing.T) {
	t.Parallel()
	pairs := [][2]keyring.EncryptionContext{
		{{"ab": "c"}, {"a": "bc"}},
		{{"a": "bc"}, {"abc": ""}},
		{{"a": "b", "c": "d"}, {"a": "bcd"}},
		{{"a": "b", "c": "d"}, {"ab": "cd"}},
		{{"a": ""}, {"": "a"}},
		{{"": ""}, {}},
		{{"a": "\x00\x00\x00\x01b"}, {"a": "", "b": ""}},
		{{"kmsfs:volume": "v", "kmsfs:file": "f"}, {"kmsfs:file": "fkmsfs:volume", "": "v"}},
	}
	l, err := keyring.NewLocalFromBytes(bytes.Repeat([]byte{9}, keyring.LocalKeyFileSize))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pairs {
		a, b := p[0], p[1]
		if bytes.Equal(a.Canonical(), b.Canonical()) {
			t.Errorf("%q and %q have the same canonical encoding %x", a, b, a.Canonical())
			continue
		}
		dk, wrapped, err := l.GenerateDataKey(context.Background(), a)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := l.Decrypt(context.Background(), wrapped, b); !errors.Is(err, keyring.ErrInvalidCiphertext) {
			t.Errorf("blob bound to %q opened under %q: %v", a, b, err)
		}
		dk.Wipe()
	}

	// The encoding is deterministic and independent of map order, and
	// nil and empty contexts are the same (KMS: no context).
	big := keyring.EncryptionContext{}
	for _, k := range []string{"z", "a", "m", "b", "y", "kmsfs:volume", "kmsfs:file"} {
		big[k] = k + "-value"
	}
	first := big.Canonical()
	for range 20 {
		if !bytes.Equal(big.Canonical(), first) {
			t.Fatal("Canonical depends on map iteration order")
		}
	}
	if !bytes.Equal(keyring.EncryptionContext(nil).Canonical(), keyring.EncryptionContext{}.Canonical()) {
		t.Error("nil and empty contexts encode differently")
	}
	want := []byte{0, 0, 0, 1, 0, 0, 0, 2, 'a', 'b', 0, 0, 0, 1, 'c'}
	if got := (keyring.EncryptionContext{"ab": "c"}).Canonical(); !bytes.Equal(got, want) {
		t.Errorf(`Canonical({"ab":"c"}) = %x, want %x (docs/FORMAT.md)`, got, want)
	}
}

// Keyring.Decrypt "unwraps the first entry of wrapped that this keyring
// trusts and can open under ec" (AWSKMS goes on to a later entry under its
// key after ErrInvalidCiphertext): a damaged first copy under the local key
// must not hide an intact second one.
func TestLocalSkipsDamagedEntry(t *testing.T) {
	t.Parallel()
	l, _ := newLocal(t)
	ec := keyring.FileContext("0123456789abcdef0123456789abcdef", "00000000000000000000000000000006")
	dk, wrapped, err := l.GenerateDataKey(context.Background(), ec)
	if err != nil {
		t.Fatal(err)
	}
	defer dk.Wipe()
	damaged := keyring.WrappedKey{Kind: wrapped[0].Kind, KeyID: wrapped[0].KeyID, Blob: bytes.Clone(wrapped[0].Blob)}
	damaged.Blob[30] ^= 1

	got, err := l.Decrypt(context.Background(), []keyring.WrappedKey{damaged, wrapped[0]}, ec)
	if err != nil {
		t.Fatalf("damaged entry, then an intact one under the same key: %v", err)
	}
	defer got.Wipe()
	if !bytes.Equal(got.Bytes(), dk.Bytes()) {
		t.Fatal("opened to another key")
	}
	if _, err := l.Decrypt(context.Background(), []keyring.WrappedKey{damaged, damaged}, ec); !errors.Is(err, keyring.ErrInvalidCiphertext) {
		t.Errorf("two damaged entries: %v, want ErrInvalidCiphertext", err)
	}
}
