package secret

import (
	"syscall"
	"unsafe"
)

// sigSetmask is rt_sigprocmask's SIG_SETMASK.
const sigSetmask = 2

// asyncSignals is every signal but the synchronous ones a fault raises
// (SIGILL 4, SIGTRAP 5, SIGBUS 7, SIGFPE 8, SIGSEGV 11), which the Go
// runtime turns into panics, and signals 32 and 33, with which the Go
// runtime (syscall.AllThreadsSyscall, setuid and its kin) and glibc make
// every thread run a system call: blocked on a thread whose goroutine
// waits in f (for a lock, or to assist the garbage collector), they
// would hang the whole process. kmsfs makes no such call after it
// starts, so they never come. The kernel ignores a block of SIGKILL and
// SIGSTOP.
const asyncSignals = ^uint64(1<<(4-1) | 1<<(5-1) | 1<<(7-1) | 1<<(8-1) | 1<<(11-1) | 1<<(32-1) | 1<<(33-1))

// blockSignals blocks asyncSignals on the calling thread (which the
// caller has locked) and returns the mask it had, for restoreSignals.
// Should the kernel refuse, nothing is blocked (ok is false): Shield
// still zeroes the registers after f.
func blockSignals() (old uint64, ok bool) {
	set := uint64(asyncSignals)
	_, _, e := syscall.RawSyscall6(syscall.SYS_RT_SIGPROCMASK, sigSetmask,
		uintptr(unsafe.Pointer(&set)), uintptr(unsafe.Pointer(&old)), unsafe.Sizeof(set), 0, 0)
	return old, e == 0
}

// restoreSignals sets the thread's mask back to old.
func restoreSignals(old uint64) {
	syscall.RawSyscall6(syscall.SYS_RT_SIGPROCMASK, sigSetmask,
		uintptr(unsafe.Pointer(&old)), 0, unsafe.Sizeof(old), 0, 0)
}
