//go:build unix

package kmstest

import (
	"strconv"
	"syscall"
	"testing"
)

// ClosedEndpoint returns the URL of a loopback port that refuses every
// connection for the life of t: a KMS endpoint that is down. The port is
// bound but not listening, so no other process (another test's server) can
// take it meanwhile, as it could a port that was merely closed.
func ClosedEndpoint(t testing.TB) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatalf("kmstest: socket: %v", err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatalf("kmstest: bind: %v", err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatalf("kmstest: getsockname: %v", err)
	}
	return "http://127.0.0.1:" + strconv.Itoa(sa.(*syscall.SockaddrInet4).Port)
}
