package kmstest_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"

	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/keyring/awskms"
	"github.com/kmsfs/kmsfs/keyring/kmstest"
)

func TestStartSeedsKeysAndAlias(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	c := srv.Client(t)
	ctx := context.Background()
	for _, tc := range []struct{ keyID, wantARN string }{
		{kmstest.KeyAID, kmstest.KeyAARN},
		{kmstest.KeyAARN, kmstest.KeyAARN},
		{kmstest.AliasName, kmstest.KeyAARN},
		{kmstest.AliasARN, kmstest.KeyAARN},
		{kmstest.KeyBARN, kmstest.KeyBARN},
	} {
		out, err := c.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(tc.keyID)})
		if err != nil {
			t.Fatalf("DescribeKey %s: %v", tc.keyID, err)
		}
		if got := aws.ToString(out.KeyMetadata.Arn); got != tc.wantARN {
			t.Errorf("DescribeKey %s: ARN %s, want %s", tc.keyID, got, tc.wantARN)
		}
		if out.KeyMetadata.KeyState != types.KeyStateEnabled {
			t.Errorf("DescribeKey %s: state %s, want Enabled", tc.keyID, out.KeyMetadata.KeyState)
		}
	}
	if srv.Region() != kmstest.Region {
		t.Errorf("Region() = %s, want %s", srv.Region(), kmstest.Region)
	}
}

func TestKeyStateHelpers(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	c := srv.Client(t)
	state := func(keyID string) types.KeyState {
		t.Helper()
		out, err := c.DescribeKey(context.Background(), &kms.DescribeKeyInput{KeyId: aws.String(keyID)})
		if err != nil {
			t.Fatalf("DescribeKey %s: %v", keyID, err)
		}
		return out.KeyMetadata.KeyState
	}
	srv.DisableKey(t, kmstest.KeyAID)
	if s := state(kmstest.KeyAID); s != types.KeyStateDisabled {
		t.Errorf("after DisableKey: %s", s)
	}
	srv.EnableKey(t, kmstest.KeyAID)
	if s := state(kmstest.KeyAID); s != types.KeyStateEnabled {
		t.Errorf("after EnableKey: %s", s)
	}
	srv.ScheduleDeletion(t, kmstest.KeyBARN)
	if s := state(kmstest.KeyBARN); s != types.KeyStatePendingDeletion {
		t.Errorf("after ScheduleDeletion: %s", s)
	}
}

// Servers are independent: disabling a key on one leaves another alone.
func TestServersAreIndependent(t *testing.T) {
	t.Parallel()
	a, b := kmstest.Start(t), kmstest.StartBeforeRotation(t)
	if a.Endpoint() == b.Endpoint() {
		t.Fatalf("two servers share endpoint %s", a.Endpoint())
	}
	a.DisableKey(t, kmstest.KeyAID)
	out, err := b.Client(t).DescribeKey(context.Background(), &kms.DescribeKeyInput{KeyId: aws.String(kmstest.KeyAID)})
	if err != nil {
		t.Fatal(err)
	}
	if out.KeyMetadata.KeyState != types.KeyStateEnabled {
		t.Errorf("key A on the second server: %s, want Enabled", out.KeyMetadata.KeyState)
	}
}

func TestClosedEndpointRefuses(t *testing.T) {
	t.Parallel()
	u := kmstest.ClosedEndpoint(t)
	c, err := net.DialTimeout("tcp", strings.TrimPrefix(u, "http://"), time.Second)
	if err == nil {
		c.Close()
		t.Fatalf("dial %s succeeded", u)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial %s: %v, want connection refused", u, err)
	}
}

// Env is enough for the SDK's default chains (what kmsfs as a child process
// uses): no Endpoint, Region or Credentials in the config.
func TestEnvReachesServer(t *testing.T) {
	srv := kmstest.Start(t)
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	k, err := awskms.New(context.Background(), awskms.Config{KeyID: kmstest.AliasName})
	if err != nil {
		t.Fatal(err)
	}
	dk, wrapped, err := k.GenerateDataKey(context.Background(), keyring.FileContext("v", "f"))
	if err != nil {
		t.Fatalf("GenerateDataKey with Env(): %v", err)
	}
	dk.Wipe()
	if wrapped[0].KeyID != kmstest.KeyAARN {
		t.Errorf("entry names %s, want %s", wrapped[0].KeyID, kmstest.KeyAARN)
	}
}

// TestLocalKMSQuirks pins where local-kms differs from real KMS (see
// keyring/awskms_errors.go): if an upgrade of local-kms changes one of
// these, the comments there and the keyring tests need a look.
func TestLocalKMSQuirks(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	c := srv.Client(t)
	ctx := context.Background()
	code := func(err error) string {
		var apiErr smithy.APIError
		if errors.As(err, &apiErr) {
			return apiErr.ErrorCode()
		}
		return fmt.Sprint(err)
	}

	enc, err := c.Encrypt(ctx, &kms.EncryptInput{
		KeyId:             aws.String(kmstest.KeyAID),
		Plaintext:         []byte("quirks"),
		EncryptionContext: map[string]string{"ab": "c"},
	})
	if err != nil {
		t.Fatal(err)
	}
	// Real KMS: InvalidCiphertextException.
	_, err = c.Decrypt(ctx, &kms.DecryptInput{
		KeyId:             aws.String(kmstest.KeyAARN),
		CiphertextBlob:    enc.CiphertextBlob,
		EncryptionContext: map[string]string{"a": "bc"},
	})
	if err != nil {
		t.Errorf("context {a: bc} on a blob bound to {ab: c}: %v, want local-kms to open it", err)
	}

	// Real KMS: IncorrectKeyException.
	gen, err := c.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{
		KeyId:         aws.String(kmstest.KeyBID),
		NumberOfBytes: aws.Int32(32),
		GrantTokens:   []string{"not-a-grant-token"}, // real KMS: InvalidGrantTokenException
	})
	if err != nil {
		t.Fatalf("GenerateDataKey with a bogus grant token: %v", err)
	}
	_, err = c.Decrypt(ctx, &kms.DecryptInput{KeyId: aws.String(kmstest.KeyAARN), CiphertextBlob: gen.CiphertextBlob})
	if got := code(err); got != "InvalidCiphertextException" {
		t.Errorf("key B's blob with KeyId of key A: %s, want InvalidCiphertextException", got)
	}

	// Real KMS: DisabledException either way.
	srv.DisableKey(t, kmstest.KeyAID)
	withoutKeyID := &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: map[string]string{"ab": "c"}}
	if _, err := c.Decrypt(ctx, withoutKeyID); code(err) != "AccessDeniedException" {
		t.Errorf("disabled key, Decrypt without KeyId: %s, want AccessDeniedException", code(err))
	}
	withKeyID := *withoutKeyID
	withKeyID.KeyId = aws.String(kmstest.KeyAARN)
	if _, err := c.Decrypt(ctx, &withKeyID); code(err) != "DisabledException" {
		t.Errorf("disabled key, Decrypt with KeyId: %s, want DisabledException", code(err))
	}
}
