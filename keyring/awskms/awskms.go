// Package awskms is the keyring of AWS KMS, or of any endpoint speaking
// its API (local-kms in tests): data keys from GenerateDataKey, wrapped
// copies from Encrypt, unwrapped with Decrypt, always naming the volume's
// resolved key ARN. It is the only package of kmsfs that imports the AWS
// SDK. Errors wrap the keyring package's sentinels.
package awskms

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/kmsfs/kmsfs/keyring"
)

// Defaults of Config.
const (
	DefaultMaxAttempts = 3
	DefaultCallTimeout = 10 * time.Second
	DefaultMaxBackoff  = 2 * time.Second
)

// Config configures an Keyring keyring.
type Config struct {
	// KeyID names the KMS key as the user gave it: a key ID, a key ARN,
	// alias/NAME or an alias ARN.
	KeyID string
	// KeyARN is the resolved key ARN when it is already known (from the
	// volume config). When set, every call names this ARN and a response
	// naming another key is refused.
	KeyARN string
	// Region of the key. Empty: the region of the key ARN (or alias ARN),
	// which is where the key lives, else the SDK's default chain
	// (AWS_REGION, the shared config).
	Region string
	// Endpoint, if set, is the KMS client's BaseEndpoint (local-kms, a VPC
	// endpoint, a FIPS endpoint).
	Endpoint string
	// GrantTokens are sent with every GenerateDataKey, Encrypt and Decrypt.
	GrantTokens []string
	// MaxAttempts bounds the attempts of the SDK's standard retryer per
	// call, the first one included. 0 means DefaultMaxAttempts. The
	// retryer keeps the SDK's retry quota (a token bucket per keyring), so
	// in a long outage calls stop retrying and fail after one attempt
	// until successes refill it.
	MaxAttempts int
	// MaxBackoff caps the retryer's delay between two attempts. 0 means
	// DefaultMaxBackoff.
	MaxBackoff time.Duration
	// CallTimeout bounds one whole KMS call, retries included. Each attempt
	// gets CallTimeout/MaxAttempts to connect and answer, so a black-holed
	// endpoint is retried rather than waited for. 0 means
	// DefaultCallTimeout.
	CallTimeout time.Duration
	// Credentials overrides the SDK's default credential chain (tests use
	// static credentials). nil: the default chain.
	Credentials aws.CredentialsProvider
	// Bulk is for long offline runs that make many calls (kmsfs rewrap):
	// the SDK's adaptive retry mode, which slows this client's own request
	// rate when KMS throttles, and no retry quota, so a long stretch of
	// throttling is waited out (up to MaxAttempts per call) instead of
	// failing calls after one attempt once the quota is spent.
	Bulk bool
}

// Keyring wraps data keys under one AWS KMS key (or a key of any endpoint
// speaking the KMS API). Every wrapped entry it produces names the key's
// ARN, never an alias, and it only sends entries naming that ARN to KMS.
// Every KMS call runs under its own deadline (CallTimeout) and the SDK's
// standard retryer with bounded attempts. Errors wrap the package's
// sentinels (see kmsError). Safe for concurrent use.
type Keyring struct {
	client      *kms.Client
	keyID       string // as configured
	region      string
	endpoint    string // redacted, for Describe
	service     string // the endpoint as configured ("" for the SDK's)
	grantTokens []string
	callTimeout time.Duration

	resolveMu sync.Mutex // held by ResolveKeyARN's DescribeKey: one call at a time

	mu     sync.Mutex
	keyARN string // guarded by mu; "" until resolved, then never changes
}

var (
	_ keyring.Keyring   = (*Keyring)(nil)
	_ keyring.Wrapper   = (*Keyring)(nil)
	_ keyring.Describer = (*Keyring)(nil)
)

// ErrSDKConfig: the AWS SDK's own configuration (AWS_PROFILE, the
// shared config and credentials files, the environment) could not be
// loaded, as opposed to a Config field that is wrong. New wraps it.
var ErrSDKConfig = errors.New("aws-kms keyring: load AWS config")

// New builds the KMS client. It makes no KMS call: a wrong key or
// missing permissions show on the first GenerateDataKey or Decrypt. An
// SDK configuration that does not load (an unknown AWS_PROFILE) wraps
// ErrSDKConfig.
func New(ctx context.Context, cfg Config) (*Keyring, error) {
	endpoint, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	awsCfg, err := loadAWSConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	standard := func(o *retry.StandardOptions) {
		o.MaxAttempts = cfg.MaxAttempts
		o.MaxBackoff = cfg.MaxBackoff
		if cfg.Bulk {
			o.RateLimiter = ratelimit.None
		}
	}
	var retryer aws.Retryer = retry.NewStandard(standard)
	if cfg.Bulk {
		retryer = retry.NewAdaptiveMode(func(o *retry.AdaptiveModeOptions) {
			o.StandardOptions = append(o.StandardOptions, standard)
		})
	}
	client := kms.NewFromConfig(awsCfg, func(o *kms.Options) {
		o.Retryer = retryer
		// cfg.MaxAttempts is the bound; AWS_MAX_ATTEMPTS must not raise it.
		o.RetryMaxAttempts = 0
		o.ClientLogMode = 0 // see config.WithClientLogMode in loadAWSConfig
		o.EndpointResolverV2 = &endpointCache{inner: kms.NewDefaultEndpointResolverV2()}
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
	})
	return &Keyring{
		client:      client,
		keyID:       cfg.KeyID,
		region:      awsCfg.Region,
		endpoint:    endpoint,
		service:     cfg.Endpoint,
		grantTokens: slices.Clone(cfg.GrantTokens),
		callTimeout: cfg.CallTimeout,
		keyARN:      cfg.KeyARN,
	}, nil
}

// normalize checks cfg, fills in its defaults, and returns the endpoint
// redacted for display.
func (cfg *Config) normalize() (string, error) {
	if cfg.KeyID == "" && cfg.KeyARN == "" {
		return "", errors.New("aws-kms keyring: no key given")
	}
	if cfg.KeyARN != "" && !isKeyARN(cfg.KeyARN) {
		return "", fmt.Errorf("aws-kms keyring: %q is not a KMS key ARN (arn:PARTITION:kms:REGION:ACCOUNT:key/ID)", cfg.KeyARN)
	}
	if cfg.KeyID == "" {
		cfg.KeyID = cfg.KeyARN
	}
	if isKeyARN(cfg.KeyID) {
		if cfg.KeyARN != "" && cfg.KeyARN != cfg.KeyID {
			return "", fmt.Errorf("aws-kms keyring: key %s does not match the volume's key %s", cfg.KeyID, cfg.KeyARN)
		}
		cfg.KeyARN = cfg.KeyID
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = DefaultCallTimeout
	}
	if cfg.Region == "" {
		cfg.Region = arnRegion(cfg.KeyARN)
	}
	if cfg.Region == "" {
		cfg.Region = arnRegion(cfg.KeyID)
	}
	if cfg.Endpoint == "" {
		return "", nil
	}
	u, err := url.Parse(cfg.Endpoint)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return "", fmt.Errorf("aws-kms keyring: endpoint %q is not a URL like https://kms.example.com", cfg.Endpoint)
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && isLoopback(u.Hostname()):
	case u.Scheme == "http":
		// Encrypt and GenerateDataKey carry data keys in the clear
		// over plain HTTP.
		return "", fmt.Errorf("aws-kms keyring: endpoint %s: plain http:// is accepted only on the loopback interface (local-kms); use https://", u.Redacted())
	default:
		return "", fmt.Errorf("aws-kms keyring: endpoint %s: want an https:// URL", u.Redacted())
	}
	return u.Redacted(), nil
}

// isLoopback reports whether host names this machine's loopback
// interface: "localhost", or a loopback IP literal.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// loadAWSConfig loads the SDK's configuration (credentials, region) with
// kmsfs's HTTP client and no wire logging.
func loadAWSConfig(ctx context.Context, cfg Config) (aws.Config, error) {
	opts := []func(*config.LoadOptions) error{
		config.WithHTTPClient(newHTTPClient(cfg)),
		// The SDK's wire logging (LogRequestWithBody, LogResponseWithBody)
		// would print the Plaintext of GenerateDataKey and Decrypt
		// responses and of Encrypt requests: data keys in a log. Zero, set
		// here and again on the client, logs no wire traffic whatever the
		// environment says.
		config.WithClientLogMode(0),
	}
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	if cfg.Credentials != nil {
		opts = append(opts, config.WithCredentialsProvider(cfg.Credentials))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return aws.Config{}, fmt.Errorf("%w: %w", ErrSDKConfig, err)
	}
	if awsCfg.Region == "" {
		return aws.Config{}, errors.New("aws-kms keyring: no AWS region: pass --region, set AWS_REGION, or name the key by its ARN")
	}
	if awsCfg.Credentials != nil {
		awsCfg.Credentials = tagCredentialErrors(awsCfg.Credentials)
	}
	// Wrapped after loading: the loader adds AWS_CA_BUNDLE's roots
	// through the buildable client's own methods.
	awsCfg.HTTPClient = attemptClient{HTTPClient: awsCfg.HTTPClient, timeout: attemptTimeout(cfg)}
	return awsCfg, nil
}

// attemptTimeout is each attempt's share of the call's budget, so a
// black-holed endpoint costs attempts, not the whole budget.
func attemptTimeout(cfg Config) time.Duration {
	return cfg.CallTimeout / time.Duration(cfg.MaxAttempts)
}

// newHTTPClient bounds the dial, the TLS handshake and the wait for the
// response headers by the attempt's timeout too (attemptClient bounds the
// whole attempt).
func newHTTPClient(cfg Config) *awshttp.BuildableClient {
	attemptTimeout := attemptTimeout(cfg)
	return awshttp.NewBuildableClient().
		WithDialerOptions(func(d *net.Dialer) {
			d.Timeout = attemptTimeout
		}).
		WithTransportOptions(func(tr *http.Transport) {
			tr.TLSHandshakeTimeout = attemptTimeout
			tr.ResponseHeaderTimeout = attemptTimeout
			// kmsfs keeps up to 32 key-pool and 64 prefetch calls in
			// flight: keep that many connections to the one KMS
			// endpoint instead of the SDK's 10, so calls do not pay a
			// new TCP (and TLS) handshake each.
			tr.MaxIdleConnsPerHost = 128
			tr.MaxIdleConns = 256
		})
}

// KeyARN returns the resolved key ARN, or "" while it is not known: the key
// was configured by alias or key ID and no call has resolved it yet.
func (k *Keyring) KeyARN() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.keyARN
}

// ResolveKeyARN returns the key ARN, asking KMS (DescribeKey, which needs
// kms:DescribeKey) if it is not known yet. Concurrent callers share one
// DescribeKey.
func (k *Keyring) ResolveKeyARN(ctx context.Context) (string, error) {
	if arn := k.KeyARN(); arn != "" {
		return arn, nil
	}
	k.resolveMu.Lock()
	defer k.resolveMu.Unlock()
	if arn := k.KeyARN(); arn != "" {
		return arn, nil // resolved while we waited
	}
	ctx, cancel := context.WithTimeout(ctx, k.callTimeout)
	defer cancel()
	out, err := k.client.DescribeKey(ctx, &kms.DescribeKeyInput{
		KeyId:       aws.String(k.keyID),
		GrantTokens: k.grantTokens,
	})
	if err != nil {
		return "", kmsError("DescribeKey", k.keyID, err)
	}
	if out.KeyMetadata == nil {
		return "", fmt.Errorf("kms DescribeKey with key %s: response has no key metadata", k.keyID)
	}
	if err := k.learnKeyARN("DescribeKey", aws.ToString(out.KeyMetadata.Arn)); err != nil {
		return "", err
	}
	return k.KeyARN(), nil
}

// learnKeyARN checks the key ARN a response names against the known one,
// or remembers it if none is known yet.
func (k *Keyring) learnKeyARN(op, got string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.keyARN != "" {
		if got != k.keyARN {
			return fmt.Errorf("kms %s with key %s: response names key %q, refusing it", op, k.keyARN, got)
		}
		return nil
	}
	if !isKeyARN(got) {
		return fmt.Errorf("kms %s with key %s: response names %q, not a key ARN", op, k.keyID, got)
	}
	k.keyARN = got
	return nil
}

// requestKeyID is what a request names: the ARN once known, so that a
// retargeted alias cannot switch keys under a volume.
func (k *Keyring) requestKeyID() string {
	if arn := k.KeyARN(); arn != "" {
		return arn
	}
	return k.keyID
}

// GenerateDataKey asks KMS for an AES-256 data key bound to ec. The wrapped
// entry names the key ARN KMS reports; if the ARN was not known it is
// remembered (KeyARN), and if it was, a response naming another key fails
// the call. Errors wrap the sentinels (keyring.ErrAccessDenied, keyring.ErrKeyDisabled,
// keyring.ErrKeyNotFound, keyring.ErrThrottled, keyring.ErrUnreachable).
func (k *Keyring) GenerateDataKey(ctx context.Context, ec keyring.EncryptionContext) (*keyring.DataKey, []keyring.WrappedKey, error) {
	keyID := k.requestKeyID()
	ctx, cancel := context.WithTimeout(ctx, k.callTimeout)
	defer cancel()
	out, err := k.client.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{
		KeyId:             aws.String(keyID),
		KeySpec:           types.DataKeySpecAes256,
		EncryptionContext: kmsContext(ec),
		GrantTokens:       k.grantTokens,
	})
	if err != nil {
		return nil, nil, kmsError("GenerateDataKey", keyID, err)
	}
	// The SDK decoded Plaintext into a buffer of its own: keyring.NewDataKey and
	// every failure path below zero it.
	if err := k.learnKeyARN("GenerateDataKey", aws.ToString(out.KeyId)); err != nil {
		clear(out.Plaintext)
		return nil, nil, err
	}
	if len(out.CiphertextBlob) == 0 {
		clear(out.Plaintext)
		return nil, nil, fmt.Errorf("kms GenerateDataKey with key %s: response has no CiphertextBlob", keyID)
	}
	dk, err := keyring.NewDataKey(out.Plaintext)
	if err != nil {
		return nil, nil, fmt.Errorf("kms GenerateDataKey with key %s: %v", keyID, err)
	}
	return dk, []keyring.WrappedKey{{Kind: keyring.KindAWSKMS, KeyID: aws.ToString(out.KeyId), Blob: out.CiphertextBlob}}, nil
}

// Wrap encrypts an existing data key under this KMS key (KMS Encrypt), so a
// Multi keyring can add a copy under a second key or region. The entry names
// the key ARN as GenerateDataKey's do.
func (k *Keyring) Wrap(ctx context.Context, dk *keyring.DataKey, ec keyring.EncryptionContext) (keyring.WrappedKey, error) {
	if dk.Wiped() {
		return keyring.WrappedKey{}, errors.New("keyring: wrap of a wiped data key")
	}
	keyID := k.requestKeyID()
	ctx, cancel := context.WithTimeout(ctx, k.callTimeout)
	defer cancel()
	out, err := k.client.Encrypt(ctx, &kms.EncryptInput{
		KeyId:             aws.String(keyID),
		Plaintext:         dk.Bytes(),
		EncryptionContext: kmsContext(ec),
		GrantTokens:       k.grantTokens,
	})
	if err != nil {
		return keyring.WrappedKey{}, kmsError("Encrypt", keyID, err)
	}
	if err := k.learnKeyARN("Encrypt", aws.ToString(out.KeyId)); err != nil {
		return keyring.WrappedKey{}, err
	}
	if len(out.CiphertextBlob) == 0 {
		return keyring.WrappedKey{}, fmt.Errorf("kms Encrypt with key %s: response has no CiphertextBlob", keyID)
	}
	return keyring.WrappedKey{Kind: keyring.KindAWSKMS, KeyID: aws.ToString(out.KeyId), Blob: out.CiphertextBlob}, nil
}

// Decrypt unwraps the first aws-kms entry that names this keyring's key ARN
// and opens under ec. Entries naming any other key (another ARN, an alias,
// a bare key ID) are never sent to KMS: whoever can write the cipher dir
// could name a key they control. No such entry: keyring.ErrNoUsableKey without a
// KMS call, except that a keyring that does not know its ARN yet resolves
// it first (ResolveKeyARN) when some entry is of kind aws-kms. KMS is
// always told which key to use, and an answer naming another key fails
// with keyring.ErrInvalidCiphertext. Other errors wrap the sentinels as
// GenerateDataKey's do.
func (k *Keyring) Decrypt(ctx context.Context, wrapped []keyring.WrappedKey, ec keyring.EncryptionContext) (*keyring.DataKey, error) {
	if !slices.ContainsFunc(wrapped, func(w keyring.WrappedKey) bool { return w.Kind == keyring.KindAWSKMS }) {
		return nil, fmt.Errorf("kms key %s: %w", k.requestKeyID(), keyring.ErrNoUsableKey)
	}
	keyARN, err := k.ResolveKeyARN(ctx)
	if err != nil {
		return nil, err
	}
	var lastErr error
	for _, w := range wrapped {
		if w.Kind != keyring.KindAWSKMS || w.KeyID != keyARN {
			continue
		}
		dk, err := k.decrypt(ctx, w, ec)
		if err == nil {
			return dk, nil
		}
		if !errors.Is(err, keyring.ErrInvalidCiphertext) {
			return nil, err
		}
		lastErr = err // a later entry under the same key may still open
	}
	if lastErr != nil {
		return nil, lastErr
	}
	return nil, fmt.Errorf("kms key %s: %w", keyARN, keyring.ErrNoUsableKey)
}

func (k *Keyring) decrypt(ctx context.Context, w keyring.WrappedKey, ec keyring.EncryptionContext) (*keyring.DataKey, error) {
	ctx, cancel := context.WithTimeout(ctx, k.callTimeout)
	defer cancel()
	out, err := k.client.Decrypt(ctx, &kms.DecryptInput{
		KeyId:             aws.String(w.KeyID),
		CiphertextBlob:    w.Blob,
		EncryptionContext: kmsContext(ec),
		GrantTokens:       k.grantTokens,
	})
	if err != nil {
		return nil, kmsError("Decrypt", w.KeyID, err)
	}
	if got := aws.ToString(out.KeyId); got != w.KeyID {
		clear(out.Plaintext)
		return nil, fmt.Errorf("kms Decrypt with key %s: %w (response names key %q)", w.KeyID, keyring.ErrInvalidCiphertext, got)
	}
	dk, err := keyring.NewDataKey(out.Plaintext)
	if err != nil {
		return nil, fmt.Errorf("kms Decrypt with key %s: %w (%v)", w.KeyID, keyring.ErrInvalidCiphertext, err)
	}
	return dk, nil
}

// SameService reports whether o reaches the same KMS as k (region and
// endpoint), so that k can ReEncrypt o's blobs.
func (k *Keyring) SameService(o *Keyring) bool {
	return k.region == o.region && k.service == o.service
}

// ReEncrypt re-wraps from, an entry of another key of the same KMS
// (SameService) bound to ec, under this keyring's key with the same
// context (KMS ReEncrypt): the data key never leaves KMS. The source key
// is named (SourceKeyId = from.KeyID): the caller must pass only entries
// naming a key it trusts. The new entry names this key's ARN; a response
// naming another destination or source key fails the call. Errors wrap
// the sentinels as Decrypt's and GenerateDataKey's do; a source blob that
// does not open is keyring.ErrInvalidCiphertext.
func (k *Keyring) ReEncrypt(ctx context.Context, from keyring.WrappedKey, ec keyring.EncryptionContext) (keyring.WrappedKey, error) {
	if from.Kind != keyring.KindAWSKMS || !isKeyARN(from.KeyID) {
		return keyring.WrappedKey{}, fmt.Errorf("kms ReEncrypt: source entry of kind %s naming %q: %w", from.Kind, from.KeyID, keyring.ErrNoUsableKey)
	}
	keyID := k.requestKeyID()
	ctx, cancel := context.WithTimeout(ctx, k.callTimeout)
	defer cancel()
	out, err := k.client.ReEncrypt(ctx, &kms.ReEncryptInput{
		CiphertextBlob:               from.Blob,
		SourceKeyId:                  aws.String(from.KeyID),
		SourceEncryptionContext:      kmsContext(ec),
		DestinationKeyId:             aws.String(keyID),
		DestinationEncryptionContext: kmsContext(ec),
		GrantTokens:                  k.grantTokens,
	})
	if err != nil {
		return keyring.WrappedKey{}, kmsError("ReEncrypt", keyID, err)
	}
	if got := aws.ToString(out.SourceKeyId); got != "" && got != from.KeyID {
		return keyring.WrappedKey{}, fmt.Errorf("kms ReEncrypt from key %s: %w (response names source key %q)", from.KeyID, keyring.ErrInvalidCiphertext, got)
	}
	if err := k.learnKeyARN("ReEncrypt", aws.ToString(out.KeyId)); err != nil {
		return keyring.WrappedKey{}, err
	}
	if len(out.CiphertextBlob) == 0 {
		return keyring.WrappedKey{}, fmt.Errorf("kms ReEncrypt with key %s: response has no CiphertextBlob", keyID)
	}
	return keyring.WrappedKey{Kind: keyring.KindAWSKMS, KeyID: aws.ToString(out.KeyId), Blob: out.CiphertextBlob}, nil
}

// Describe names the key (its ARN once known), the region and a custom
// endpoint. It holds no secret.
func (k *Keyring) Describe() string {
	key := k.KeyARN()
	if key == "" {
		key = k.keyID
	}
	s := "aws-kms " + key + " (region " + k.region
	if k.endpoint != "" {
		s += ", endpoint " + k.endpoint
	}
	return s + ")"
}

// kmsContext converts ec for the SDK; an empty context is sent as none.
func kmsContext(ec keyring.EncryptionContext) map[string]string {
	if len(ec) == 0 {
		return nil
	}
	return map[string]string(ec)
}

// isKeyARN reports whether s is a KMS key ARN,
// arn:PARTITION:kms:REGION:ACCOUNT:key/ID (not an alias ARN).
func isKeyARN(s string) bool {
	parts := strings.SplitN(s, ":", 6)
	return len(parts) == 6 && parts[0] == "arn" && parts[1] != "" && parts[2] == "kms" &&
		parts[3] != "" && parts[4] != "" && strings.HasPrefix(parts[5], "key/") && len(parts[5]) > len("key/")
}

// arnRegion returns the region of a KMS key or alias ARN, or "".
func arnRegion(s string) string {
	parts := strings.SplitN(s, ":", 6)
	if len(parts) != 6 || parts[0] != "arn" || parts[2] != "kms" {
		return ""
	}
	return parts[3]
}

// attemptClient sends each attempt of a KMS call (the SDK's retryer calls
// Do once per attempt) under its own deadline, and hands net/http the
// request body as an in-memory reader.
//
// The deadline rides on the request's context. http.Client.Timeout did
// the same job but, with the SDK's wrapper around the transport (not a
// transport net/http knows), started a goroutine, a timer and two
// channels per request to enforce it: 4-5 µs of a call's CPU. The
// context's deadline bounds the dial, the TLS handshake, the wait for the
// answer and the reading of its body, as Client.Timeout did; it is
// released when the SDK closes the body.
//
// The body: net/http sends the headers and an in-memory body of known
// length in one write; for any other body (the SDK's own reader type) it
// flushes the headers first, so every call cost two writes here and two
// reads at the far end. KMS request bodies are small JSON documents.
type attemptClient struct {
	aws.HTTPClient
	timeout time.Duration
}

// maxOneWrite bounds the body attemptClient buffers; larger ones go as
// they are.
const maxOneWrite = 64 << 10

func (c attemptClient) Do(req *http.Request) (*http.Response, error) {
	if req.Body != nil && req.Body != http.NoBody && req.ContentLength > 0 && req.ContentLength <= maxOneWrite {
		b := make([]byte, req.ContentLength)
		_, err := io.ReadFull(req.Body, b)
		req.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("read request body: %w", err)
		}
		req.Body = io.NopCloser(bytes.NewReader(b))
		// GetBody stays nil: with it net/http would follow a 307 or 308
		// redirect (the SDK's client allows those) and send the body,
		// an Encrypt's Plaintext among them, to wherever it points.
	}
	ctx, cancel := context.WithTimeout(req.Context(), c.timeout)
	resp, err := c.HTTPClient.Do(req.WithContext(ctx))
	if err != nil {
		cancel()
		return nil, err
	}
	resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
	return resp, nil
}

// cancelOnClose releases an attempt's deadline when its body is closed.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelOnClose) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}
