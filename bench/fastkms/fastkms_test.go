package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/keyring/awskms"
)

const (
	testKeyID = "bbbbbbbb-0000-4000-8000-000000000001"
	testARN   = "arn:aws:kms:eu-west-2:111122223333:key/" + testKeyID
)

// start runs a server on a loopback port and returns its endpoint.
func start(t *testing.T, latency time.Duration) (*server, string) {
	t.Helper()
	s, err := newServer("eu-west-2", "111122223333", testKeyID, "alias/kmsfs-bench", latency)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go s.serve(ln)
	return s, "http://" + ln.Addr().String()
}

// sdkKeyring returns kmsfs's AWS KMS keyring (the AWS SDK, unmodified)
// for keyID at endpoint, with credentials from the environment as a mount
// gets them.
func sdkKeyring(t *testing.T, endpoint, keyID string) *awskms.Keyring {
	t.Helper()
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID": "FASTKMSTEST", "AWS_SECRET_ACCESS_KEY": "not-a-secret", "AWS_REGION": "eu-west-2",
		"AWS_CONFIG_FILE": os.DevNull, "AWS_SHARED_CREDENTIALS_FILE": os.DevNull, "AWS_EC2_METADATA_DISABLED": "true",
	} {
		t.Setenv(k, v)
	}
	k, err := awskms.New(context.Background(), awskms.Config{KeyID: keyID, Endpoint: endpoint, MaxAttempts: 1, CallTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSDKRoundTrip(t *testing.T) {
	s, endpoint := start(t, 0)
	ctx := context.Background()
	ec := keyring.FileContext("0123456789abcdef0123456789abcdef", "00000000000000000000000000000001")
	other := keyring.FileContext("0123456789abcdef0123456789abcdef", "00000000000000000000000000000002")

	k := sdkKeyring(t, endpoint, "alias/kmsfs-bench")
	dk, wrapped, err := k.GenerateDataKey(ctx, ec)
	if err != nil {
		t.Fatalf("GenerateDataKey: %v", err)
	}
	defer dk.Wipe()
	if len(wrapped) != 1 || wrapped[0].KeyID != testARN {
		t.Fatalf("wrapped %+v, want one entry naming %s", wrapped, testARN)
	}
	// A fresh keyring by alias: its first Decrypt resolves the ARN with
	// DescribeKey.
	k = sdkKeyring(t, endpoint, "alias/kmsfs-bench")
	got, err := k.Decrypt(ctx, wrapped, ec)
	if err != nil {
		t.Fatalf("Decrypt: %v", err)
	}
	if !bytes.Equal(got.Bytes(), dk.Bytes()) {
		t.Fatal("Decrypt returned another key")
	}
	got.Wipe()

	// A fresh keyring naming the ARN: no DescribeKey.
	k = sdkKeyring(t, endpoint, testARN)
	if _, err := k.Decrypt(ctx, wrapped, other); !errors.Is(err, keyring.ErrInvalidCiphertext) {
		t.Fatalf("Decrypt under another context: %v, want ErrInvalidCiphertext", err)
	}
	bad := []keyring.WrappedKey{wrapped[0]}
	bad[0].Blob = bytes.Clone(bad[0].Blob)
	bad[0].Blob[len(bad[0].Blob)-1] ^= 1
	if _, err := k.Decrypt(ctx, bad, ec); !errors.Is(err, keyring.ErrInvalidCiphertext) {
		t.Fatalf("Decrypt of a changed blob: %v, want ErrInvalidCiphertext", err)
	}

	// Encrypt (a second wrapped copy), then Decrypt it.
	w, err := k.Wrap(ctx, dk, ec)
	if err != nil {
		t.Fatalf("Wrap: %v", err)
	}
	got, err = k.Decrypt(ctx, []keyring.WrappedKey{w}, ec)
	if err != nil || !bytes.Equal(got.Bytes(), dk.Bytes()) {
		t.Fatalf("Decrypt of the Encrypt blob: %v", err)
	}
	got.Wipe()

	// Another key does not exist.
	nk := sdkKeyring(t, endpoint, "arn:aws:kms:eu-west-2:111122223333:key/cccccccc-0000-4000-8000-000000000001")
	if _, _, err := nk.GenerateDataKey(ctx, ec); !errors.Is(err, keyring.ErrKeyNotFound) {
		t.Fatalf("GenerateDataKey of another key: %v, want ErrKeyNotFound", err)
	}

	st := s.stats()
	want := map[string]int64{"GenerateDataKey": 2, "Decrypt": 4, "Encrypt": 1, "DescribeKey": 1, "ReEncrypt": 0, "other": 0}
	if !reflect.DeepEqual(st.Calls, want) || st.Failed != 3 {
		t.Errorf("stats %+v, want calls %v and 3 failed", st, want)
	}
}

// post sends a KMS request as raw JSON, unsigned.
func post(t *testing.T, endpoint, op string, req any) (int, map[string]any) {
	t.Helper()
	body, _ := json.Marshal(req)
	r, _ := http.NewRequest("POST", endpoint+"/", bytes.NewReader(body))
	r.Header.Set("X-Amz-Target", "TrentService."+op)
	r.Header.Set("Content-Type", "application/x-amz-json-1.1")
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("%s: answer: %v", op, err)
	}
	return resp.StatusCode, out
}

func TestReEncrypt(t *testing.T) {
	_, endpoint := start(t, 0)
	ecA, ecB := map[string]string{"a": "1"}, map[string]string{"b": "2"}
	pt := []byte("0123456789abcdef0123456789abcdef")
	st, enc := post(t, endpoint, "Encrypt", map[string]any{"KeyId": "alias/kmsfs-bench", "Plaintext": pt, "EncryptionContext": ecA})
	if st != 200 {
		t.Fatalf("Encrypt: %d %v", st, enc)
	}
	req := map[string]any{"CiphertextBlob": enc["CiphertextBlob"], "SourceEncryptionContext": ecA,
		"DestinationKeyId": testKeyID, "DestinationEncryptionContext": ecB}
	st, re := post(t, endpoint, "ReEncrypt", req)
	if st != 200 || re["KeyId"] != testARN || re["SourceKeyId"] != testARN {
		t.Fatalf("ReEncrypt: %d %v", st, re)
	}
	for _, c := range []struct {
		ec     map[string]string
		status int
	}{{ecB, 200}, {ecA, 400}, {nil, 400}} {
		st, dec := post(t, endpoint, "Decrypt", map[string]any{"CiphertextBlob": re["CiphertextBlob"], "EncryptionContext": c.ec})
		if st != c.status {
			t.Errorf("Decrypt of the ReEncrypt blob under %v: %d %v, want %d", c.ec, st, dec, c.status)
		}
		if st == 200 && dec["Plaintext"] != base64.StdEncoding.EncodeToString(pt) {
			t.Errorf("Decrypt of the ReEncrypt blob: another plaintext")
		}
		if st == 400 && dec["__type"] != "InvalidCiphertextException" {
			t.Errorf("Decrypt under %v: %v, want InvalidCiphertextException", c.ec, dec)
		}
	}
	// The source context is checked too.
	req["SourceEncryptionContext"] = ecB
	if st, out := post(t, endpoint, "ReEncrypt", req); st != 400 || out["__type"] != "InvalidCiphertextException" {
		t.Errorf("ReEncrypt under another source context: %d %v", st, out)
	}
}

// The context is bound without ambiguity: {"ab": "c"} does not open what
// {"a": "bc"} sealed.
func TestContextBinding(t *testing.T) {
	k, err := newKey("r", "1", "k", "")
	if err != nil {
		t.Fatal(err)
	}
	blob := k.seal([]byte("key"), map[string]string{"a": "bc"})
	for _, ec := range []map[string]string{{"ab": "c"}, {"a": "b", "c": ""}, {}, nil, {"a": "bc", "": ""}} {
		if _, err := k.open(blob, ec); err == nil {
			t.Errorf("a blob sealed under {a: bc} opens under %v", ec)
		}
	}
	if pt, err := k.open(blob, map[string]string{"a": "bc"}); err != nil || string(pt) != "key" {
		t.Errorf("open: %q, %v", pt, err)
	}
}

func TestLatency(t *testing.T) {
	_, endpoint := start(t, 50*time.Millisecond)
	k := sdkKeyring(t, endpoint, testARN)
	begin := time.Now()
	dk, _, err := k.GenerateDataKey(context.Background(), keyring.EncryptionContext{"a": "b"})
	if err != nil {
		t.Fatal(err)
	}
	dk.Wipe()
	if d := time.Since(begin); d < 50*time.Millisecond {
		t.Errorf("a call took %v, want at least the 50ms latency", d)
	}
}

func TestStatsAndBadRequests(t *testing.T) {
	_, endpoint := start(t, 0)
	if st, out := post(t, endpoint, "CreateKey", map[string]any{}); st != 400 || out["__type"] != "UnknownOperationException" {
		t.Errorf("CreateKey: %d %v", st, out)
	}
	r, _ := http.NewRequest("POST", endpoint+"/", strings.NewReader("{not json"))
	r.Header.Set("X-Amz-Target", "TrentService.Decrypt")
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(b), "SerializationException") {
		t.Errorf("bad JSON: %d %s", resp.StatusCode, b)
	}
	resp, err = http.Get(endpoint + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	var st Stats
	json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if st.Calls["other"] != 1 || st.Calls["Decrypt"] != 1 || st.Failed != 2 || st.CPUNs <= 0 {
		t.Errorf("stats %+v", st)
	}
}

// parseRequest decodes what encoding/json decodes into kmsRequest, and
// refuses what it refuses.
func TestParseRequest(t *testing.T) {
	good := []string{
		`{}`,
		` { "KeyId" : "arn:aws:kms:r:1:key/x" , "KeySpec":"AES_256", "EncryptionContext": {"kmsfs:volume":"v","kmsfs:file":"f"}, "GrantTokens": ["a", "b"]} `,
		`{"KeyId":"k\"q\\\u00e9\n","NumberOfBytes":64,"EncryptionContext":{}}`,
		`{"CiphertextBlob":"AQIDBA==","EncryptionContext":{"a\/b":"c\u0000"},"KeyId":"k","EncryptionAlgorithm":"SYMMETRIC_DEFAULT","DryRun":false}`,
		`{"Plaintext":"aGVsbG8=","Unknown":{"x":[1,2.5e3,-3,{"y":null}],"z":true},"KeyId":null}`,
		`{"CiphertextBlob":"AQ\u003d\u003d","SourceEncryptionContext":{"a":"1"},"DestinationKeyId":"d","DestinationEncryptionContext":null,"SourceKeyId":"s"}`,
		`{"NumberOfBytes":null}`,
	}
	for _, in := range good {
		var want kmsRequest
		if err := json.Unmarshal([]byte(in), &want); err != nil {
			t.Fatalf("%s: encoding/json: %v", in, err)
		}
		got, err := parseRequest([]byte(in))
		if err != nil {
			t.Errorf("%s: %v", in, err)
			continue
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n got %+v\nwant %+v", in, got, want)
		}
	}
	bad := []string{``, `{`, `{"KeyId"}`, `{"KeyId":"a",}`, `{"KeyId":"a"} x`, `{"Plaintext":"!!"}`, `{"KeyId":"a` + "\x01" + `"}`,
		`{"X":[1,}`, `{"X":tru}`, `[]`, `{"EncryptionContext":{"a":1}}`, `{"NumberOfBytes":"3"}`, `{"X":1.2.3}`}
	for _, in := range bad {
		var want kmsRequest
		if json.Unmarshal([]byte(in), &want) == nil {
			t.Fatalf("%s: encoding/json accepts it", in)
		}
		if _, err := parseRequest([]byte(in)); err == nil {
			t.Errorf("%s: accepted", in)
		}
	}
}
