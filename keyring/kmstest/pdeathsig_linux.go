package kmstest

import (
	"os/exec"
	"runtime"
	"sync"
	"syscall"
)

// startChild starts cmd with a parent death signal: the kernel kills
// local-kms if the test process dies without running its cleanups (a test
// timeout, kill -9), so no server outlives its test run.
//
// The signal follows the OS thread that forked the child, not the process,
// and the Go runtime ends a thread when a goroutine exits while locked to it
// (tests do that to give one thread its own umask). So every child is
// forked from one thread that stays locked, and alive, for good.
func startChild(cmd *exec.Cmd) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	spawnOnce.Do(func() { go spawner() })
	done := make(chan error, 1)
	spawns <- spawnRequest{cmd: cmd, done: done}
	return <-done
}

type spawnRequest struct {
	cmd  *exec.Cmd
	done chan<- error
}

var (
	spawnOnce sync.Once
	spawns    = make(chan spawnRequest)
)

func spawner() {
	runtime.LockOSThread() // never unlocked: this thread must not be reused or end
	for r := range spawns {
		r.done <- r.cmd.Start()
	}
}
