package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http/httputil"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

// server answers KMS requests on HTTP/1.1 connections. It speaks just
// enough HTTP for a KMS client (the AWS SDKs, the AWS CLI): a request
// line, headers, a body of Content-Length bytes or chunked, keep-alive.
// net/http's server took about as much CPU per call as all the rest
// (parsing every header into a map, a goroutine per body read); this loop
// reads a request with one bufio read and answers with one write.
type server struct {
	key     *key
	latency time.Duration
	calls   [numOps]atomic.Int64
	failed  atomic.Int64
	reqID   atomic.Uint64
}

func newServer(region, account, keyID, alias string, latency time.Duration) (*server, error) {
	k, err := newKey(region, account, keyID, alias)
	if err != nil {
		return nil, err
	}
	return &server{key: k, latency: latency}, nil
}

// maxBody bounds a request body: KMS's largest (a 4 KiB plaintext in
// base64, and a context) fit many times over.
const maxBody = 1 << 20

// httpRequest is one request as the connection loop needs it.
type httpRequest struct {
	get    bool   // GET, else POST
	stats  bool   // the path is /stats
	target []byte // X-Amz-Target
	body   []byte
	close  bool // the client asked to close after the answer
}

var errBadRequest = errors.New("malformed HTTP request")

// serve answers the connections ln accepts until it fails.
func (s *server) serve(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return err
		}
		go s.serveConn(c)
	}
}

func (s *server) serveConn(conn net.Conn) {
	c := newRawConn(conn)
	defer c.Close()
	br := bufio.NewReaderSize(c, 8<<10)
	var req httpRequest
	var out []byte
	for {
		if err := readRequest(br, c, &req); err != nil {
			if errors.Is(err, errBadRequest) {
				c.Write([]byte("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
			}
			return
		}
		received := time.Now()
		var status int
		var errType string
		var body []byte
		switch {
		case req.get && req.stats:
			status, body = 200, s.statsJSON()
		case req.get:
			status, errType, body = errorBody(404, "UnknownOperationException", "no such path")
		default:
			status, errType, body = s.dispatch(req.target, req.body)
		}
		out = appendResponse(out[:0], status, errType, s.reqID.Add(1), body)
		if s.latency > 0 && !req.get {
			// A timer parks this goroutine: the wait costs no CPU.
			time.Sleep(s.latency - time.Since(received))
		}
		if _, err := c.Write(out); err != nil || req.close {
			return
		}
	}
}

// readRequest reads one request into req, reusing its body buffer.
// io.EOF: the client closed the connection between requests.
func readRequest(br *bufio.Reader, w io.Writer, req *httpRequest) error {
	line, err := br.ReadSlice('\n')
	if err != nil {
		if err == io.EOF && len(line) == 0 {
			return io.EOF
		}
		return fmt.Errorf("%w: request line: %v", errBadRequest, err)
	}
	method, rest, ok := bytes.Cut(bytes.TrimRight(line, "\r\n"), []byte(" "))
	if !ok {
		return errBadRequest
	}
	path, proto, ok := bytes.Cut(rest, []byte(" "))
	if !ok || !bytes.HasPrefix(proto, []byte("HTTP/1.")) {
		return errBadRequest
	}
	req.get = string(method) == "GET"
	if !req.get && string(method) != "POST" {
		return errBadRequest
	}
	req.stats = string(path) == "/stats"
	req.close = string(proto) == "HTTP/1.0"
	req.target = req.target[:0]
	length, chunked, expect := 0, false, false
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return fmt.Errorf("%w: header: %v", errBadRequest, err)
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			break
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return errBadRequest
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			n, err := strconv.Atoi(string(value))
			if err != nil || n < 0 || n > maxBody {
				return errBadRequest
			}
			length = n
		case bytes.EqualFold(name, []byte("X-Amz-Target")):
			req.target = append(req.target, value...)
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			chunked = bytes.EqualFold(value, []byte("chunked"))
		case bytes.EqualFold(name, []byte("Expect")):
			expect = bytes.EqualFold(value, []byte("100-continue"))
		case bytes.EqualFold(name, []byte("Connection")):
			if bytes.EqualFold(value, []byte("close")) {
				req.close = true
			} else if bytes.EqualFold(value, []byte("keep-alive")) {
				req.close = false
			}
		}
	}
	if expect {
		if _, err := w.Write([]byte("HTTP/1.1 100 Continue\r\n\r\n")); err != nil {
			return err
		}
	}
	if chunked {
		b, err := io.ReadAll(io.LimitReader(httputil.NewChunkedReader(br), maxBody+1))
		if err != nil || len(b) > maxBody {
			return errBadRequest
		}
		req.body = b
		return nil
	}
	if cap(req.body) < length {
		req.body = make([]byte, length)
	}
	req.body = req.body[:length]
	if _, err := io.ReadFull(br, req.body); err != nil {
		return fmt.Errorf("%w: body: %v", errBadRequest, err)
	}
	return nil
}

func appendResponse(b []byte, status int, errType string, reqID uint64, body []byte) []byte {
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(status), 10)
	switch status {
	case 200:
		b = append(b, " OK\r\n"...)
	case 400:
		b = append(b, " Bad Request\r\n"...)
	case 404:
		b = append(b, " Not Found\r\n"...)
	default:
		b = append(b, " Error\r\n"...)
	}
	b = append(b, "Content-Type: application/x-amz-json-1.1\r\nX-Amzn-Requestid: fastkms-"...)
	b = strconv.AppendUint(b, reqID, 10)
	if errType != "" {
		b = append(b, "\r\nX-Amzn-Errortype: "...)
		b = append(b, errType...)
	}
	b = append(b, "\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	b = append(b, "\r\n\r\n"...)
	return append(b, body...)
}

// Stats is what GET /stats answers.
type Stats struct {
	Calls  map[string]int64 `json:"calls"`  // answered requests per operation, failures included
	Failed int64            `json:"failed"` // requests answered with an error
	CPUNs  int64            `json:"cpu_ns"` // the process's user and system CPU time so far
}

func (s *server) stats() Stats {
	st := Stats{Calls: map[string]int64{}, Failed: s.failed.Load(), CPUNs: cpuTime()}
	for op := range numOps {
		st.Calls[opNames[op]] = s.calls[op].Load()
	}
	return st
}

func cpuTime() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

func (s *server) statsJSON() []byte {
	b, _ := json.Marshal(s.stats())
	return b
}
