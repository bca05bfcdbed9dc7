package awskms

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/kmsfs/kmsfs/keyring"
)

// kmsErrorCodes maps KMS error codes, as AWS documents them for
// GenerateDataKey, Encrypt, Decrypt and DescribeKey plus the errors common
// to all AWS JSON APIs, to the package's sentinels. The Go SDK has typed
// errors for the KMS-specific codes only (no AccessDenied, no Throttling
// type), so the codes are matched as strings for all of them.
//
// local-kms (the test endpoint, github.com/nsmithuk/local-kms) differs from
// real KMS in ways the tests see; the mapping follows real KMS, the tests
// assert what local-kms does (kmstest's TestLocalKMSQuirks pins these):
//   - It never checks signatures or credentials, so it never answers
//     AccessDeniedException, UnrecognizedClientException or
//     InvalidSignatureException for bad credentials (tests inject them
//     with kmstest.Proxy).
//   - Decrypt without KeyId answers AccessDeniedException for a disabled
//     or pending-deletion key, where real KMS answers DisabledException or
//     KMSInvalidStateException. Keyring always names the key, and then
//     local-kms answers as real KMS does.
//   - Decrypt of a blob made under another key, with KeyId naming this
//     key, answers InvalidCiphertextException where real KMS answers
//     IncorrectKeyException: local-kms ignores the key named in the blob
//     and tries the named key's backing key. Both are keyring.ErrInvalidCiphertext.
//   - Its internal failures are HTTP 500 InternalFailureException where
//     real KMS answers KMSInternalException: both are keyring.ErrUnreachable by
//     status.
//   - It never throttles, and it has no grants: any grant token is
//     accepted where real KMS answers InvalidGrantTokenException.
//   - It binds the encryption context as the concatenation of the sorted
//     keys and values, without lengths or separators, so {"ab": "c"}
//     opens what {"a": "bc"} wrapped. Real KMS does not. kmsfs's contexts
//     have fixed keys, so this never hides a kmsfs bug.
var kmsErrorCodes = map[string]error{
	// The caller may not use the key, or the request's identity or
	// signature is refused (the last ones are errors common to all AWS
	// APIs).
	"AccessDeniedException":               keyring.ErrAccessDenied,
	"InvalidGrantTokenException":          keyring.ErrAccessDenied,
	"UnrecognizedClientException":         keyring.ErrAccessDenied,
	"InvalidSignatureException":           keyring.ErrAccessDenied,
	"ExpiredTokenException":               keyring.ErrAccessDenied,
	"IncompleteSignature":                 keyring.ErrAccessDenied,
	"InvalidClientTokenId":                keyring.ErrAccessDenied,
	"MissingAuthenticationToken":          keyring.ErrAccessDenied,
	"MissingAuthenticationTokenException": keyring.ErrAccessDenied,
	"NotAuthorized":                       keyring.ErrAccessDenied,
	"RequestExpired":                      keyring.ErrAccessDenied,

	"DisabledException":        keyring.ErrKeyDisabled,
	"KMSInvalidStateException": keyring.ErrKeyDisabled, // pending deletion, pending import, ...
	"KeyUnavailableException":  keyring.ErrKeyDisabled, // key material in a custom key store unavailable

	"NotFoundException": keyring.ErrKeyNotFound,

	"InvalidCiphertextException": keyring.ErrInvalidCiphertext,
	"IncorrectKeyException":      keyring.ErrInvalidCiphertext,

	// Every other code the SDK's retryer counts as a throttle
	// (retry.DefaultThrottleErrorCodes, e.g. LimitExceededException) maps
	// to keyring.ErrThrottled too.
	"ThrottlingException": keyring.ErrThrottled,

	// Also any HTTP 5xx answer, whatever its code.
	"KMSInternalException":       keyring.ErrUnreachable,
	"DependencyTimeoutException": keyring.ErrUnreachable,
	"InternalFailure":            keyring.ErrUnreachable,
	"ServiceUnavailable":         keyring.ErrUnreachable,
}

// kmsError maps err from the KMS call op on keyID to a sentinel:
// fmt.Errorf("kms %s with key %s: %w (%v)", op, keyID, sentinel, detail),
// the KMS error code and message being the detail. Errors it does not know
// are wrapped as they are (the fs layer maps them to EIO). Key IDs and
// error messages from KMS hold no key bytes.
func kmsError(op, keyID string, err error) error {
	wrap := func(sentinel error) error {
		var maxErr *retry.MaxAttemptsError
		if errors.As(err, &maxErr) {
			return fmt.Errorf("kms %s with key %s: %w (after %d attempts: %v)", op, keyID, sentinel, maxErr.Attempt, kmsDetail(err))
		}
		return fmt.Errorf("kms %s with key %s: %w (%v)", op, keyID, sentinel, kmsDetail(err))
	}

	// A failure to get credentials comes first: its cause may be an STS
	// error whose code would otherwise be read as a KMS one.
	var credErr *credentialsError
	if errors.As(err, &credErr) {
		switch {
		case errors.Is(err, context.Canceled):
			return fmt.Errorf("kms %s with key %s: %w", op, keyID, err)
		case errors.Is(err, context.DeadlineExceeded):
			return wrap(keyring.ErrUnreachable)
		}
		return fmt.Errorf("kms %s with key %s: %w (%v)", op, keyID, keyring.ErrAccessDenied, credErr)
	}

	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		code := apiErr.ErrorCode()
		if sentinel, ok := kmsErrorCodes[code]; ok {
			return wrap(sentinel)
		}
		if _, ok := retry.DefaultThrottleErrorCodes[code]; ok {
			return wrap(keyring.ErrThrottled)
		}
	}
	var respErr *smithyhttp.ResponseError
	if errors.As(err, &respErr) {
		switch status := respErr.HTTPStatusCode(); {
		case status == http.StatusTooManyRequests:
			return wrap(keyring.ErrThrottled)
		case status >= 500:
			return wrap(keyring.ErrUnreachable)
		}
	}
	if apiErr != nil {
		// A modeled error we have no sentinel for: InvalidKeyUsageException,
		// ValidationException, InvalidArnException and the like.
		return fmt.Errorf("kms %s with key %s: %w", op, keyID, err)
	}

	// The caller gave up: not the key service's fault.
	if errors.Is(err, context.Canceled) {
		return fmt.Errorf("kms %s with key %s: %w", op, keyID, err)
	}
	var sendErr *smithyhttp.RequestSendError
	var netErr net.Error
	var connErr interface{ ConnectionError() bool }
	if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &sendErr) || errors.As(err, &netErr) ||
		(errors.As(err, &connErr) && connErr.ConnectionError()) {
		return wrap(keyring.ErrUnreachable)
	}
	return fmt.Errorf("kms %s with key %s: %w", op, keyID, err)
}

// kmsDetail is the part of an SDK error worth a log line: the KMS code and
// message, or what failed on the way there, without the SDK's framing.
func kmsDetail(err error) any {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		return apiErr
	}
	var sendErr *smithyhttp.RequestSendError
	if errors.As(err, &sendErr) && sendErr.Err != nil {
		return sendErr.Err
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "no answer within the call's deadline"
	}
	return err
}

// credentialsError marks a failure to obtain credentials (the SDK returns
// an untyped error for it), so kmsError can tell it from a KMS answer.
type credentialsError struct{ err error }

func (e *credentialsError) Error() string { return "get AWS credentials: " + e.err.Error() }
func (e *credentialsError) Unwrap() error { return e.err }

// credentialsTagger wraps a provider's errors in credentialsError.
type credentialsTagger struct{ aws.CredentialsProvider }

func (c credentialsTagger) Retrieve(ctx context.Context) (aws.Credentials, error) {
	creds, err := c.CredentialsProvider.Retrieve(ctx)
	if err != nil {
		return creds, &credentialsError{err}
	}
	return creds, nil
}

// tagCredentialErrors wraps p so its errors are recognisable. Anonymous
// credentials are left alone: the SDK skips signing only for that type.
func tagCredentialErrors(p aws.CredentialsProvider) aws.CredentialsProvider {
	if _, ok := p.(aws.AnonymousCredentials); ok {
		return p
	}
	return credentialsTagger{p}
}
