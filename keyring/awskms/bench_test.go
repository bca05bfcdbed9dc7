package awskms_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/keyring/awskms"
	"github.com/kmsfs/kmsfs/keyring/kmstest"
)

// The KMS calls' own cost on the client side (SDK, signing, HTTP): b.N
// calls against bench/fastkms, the benchmark-only KMS endpoint, with no
// added latency and with 10 ms (benchLatencies). fastkms runs as a child process,
// so a CPU profile of this benchmark shows only kmsfs's side of a call;
// cpu-µs/op is that side's CPU time (user and system) per call, and
// srv-cpu-µs/op the endpoint's. Run with -cpu 1 for the steadiest
// figures:
//
//	go test -run - -bench AWSKMS -cpu 1 -benchtime 20000x ./keyring/awskms
//
// (The tests use local-kms; fastkms is for benchmarks only.)

func BenchmarkAWSKMSGenerateDataKey(b *testing.B) {
	benchLatencies(b, func(b *testing.B, k *awskms.Keyring) {
		ec := keyring.EncryptionContext{"kmsfs:volume": "bench", "kmsfs:file": "f"}
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
	})
}

func BenchmarkAWSKMSDecrypt(b *testing.B) {
	benchLatencies(b, func(b *testing.B, k *awskms.Keyring) {
		ec := keyring.EncryptionContext{"kmsfs:volume": "bench", "kmsfs:file": "f"}
		dk, wrapped, err := k.GenerateDataKey(context.Background(), ec)
		if err != nil {
			b.Fatal(err)
		}
		dk.Wipe()
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
	})
}

// benchLatencies runs f against fastkms answering at once (16 callers per
// P), and after 10 ms (64 callers per P: what the key pool and key
// readahead keep in flight in a mount). The second adds what waiting
// costs: each answer finds the process idle and wakes it.
func benchLatencies(b *testing.B, f func(*testing.B, *awskms.Keyring)) {
	for _, c := range []struct {
		latency time.Duration
		callers int
	}{{0, 16}, {10 * time.Millisecond, 64}} {
		b.Run("latency="+c.latency.String(), func(b *testing.B) {
			k, srvCPU := fastKMSKeyring(b, c.latency)
			b.SetParallelism(c.callers)
			b.ReportAllocs()
			defer reportCPU(b, srvCPU)()
			b.ResetTimer()
			f(b, k)
		})
	}
}

// reportCPU reports this process's CPU time per operation, and the
// endpoint's, from now until the returned function runs.
func reportCPU(b *testing.B, srvCPU func() int64) func() {
	start, srvStart := cpuTime(), srvCPU()
	return func() {
		b.ReportMetric(float64(cpuTime()-start)/1e3/float64(b.N), "cpu-µs/op")
		b.ReportMetric(float64(srvCPU()-srvStart)/1e3/float64(b.N), "srv-cpu-µs/op")
	}
}

func cpuTime() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// fastKMSKeyring starts bench/fastkms serving kmstest's key A (its key
// material is its own) and returns a keyring of it, with the settings
// kmsfs mounts with, and a function reading the endpoint's CPU time.
func fastKMSKeyring(b *testing.B, latency time.Duration) (*awskms.Keyring, func() int64) {
	b.Helper()
	bin := fastKMSBinary(b)
	cmd := exec.Command(bin, "-latency", latency.String(), "-key-id", kmstest.KeyAID, "-alias", kmstest.AliasName,
		"-region", kmstest.Region, "-account", kmstest.AccountID)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		b.Fatalf("fastkms did not start: %v", err)
	}
	endpoint := strings.TrimSpace(line)
	k, err := awskms.New(context.Background(), awskms.Config{
		KeyID:       kmstest.KeyAARN,
		Region:      kmstest.Region,
		Endpoint:    endpoint,
		Credentials: credentials.NewStaticCredentialsProvider("BENCHACCESSKEYID", "bench-secret-not-a-secret", ""),
	})
	if err != nil {
		b.Fatal(err)
	}
	srvCPU := func() int64 {
		resp, err := http.Get(endpoint + "/stats")
		if err != nil {
			b.Fatalf("fastkms stats: %v", err)
		}
		defer resp.Body.Close()
		var st struct {
			CPUNs int64 `json:"cpu_ns"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
			b.Fatalf("fastkms stats: %v", err)
		}
		return st.CPUNs
	}
	return k, srvCPU
}

// fastKMSBinary builds bench/fastkms (the go command caches the build).
func fastKMSBinary(b *testing.B) string {
	bin := filepath.Join(b.TempDir(), "fastkms")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/kmsfs/kmsfs/bench/fastkms")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		b.Fatalf("build bench/fastkms: %v", err)
	}
	return bin
}
