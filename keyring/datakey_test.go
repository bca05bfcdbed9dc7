package keyring_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/keyring"
)

// The tests in this file do not run in parallel: a wiped key's slot goes
// back to the locked arena, and a parallel test could be handed it before
// the check that it was zeroed.

// knownKey returns a data key with recognisable bytes, and those bytes.
func knownKey(t *testing.T) (*keyring.DataKey, []byte) {
	t.Helper()
	raw := make([]byte, keyring.DataKeySize)
	for i := range raw {
		raw[i] = byte(0xa0 + i) // no zero byte: a wiped key is told apart
	}
	want := bytes.Clone(raw)
	dk, err := keyring.NewDataKey(raw)
	if err != nil {
		t.Fatalf("NewDataKey: %v", err)
	}
	t.Cleanup(dk.Wipe)
	return dk, want
}

// leakForms are the ways key bytes could show up in text.
func leakForms(key []byte) map[string]string {
	dec := make([]string, len(key))
	for i, b := range key {
		dec[i] = fmt.Sprint(b)
	}
	return map[string]string{
		"raw":          string(key),
		"hex":          hex.EncodeToString(key),
		"HEX":          strings.ToUpper(hex.EncodeToString(key)),
		"hex prefix":   hex.EncodeToString(key[:8]),
		"base64":       base64.StdEncoding.EncodeToString(key),
		"base64 raw":   base64.RawStdEncoding.EncodeToString(key),
		"decimal list": strings.Join(dec[:8], " "),
		"go bytes":     fmt.Sprintf("%#v", key)[:40],
	}
}

func assertNoKey(t *testing.T, what, out string, key []byte) {
	t.Helper()
	for form, s := range leakForms(key) {
		if strings.Contains(out, s) {
			t.Errorf("%s contains the key (%s form): %q", what, form, out)
		}
	}
}

var idOnly = regexp.MustCompile(`^DataKey\(id=[0-9a-f]{8}\)$`)

func TestDataKeyNeverPrintsBytes(t *testing.T) {
	dk, key := knownKey(t)
	// The detector itself finds what a leak looks like.
	for _, leak := range []string{fmt.Sprintf("%x", key), fmt.Sprint(key), fmt.Sprintf("%#v", key), string(key)} {
		found := false
		for _, s := range leakForms(key) {
			found = found || strings.Contains(leak, s)
		}
		if !found {
			t.Fatalf("leak detector misses %q", leak)
		}
	}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "% x", "%#x", "%T %v", "%d", "%08v", "%p"} {
		out := fmt.Sprintf(verb, dk)
		assertNoKey(t, "fmt "+verb, out, key)
		if verb != "%T %v" && verb != "%p" && !idOnly.MatchString(out) {
			t.Errorf("fmt %s printed %q, want only an ID", verb, out)
		}
	}
	for name, out := range map[string]string{
		"Sprint":        fmt.Sprint(dk),
		"Sprintln":      fmt.Sprintln(dk),
		"slice":         fmt.Sprintf("%v", []*keyring.DataKey{dk}),
		"map":           fmt.Sprintf("%v", map[string]*keyring.DataKey{"k": dk}),
		"struct %+v":    fmt.Sprintf("%+v", struct{ Key *keyring.DataKey }{dk}),
		"struct %#v":    fmt.Sprintf("%#v", struct{ Key *keyring.DataKey }{dk}),
		"any in struct": fmt.Sprintf("%v", struct{ Key any }{dk}),
	} {
		assertNoKey(t, name, out, key)
	}
}

// A DataKey copied by value (a struct field of type DataKey, a
// dereference) must not print its bytes either.
func TestDataKeyValueNeverPrintsBytes(t *testing.T) {
	dk, key := knownKey(t)
	for name, out := range map[string]string{
		"%v of *dk":  fmt.Sprintf("%v", *dk),
		"%+v field":  fmt.Sprintf("%+v", struct{ K keyring.DataKey }{*dk}),
		"slog value": slogLine(slog.Any("key", *dk)),
	} {
		assertNoKey(t, name, out, key)
	}
}

func slogLine(a slog.Attr) string {
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).LogAttrs(context.Background(), slog.LevelInfo, "m", a)
	return buf.String()
}

// String names a key by a random ID, never by anything computed from
// its bytes: two keys with the same bytes print different IDs; a clone
// prints its original's.
func TestDataKeyStringIsID(t *testing.T) {
	dk, key := knownKey(t)
	s := dk.String()
	if !idOnly.MatchString(s) {
		t.Fatalf("String() = %q, want DataKey(id=<8 hex digits>)", s)
	}
	assertNoKey(t, "String()", s, key)
	again, err := keyring.NewDataKey(bytes.Clone(key))
	if err != nil {
		t.Fatal(err)
	}
	defer again.Wipe()
	if again.String() == s {
		t.Errorf("two keys print the same ID %s", s)
	}
	// Wiping does not reveal anything either, and a nil key prints.
	c := dk.Clone()
	if c.String() != s {
		t.Errorf("a clone prints %s, its original %s", c, s)
	}
	c.Wipe()
	if !idOnly.MatchString(c.String()) {
		t.Errorf("wiped key prints %q", c.String())
	}
	var nilKey *keyring.DataKey
	if got := nilKey.String(); got != "DataKey(nil)" {
		t.Errorf("nil key prints %q", got)
	}
}

func TestDataKeySlogRedacts(t *testing.T) {
	dk, key := knownKey(t)
	handlers := map[string]func(*bytes.Buffer) slog.Handler{
		"text": func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) },
		"json": func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) },
	}
	for name, newHandler := range handlers {
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			log := slog.New(newHandler(&buf))
			log.Info("pair", "key", dk)
			log.Info("attr", slog.Any("key", dk))
			log.Info("group", slog.Group("g", slog.Any("key", dk)))
			log.With("key", dk).Warn("with")
			log.Error("error", "err", fmt.Errorf("open: %v", dk))
			out := buf.String()
			if n := strings.Count(out, "\n"); n != 5 {
				t.Fatalf("%d log lines, want 5:\n%s", n, out)
			}
			assertNoKey(t, name+" log", out, key)
			if strings.Count(out, dk.String()) != 5 {
				t.Errorf("every line should name the key by its ID %s:\n%s", dk, out)
			}
		})
	}
}

func TestDataKeyInErrors(t *testing.T) {
	dk, key := knownKey(t)
	base := errors.New("base")
	errs := []error{
		fmt.Errorf("key %v: %w", dk, base),
		fmt.Errorf("key %s %x %q: %w", dk, dk, dk, base),
		fmt.Errorf("outer: %w", fmt.Errorf("key %+v: %w", dk, base)),
		errors.Join(base, fmt.Errorf("%#v", dk)),
	}
	for i, err := range errs {
		assertNoKey(t, fmt.Sprintf("error %d", i), err.Error(), key)
		assertNoKey(t, fmt.Sprintf("error %d %%+v", i), fmt.Sprintf("%+v", err), key)
		if !errors.Is(err, base) {
			t.Errorf("error %d lost its cause", i)
		}
	}
}

func TestNewDataKey(t *testing.T) {
	dk, key := knownKey(t)
	if !bytes.Equal(dk.Bytes(), key) {
		t.Fatal("NewDataKey did not keep the bytes")
	}
	src := bytes.Clone(key)
	dk2, err := keyring.NewDataKey(src)
	if err != nil {
		t.Fatal(err)
	}
	defer dk2.Wipe()
	if !isZero(src) {
		t.Error("NewDataKey left the source buffer holding the key")
	}
	for _, n := range []int{0, 1, keyring.DataKeySize - 1, keyring.DataKeySize + 1, 64} {
		src := bytes.Repeat([]byte{0x5a}, n)
		k, err := keyring.NewDataKey(src)
		if err == nil || k != nil {
			t.Errorf("NewDataKey of %d bytes: key %v, err %v; want an error", n, k, err)
			continue
		}
		if !isZero(src) {
			t.Errorf("NewDataKey of %d bytes left the source buffer unzeroed", n)
		}
	}
}

func TestDataKeyWipe(t *testing.T) {
	dk, key := knownKey(t)
	b := dk.Bytes()
	if !bytes.Equal(b, key) || dk.Wiped() {
		t.Fatal("fresh key is not intact")
	}
	dk.Wipe()
	if !isZero(b) {
		t.Fatalf("after Wipe the key's memory holds %d non-zero bytes", len(b)-zeroCount(b))
	}
	if !dk.Wiped() || dk.Bytes() != nil {
		t.Fatalf("after Wipe: Wiped() = %v, Bytes() = %d bytes", dk.Wiped(), len(dk.Bytes()))
	}
	dk.Wipe() // idempotent: no panic, still wiped
	if !dk.Wiped() || dk.Bytes() != nil {
		t.Fatal("second Wipe changed the key")
	}
	var nilKey *keyring.DataKey
	nilKey.Wipe() // a nil key wipes too
}

func TestDataKeyClone(t *testing.T) {
	dk, key := knownKey(t)
	c := dk.Clone()
	defer c.Wipe()
	if c == dk || &c.Bytes()[0] == &dk.Bytes()[0] {
		t.Fatal("Clone shares memory with the original")
	}
	if !bytes.Equal(c.Bytes(), key) || c.String() != dk.String() {
		t.Fatalf("clone %v differs from original %v", c, dk)
	}
	// Changing or wiping the original leaves the clone alone, and back.
	dk.Bytes()[0] ^= 0xff
	if !bytes.Equal(c.Bytes(), key) {
		t.Fatal("a change to the original showed in the clone")
	}
	dk.Wipe()
	if c.Wiped() || !bytes.Equal(c.Bytes(), key) {
		t.Fatal("wiping the original wiped the clone")
	}
	c2 := c.Clone()
	cb := c2.Bytes()
	c2.Wipe()
	if !isZero(cb) || !bytes.Equal(c.Bytes(), key) {
		t.Fatal("wiping a clone's clone affected its source, or did not zero it")
	}
	defer func() {
		if recover() == nil {
			t.Error("Clone of a wiped key did not panic")
		}
	}()
	dk.Clone()
}

func TestDataKeyLockedMemory(t *testing.T) {
	// The tests run as root on a kernel with mlock: key memory is locked.
	if !keyring.LockedMemory() {
		t.Fatal("LockedMemory() = false: mlock was refused")
	}
	var keys []*keyring.DataKey
	defer func() {
		for _, k := range keys {
			k.Wipe()
		}
	}()
	// More keys than fit one page: the arena grows and stays locked.
	for i := range 300 {
		k, err := keyring.NewDataKey(bytes.Repeat([]byte{byte(i) | 1}, keyring.DataKeySize))
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
		if !k.Locked() {
			t.Fatalf("key %d is not in locked memory", i)
		}
		c := k.Clone()
		keys = append(keys, c)
		if !c.Locked() {
			t.Fatalf("clone of key %d is not in locked memory", i)
		}
	}
	for i, k := range keys {
		if want := bytes.Repeat([]byte{byte(i/2) | 1}, keyring.DataKeySize); !bytes.Equal(k.Bytes(), want) {
			t.Fatalf("key %d was overwritten by another key sharing its page", i)
		}
	}
	l, err := keyring.NewLocalFromBytes(bytes.Repeat([]byte{1}, keyring.LocalKeyFileSize))
	if err != nil {
		t.Fatal(err)
	}
	dk, _, err := l.GenerateDataKey(t.Context(), keyring.FileContext("v", "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer dk.Wipe()
	if !dk.Locked() {
		t.Error("a generated key is not in locked memory")
	}
}

func isZero(b []byte) bool { return zeroCount(b) == len(b) }

func zeroCount(b []byte) int {
	n := 0
	for _, c := range b {
		if c == 0 {
			n++
		}
	}
	return n
}
