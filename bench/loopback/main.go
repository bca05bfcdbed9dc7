// Command loopback mounts go-fuse's stock loopback filesystem with kernel
// passthrough disabled: the floor a FUSE filesystem written with go-fuse
// can reach when every read and write goes through the daemon. (As root on
// Linux >= 6.9, go-fuse's example/loopback hands open files to the kernel,
// so its data I/O never reaches the daemon; that is no baseline.)
//
//	loopback ORIGINAL MOUNTPOINT
//
// It prints "mounted" once ready and unmounts on SIGINT/SIGTERM.
package main

import (
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: loopback ORIGINAL MOUNTPOINT")
		os.Exit(2)
	}
	root, err := fs.NewLoopbackRoot(os.Args[1])
	if err != nil {
		log.Fatal(err)
	}
	sec := time.Second
	opts := &fs.Options{
		AttrTimeout:     &sec,
		EntryTimeout:    &sec,
		NullPermissions: true,
		MountOptions: fuse.MountOptions{
			FsName:               os.Args[1],
			Name:                 "loopback",
			DirectMount:          os.Geteuid() == 0,
			DisabledCapabilities: fuse.CAP_PASSTHROUGH,
		},
	}
	srv, err := fs.Mount(os.Args[2], root, opts)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("mounted")
	c := make(chan os.Signal, 1)
	signal.Notify(c, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-c
		srv.Unmount()
	}()
	srv.Wait()
}
