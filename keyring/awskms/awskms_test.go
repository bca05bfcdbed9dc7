package awskms_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/keyring/awskms"
	"github.com/kmsfs/kmsfs/keyring/kmstest"
)

var sentinels = []error{
	keyring.ErrAccessDenied, keyring.ErrKeyDisabled, keyring.ErrKeyNotFound,
	keyring.ErrInvalidCiphertext, keyring.ErrUnreachable, keyring.ErrThrottled,
	keyring.ErrNoUsableKey,
}

func TestAWSKMSRoundTrip(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	k := srv.Keyring(t, kmstest.KeyAARN)
	ec := kmstest.FileContext("00000000000000000000000000000001")

	dk, wrapped := kmstest.Generate(t, k, ec)
	if len(dk.Bytes()) != keyring.DataKeySize {
		t.Fatalf("data key of %d bytes", len(dk.Bytes()))
	}
	if len(wrapped) != 1 {
		t.Fatalf("%d wrapped keys, want 1", len(wrapped))
	}
	if w := wrapped[0]; w.Kind != keyring.KindAWSKMS || w.KeyID != kmstest.KeyAARN || len(w.Blob) == 0 {
		t.Fatalf("wrapped key %s %s with %d bytes, want %s %s", w.Kind, w.KeyID, len(w.Blob), keyring.KindAWSKMS, kmstest.KeyAARN)
	}
	kmstest.MustDecrypt(t, k, wrapped, ec, dk)

	// A second keyring (a second mount) opens it too.
	kmstest.MustDecrypt(t, srv.Keyring(t, kmstest.KeyAARN), wrapped, ec, dk)

	// Two keys are never the same.
	dk2, _ := kmstest.Generate(t, k, ec)
	if bytes.Equal(dk.Bytes(), dk2.Bytes()) {
		t.Fatal("two GenerateDataKey calls returned the same key")
	}
}

// However the key is named, the wrapped entry names its ARN, and the
// keyring learns it.
func TestAWSKMSEntryNamesKeyARN(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	ec := kmstest.FileContext("00000000000000000000000000000002")
	for _, keyID := range []string{kmstest.AliasName, kmstest.AliasARN, kmstest.KeyAID, kmstest.KeyAARN} {
		t.Run(strings.ReplaceAll(keyID, "/", "_"), func(t *testing.T) {
			k := srv.Keyring(t, keyID)
			if keyID != kmstest.KeyAARN && k.KeyARN() != "" {
				t.Fatalf("KeyARN() = %q before any call", k.KeyARN())
			}
			dk, wrapped := kmstest.Generate(t, k, ec)
			if wrapped[0].KeyID != kmstest.KeyAARN {
				t.Errorf("entry names %s, want %s", wrapped[0].KeyID, kmstest.KeyAARN)
			}
			if k.KeyARN() != kmstest.KeyAARN {
				t.Errorf("KeyARN() = %s, want %s", k.KeyARN(), kmstest.KeyAARN)
			}
			kmstest.MustDecrypt(t, k, wrapped, ec, dk)
			if d := k.Describe(); !strings.Contains(d, kmstest.KeyAARN) || !strings.Contains(d, kmstest.Region) {
				t.Errorf("Describe() = %q, want the ARN and region", d)
			}
		})
	}
}

// A keyring configured by alias resolves the ARN once (DescribeKey) before
// its first Decrypt, then never again.
func TestAWSKMSDecryptResolvesAliasOnce(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	ec := kmstest.FileContext("00000000000000000000000000000003")
	dk, wrapped := kmstest.Generate(t, srv.Keyring(t, kmstest.KeyAARN), ec)

	k, p := srv.ViaProxy(t, kmstest.AliasName)
	kmstest.MustDecrypt(t, k, wrapped, ec, dk)
	kmstest.MustDecrypt(t, k, wrapped, ec, dk)
	if got := p.Count("DescribeKey"); got != 1 {
		t.Errorf("DescribeKey called %d times, want 1", got)
	}
	if got := p.Count("Decrypt"); got != 2 {
		t.Errorf("Decrypt called %d times, want 2", got)
	}
	if k.KeyARN() != kmstest.KeyAARN {
		t.Errorf("KeyARN() = %s, want %s", k.KeyARN(), kmstest.KeyAARN)
	}
}

func TestAWSKMSWrongContext(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	k := srv.Keyring(t, kmstest.KeyAARN)
	ec := kmstest.FileContext("00000000000000000000000000000004")
	_, wrapped := kmstest.Generate(t, k, ec)

	for name, other := range map[string]keyring.EncryptionContext{
		"other file":   kmstest.FileContext("00000000000000000000000000000005"),
		"other volume": keyring.FileContext("ffffffffffffffffffffffffffffffff", "00000000000000000000000000000004"),
		"no context":   nil,
		"extra pair":   {keyring.ContextVolume: ec[keyring.ContextVolume], keyring.ContextFile: ec[keyring.ContextFile], "x": "y"},
	} {
		_, err := k.Decrypt(context.Background(), wrapped, other)
		if !errors.Is(err, keyring.ErrInvalidCiphertext) {
			t.Errorf("%s: Decrypt error %v, want ErrInvalidCiphertext", name, err)
		}
	}
}

// A corrupt blob under the right key ARN, or another key's blob under this
// key's ARN, is ErrInvalidCiphertext. Real KMS answers the second with
// IncorrectKeyException, local-kms with InvalidCiphertextException (it
// tries this key's backing key on the other key's blob); both map to
// ErrInvalidCiphertext.
func TestAWSKMSCorruptBlob(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	kA, kB := srv.Keyring(t, kmstest.KeyAARN), srv.Keyring(t, kmstest.KeyBARN)
	ec := kmstest.FileContext("00000000000000000000000000000006")
	_, wrappedA := kmstest.Generate(t, kA, ec)
	_, wrappedB := kmstest.Generate(t, kB, ec)

	flipped := bytes.Clone(wrappedA[0].Blob)
	flipped[len(flipped)-1] ^= 1
	for name, w := range map[string]keyring.WrappedKey{
		"flipped bit":  {Kind: keyring.KindAWSKMS, KeyID: kmstest.KeyAARN, Blob: flipped},
		"key B's blob": {Kind: keyring.KindAWSKMS, KeyID: kmstest.KeyAARN, Blob: wrappedB[0].Blob},
		"garbage":      {Kind: keyring.KindAWSKMS, KeyID: kmstest.KeyAARN, Blob: []byte("not a blob")},
		"truncated":    {Kind: keyring.KindAWSKMS, KeyID: kmstest.KeyAARN, Blob: wrappedA[0].Blob[:len(wrappedA[0].Blob)-8]},
	} {
		_, err := kA.Decrypt(context.Background(), []keyring.WrappedKey{w}, ec)
		if !errors.Is(err, keyring.ErrInvalidCiphertext) {
			t.Errorf("%s: Decrypt error %v, want ErrInvalidCiphertext", name, err)
		}
	}
}

// DisabledException. local-kms answers it as real KMS does because the
// keyring names the key in Decrypt; without KeyId local-kms would answer
// AccessDeniedException.
func TestAWSKMSDisabledKey(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	k := srv.Keyring(t, kmstest.KeyAARN)
	ec := kmstest.FileContext("00000000000000000000000000000007")
	dk, wrapped := kmstest.Generate(t, k, ec)

	srv.DisableKey(t, kmstest.KeyAID)
	if _, _, err := k.GenerateDataKey(context.Background(), ec); !errors.Is(err, keyring.ErrKeyDisabled) {
		t.Errorf("GenerateDataKey with a disabled key: %v, want ErrKeyDisabled", err)
	}
	if _, err := k.Decrypt(context.Background(), wrapped, ec); !errors.Is(err, keyring.ErrKeyDisabled) {
		t.Errorf("Decrypt with a disabled key: %v, want ErrKeyDisabled", err)
	} else if !strings.Contains(err.Error(), "DisabledException") || !strings.Contains(err.Error(), kmstest.KeyAARN) {
		t.Errorf("error %q does not name the KMS code and the key", err)
	}

	srv.EnableKey(t, kmstest.KeyAID)
	kmstest.MustDecrypt(t, k, wrapped, ec, dk)
}

// KMSInvalidStateException, from local-kms as from real KMS.
func TestAWSKMSKeyPendingDeletion(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	k := srv.Keyring(t, kmstest.KeyAARN)
	ec := kmstest.FileContext("00000000000000000000000000000008")
	_, wrapped := kmstest.Generate(t, k, ec)

	srv.ScheduleDeletion(t, kmstest.KeyAID)
	if _, _, err := k.GenerateDataKey(context.Background(), ec); !errors.Is(err, keyring.ErrKeyDisabled) {
		t.Errorf("GenerateDataKey with a key pending deletion: %v, want ErrKeyDisabled", err)
	}
	_, err := k.Decrypt(context.Background(), wrapped, ec)
	if !errors.Is(err, keyring.ErrKeyDisabled) || !strings.Contains(err.Error(), "KMSInvalidStateException") {
		t.Errorf("Decrypt with a key pending deletion: %v, want ErrKeyDisabled from KMSInvalidStateException", err)
	}
}

func TestAWSKMSKeyNotFound(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	missing := "arn:aws:kms:" + kmstest.Region + ":" + kmstest.AccountID + ":key/00000000-0000-4000-8000-000000000000"
	for _, keyID := range []string{missing, "alias/no-such-alias"} {
		k := srv.Keyring(t, keyID)
		if _, _, err := k.GenerateDataKey(context.Background(), kmstest.FileContext("09")); !errors.Is(err, keyring.ErrKeyNotFound) {
			t.Errorf("%s: GenerateDataKey: %v, want ErrKeyNotFound", keyID, err)
		}
	}
	k := srv.Keyring(t, missing)
	w := []keyring.WrappedKey{{Kind: keyring.KindAWSKMS, KeyID: missing, Blob: []byte("blob")}}
	if _, err := k.Decrypt(context.Background(), w, kmstest.FileContext("09")); !errors.Is(err, keyring.ErrKeyNotFound) {
		t.Errorf("Decrypt: %v, want ErrKeyNotFound", err)
	}
}

// A blob wrapped before the key's rotation still opens after it. local-kms
// rotates by adding a backing key: it wraps under the newest and records
// the backing key's index in the blob. Key B has one backing key on a
// server from StartBeforeRotation and two on one from Start; the key ARN
// and the first backing key are the same on both.
func TestAWSKMSRotatedKey(t *testing.T) {
	t.Parallel()
	before, after := kmstest.StartBeforeRotation(t), kmstest.Start(t)
	ec := kmstest.FileContext("0000000000000000000000000000000a")

	kBefore := before.Keyring(t, kmstest.KeyBARN)
	dkOld, wrappedOld := kmstest.Generate(t, kBefore, ec)
	kAfter := after.Keyring(t, kmstest.KeyBARN)
	dkNew, wrappedNew := kmstest.Generate(t, kAfter, ec)

	if got := localKMSBackingIndex(t, wrappedOld[0].Blob); got != 0 {
		t.Fatalf("blob before rotation uses backing key %d, want 0", got)
	}
	if got := localKMSBackingIndex(t, wrappedNew[0].Blob); got != 1 {
		t.Fatalf("blob after rotation uses backing key %d, want 1", got)
	}
	kmstest.MustDecrypt(t, kAfter, wrappedOld, ec, dkOld)
	kmstest.MustDecrypt(t, kAfter, wrappedNew, ec, dkNew)

	// The new backing key is really new: the server before the rotation
	// cannot open what was wrapped after it.
	if _, err := kBefore.Decrypt(context.Background(), wrappedNew, ec); !errors.Is(err, keyring.ErrInvalidCiphertext) {
		t.Errorf("pre-rotation server opened a post-rotation blob: %v", err)
	}
}

// localKMSBackingIndex reads the backing key index from a local-kms blob:
// len(ARN) (1 byte) ‖ ARN ‖ index (uint32, little endian) ‖ nonce ‖ GCM.
// (local-kms's own format, src/cmk/aes_encryption.go; real KMS blobs are
// opaque.)
func localKMSBackingIndex(t *testing.T, blob []byte) uint32 {
	t.Helper()
	if len(blob) < 1 || len(blob) < 1+int(blob[0])+4 {
		t.Fatalf("blob of %d bytes is no local-kms blob", len(blob))
	}
	return binary.LittleEndian.Uint32(blob[1+int(blob[0]):])
}

// An entry naming another key is never sent to KMS: whoever can write the
// cipher dir could name a key they control.
func TestAWSKMSRefusesOtherKeys(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	ec := kmstest.FileContext("0000000000000000000000000000000b")
	_, wrappedB := kmstest.Generate(t, srv.Keyring(t, kmstest.KeyBARN), ec)
	k, p := srv.ViaProxy(t, kmstest.KeyAARN)

	for name, wrapped := range map[string][]keyring.WrappedKey{
		"key B":       wrappedB,
		"alias of A":  {{Kind: keyring.KindAWSKMS, KeyID: kmstest.AliasARN, Blob: wrappedB[0].Blob}},
		"key ID of A": {{Kind: keyring.KindAWSKMS, KeyID: kmstest.KeyAID, Blob: wrappedB[0].Blob}},
		"local kind":  {{Kind: keyring.KindLocal, KeyID: kmstest.KeyAARN, Blob: wrappedB[0].Blob}},
		"A in another account": {{Kind: keyring.KindAWSKMS,
			KeyID: "arn:aws:kms:" + kmstest.Region + ":999999999999:key/" + kmstest.KeyAID, Blob: wrappedB[0].Blob}},
		"none": nil,
	} {
		_, err := k.Decrypt(context.Background(), wrapped, ec)
		if !errors.Is(err, keyring.ErrNoUsableKey) {
			t.Errorf("%s: Decrypt error %v, want ErrNoUsableKey", name, err)
		}
	}
	if n := p.Total(); n != 0 {
		t.Errorf("refused entries cost %d KMS calls, want 0", n)
	}

	// A keyring that does not know its ARN yet makes no call either when
	// no entry is of kind aws-kms.
	kAlias, pAlias := srv.ViaProxy(t, kmstest.AliasName)
	local := []keyring.WrappedKey{{Kind: keyring.KindLocal, KeyID: "abcd", Blob: []byte("x")}}
	if _, err := kAlias.Decrypt(context.Background(), local, ec); !errors.Is(err, keyring.ErrNoUsableKey) {
		t.Errorf("local entries only: %v, want ErrNoUsableKey", err)
	}
	if n := pAlias.Total(); n != 0 {
		t.Errorf("local entries only cost %d KMS calls, want 0", n)
	}
}

// Decrypt takes the entry naming its key among several.
func TestAWSKMSPicksOwnEntry(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	ec := kmstest.FileContext("0000000000000000000000000000000c")
	dk, wrappedA := kmstest.Generate(t, srv.Keyring(t, kmstest.KeyAARN), ec)
	_, wrappedB := kmstest.Generate(t, srv.Keyring(t, kmstest.KeyBARN), ec)
	k, p := srv.ViaProxy(t, kmstest.KeyAARN)
	wrapped := []keyring.WrappedKey{
		{Kind: keyring.KindLocal, KeyID: "abcd", Blob: []byte("x")},
		wrappedB[0],
		wrappedA[0],
	}
	kmstest.MustDecrypt(t, k, wrapped, ec, dk)
	if n := p.Total(); n != 1 {
		t.Errorf("%d KMS calls, want 1", n)
	}
}

// keyIDRewriter is a KMS endpoint that lies: it forwards to target and
// rewrites the KeyId of every answer to keyID.
func keyIDRewriter(t *testing.T, target, keyID string) string {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(u) },
		ModifyResponse: func(resp *http.Response) error {
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				return err
			}
			var m map[string]any
			if resp.StatusCode == http.StatusOK && json.Unmarshal(body, &m) == nil {
				if _, ok := m["KeyId"]; ok {
					m["KeyId"] = keyID
					body, _ = json.Marshal(m)
				}
			}
			resp.Body = io.NopCloser(bytes.NewReader(body))
			resp.ContentLength = int64(len(body))
			resp.Header.Set("Content-Length", strconv.Itoa(len(body)))
			return nil
		},
	}
	s := httptest.NewServer(rp)
	t.Cleanup(s.Close)
	return s.URL
}

func TestAWSKMSChecksResponseKeyID(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	ec := kmstest.FileContext("0000000000000000000000000000000d")
	_, wrapped := kmstest.Generate(t, srv.Keyring(t, kmstest.KeyAARN), ec)

	cfg := srv.Config(kmstest.KeyAARN)
	cfg.Endpoint = keyIDRewriter(t, srv.Endpoint(), kmstest.KeyBARN)
	liar := kmstest.NewKeyring(t, cfg)

	dk, err := liar.Decrypt(context.Background(), wrapped, ec)
	if !errors.Is(err, keyring.ErrInvalidCiphertext) || dk != nil {
		t.Errorf("Decrypt answered for another key: %v, %v, want ErrInvalidCiphertext", dk, err)
	}
	dk, w, err := liar.GenerateDataKey(context.Background(), ec)
	if err == nil || dk != nil || w != nil {
		t.Errorf("GenerateDataKey answered for another key: %v, %v, %v, want an error", dk, w, err)
	} else if !strings.Contains(err.Error(), kmstest.KeyBARN) {
		t.Errorf("error %q does not name the key in the answer", err)
	}
	if liar.KeyARN() != kmstest.KeyAARN {
		t.Errorf("KeyARN() changed to %s", liar.KeyARN())
	}

	// An answer naming an alias, not a key ARN, is not learnt.
	cfg = srv.Config(kmstest.AliasName)
	cfg.Endpoint = keyIDRewriter(t, srv.Endpoint(), kmstest.AliasARN)
	liar = kmstest.NewKeyring(t, cfg)
	if _, _, err := liar.GenerateDataKey(context.Background(), ec); err == nil {
		t.Error("GenerateDataKey accepted an alias ARN as the key")
	}
	if liar.KeyARN() != "" {
		t.Errorf("KeyARN() = %s after a bad answer", liar.KeyARN())
	}
}

// Unreachable endpoints fail with ErrUnreachable within the call budget.
func TestAWSKMSUnreachable(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	ec := kmstest.FileContext("0000000000000000000000000000000e")
	// Each attempt gets a third of the call's budget. Faults that are
	// answered at once get a budget they never reach (10 s an attempt):
	// their claim is the attempt count, and a short attempt timeout on a
	// loaded machine would cut attempts off before the proxy counts
	// them. Faults that never answer (a black hole, an hour of latency)
	// end by the budget, 3 s: the claim is that it is spent on more than
	// one attempt, and that the call ends then, not when the fault does;
	// the time bound is 10 times the budget, far inside the fault.
	const answered, silent = 30 * time.Second, 3 * time.Second

	// A port nobody listens on: connections are refused at once, so the
	// retries are quick.
	closedPort := kmstest.ClosedEndpoint(t)

	for _, tc := range []struct {
		name   string
		fault  kmstest.Fault
		budget time.Duration
		// attempts the proxy must see; -1: a closed port, no proxy.
		minCount, maxCount int
	}{
		{name: "closed port", budget: answered, minCount: -1, maxCount: -1},
		// Each attempt times out after CallTimeout/MaxAttempts.
		{name: "black hole", fault: kmstest.Fault{Blackhole: true}, budget: silent, minCount: 2, maxCount: 3},
		{name: "dropped connections", fault: kmstest.Fault{Drop: true}, budget: answered, minCount: 3, maxCount: 3},
		{name: "outage", fault: kmstest.Fault{Outage: true}, budget: answered, minCount: 0, maxCount: 0},
		{name: "HTTP 503", fault: kmstest.Fault{Status: 503}, budget: answered, minCount: 3, maxCount: 3},
		{name: "KMSInternalException", fault: kmstest.Fault{ErrorCode: "KMSInternalException", Status: 500}, budget: answered, minCount: 3, maxCount: 3},
		{name: "DependencyTimeoutException", fault: kmstest.Fault{ErrorCode: "DependencyTimeoutException", Status: 503}, budget: answered, minCount: 3, maxCount: 3},
		{name: "latency beyond the budget", fault: kmstest.Fault{Latency: time.Hour}, budget: silent, minCount: 2, maxCount: 3},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			t.Parallel()
			cfg := srv.Config(kmstest.KeyAARN)
			cfg.CallTimeout = tc.budget
			var p *kmstest.Proxy
			if tc.minCount < 0 {
				cfg.Endpoint = closedPort
			} else {
				p = kmstest.NewProxy(t, srv.Endpoint())
				p.SetFault(tc.fault)
				cfg.Endpoint = p.Endpoint()
			}
			k := kmstest.NewKeyring(t, cfg)

			start := time.Now()
			_, _, err := k.GenerateDataKey(context.Background(), ec)
			elapsed := time.Since(start)
			if !errors.Is(err, keyring.ErrUnreachable) {
				t.Fatalf("GenerateDataKey: %v, want ErrUnreachable", err)
			}
			if bound := 10 * tc.budget; elapsed > bound {
				t.Errorf("failed after %v, want within the call budget %v, surely under %v", elapsed, tc.budget, bound)
			}
			if p != nil {
				if n := p.Count("GenerateDataKey"); n < tc.minCount || n > tc.maxCount {
					t.Errorf("proxy saw %d attempts, want %d..%d", n, tc.minCount, tc.maxCount)
				}
			}
			t.Logf("%v after %v", err, elapsed.Round(time.Millisecond))
		})
	}
}

// Every KMS error code the proxy can inject maps to its sentinel, after the
// retries the SDK's retryer makes for it (and only those).
func TestAWSKMSErrorMapping(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	ec := kmstest.FileContext("0000000000000000000000000000000f")
	_, wrapped := kmstest.Generate(t, srv.Keyring(t, kmstest.KeyAARN), ec)
	const maxAttempts = 3

	for _, tc := range []struct {
		code     string
		status   int
		want     error // nil: no sentinel
		attempts int
	}{
		{code: "ThrottlingException", want: keyring.ErrThrottled, attempts: maxAttempts},
		{code: "LimitExceededException", want: keyring.ErrThrottled, attempts: maxAttempts},
		{code: "TooManyRequestsException", want: keyring.ErrThrottled, attempts: maxAttempts},
		{code: "AccessDeniedException", want: keyring.ErrAccessDenied, attempts: 1},
		{code: "UnrecognizedClientException", want: keyring.ErrAccessDenied, attempts: 1},
		{code: "InvalidSignatureException", want: keyring.ErrAccessDenied, attempts: 1},
		{code: "ExpiredTokenException", want: keyring.ErrAccessDenied, attempts: 1},
		{code: "DisabledException", want: keyring.ErrKeyDisabled, attempts: 1},
		{code: "KMSInvalidStateException", want: keyring.ErrKeyDisabled, attempts: 1},
		{code: "KeyUnavailableException", want: keyring.ErrKeyDisabled, attempts: 1},
		{code: "NotFoundException", want: keyring.ErrKeyNotFound, attempts: 1},
		{code: "InvalidCiphertextException", want: keyring.ErrInvalidCiphertext, attempts: 1},
		{code: "IncorrectKeyException", want: keyring.ErrInvalidCiphertext, attempts: 1},
		{code: "KMSInternalException", status: 500, want: keyring.ErrUnreachable, attempts: maxAttempts},
		{code: "InvalidKeyUsageException", want: nil, attempts: 1},
		{code: "ValidationException", want: nil, attempts: 1},
	} {
		t.Run(tc.code, func(t *testing.T) {
			t.Parallel()
			k, p := srv.ViaProxy(t, kmstest.KeyAARN)
			p.SetFault(kmstest.Fault{Op: "Decrypt", ErrorCode: tc.code, Status: tc.status})
			_, err := k.Decrypt(context.Background(), wrapped, ec)
			if err == nil {
				t.Fatal("Decrypt succeeded")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("Decrypt: %v, want %v", err, tc.want)
			}
			for _, s := range sentinels {
				if s != tc.want && errors.Is(err, s) {
					t.Errorf("Decrypt: %v also matches %v", err, s)
				}
			}
			if !strings.Contains(err.Error(), tc.code) || !strings.Contains(err.Error(), kmstest.KeyAARN) {
				t.Errorf("error %q does not name the KMS code and the key", err)
			}
			if n := p.Count("Decrypt"); n != tc.attempts {
				t.Errorf("proxy saw %d attempts, want %d", n, tc.attempts)
			}
		})
	}
}

// Throttling is retried MaxAttempts times, then ErrThrottled; a throttle
// that ends within the attempts is invisible.
func TestAWSKMSThrottled(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	ec := kmstest.FileContext("00000000000000000000000000000010")
	for _, maxAttempts := range []int{1, 2, 5} {
		t.Run(strconv.Itoa(maxAttempts), func(t *testing.T) {
			t.Parallel()
			p := kmstest.NewProxy(t, srv.Endpoint())
			p.SetFault(kmstest.Fault{ErrorCode: "ThrottlingException"})
			cfg := srv.Config(kmstest.KeyAARN)
			cfg.Endpoint = p.Endpoint()
			cfg.MaxAttempts = maxAttempts
			k := kmstest.NewKeyring(t, cfg)
			_, _, err := k.GenerateDataKey(context.Background(), ec)
			if !errors.Is(err, keyring.ErrThrottled) {
				t.Fatalf("GenerateDataKey: %v, want ErrThrottled", err)
			}
			if n := p.Count("GenerateDataKey"); n != maxAttempts {
				t.Errorf("proxy saw %d attempts, want MaxAttempts = %d", n, maxAttempts)
			}
		})
	}

	// The throttle lifts while the retryer backs off: success.
	p := kmstest.NewProxy(t, srv.Endpoint())
	cfg := srv.Config(kmstest.KeyAARN)
	cfg.Endpoint = p.Endpoint()
	cfg.MaxAttempts = 5
	cfg.MaxBackoff = 50 * time.Millisecond
	k := kmstest.NewKeyring(t, cfg)
	p.SetFault(kmstest.Fault{ErrorCode: "ThrottlingException"})
	go func() {
		for p.Count("GenerateDataKey") < 2 {
			time.Sleep(time.Millisecond)
		}
		p.Heal()
	}()
	if _, _, err := k.GenerateDataKey(context.Background(), ec); err != nil {
		t.Errorf("GenerateDataKey with a passing throttle: %v", err)
	}
}

func TestAWSKMSCredentialFailure(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	p := kmstest.NewProxy(t, srv.Endpoint())
	cfg := srv.Config(kmstest.KeyAARN)
	cfg.Endpoint = p.Endpoint()
	cfg.Credentials = aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
		return aws.Credentials{}, errors.New("no credentials in this test")
	})
	k := kmstest.NewKeyring(t, cfg)
	_, _, err := k.GenerateDataKey(context.Background(), kmstest.FileContext("11"))
	if !errors.Is(err, keyring.ErrAccessDenied) {
		t.Errorf("GenerateDataKey without credentials: %v, want ErrAccessDenied", err)
	}
	if n := p.Total(); n != 0 {
		t.Errorf("%d requests sent without credentials", n)
	}
}

// The caller's cancellation is not the key service's fault.
func TestAWSKMSCanceled(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	k, p := srv.ViaProxy(t, kmstest.KeyAARN)
	p.SetFault(kmstest.Fault{Blackhole: true})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for p.Total() == 0 {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	_, _, err := k.GenerateDataKey(ctx, kmstest.FileContext("12"))
	if !errors.Is(err, context.Canceled) {
		t.Errorf("GenerateDataKey canceled: %v, want context.Canceled", err)
	}
	if errors.Is(err, keyring.ErrUnreachable) {
		t.Errorf("GenerateDataKey canceled: %v is ErrUnreachable", err)
	}
}

// The caller's context cannot extend the call budget: a background context
// still fails at CallTimeout, not when the hour-long fault would end. The
// bound is 10 times the budget: it must hold on a loaded machine under
// -race, and it is still far from the hour the call would otherwise wait.
func TestAWSKMSCallTimeout(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	p := kmstest.NewProxy(t, srv.Endpoint())
	p.SetFault(kmstest.Fault{Latency: time.Hour})
	cfg := srv.Config(kmstest.KeyAARN)
	cfg.Endpoint = p.Endpoint()
	cfg.CallTimeout = 300 * time.Millisecond
	cfg.MaxAttempts = 1
	k := kmstest.NewKeyring(t, cfg)
	start := time.Now()
	_, _, err := k.GenerateDataKey(context.Background(), kmstest.FileContext("13"))
	if !errors.Is(err, keyring.ErrUnreachable) {
		t.Errorf("GenerateDataKey: %v, want ErrUnreachable", err)
	}
	if d := time.Since(start); d > 10*cfg.CallTimeout {
		t.Errorf("failed after %v, want about %v", d, cfg.CallTimeout)
	}
}

func TestAWSKMSConcurrentDecrypt(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	gen := srv.Keyring(t, kmstest.KeyAARN)
	type file struct {
		ec      keyring.EncryptionContext
		dk      *keyring.DataKey
		wrapped []keyring.WrappedKey
	}
	files := make([]file, 8)
	for i := range files {
		ec := kmstest.FileContext(fmt.Sprintf("%032x", i))
		dk, wrapped := kmstest.Generate(t, gen, ec)
		files[i] = file{ec, dk, wrapped}
	}

	// By alias: the ARN is resolved under concurrency too.
	k, p := srv.ViaProxy(t, kmstest.AliasName)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 64 {
		wg.Go(func() {
			f := files[i%len(files)]
			got, err := k.Decrypt(context.Background(), f.wrapped, f.ec)
			if err != nil {
				errs <- err
				return
			}
			defer got.Wipe()
			if !bytes.Equal(got.Bytes(), f.dk.Bytes()) {
				errs <- fmt.Errorf("file %d: wrong key", i%len(files))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := p.Count("Decrypt"); n != 64 {
		t.Errorf("%d Decrypt calls, want 64", n)
	}
	if n := p.Count("DescribeKey"); n != 1 {
		t.Errorf("%d DescribeKey calls, want 1", n)
	}
}

// Wrap (KMS Encrypt) adds a copy of an existing key under a second key, as
// Multi does for a second region.
func TestAWSKMSWrap(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	kA := srv.Keyring(t, kmstest.KeyAARN)
	kB := srv.Keyring(t, kmstest.KeyBID) // by key ID: Wrap learns the ARN
	ec := kmstest.FileContext("00000000000000000000000000000014")
	dk, wrappedA := kmstest.Generate(t, kA, ec)

	w, err := kB.Wrap(context.Background(), dk, ec)
	if err != nil {
		t.Fatalf("Wrap: %v", err)
	}
	if w.Kind != keyring.KindAWSKMS || w.KeyID != kmstest.KeyBARN {
		t.Fatalf("Wrap entry %s %s, want %s %s", w.Kind, w.KeyID, keyring.KindAWSKMS, kmstest.KeyBARN)
	}
	if kB.KeyARN() != kmstest.KeyBARN {
		t.Errorf("KeyARN() = %s after Wrap", kB.KeyARN())
	}
	wrapped := append(wrappedA, w)
	kmstest.MustDecrypt(t, kB, wrapped, ec, dk)
	kmstest.MustDecrypt(t, kA, wrapped, ec, dk)
	if _, err := kB.Decrypt(context.Background(), []keyring.WrappedKey{w}, kmstest.FileContext("15")); !errors.Is(err, keyring.ErrInvalidCiphertext) {
		t.Errorf("Decrypt of a wrapped copy under another context: %v, want ErrInvalidCiphertext", err)
	}

	wiped := dk.Clone()
	wiped.Wipe()
	if _, err := kB.Wrap(context.Background(), wiped, ec); err == nil {
		t.Error("Wrap of a wiped key succeeded")
	}
}

func TestNewAWSKMSConfig(t *testing.T) {
	// No other AWS configuration may leak in (t.Setenv: not parallel).
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_DEFAULT_REGION", "")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_CONFIG_FILE", "/dev/null")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
	base := awskms.Config{Credentials: aws.AnonymousCredentials{}}

	for _, tc := range []struct {
		name   string
		modify func(*awskms.Config)
	}{
		{"no key", func(c *awskms.Config) { c.Region = "eu-west-2" }},
		{"KeyARN not an ARN", func(c *awskms.Config) { c.KeyID, c.KeyARN = "alias/x", "alias/x" }},
		{"KeyARN an alias ARN", func(c *awskms.Config) { c.KeyARN = kmstest.AliasARN }},
		{"KeyID and KeyARN differ", func(c *awskms.Config) { c.KeyID, c.KeyARN = kmstest.KeyAARN, kmstest.KeyBARN }},
		{"no region", func(c *awskms.Config) { c.KeyID = "alias/x" }},
		{"bad endpoint", func(c *awskms.Config) { c.KeyID, c.Endpoint = kmstest.KeyAARN, "localhost:4599" }},
		{"plain http off loopback", func(c *awskms.Config) { c.KeyID, c.Endpoint = kmstest.KeyAARN, "http://kms.example.com" }},
		{"plain http to a private address", func(c *awskms.Config) { c.KeyID, c.Endpoint = kmstest.KeyAARN, "http://10.0.0.5:4599" }},
		{"plain http to a name that is not localhost", func(c *awskms.Config) { c.KeyID, c.Endpoint = kmstest.KeyAARN, "http://localhost.example.com" }},
		{"another scheme", func(c *awskms.Config) { c.KeyID, c.Endpoint = kmstest.KeyAARN, "ftp://127.0.0.1" }},
	} {
		cfg := base
		tc.modify(&cfg)
		k, err := awskms.New(context.Background(), cfg)
		if err == nil {
			t.Errorf("%s: NewAWSKMS accepted %+v: %s", tc.name, cfg, k.Describe())
		}
		if errors.Is(err, awskms.ErrSDKConfig) {
			t.Errorf("%s: a wrong field is blamed on the SDK's configuration: %v", tc.name, err)
		}
	}

	// An unknown profile is the environment's fault, not a field's.
	t.Setenv("AWS_PROFILE", "kmsfs-no-such-profile")
	cfg := base
	cfg.KeyID, cfg.Region = kmstest.KeyAARN, "eu-west-2"
	if _, err := awskms.New(context.Background(), cfg); !errors.Is(err, awskms.ErrSDKConfig) {
		t.Errorf("an unknown AWS_PROFILE: %v, want ErrSDKConfig", err)
	}
	t.Setenv("AWS_PROFILE", "")

	// The key ARN says where the key lives: its region wins over the
	// default chain's. An alias takes the default chain's.
	t.Setenv("AWS_REGION", "us-east-1")
	cfg = base
	cfg.KeyID = "alias/x"
	cfg.KeyARN = "arn:aws:kms:ap-south-1:111122223333:key/" + kmstest.KeyAID
	k, err := awskms.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if k.KeyARN() != cfg.KeyARN {
		t.Errorf("KeyARN() = %s, want %s", k.KeyARN(), cfg.KeyARN)
	}
	if d := k.Describe(); d != "aws-kms "+cfg.KeyARN+" (region ap-south-1)" {
		t.Errorf("Describe() = %q", d)
	}
	cfg = base
	cfg.KeyID = "alias/x"
	if k, err = awskms.New(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if d := k.Describe(); d != "aws-kms alias/x (region us-east-1)" {
		t.Errorf("Describe() = %q", d)
	}

	// Plain HTTP is fine on the loopback interface (local-kms).
	for _, ep := range []string{"http://127.0.0.1:4599", "http://127.1.2.3", "http://[::1]:4599", "http://localhost:4599", "https://kms.example.com"} {
		cfg := base
		cfg.KeyID, cfg.Region, cfg.Endpoint = kmstest.KeyAARN, "eu-west-2", ep
		if _, err := awskms.New(context.Background(), cfg); err != nil {
			t.Errorf("endpoint %s: %v", ep, err)
		}
	}

	// The endpoint shows in Describe, without a password.
	cfg = base
	cfg.KeyID = kmstest.AliasName
	cfg.Region = "eu-west-2"
	cfg.Endpoint = "http://user:hunter2@127.0.0.1:4599"
	k, err = awskms.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if d := k.Describe(); strings.Contains(d, "hunter2") || !strings.Contains(d, "127.0.0.1:4599") || !strings.Contains(d, kmstest.AliasName) {
		t.Errorf("Describe() = %q", d)
	}
}

// TestAWSKMSRefusesRedirect: an endpoint answering 307 or 308 does not get
// the request, and so an Encrypt's Plaintext, sent on to where it points.
func TestAWSKMSRefusesRedirect(t *testing.T) {
	var got sync.Map
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got.Store(r.Header.Get("X-Amz-Target"), string(b))
		http.Error(w, "no", http.StatusBadRequest)
	}))
	defer elsewhere.Close()
	for _, code := range []int{http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
		redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, elsewhere.URL+"/", code)
		}))
		srv := kmstest.Start(t)
		cfg := srv.Config(kmstest.KeyAARN)
		cfg.Endpoint = redirector.URL
		cfg.MaxAttempts = 1
		k, err := awskms.New(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		dk, err := keyring.NewDataKey(bytes.Repeat([]byte{7}, keyring.DataKeySize))
		if err != nil {
			t.Fatal(err)
		}
		ec := keyring.EncryptionContext{"kmsfs:volume": "v", "kmsfs:file": "f"}
		if _, err := k.Wrap(context.Background(), dk, ec); err == nil {
			t.Errorf("%d: Wrap through a redirect succeeded", code)
		}
		if _, _, err := k.GenerateDataKey(context.Background(), ec); err == nil {
			t.Errorf("%d: GenerateDataKey through a redirect succeeded", code)
		}
		redirector.Close()
	}
	got.Range(func(op, body any) bool {
		t.Errorf("the redirect target got %v: %.60q", op, body)
		return true
	})
}
