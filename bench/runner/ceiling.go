package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/keyring/awskms"
)

// kmsCeiling is how many calls a second fastkms answers with kmsLatency
// on this machine, from ceilingClients concurrent callers using kmsfs's
// own AWS KMS keyring, and what a call costs in CPU on each side. Every
// file created needs one GenerateDataKey and every first open one
// Decrypt (per-file keys), so 10k files take at least 10000/rate seconds
// however the calls are scheduled: the floor under the KMS-bound
// workloads on this machine.
type kmsCeiling struct {
	Generate, Decrypt float64 // calls per second
	ClientCPU         float64 // µs of the keyring's CPU per call (this process)
	ServerCPU         float64 // µs of fastkms's CPU per call
}

// ceilingClients is twice the most KMS calls kmsfs has in flight (64
// prefetching), so the rate measured is not bounded by the latency.
const ceilingClients = 128

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
	st0, _ := endpointStats(endpoint)
	cpu0 := selfCPU()
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
	c.ClientCPU = float64(selfCPU()-cpu0) / 1e3 / float64(2*calls)
	if st1, err := endpointStats(endpoint); err == nil {
		c.ServerCPU = float64(st1.CPUNs-st0.CPUNs) / 1e3 / float64(st1.total()-st0.total())
	}
	return c, nil
}

func selfCPU() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}
