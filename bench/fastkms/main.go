// Command fastkms is a KMS endpoint for benchmarks only: it answers
// GenerateDataKey, Decrypt, Encrypt, ReEncrypt and DescribeKey over the
// real KMS protocol (HTTP/1.1, JSON 1.1, X-Amz-Target TrentService.*), so
// the AWS SDK talks to it unmodified, and adds a fixed latency to every
// answer without spending CPU on the wait. Its own CPU per call is small
// and measured, so a benchmark on the same cores can tell how much of a
// KMS-bound workload's time is the endpoint's.
//
//	fastkms -latency 10ms
//
// It prints its endpoint (http://127.0.0.1:PORT) on stdout once listening.
// GET /stats on that endpoint answers the calls per operation, the
// failed calls, and the process's CPU time (user plus system, in
// nanoseconds) as JSON; SIGTERM prints the same on stderr and exits.
//
// It is not KMS and not for tests: signatures (SigV4) and credentials are
// accepted without a check, grant tokens are ignored, and the key
// material is random per process, so its blobs open only in the process
// that made them. Tests use local-kms (keyring/kmstest), which keeps its
// keys and answers the admin calls tests need. What it does check as KMS
// does: the key a request names, and the encryption context a blob was
// made under (a Decrypt under another context is refused with
// InvalidCiphertextException). Blob format: blob.go.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"syscall"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	latency := flag.Duration("latency", 0, "delay added before every answer (e.g. 10ms, an in-region KMS round trip)")
	keyID := flag.String("key-id", "bbbbbbbb-0000-4000-8000-000000000001", "the ID of the one key served")
	alias := flag.String("alias", "alias/kmsfs-bench", "an alias of the key")
	region := flag.String("region", "eu-west-2", "region in the key's ARN")
	account := flag.String("account", "111122223333", "account in the key's ARN")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the process to this file until SIGTERM")
	flag.Parse()
	s, err := newServer(*region, *account, *keyID, *alias, *latency)
	if err != nil {
		log.Fatal(err)
	}
	// Requests allocate little and live briefly: collect less often,
	// which is part of the endpoint's CPU per call.
	debug.SetGCPercent(400)
	// One P: a goroutine made ready while another runs then waits for it
	// instead of waking a second thread to run it. 22.6-26.6 µs per call
	// against 27.8-34.1 µs with two (4 interleaved pairs, 32 callers, 10
	// ms); one P serves some 40,000 calls a second.
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("http://%s\n", ln.Addr())
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatal(err)
		}
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		b, _ := json.Marshal(s.stats())
		pprof.StopCPUProfile()
		fmt.Fprintf(os.Stderr, "fastkms: %s\n", b)
		os.Exit(0)
	}()
	log.Fatal(s.serve(ln))
}
