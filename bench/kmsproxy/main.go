// Command kmsproxy forwards TCP connections to a KMS endpoint and holds
// every chunk the client sends for a fixed delay before passing it on: a
// realistic in-region KMS round trip in front of local-kms.
//
//	kmsproxy -target http://127.0.0.1:PORT -latency 10ms
//
// It prints its own endpoint (http://127.0.0.1:PORT) on stdout once
// listening, and the number of requests per KMS operation on SIGTERM.
//
// It works on bytes, not HTTP, as a network path does: a request costs the
// proxy two reads and two writes, not a parse and a re-encoding. An
// HTTP reverse proxy here took about half the CPU that local-kms itself
// takes per call, on the same cores as the filesystem under test, and so
// lowered the rate a benchmark could reach below what the delay alone
// allows.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/url"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

type chunk struct {
	due time.Time
	b   []byte
}

var (
	mu     sync.Mutex
	counts = map[string]int{}
	target = []byte("\nX-Amz-Target: TrentService.")
)

// count notes the KMS operations whose requests start in b. A header split
// across two reads is missed: the counts are a sanity check, not a meter.
func count(b []byte) {
	for {
		i := bytes.Index(b, target)
		if i < 0 {
			return
		}
		b = b[i+len(target):]
		end := bytes.IndexByte(b, '\r')
		if end < 0 {
			return
		}
		mu.Lock()
		counts[string(b[:end])]++
		mu.Unlock()
	}
}

// forward copies client to server, each chunk held until latency after it
// was read; chunks keep their order. server to client is copied at once.
func forward(client net.Conn, addr string, latency time.Duration) {
	defer client.Close()
	server, err := net.Dial("tcp", addr)
	if err != nil {
		log.Printf("dial %s: %v", addr, err)
		return
	}
	defer server.Close()
	q := make(chan chunk, 64)
	go func() {
		defer close(q)
		for {
			b := make([]byte, 16<<10)
			n, err := client.Read(b)
			if n > 0 {
				count(b[:n])
				q <- chunk{due: time.Now().Add(latency), b: b[:n]}
			}
			if err != nil {
				return
			}
		}
	}()
	go func() {
		io.Copy(client, server)
		client.Close()
	}()
	for c := range q {
		time.Sleep(time.Until(c.due))
		if _, err := server.Write(c.b); err != nil {
			return
		}
	}
	server.(*net.TCPConn).CloseWrite()
}

func main() {
	targetURL := flag.String("target", "", "KMS endpoint URL to forward to (http://HOST:PORT)")
	latency := flag.Duration("latency", 10*time.Millisecond, "delay added to every request")
	flag.Parse()
	u, err := url.Parse(*targetURL)
	if err != nil || u.Host == "" || u.Scheme != "http" {
		log.Fatalf("-target %q: not an http:// URL", *targetURL)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
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
	for {
		conn, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go forward(conn, u.Host, *latency)
	}
}
