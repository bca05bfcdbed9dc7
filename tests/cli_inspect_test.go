package tests

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/kmsfs/kmsfs/keyring/kmstest"
)

// cliInspectOut is the JSON of kmsfs inspect.
type cliInspectOut struct {
	FormatVersion int              `json:"format_version"`
	FileID        string           `json:"file_id"`
	BlockSize     int              `json:"block_size"`
	PlaintextSize int64            `json:"plaintext_size"`
	WrappedKeys   []cliWrappedJSON `json:"wrapped_keys"`
	VolumeID      string           `json:"volume_id"`
	HeaderSize    int              `json:"header_size"`
}

type cliWrappedJSON struct {
	Keyring           string            `json:"keyring"`
	KeyID             string            `json:"key_id"`
	CiphertextBlob    string            `json:"ciphertext_blob"`
	EncryptionContext map[string]string `json:"encryption_context"`
}

// cliInspect runs kmsfs inspect on a cipher file, checks the interface
// field names and types, and decodes the output.
func cliInspect(t *testing.T, cipherFile string) cliInspectOut {
	t.Helper()
	out, errOut, code := run(t, nil, "inspect", cipherFile)
	if code != cliExitOK || errOut != "" {
		t.Fatalf("inspect %s: exit %d\nstdout: %s\nstderr: %s", cipherFile, code, out, errOut)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &top); err != nil {
		t.Fatalf("inspect printed no JSON object: %v\n%s", err, out)
	}
	// The interface: these names, with these JSON types.
	required := map[string]byte{"format_version": '0', "file_id": '"', "block_size": '0', "plaintext_size": '0', "wrapped_keys": '['}
	// Also printed, and checked against the config by callers.
	optional := map[string]byte{"volume_id": '"', "header_size": '0'}
	for name, kind := range required {
		raw, ok := top[name]
		if !ok {
			t.Errorf("inspect JSON lacks %q:\n%s", name, out)
			continue
		}
		cliCheckJSONKind(t, name, raw, kind)
	}
	for name, raw := range top {
		if _, ok := required[name]; ok {
			continue
		}
		if kind, ok := optional[name]; ok {
			cliCheckJSONKind(t, name, raw, kind)
			continue
		}
		t.Errorf("inspect JSON has an undocumented field %q", name)
	}
	var entries []map[string]json.RawMessage
	if err := json.Unmarshal(top["wrapped_keys"], &entries); err != nil {
		t.Fatalf("wrapped_keys: %v", err)
	}
	for i, e := range entries {
		names := slices.Sorted(maps.Keys(e))
		if !slices.Equal(names, []string{"ciphertext_blob", "encryption_context", "key_id", "keyring"}) {
			t.Errorf("wrapped_keys[%d] has fields %v, want exactly keyring, key_id, ciphertext_blob, encryption_context", i, names)
		}
		for name, kind := range map[string]byte{"keyring": '"', "key_id": '"', "ciphertext_blob": '"', "encryption_context": '{'} {
			cliCheckJSONKind(t, fmt.Sprintf("wrapped_keys[%d].%s", i, name), e[name], kind)
		}
	}
	var res cliInspectOut
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&res); err != nil {
		t.Fatalf("decode inspect JSON: %v\n%s", err, out)
	}
	if res.FormatVersion != 2 || !cliHex32.MatchString(res.FileID) {
		t.Errorf("inspect: format_version %d, file_id %q; want 2 (a new file's header version) and 32 hex digits", res.FormatVersion, res.FileID)
	}
	if len(res.WrappedKeys) == 0 {
		t.Errorf("inspect: no wrapped keys")
	}
	for i, w := range res.WrappedKeys {
		if _, err := base64.StdEncoding.DecodeString(w.CiphertextBlob); err != nil || w.CiphertextBlob == "" {
			t.Errorf("wrapped_keys[%d].ciphertext_blob is not standard base64: %v", i, err)
		}
		want := map[string]string{"kmsfs:volume": res.VolumeID, "kmsfs:file": res.FileID}
		if !maps.Equal(w.EncryptionContext, want) {
			t.Errorf("wrapped_keys[%d].encryption_context = %v, want %v", i, w.EncryptionContext, want)
		}
	}
	return res
}

func cliCheckJSONKind(t *testing.T, name string, raw json.RawMessage, kind byte) {
	t.Helper()
	s := bytes.TrimSpace(raw)
	if len(s) == 0 {
		t.Errorf("inspect JSON %s is empty", name)
		return
	}
	got := s[0]
	if got == '-' || (got >= '0' && got <= '9') {
		got = '0'
	}
	if got != kind {
		t.Errorf("inspect JSON %s = %s: wrong JSON type", name, s)
	}
}

// cliKMSDecrypt unwraps an inspect entry with the AWS SDK, naming the key
// and the context as printed, and returns the data key.
func cliKMSDecrypt(t *testing.T, client *kms.Client, w cliWrappedJSON, ec map[string]string) []byte {
	t.Helper()
	blob, err := base64.StdEncoding.DecodeString(w.CiphertextBlob)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := client.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: blob, KeyId: aws.String(w.KeyID), EncryptionContext: ec})
	if err != nil {
		t.Fatalf("KMS Decrypt of the printed blob (key %s, context %v): %v", w.KeyID, ec, err)
	}
	if aws.ToString(out.KeyId) != w.KeyID || len(out.Plaintext) != 32 {
		t.Errorf("Decrypt: key %s and %d bytes, want %s and 32", aws.ToString(out.KeyId), len(out.Plaintext), w.KeyID)
	}
	return out.Plaintext
}

func TestInspectKMSVolume(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	proxy := kmstest.NewProxy(t, srv.Endpoint())
	base := t.TempDir()
	env := cliKMSEnv(srv, filepath.Join(base, "config"), proxy.Endpoint())
	v := newVolumeIn(t, base, env, "--kms-key", kmstest.AliasName, "--kms-endpoint", proxy.Endpoint())
	c := cliReadConfig(t, v.Dir)

	sizes := map[string]int{"one": 1, "block": 4096, "block+1": 4097, "big": 300_000}
	// No key pool: its refills (one per file made) could still be on
	// their way to the proxy when the mount exits, and arrive after the
	// Reset below (seen in a run: 6 calls for 6 files).
	m := mountVolume(t, v, "--key-pool", "0")
	for name, n := range sizes {
		b := make([]byte, n)
		rand.Read(b)
		writeFile(t, m.path(name), b)
	}
	// A header alone (what a truncate to 0 leaves, or a crash between a
	// first write's header and its block; made below by cutting the
	// stored file): plaintext size 0. (A file never written has no
	// header yet: TestInspectRejects.)
	writeFile(t, m.path("empty"), []byte("soon gone"))
	sizes["empty"] = 0
	// A file with a hole: its plaintext size counts the hole.
	f, err := os.Create(m.path("holey"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("end"), 50_000); err != nil {
		t.Fatal(err)
	}
	f.Close()
	sizes["holey"] = 50_003
	if err := m.unmount(); err != nil {
		t.Fatalf("unmount: %v", err)
	}
	if proxy.Count("GenerateDataKey") == 0 {
		t.Fatalf("the mount made no GenerateDataKey call through the proxy: the proxy is not on the path")
	}
	if err := os.Truncate(filepath.Join(v.Dir, "empty"), int64(c.HeaderSize)); err != nil {
		t.Fatal(err)
	}

	proxy.Reset()
	fileIDs := map[string]string{}
	results := map[string]cliInspectOut{}
	for name, n := range sizes {
		ins := cliInspect(t, filepath.Join(v.Dir, name))
		if ins.PlaintextSize != int64(n) {
			t.Errorf("%s: plaintext_size %d, want %d", name, ins.PlaintextSize, n)
		}
		if ins.BlockSize != c.BlockSize || ins.VolumeID != c.VolumeID || ins.HeaderSize != c.HeaderSize {
			t.Errorf("%s: block_size %d, volume_id %s, header_size %d; the config says %d, %s, %d",
				name, ins.BlockSize, ins.VolumeID, ins.HeaderSize, c.BlockSize, c.VolumeID, c.HeaderSize)
		}
		if len(ins.WrappedKeys) != 1 || ins.WrappedKeys[0].Keyring != "aws-kms" || ins.WrappedKeys[0].KeyID != kmstest.KeyAARN {
			t.Errorf("%s: wrapped keys %+v, want one aws-kms entry naming %s (the ARN, never the alias)", name, ins.WrappedKeys, kmstest.KeyAARN)
		}
		if other, dup := fileIDs[ins.FileID]; dup {
			t.Errorf("%s and %s share file ID %s", name, other, ins.FileID)
		}
		fileIDs[ins.FileID] = name
		results[name] = ins
	}
	if n := proxy.Total(); n != 0 {
		t.Errorf("kmsfs inspect made %d KMS calls, want 0", n)
	}
	if t.Failed() {
		return
	}

	// The printed blob and context are enough to unwrap the data key, with
	// the SDK ...
	client := srv.Client(t)
	big, one := results["big"].WrappedKeys[0], results["one"].WrappedKeys[0]
	kBig := cliKMSDecrypt(t, client, big, big.EncryptionContext)
	kOne := cliKMSDecrypt(t, client, one, one.EncryptionContext)
	if bytes.Equal(kBig, kOne) {
		t.Errorf("two files have the same data key")
	}
	// ... and a wrong context fails: another file's, another volume's, none.
	blob, _ := base64.StdEncoding.DecodeString(big.CiphertextBlob)
	wrongFile := maps.Clone(big.EncryptionContext)
	wrongFile["kmsfs:file"] = results["one"].FileID
	wrongVolume := maps.Clone(big.EncryptionContext)
	wrongVolume["kmsfs:volume"] = strings.Repeat("0", 32)
	withPath := maps.Clone(big.EncryptionContext)
	withPath["path"] = "/big"
	for name, ec := range map[string]map[string]string{"other file": wrongFile, "other volume": wrongVolume, "none": nil, "extra pair": withPath} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		_, err := client.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: blob, KeyId: aws.String(big.KeyID), EncryptionContext: ec})
		cancel()
		var ice *types.InvalidCiphertextException
		if !errors.As(err, &ice) {
			t.Errorf("Decrypt with the %s context: %v, want InvalidCiphertextException", name, err)
		}
	}

	// ... and with the AWS CLI, which needs the blob in a file.
	awsBin, err := exec.LookPath("aws")
	if err != nil {
		t.Logf("no aws CLI on PATH (%v): decrypted with the SDK only", err)
		return
	}
	blobFile := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(blobFile, blob, 0o600); err != nil {
		t.Fatal(err)
	}
	awsDecrypt := func(ec map[string]string) (string, string, error) {
		ecJSON, _ := json.Marshal(ec)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, awsBin, "kms", "decrypt", "--endpoint-url", srv.Endpoint(),
			"--key-id", big.KeyID, "--ciphertext-blob", "fileb://"+blobFile,
			"--encryption-context", string(ecJSON), "--query", "KeyId", "--output", "text")
		cmd.Env = append(append(os.Environ(), srv.Env()...), "AWS_DEFAULT_REGION="+kmstest.Region)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		return strings.TrimSpace(out.String()), errb.String(), err
	}
	out, errOut, err := awsDecrypt(big.EncryptionContext)
	if err != nil || out != kmstest.KeyAARN {
		t.Errorf("aws kms decrypt of the printed blob: %v, KeyId %q (want %s)\n%s", err, out, kmstest.KeyAARN, errOut)
	}
	out, errOut, err = awsDecrypt(wrongFile)
	if err == nil || !strings.Contains(errOut, "InvalidCiphertext") {
		t.Errorf("aws kms decrypt with another file's context: %v, KeyId %q, stderr %q; want InvalidCiphertextException", err, out, errOut)
	}
}

func TestInspectRejects(t *testing.T) {
	t.Parallel()
	v := newVolume(t, nil)
	m := mountVolume(t, v)
	writeFile(t, m.path("one"), []byte("x"))
	if err := m.unmount(); err != nil {
		t.Fatal(err)
	}
	good := readFile(t, filepath.Join(v.Dir, "one"))
	if ins := cliInspect(t, filepath.Join(v.Dir, "one")); ins.PlaintextSize != 1 || len(ins.WrappedKeys) != 1 || ins.WrappedKeys[0].Keyring != "local" {
		t.Errorf("inspect of a local-key file: %+v", ins)
	}

	dir := t.TempDir()
	random := make([]byte, 4096)
	rand.Read(random)
	cases := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "empty"},
		{"text", []byte("hello, this is not a kmsfs file\n"), ""},
		{"random", random, ""},
		// A header cut inside its first 16 bytes (magic, version, sizes)
		// is truncated too, not "version 0" or "bad magic".
		{"partial magic", good[:3], "truncated"},
		{"magic only", good[:6], "truncated"},
		{"cut in prefix", good[:10], "truncated"},
		{"truncated after prefix", good[:20], "truncated"},
		{"truncated header", good[:300], "truncated"},
		{"header minus one", good[:binary.BigEndian.Uint32(good[8:12])-1], "truncated"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			writeFile(t, p, tc.data)
			out, errOut, code := run(t, nil, "inspect", p)
			want := []string{p}
			if tc.want != "" {
				want = append(want, tc.want)
			}
			cliWantFail(t, "inspect "+tc.name, out, errOut, code, cliExitInspect, want...)
		})
	}
	t.Run("directory", func(t *testing.T) {
		out, errOut, code := run(t, nil, "inspect", dir)
		cliWantFail(t, "inspect of a directory", out, errOut, code, cliExitInspect)
	})
	// A missing file is not "not a kmsfs file" (exit 13): there is no
	// file at all, an error like any other.
	t.Run("missing", func(t *testing.T) {
		out, errOut, code := run(t, nil, "inspect", filepath.Join(dir, "nope"))
		cliWantFail(t, "inspect of a missing file", out, errOut, code, cliExitError, "no such file", filepath.Join(dir, "nope"))
	})
}
