package main

import (
	"log/slog"
	"os/signal"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/keyring"
)

// setupProcess readies the mount process before it reads a key.
func setupProcess(log *slog.Logger) {
	hardenProcess(log)
	setProcs(log)
	// A closed terminal or log pipe must not kill a mount that is
	// serving files: writes to it fail instead of raising SIGPIPE.
	signal.Ignore(syscall.SIGPIPE)
}

// hardenProcess keeps key material out of core dumps and swap: no core
// dumps, not ptrace-attachable by other users, files created with exactly
// the modes the kernel passes.
func hardenProcess(log *slog.Logger) {
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		log.Warn("cannot disable core dumps", "err", err.Error())
	}
	unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{})
	dumpable, _ := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
	log.Debug("process hardened", "dumpable", dumpable)
	unix.Umask(0)
	if !keyring.LockedMemory() {
		log.Info("key memory cannot be mlocked (RLIMIT_MEMLOCK); keys may reach swap")
	}
}
