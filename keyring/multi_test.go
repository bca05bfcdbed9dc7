package keyring_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/keyring/kmstest"
)

func newMulti(t *testing.T, members ...keyring.Keyring) *keyring.Multi {
	t.Helper()
	m, err := keyring.NewMulti(members...)
	if err != nil {
		t.Fatalf("NewMulti: %v", err)
	}
	return m
}

// decryptFails asserts that k refuses wrapped under ec with an error that
// errors.Is matches every one of want, and none of notWant.
func decryptFails(t *testing.T, k keyring.Keyring, wrapped []keyring.WrappedKey, ec keyring.EncryptionContext, want []error, notWant []error) error {
	t.Helper()
	dk, err := k.Decrypt(context.Background(), wrapped, ec)
	if err == nil {
		dk.Wipe()
		t.Fatalf("Decrypt succeeded, want an error matching %v", want)
	}
	if dk != nil {
		t.Errorf("Decrypt returned a key with error %v", err)
	}
	for _, w := range want {
		if !errors.Is(err, w) {
			t.Errorf("Decrypt error %q does not match %q", err, w)
		}
	}
	for _, w := range notWant {
		if errors.Is(err, w) {
			t.Errorf("Decrypt error %q also matches %q", err, w)
		}
	}
	return err
}

// A volume with a KMS key and a local recovery key: every file is wrapped
// under both, and either alone opens it.
func TestMultiKMSAndLocal(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	kmsA := srv.Keyring(t, kmstest.KeyAARN)
	local, _ := newLocal(t)
	m := newMulti(t, kmsA, local)
	ec := kmstest.FileContext("00000000000000000000000000000101")

	dk, wrapped := kmstest.Generate(t, m, ec)
	if len(wrapped) != 2 {
		t.Fatalf("%d wrapped entries, want 2", len(wrapped))
	}
	if w := wrapped[0]; w.Kind != keyring.KindAWSKMS || w.KeyID != kmstest.KeyAARN {
		t.Errorf("entry 1 is %s %s, want %s %s", w.Kind, w.KeyID, keyring.KindAWSKMS, kmstest.KeyAARN)
	}
	if w := wrapped[1]; w.Kind != keyring.KindLocal || w.KeyID != local.KeyID() {
		t.Errorf("entry 2 is %s %s, want %s %s", w.Kind, w.KeyID, keyring.KindLocal, local.KeyID())
	}

	kmstest.MustDecrypt(t, m, wrapped, ec, dk)
	// Each member alone, as a mount with only that key would.
	kmstest.MustDecrypt(t, kmsA, wrapped, ec, dk)
	kmstest.MustDecrypt(t, local, wrapped, ec, dk)
	// Each entry alone, as in a header that lost the other.
	kmstest.MustDecrypt(t, m, wrapped[:1], ec, dk)
	kmstest.MustDecrypt(t, m, wrapped[1:], ec, dk)
	kmstest.MustDecrypt(t, kmsA, wrapped[:1], ec, dk)
	kmstest.MustDecrypt(t, local, wrapped[1:], ec, dk)
	// A second keyring over the same keys (another mount) opens it too.
	kmstest.MustDecrypt(t, newMulti(t, srv.Keyring(t, kmstest.KeyAARN), local), wrapped, ec, dk)

	// Under another context nothing opens, and the error says why.
	decryptFails(t, m, wrapped, kmstest.FileContext("00000000000000000000000000000102"),
		[]error{keyring.ErrInvalidCiphertext}, []error{keyring.ErrNoUsableKey})

	if d := m.Describe(); !strings.Contains(d, kmstest.KeyAARN) || !strings.Contains(d, local.KeyID()) {
		t.Errorf("Describe() = %q, want both keys", d)
	}
	if got := m.Members(); len(got) != 2 || got[0] != keyring.Keyring(kmsA) || got[1] != keyring.Keyring(local) {
		t.Errorf("Members() = %v", got)
	}
}

// The first member's key is disabled: the local member still opens every
// file, and the error of the first member does not surface.
func TestMultiFallsBackWhenKeyDisabled(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	kmsA, proxy := srv.ViaProxy(t, kmstest.KeyAARN)
	local, _ := newLocal(t)
	m := newMulti(t, kmsA, local)
	ec := kmstest.FileContext("00000000000000000000000000000103")
	dk, wrapped := kmstest.Generate(t, m, ec)

	srv.DisableKey(t, kmstest.KeyAID)
	proxy.Reset()
	kmstest.MustDecrypt(t, m, wrapped, ec, dk)
	if n := proxy.Count("Decrypt"); n != 1 {
		t.Errorf("%d KMS Decrypt calls, want 1 (tried once, then the local key)", n)
	}
	// The KMS member alone now fails with the key's state.
	decryptFails(t, kmsA, wrapped, ec, []error{keyring.ErrKeyDisabled}, nil)
	// A new file cannot be made with fewer copies than the volume has.
	if dk, w, err := m.GenerateDataKey(context.Background(), ec); !errors.Is(err, keyring.ErrKeyDisabled) || dk != nil || w != nil {
		t.Errorf("GenerateDataKey with the first key disabled: %v, want ErrKeyDisabled and nothing", err)
	}
	if dk, w, err := newMulti(t, local, kmsA).GenerateDataKey(context.Background(), ec); !errors.Is(err, keyring.ErrKeyDisabled) || dk != nil || w != nil {
		t.Errorf("GenerateDataKey with the second key disabled: %v, want ErrKeyDisabled and nothing", err)
	}

	srv.EnableKey(t, kmstest.KeyAID)
	kmstest.MustDecrypt(t, kmsA, wrapped, ec, dk)
}

// The KMS endpoint is down: the local member opens every file.
func TestMultiFallsBackWhenKMSUnreachable(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	local, _ := newLocal(t)
	ec := kmstest.FileContext("00000000000000000000000000000104")
	dk, wrapped := kmstest.Generate(t, newMulti(t, srv.Keyring(t, kmstest.KeyAARN), local), ec)

	cfg := srv.Config(kmstest.KeyAARN)
	cfg.Endpoint = kmstest.ClosedEndpoint(t)
	down := kmstest.NewKeyring(t, cfg)
	m := newMulti(t, down, local)
	kmstest.MustDecrypt(t, m, wrapped, ec, dk)
	decryptFails(t, down, wrapped, ec, []error{keyring.ErrUnreachable}, []error{keyring.ErrNoUsableKey})

	// Unreachable KMS and a damaged local copy: both reasons are reported.
	damaged := cloneWrapped(wrapped)
	damaged[1].Blob[20] ^= 1
	decryptFails(t, m, damaged, ec,
		[]error{keyring.ErrUnreachable, keyring.ErrInvalidCiphertext},
		[]error{keyring.ErrNoUsableKey, keyring.ErrKeyDisabled})
}

// When every member fails, errors.Is finds each member's sentinel.
func TestMultiAllMembersFail(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	kmsA := srv.Keyring(t, kmstest.KeyAARN)
	local, _ := newLocal(t)
	m := newMulti(t, kmsA, local)
	ec := kmstest.FileContext("00000000000000000000000000000105")
	_, wrapped := kmstest.Generate(t, m, ec)

	srv.DisableKey(t, kmstest.KeyAID)
	damaged := cloneWrapped(wrapped)
	damaged[1].Blob[len(damaged[1].Blob)-1] ^= 1
	err := decryptFails(t, m, damaged, ec,
		[]error{keyring.ErrKeyDisabled, keyring.ErrInvalidCiphertext},
		[]error{keyring.ErrNoUsableKey, keyring.ErrUnreachable})
	for _, want := range []string{kmstest.KeyAARN, local.KeyID()} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name key %s", err, want)
		}
	}

	// The local entry missing: only the KMS failure is reported; members
	// with no entry of theirs are left out.
	decryptFails(t, m, wrapped[:1], ec, []error{keyring.ErrKeyDisabled}, []error{keyring.ErrNoUsableKey})
	// The KMS entry missing and the local one damaged.
	decryptFails(t, m, damaged[1:], ec, []error{keyring.ErrInvalidCiphertext}, []error{keyring.ErrNoUsableKey, keyring.ErrKeyDisabled})
}

// Entries that only name keys of other keyrings are refused with
// ErrNoUsableKey, without sending them to KMS.
func TestMultiNoUsableKey(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	kmsA, proxy := srv.ViaProxy(t, kmstest.KeyAARN)
	local, _ := newLocal(t)
	m := newMulti(t, kmsA, local)
	ec := kmstest.FileContext("00000000000000000000000000000106")

	otherLocal, _ := newLocal(t)
	_, wrapped := kmstest.Generate(t, newMulti(t, srv.Keyring(t, kmstest.KeyBARN), otherLocal), ec)
	proxy.Reset()
	decryptFails(t, m, wrapped, ec, []error{keyring.ErrNoUsableKey},
		[]error{keyring.ErrInvalidCiphertext, keyring.ErrKeyDisabled, keyring.ErrUnreachable})
	decryptFails(t, m, nil, ec, []error{keyring.ErrNoUsableKey}, nil)
	if n := proxy.Total(); n != 0 {
		t.Errorf("%d KMS calls for entries of other keys, want 0", n)
	}
	// The same blobs relabelled as this volume's keys do not open.
	forged := cloneWrapped(wrapped)
	forged[0].KeyID = kmstest.KeyAARN
	forged[1].KeyID = local.KeyID()
	decryptFails(t, m, forged, ec, []error{keyring.ErrInvalidCiphertext}, []error{keyring.ErrNoUsableKey})
}

// Every member after the first must be able to wrap an existing key.
func TestNewMultiRefusesNonWrapper(t *testing.T) {
	t.Parallel()
	local, _ := newLocal(t)
	generateOnly := generateOnlyKeyring{local}
	if _, err := keyring.NewMulti(); err == nil {
		t.Error("NewMulti with no member succeeded")
	}
	_, err := keyring.NewMulti(local, generateOnly)
	if err == nil {
		t.Fatal("NewMulti accepted a member that cannot wrap as second member")
	}
	if !strings.Contains(err.Error(), "member 2") || !strings.Contains(err.Error(), "cannot wrap") {
		t.Errorf("error %q should name member 2 and say it cannot wrap", err)
	}
	if _, err := keyring.NewMulti(local, local, generateOnly); err == nil || !strings.Contains(err.Error(), "member 3") {
		t.Errorf("third member that cannot wrap: %v, want an error naming member 3", err)
	}
	// The first member generates; it need not wrap.
	m := newMulti(t, generateOnly, local)
	ec := kmstest.FileContext("00000000000000000000000000000107")
	dk, wrapped := kmstest.Generate(t, m, ec)
	if len(wrapped) != 2 {
		t.Fatalf("%d entries, want 2", len(wrapped))
	}
	kmstest.MustDecrypt(t, m, wrapped, ec, dk)
	// Multi.Wrap needs every member to wrap.
	if _, err := m.Wrap(context.Background(), dk, ec); err == nil {
		t.Error("Multi.Wrap with a member that cannot wrap succeeded")
	}
	ws, err := newMulti(t, local, local).Wrap(context.Background(), dk, ec)
	if err != nil || len(ws) != 2 {
		t.Fatalf("Multi.Wrap: %d entries, %v", len(ws), err)
	}
	kmstest.MustDecrypt(t, local, ws[1:], ec, dk)
}

// generateOnlyKeyring hides the Wrap method of its keyring.
type generateOnlyKeyring struct{ k keyring.Keyring }

func (g generateOnlyKeyring) GenerateDataKey(ctx context.Context, ec keyring.EncryptionContext) (*keyring.DataKey, []keyring.WrappedKey, error) {
	return g.k.GenerateDataKey(ctx, ec)
}

func (g generateOnlyKeyring) Decrypt(ctx context.Context, wrapped []keyring.WrappedKey, ec keyring.EncryptionContext) (*keyring.DataKey, error) {
	return g.k.Decrypt(ctx, wrapped, ec)
}

func cloneWrapped(ws []keyring.WrappedKey) []keyring.WrappedKey {
	out := make([]keyring.WrappedKey, len(ws))
	for i, w := range ws {
		out[i] = keyring.WrappedKey{Kind: w.Kind, KeyID: w.KeyID, Blob: append([]byte(nil), w.Blob...)}
	}
	return out
}
