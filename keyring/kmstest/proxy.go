package kmstest

import (
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// Proxy is an HTTP reverse proxy in front of a KMS endpoint that counts
// requests per KMS operation and injects faults. Point a keyring (or kmsfs)
// at Endpoint instead of the server's. All methods are safe for concurrent
// use, and faults can be changed while requests are in flight.
//
//	p := kmstest.NewProxy(t, srv.Endpoint())
//	cfg := srv.Config(kmstest.KeyAARN)
//	cfg.Endpoint = p.Endpoint()
//	...
//	p.SetFault(kmstest.Fault{ErrorCode: "ThrottlingException"})
//	... // every call now fails with a throttle
//	p.Heal()
//	if n := p.Count("Decrypt"); n != 1 { ... }
//
// The proxy rewrites the Host header, so it breaks SigV4 signatures: use it
// with local-kms (which checks none), not with real KMS.
type Proxy struct {
	endpoint string
	srv      *http.Server
	rp       *httputil.ReverseProxy
	closed   chan struct{} // closed when the proxy shuts down

	mu       sync.Mutex
	counts   map[string]int        // guarded by mu; requests per operation
	inFlight map[string]int        // guarded by mu; requests per operation not yet answered
	maxIn    map[string]int        // guarded by mu; the most of inFlight at once since the last Reset
	fault    Fault                 // guarded by mu
	conns    map[net.Conn]struct{} // guarded by mu; open client connections
}

// Fault says how the proxy misbehaves. The zero Fault passes every request
// through. Fields combine: Latency delays whatever else happens.
type Fault struct {
	// Op restricts the fault to one KMS operation ("GenerateDataKey",
	// "Decrypt", ...); "" applies it to all. Outage ignores Op.
	Op string
	// Latency delays each request before it is forwarded or failed. The
	// delay ends early if the client gives up.
	Latency time.Duration
	// ErrorCode, if set, answers with a KMS error of this code instead of
	// forwarding: {"__type": ErrorCode, "message": ...} with HTTP status
	// Status, or 400 if Status is 0. E.g. "ThrottlingException",
	// "AccessDeniedException", "DisabledException", "KMSInternalException"
	// (with Status 500).
	ErrorCode string
	// Status, if set without ErrorCode, answers with this HTTP status and
	// a JSON body without an error code (e.g. 503).
	Status int
	// Drop reads the request, then closes the connection without an answer.
	Drop bool
	// Blackhole reads the request and never answers: the client waits
	// until its own timeout.
	Blackhole bool
	// Outage closes every connection as soon as it is accepted, and the
	// open ones when it is set: nothing reaches the proxy's handler, so
	// nothing is counted.
	Outage bool
}

// NewProxy starts a proxy to target (a URL such as Server.Endpoint) on a
// free loopback port and stops it in t.Cleanup.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil || u.Scheme == "" || u.Host == "" {
		t.Fatalf("kmstest: proxy target %q is not a URL", target)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("kmstest: proxy listen: %v", err)
	}
	p := &Proxy{
		endpoint: "http://" + ln.Addr().String(),
		closed:   make(chan struct{}),
		counts:   map[string]int{},
		inFlight: map[string]int{},
		maxIn:    map[string]int{},
		conns:    map[net.Conn]struct{}{},
	}
	transport := &http.Transport{}
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(u)
		},
		Transport: transport,
		ErrorLog:  log.New(io.Discard, "", 0), // a client giving up mid-copy is no news
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			// The target is down: answer as an unreachable gateway would.
			writeJSON(w, http.StatusBadGateway, map[string]string{"message": "kmstest proxy: " + err.Error()})
		},
	}
	p.srv = &http.Server{
		Handler:   p,
		ConnState: p.trackConn,
	}
	go p.srv.Serve(&outageListener{Listener: ln, p: p})
	t.Cleanup(func() {
		close(p.closed) // releases Latency and Blackhole waits
		p.srv.Close()
		transport.CloseIdleConnections()
	})
	return p
}

// Endpoint is the proxy's URL.
func (p *Proxy) Endpoint() string { return p.endpoint }

// Count returns how many requests for op ("GenerateDataKey", "Decrypt",
// "Encrypt", "DescribeKey", ...) reached the proxy since the start or the
// last Reset, faulted ones included. Each retry attempt counts.
func (p *Proxy) Count(op string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.counts[op]
}

// Total returns how many requests of any operation reached the proxy since
// the start or the last Reset.
func (p *Proxy) Total() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, c := range p.counts {
		n += c
	}
	return n
}

// MaxInFlight returns the most requests for op that the proxy held at
// once (received, not yet answered) since the start or the last Reset. It
// shows concurrency by counting rather than by timing: with a Latency
// fault, requests that a client sends one after another never overlap, so
// a MaxInFlight of 2 or more proves the client sent them in parallel.
func (p *Proxy) MaxInFlight(op string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.maxIn[op]
}

// Reset sets every count to zero. Requests in flight then count towards
// MaxInFlight again.
func (p *Proxy) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	clear(p.counts)
	clear(p.maxIn)
	for op, n := range p.inFlight {
		p.maxIn[op] = n
	}
}

// SetFault replaces the current fault. Requests already waiting out a
// Latency or Blackhole keep the fault they started with.
func (p *Proxy) SetFault(f Fault) {
	p.mu.Lock()
	p.fault = f
	var open []net.Conn
	if f.Outage {
		for c := range p.conns {
			open = append(open, c)
		}
	}
	p.mu.Unlock()
	for _, c := range open {
		c.Close()
	}
}

// Heal goes back to passing every request through.
func (p *Proxy) Heal() { p.SetFault(Fault{}) }

// ServeHTTP counts the request, then applies the current fault.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	op := operation(r)
	p.mu.Lock()
	p.counts[op]++
	p.inFlight[op]++
	p.maxIn[op] = max(p.maxIn[op], p.inFlight[op])
	f := p.fault
	p.mu.Unlock()
	defer func() { // also when abort panics
		p.mu.Lock()
		p.inFlight[op]--
		p.mu.Unlock()
	}()
	if f.Op != "" && f.Op != op {
		f = Fault{}
	}

	if f.Latency > 0 {
		timer := time.NewTimer(f.Latency)
		select {
		case <-timer.C:
		case <-r.Context().Done():
			timer.Stop()
			abort()
		case <-p.closed:
			timer.Stop()
			abort()
		}
	}
	switch {
	case f.Blackhole:
		select {
		case <-r.Context().Done():
		case <-p.closed:
		}
		abort()
	case f.Drop:
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			abort()
		}
		conn.Close()
	case f.ErrorCode != "":
		status := f.Status
		if status == 0 {
			status = http.StatusBadRequest
		}
		writeJSON(w, status, map[string]string{
			"__type":  f.ErrorCode,
			"message": fmt.Sprintf("kmstest proxy: injected %s for %s", f.ErrorCode, op),
		})
	case f.Status != 0:
		writeJSON(w, f.Status, map[string]string{
			"message": fmt.Sprintf("kmstest proxy: injected HTTP %d for %s", f.Status, op),
		})
	default:
		p.rp.ServeHTTP(w, r)
	}
}

// abort ends the request by closing its connection without an answer:
// returning from the handler would send an empty 200, which the SDK would
// read as a successful call.
func abort() { panic(http.ErrAbortHandler) }

// operation names the KMS operation of r from its X-Amz-Target header,
// "TrentService.Decrypt" → "Decrypt".
func operation(r *http.Request) string {
	target := r.Header.Get("X-Amz-Target")
	if i := strings.LastIndexByte(target, '.'); i >= 0 {
		return target[i+1:]
	}
	return target
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(body)
}

func (p *Proxy) trackConn(c net.Conn, state http.ConnState) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch state {
	case http.StateNew:
		p.conns[c] = struct{}{}
	case http.StateHijacked, http.StateClosed:
		delete(p.conns, c)
	}
}

func (p *Proxy) inOutage() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.fault.Outage
}

// outageListener closes connections as they are accepted while the proxy
// is in an Outage.
type outageListener struct {
	net.Listener
	p *Proxy
}

func (l *outageListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if !l.p.inOutage() {
			return c, nil
		}
		c.Close()
	}
}
