package kmstest

import (
	"os/exec"
	"syscall"
)

// setParentDeathSignal has the kernel kill local-kms if the test process
// dies without running its cleanups (a test timeout, kill -9), so no
// server outlives its test run. The signal follows the OS thread that
// started the child; the Go runtime keeps its threads alive unless a
// goroutine exits while locked to one, which these tests do not do.
func setParentDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
