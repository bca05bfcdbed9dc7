package main

import (
	"io"
	"net"
	"syscall"
	"unsafe"
)

// rawConn reads and writes a TCP connection's non-blocking socket with raw
// system calls, parking in the runtime's network poller only when the
// socket is not ready. net.Conn's reads and writes go through the
// runtime's blocking-syscall path, which wakes its monitor thread (sysmon)
// on every call when the process is otherwise idle, as this endpoint
// mostly is: a sixth of its CPU per call went to that thread's wakeups.
// A read or write of a ready non-blocking socket never blocks, so the
// raw path is safe.
type rawConn struct {
	net.Conn
	rc syscall.RawConn
}

func newRawConn(c net.Conn) net.Conn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return c
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return c
	}
	return &rawConn{Conn: c, rc: rc}
}

func (c *rawConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n uintptr
	var errno syscall.Errno
	err := c.rc.Read(func(fd uintptr) bool {
		n, _, errno = syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		return errno != syscall.EAGAIN
	})
	switch {
	case err != nil:
		return 0, err
	case errno != 0:
		return 0, errno
	case n == 0:
		return 0, io.EOF
	}
	return int(n), nil
}

func (c *rawConn) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		var n uintptr
		var errno syscall.Errno
		err := c.rc.Write(func(fd uintptr) bool {
			n, _, errno = syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[done])), uintptr(len(p)-done))
			return errno != syscall.EAGAIN
		})
		if err != nil {
			return done, err
		}
		if errno != 0 {
			return done, errno
		}
		done += int(n)
	}
	return done, nil
}
