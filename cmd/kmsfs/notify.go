package main

import (
	"errors"
	"net"
	"os"
	"strings"
)

// sdNotify tells the service manager about the mount (systemd's
// sd_notify protocol, for a unit of Type=notify): state, such as
// "READY=1\nSTATUS=...", in one datagram to the socket $NOTIFY_SOCKET
// names, a path or, after "@", an abstract name. Without $NOTIFY_SOCKET
// it does nothing. It is written here rather than taken from go-systemd:
// the protocol is this one datagram.
func sdNotify(state string) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	switch {
	case addr == "":
		return nil
	case !strings.HasPrefix(addr, "/") && !strings.HasPrefix(addr, "@"):
		// systemd also knows vsock: addresses, for virtual machines.
		return errors.New("NOTIFY_SOCKET " + addr + ": only path and abstract sockets are supported")
	}
	// The net package turns a leading "@" into the NUL of an abstract
	// address.
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Write([]byte(state))
	return err
}
