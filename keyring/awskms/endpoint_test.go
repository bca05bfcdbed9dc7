package awskms

import (
	"context"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
)

// The cache answers what the SDK's resolver answers, for each set of
// parameters, and does not mix them up.
func TestEndpointCache(t *testing.T) {
	c := &endpointCache{inner: kms.NewDefaultEndpointResolverV2()}
	ref := kms.NewDefaultEndpointResolverV2()
	params := []kms.EndpointParameters{
		{Region: aws.String("eu-west-2"), UseFIPS: aws.Bool(false), UseDualStack: aws.Bool(false)},
		{Region: aws.String("eu-west-2"), UseFIPS: aws.Bool(true), UseDualStack: aws.Bool(false)},
		{Region: aws.String("us-east-1"), UseFIPS: aws.Bool(false), UseDualStack: aws.Bool(true)},
		{Region: aws.String("eu-west-2"), UseFIPS: aws.Bool(false), UseDualStack: aws.Bool(false), Endpoint: aws.String("https://vpce.example.com")},
	}
	for range 2 {
		for _, p := range params {
			for range 2 {
				got, err := c.ResolveEndpoint(context.Background(), p)
				if err != nil {
					t.Fatal(err)
				}
				want, err := ref.ResolveEndpoint(context.Background(), p)
				if err != nil {
					t.Fatal(err)
				}
				if got.URI.String() != want.URI.String() {
					t.Errorf("%+v: %s, want %s", keyOf(p), got.URI.String(), want.URI.String())
				}
			}
		}
	}
	// An invalid set fails, and is not kept.
	if _, err := c.ResolveEndpoint(context.Background(), kms.EndpointParameters{UseFIPS: aws.Bool(false)}); err == nil {
		t.Error("parameters without UseDualStack resolved")
	}
}
