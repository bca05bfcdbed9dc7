package kmstest_test

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/kmsfs/kmsfs/keyring/kmstest"
)

// proxiedClient returns a KMS client through p that never retries, so each
// call is one request.
func proxiedClient(t *testing.T, p *kmstest.Proxy) *kms.Client {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{}, Timeout: 5 * time.Second}
	t.Cleanup(hc.CloseIdleConnections)
	return kms.NewFromConfig(aws.Config{
		Region:      kmstest.Region,
		Credentials: credentials.NewStaticCredentialsProvider("AKID", "secret", ""),
		HTTPClient:  hc,
		Retryer:     func() aws.Retryer { return aws.NopRetryer{} },
	}, func(o *kms.Options) {
		o.BaseEndpoint = aws.String(p.Endpoint())
	})
}

func describe(c *kms.Client, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, err := c.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(kmstest.KeyAID)})
	return err
}

func generate(c *kms.Client) error {
	_, err := c.GenerateDataKey(context.Background(), &kms.GenerateDataKeyInput{
		KeyId:         aws.String(kmstest.KeyAID),
		NumberOfBytes: aws.Int32(32),
	})
	return err
}

func TestProxyCountsPerOperation(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	p := kmstest.NewProxy(t, srv.Endpoint())
	c := proxiedClient(t, p)
	for range 2 {
		if err := describe(c, 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if err := generate(c); err != nil {
		t.Fatal(err)
	}
	if got := p.Count("DescribeKey"); got != 2 {
		t.Errorf("Count(DescribeKey) = %d, want 2", got)
	}
	if got := p.Count("GenerateDataKey"); got != 1 {
		t.Errorf("Count(GenerateDataKey) = %d, want 1", got)
	}
	if got := p.Total(); got != 3 {
		t.Errorf("Total() = %d, want 3", got)
	}
	p.Reset()
	if got := p.Total(); got != 0 {
		t.Errorf("Total() after Reset = %d, want 0", got)
	}
}

func TestProxyFaults(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	p := kmstest.NewProxy(t, srv.Endpoint())
	c := proxiedClient(t, p)

	apiCode := func(err error) string {
		var apiErr smithy.APIError
		if errors.As(err, &apiErr) {
			return apiErr.ErrorCode()
		}
		return ""
	}
	status := func(err error) int {
		var respErr *smithyhttp.ResponseError
		if errors.As(err, &respErr) {
			return respErr.HTTPStatusCode()
		}
		return 0
	}

	p.SetFault(kmstest.Fault{ErrorCode: "ThrottlingException"})
	err := describe(c, 5*time.Second)
	if apiCode(err) != "ThrottlingException" || status(err) != 400 {
		t.Errorf("ErrorCode fault: %v", err)
	}

	p.SetFault(kmstest.Fault{ErrorCode: "KMSInternalException", Status: 500})
	err = describe(c, 5*time.Second)
	if apiCode(err) != "KMSInternalException" || status(err) != 500 {
		t.Errorf("ErrorCode+Status fault: %v", err)
	}

	p.SetFault(kmstest.Fault{Status: 503})
	if err := describe(c, 5*time.Second); status(err) != 503 {
		t.Errorf("Status fault: %v", err)
	}

	p.SetFault(kmstest.Fault{Drop: true})
	if err := describe(c, 5*time.Second); err == nil || status(err) != 0 {
		t.Errorf("Drop fault: %v, want a connection error", err)
	}

	// Op restricts the fault: other operations pass.
	p.SetFault(kmstest.Fault{Op: "GenerateDataKey", ErrorCode: "DisabledException"})
	if err := describe(c, 5*time.Second); err != nil {
		t.Errorf("fault for GenerateDataKey hit DescribeKey: %v", err)
	}
	if err := generate(c); apiCode(err) != "DisabledException" {
		t.Errorf("fault for GenerateDataKey: %v", err)
	}

	p.SetFault(kmstest.Fault{Latency: 100 * time.Millisecond})
	start := time.Now()
	if err := describe(c, 5*time.Second); err != nil {
		t.Errorf("Latency fault: %v", err)
	}
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Errorf("Latency fault: answered after %v, want ≥ 100ms", d)
	}

	p.SetFault(kmstest.Fault{Blackhole: true})
	start = time.Now()
	if err := describe(c, 200*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Blackhole fault: %v, want the client's deadline", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Blackhole fault: client gave up after %v", d)
	}

	p.Reset()
	p.SetFault(kmstest.Fault{Outage: true})
	if err := describe(c, 5*time.Second); err == nil {
		t.Errorf("Outage fault: call succeeded")
	}
	if got := p.Total(); got != 0 {
		t.Errorf("Outage fault: %d requests counted, want 0", got)
	}

	p.Heal()
	if err := describe(c, 5*time.Second); err != nil {
		t.Errorf("after Heal: %v", err)
	}
}

func TestProxyConcurrentUse(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	p := kmstest.NewProxy(t, srv.Endpoint())
	c := proxiedClient(t, p)
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			if i%4 == 0 {
				p.SetFault(kmstest.Fault{Op: "Nothing", Latency: time.Millisecond})
				p.Heal()
			}
			describe(c, 5*time.Second)
		})
	}
	wg.Wait()
	if got := p.Count("DescribeKey"); got != 16 {
		t.Errorf("Count(DescribeKey) = %d, want 16", got)
	}
}

func TestProxyTargetDown(t *testing.T) {
	t.Parallel()
	p := kmstest.NewProxy(t, kmstest.ClosedEndpoint(t))
	c := proxiedClient(t, p)
	var respErr *smithyhttp.ResponseError
	if err := describe(c, 5*time.Second); !errors.As(err, &respErr) || respErr.HTTPStatusCode() != http.StatusBadGateway {
		t.Errorf("target down: %v, want HTTP 502", err)
	}
	if got := p.Count("DescribeKey"); got != 1 {
		t.Errorf("Count(DescribeKey) = %d, want 1", got)
	}
}

// MaxInFlight counts the requests held at once: one after another never
// overlap; requests held by a black hole all do.
func TestProxyMaxInFlight(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	p := kmstest.NewProxy(t, srv.Endpoint())
	c := proxiedClient(t, p)
	for range 3 {
		if err := describe(c, 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if got := p.MaxInFlight("DescribeKey"); got != 1 {
		t.Errorf("MaxInFlight after 3 calls in a row = %d, want 1", got)
	}
	p.Reset()
	if got := p.MaxInFlight("DescribeKey"); got != 0 {
		t.Errorf("MaxInFlight after Reset = %d, want 0", got)
	}

	const n = 4
	p.SetFault(kmstest.Fault{Blackhole: true})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() { c.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(kmstest.KeyAID)}) })
	}
	deadline := time.Now().Add(10 * time.Second)
	for p.Count("DescribeKey") < n && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	got := p.MaxInFlight("DescribeKey")
	cancel()
	wg.Wait()
	if got != n {
		t.Errorf("MaxInFlight with %d calls held by a black hole = %d, want %d", n, got, n)
	}
	if got := p.MaxInFlight("GenerateDataKey"); got != 0 {
		t.Errorf("MaxInFlight(GenerateDataKey) = %d, want 0", got)
	}
}
