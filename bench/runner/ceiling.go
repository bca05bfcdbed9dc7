package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/keyring/awskms"
)

// kmsCeiling is how many calls a second local-kms answers on this
// machine, with no added latency, from ceilingClients concurrent callers
// using kmsfs's own AWS KMS keyring. Every file created needs one
// GenerateDataKey and every first open one Decrypt, so 10k files take at
// least 10000/rate seconds however the calls are scheduled: the floor
// under the KMS-bound workloads on this machine.
type kmsCeiling struct {
	Generate, Decrypt float64 // calls per second
}

const ceilingClients = 32

// proxiedClients call through the 10 ms proxy: twice the most KMS calls
// kmsfs has in flight (64 prefetching), so the rate measured is not
// bounded by the latency.
const proxiedClients = 128

func measureKMSCeiling(endpoint string, calls, clients int) (kmsCeiling, error) {
	ctx := context.Background()
	// Credentials come from the environment (e.awsEnv), as for the mounts:
	// only keyring/ talks to the AWS SDK.
	k, err := awskms.New(ctx, awskms.Config{
		KeyID:       "alias/kmsfs-bench",
		Region:      "eu-west-2",
		Endpoint:    endpoint,
		MaxAttempts: 3,
		CallTimeout: 10 * time.Second,
	})
	if err != nil {
		return kmsCeiling{}, err
	}
	ec := keyring.FileContext("ceiling", "ceiling")
	wrapped := make([][]keyring.WrappedKey, calls)
	run := func(op func(i int) error) (float64, error) {
		var next atomic.Int64
		var wg sync.WaitGroup
		var mu sync.Mutex
		var first error
		start := time.Now()
		for range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(next.Add(1)) - 1
					if i >= calls {
						return
					}
					if err := op(i); err != nil {
						mu.Lock()
						first = cmpErr(first, err)
						mu.Unlock()
						return
					}
				}
			}()
		}
		wg.Wait()
		return float64(calls) / time.Since(start).Seconds(), first
	}
	var c kmsCeiling
	if c.Generate, err = run(func(i int) error {
		dk, w, err := k.GenerateDataKey(ctx, ec)
		if err == nil {
			dk.Wipe()
			wrapped[i] = w
		}
		return err
	}); err != nil {
		return c, fmt.Errorf("GenerateDataKey: %w", err)
	}
	if c.Decrypt, err = run(func(i int) error {
		dk, err := k.Decrypt(ctx, wrapped[i], ec)
		if err == nil {
			dk.Wipe()
		}
		return err
	}); err != nil {
		return c, fmt.Errorf("decrypt: %w", err)
	}
	return c, nil
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}
