// Command kmsproxy forwards KMS API requests to a target endpoint after a
// fixed delay: a realistic in-region KMS round trip in front of local-kms.
//
//	kmsproxy -target http://127.0.0.1:PORT -latency 10ms
//
// It prints its own endpoint (http://127.0.0.1:PORT) on stdout once
// listening, and the number of requests per KMS operation on SIGTERM.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	target := flag.String("target", "", "KMS endpoint URL to forward to")
	latency := flag.Duration("latency", 10*time.Millisecond, "delay added to every request")
	flag.Parse()
	u, err := url.Parse(*target)
	if err != nil || u.Host == "" {
		log.Fatalf("-target %q: not a URL", *target)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	var mu sync.Mutex
	counts := map[string]int{}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.Transport = &http.Transport{MaxIdleConnsPerHost: 256}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		op := strings.TrimPrefix(r.Header.Get("X-Amz-Target"), "TrentService.")
		mu.Lock()
		counts[op]++
		mu.Unlock()
		time.Sleep(*latency)
		rp.ServeHTTP(w, r)
	})
	fmt.Printf("http://%s\n", ln.Addr())
	c := make(chan os.Signal, 1)
	signal.Notify(c, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-c
		mu.Lock()
		fmt.Fprintln(os.Stderr, "requests:", counts)
		mu.Unlock()
		os.Exit(0)
	}()
	log.Fatal(http.Serve(ln, handler))
}
