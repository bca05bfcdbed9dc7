package awskms_test

import (
	"context"
	"syscall"
	"testing"

	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/keyring/kmstest"
)

// The KMS calls' own cost on the client side (SDK, signing, HTTP) against a
// local-kms with no added latency; b.N calls from 32 goroutines. local-kms
// runs in its own process, so a CPU profile of this benchmark shows only
// kmsfs's side of a call, and the cpu-µs/op metric is that side's CPU
// time (user and system) per call.

func BenchmarkAWSKMSGenerateDataKey(b *testing.B) {
	srv := kmstest.Start(b)
	k := srv.Keyring(b, kmstest.KeyAARN)
	ec := keyring.EncryptionContext{"kmsfs:volume": "bench", "kmsfs:file": "f"}
	b.SetParallelism(16)
	b.ReportAllocs()
	defer reportCPU(b)()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			dk, _, err := k.GenerateDataKey(context.Background(), ec)
			if err != nil {
				b.Error(err)
				return
			}
			dk.Wipe()
		}
	})
}

func BenchmarkAWSKMSDecrypt(b *testing.B) {
	srv := kmstest.Start(b)
	k := srv.Keyring(b, kmstest.KeyAARN)
	ec := keyring.EncryptionContext{"kmsfs:volume": "bench", "kmsfs:file": "f"}
	dk, wrapped, err := k.GenerateDataKey(context.Background(), ec)
	if err != nil {
		b.Fatal(err)
	}
	dk.Wipe()
	b.SetParallelism(16)
	b.ReportAllocs()
	defer reportCPU(b)()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			dk, err := k.Decrypt(context.Background(), wrapped, ec)
			if err != nil {
				b.Error(err)
				return
			}
			dk.Wipe()
		}
	})
}

// reportCPU reports the process's CPU time per operation from now until
// the returned function runs.
func reportCPU(b *testing.B) func() {
	start := cpuTime()
	return func() {
		b.ReportMetric(float64(cpuTime()-start)/1e3/float64(b.N), "cpu-µs/op")
	}
}

func cpuTime() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
