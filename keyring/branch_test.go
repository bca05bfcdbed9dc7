package keyring

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"testing"
)

var updateBranchVectors = flag.Bool("update-branch-vectors", false, "rewrite keyring/testdata/branch-vectors.json")

// branchVector is a known answer of the branch wrap (docs/FORMAT.md,
// "Branch keys"): branch key, branch ID and context in, blob out, and the
// data key the blob holds (empty: the blob must not open).
type branchVector struct {
	Comment   string            `json:"comment"`
	BranchKey string            `json:"branch_key"`
	BranchID  string            `json:"branch_id"`
	Context   map[string]string `json:"encryption_context"`
	Blob      string            `json:"blob"`
	DataKey   string            `json:"data_key"`
}

const branchVectorFile = "testdata/branch-vectors.json"

func testBranch(t testing.TB, key []byte, id string) *Branch {
	t.Helper()
	dk, err := NewDataKey(bytes.Clone(key))
	if err != nil {
		t.Fatal(err)
	}
	return NewBranch(id, dk)
}

func TestBranchVectors(t *testing.T) {
	if *updateBranchVectors {
		writeBranchVectors(t)
	}
	b, err := os.ReadFile(branchVectorFile)
	if err != nil {
		t.Fatal(err)
	}
	var vs []branchVector
	if err := json.Unmarshal(b, &vs); err != nil {
		t.Fatal(err)
	}
	if len(vs) < 4 {
		t.Fatalf("%d branch vectors, want at least 4", len(vs))
	}
	for _, v := range vs {
		key, _ := hex.DecodeString(v.BranchKey)
		blob, _ := hex.DecodeString(v.Blob)
		br := testBranch(t, key, v.BranchID)
		dk, err := br.Decrypt(context.Background(), []WrappedKey{{Kind: KindBranch, KeyID: v.BranchID, Blob: blob}}, v.Context)
		switch {
		case v.DataKey == "" && err == nil:
			t.Errorf("%s: opened", v.Comment)
		case v.DataKey == "" && !errors.Is(err, ErrInvalidCiphertext):
			t.Errorf("%s: %v, want ErrInvalidCiphertext", v.Comment, err)
		case v.DataKey != "" && err != nil:
			t.Errorf("%s: %v", v.Comment, err)
		case v.DataKey != "" && hex.EncodeToString(dk.Bytes()) != v.DataKey:
			t.Errorf("%s: another data key", v.Comment)
		}
		dk.Wipe()
		br.Wipe()
	}
}

func writeBranchVectors(t *testing.T) {
	key := bytes.Repeat([]byte{0x42}, DataKeySize)
	const id = "0000018c2f3a9b4e5a6b7c8d9e0f1a2b"
	ec := FileContext("0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210")
	br := testBranch(t, key, id)
	defer br.Wipe()
	dk, w, err := br.GenerateDataKey(context.Background(), ec)
	if err != nil {
		t.Fatal(err)
	}
	defer dk.Wipe()
	other := FileContext("0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543211")
	flipped := bytes.Clone(w[0].Blob)
	flipped[20] ^= 1
	vs := []branchVector{
		{"a data key wrapped under a branch key", hex.EncodeToString(key), id, ec, hex.EncodeToString(w[0].Blob), hex.EncodeToString(dk.Bytes())},
		{"the same blob under another file's context", hex.EncodeToString(key), id, other, hex.EncodeToString(w[0].Blob), ""},
		{"the same blob under another branch ID", hex.EncodeToString(key), "0000018c2f3a9b4e5a6b7c8d9e0f1a2c", ec, hex.EncodeToString(w[0].Blob), ""},
		{"a bit flipped in the wrapped key", hex.EncodeToString(key), id, ec, hex.EncodeToString(flipped), ""},
		{"another branch key", hex.EncodeToString(bytes.Repeat([]byte{0x43}, DataKeySize)), id, ec, hex.EncodeToString(w[0].Blob), ""},
	}
	b, _ := json.MarshalIndent(vs, "", "  ")
	if err := os.WriteFile(branchVectorFile, append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}

// A branch key wraps each file's own random key, opens it only under its
// own context, and refuses entries of other branches with ErrNoUsableKey.
func TestBranchRoundTrip(t *testing.T) {
	br := testBranch(t, bytes.Repeat([]byte{7}, DataKeySize), "aa")
	defer br.Wipe()
	ec1, ec2 := testContext(1), testContext(2)
	dk1, w1, err := br.GenerateDataKey(context.Background(), ec1)
	if err != nil {
		t.Fatal(err)
	}
	defer dk1.Wipe()
	dk2, _, _ := br.GenerateDataKey(context.Background(), ec2)
	defer dk2.Wipe()
	if bytes.Equal(dk1.Bytes(), dk2.Bytes()) {
		t.Fatal("two files got one data key")
	}
	got, err := br.Decrypt(context.Background(), w1, ec1)
	if err != nil || !bytes.Equal(got.Bytes(), dk1.Bytes()) {
		t.Fatalf("Decrypt: %v", err)
	}
	got.Wipe()
	if _, err := br.Decrypt(context.Background(), w1, ec2); !errors.Is(err, ErrInvalidCiphertext) {
		t.Errorf("another context: %v", err)
	}
	other := testBranch(t, bytes.Repeat([]byte{7}, DataKeySize), "bb")
	defer other.Wipe()
	if _, err := other.Decrypt(context.Background(), w1, ec1); !errors.Is(err, ErrNoUsableKey) {
		t.Errorf("another branch: %v", err)
	}
}
