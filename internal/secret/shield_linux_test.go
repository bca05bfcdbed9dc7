package secret

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// threadMask returns the calling thread's signal mask.
func threadMask(t *testing.T) uint64 {
	t.Helper()
	var cur uint64
	if _, _, e := syscall.RawSyscall6(syscall.SYS_RT_SIGPROCMASK, sigSetmask, 0,
		uintptr(unsafe.Pointer(&cur)), unsafe.Sizeof(cur), 0, 0); e != 0 {
		t.Fatalf("rt_sigprocmask: %v", e)
	}
	return cur
}

// TestShieldBlocksSignals: while f runs every asynchronous signal is
// blocked on its thread (the preemption signal SIGURG and the profiling
// signal SIGPROF among them) and the fault signals are not; afterwards,
// also after a panic in f, the thread's mask is what it was.
func TestShieldBlocksSignals(t *testing.T) {
	bit := func(s syscall.Signal) uint64 { return 1 << (s - 1) }
	var inside uint64
	Shield(func() { inside = threadMask(t) })
	for _, s := range []syscall.Signal{syscall.SIGURG, syscall.SIGPROF, syscall.SIGALRM, syscall.SIGCHLD, syscall.SIGTERM, syscall.SIGINT, syscall.SIGWINCH} {
		if inside&bit(s) == 0 {
			t.Errorf("%v is not blocked inside Shield (mask %#x)", s, inside)
		}
	}
	for _, s := range []syscall.Signal{syscall.SIGSEGV, syscall.SIGBUS, syscall.SIGFPE, syscall.SIGILL, syscall.SIGTRAP} {
		if inside&bit(s) != 0 {
			t.Errorf("%v is blocked inside Shield: a fault would kill the process instead of panicking", s)
		}
	}
	for _, s := range []syscall.Signal{32, 33} {
		if inside&bit(s) != 0 {
			t.Errorf("signal %d is blocked inside Shield: an all-threads system call would hang", s)
		}
	}

	Shield(func() {
		before := threadMask(t) // the locked thread, already shielded
		func() {
			defer func() { recover() }()
			Shield(func() { panic("in f") })
		}()
		if after := threadMask(t); after != before {
			t.Errorf("a panic in a nested Shield left the mask %#x, want %#x", after, before)
		}
	})
	if m := threadMask(t); m&bit(syscall.SIGURG) != 0 {
		t.Errorf("SIGURG is still blocked after Shield (mask %#x)", m)
	}
}

// TestAESGCMMatchesStdlib: AESGCM and AESGCMFrom seal as crypto/cipher's
// AES-GCM does; AESGCMFrom derives under Shield and zeroes the key after.
func TestAESGCMMatchesStdlib(t *testing.T) {
	key, nonce, msg := randBytes(32), randBytes(12), randBytes(100)
	a, err := AESGCM(key)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := aes.NewCipher(key)
	want, _ := cipher.NewGCM(block)
	if got, exp := a.Seal(nil, nonce, msg, []byte("ad")), want.Seal(nil, nonce, msg, []byte("ad")); !bytes.Equal(got, exp) {
		t.Errorf("AESGCM sealed %x, crypto/cipher %x", got, exp)
	}
	if !Wipe(a) {
		t.Error("AESGCM's AEAD cannot be wiped")
	}
	if _, err := AESGCM(key[:31]); err == nil {
		t.Error("AESGCM took a 31-byte key")
	}

	var given []byte
	var shielded bool
	b, err := AESGCMFrom(func(k []byte) {
		given = k
		shielded = threadMask(t)&(1<<(syscall.SIGURG-1)) != 0
		copy(k, key)
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, exp := b.Seal(nil, nonce, msg, nil), want.Seal(nil, nonce, msg, nil); !bytes.Equal(got, exp) {
		t.Errorf("AESGCMFrom sealed %x, crypto/cipher %x", got, exp)
	}
	if !shielded {
		t.Error("AESGCMFrom's derive ran with SIGURG let through")
	}
	if len(given) != 32 || !bytes.Equal(given, make([]byte, 32)) {
		t.Errorf("AESGCMFrom left its %d-byte key buffer %x after returning, want 32 zero bytes", len(given), given)
	}
}

// setxidChildEnv makes the test binary the child of
// TestShieldLetsSetxidThrough.
const setxidChildEnv = "KMSFS_SECRET_SETXID_CHILD"

// TestShieldLetsSetxidThrough: a goroutine waiting inside Shield does not
// stop another from changing the process's credentials, which the Go
// runtime (and glibc, with cgo) does by signalling every thread and
// waiting for each. A child process tries; it must finish, not hang.
func TestShieldLetsSetxidThrough(t *testing.T) {
	if os.Getenv(setxidChildEnv) != "" {
		inside, release := make(chan struct{}), make(chan struct{})
		go Shield(func() {
			close(inside)
			<-release
		})
		<-inside
		if err := syscall.Setgid(os.Getgid()); err != nil {
			fmt.Println("setgid:", err)
			os.Exit(1)
		}
		close(release)
		fmt.Println("done")
		os.Exit(0)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestShieldLetsSetxidThrough$")
	cmd.Env = append(os.Environ(), setxidChildEnv+"=1")
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("setgid hung while a goroutine waited inside Shield:\n%s", out)
	}
	if err != nil || !strings.Contains(string(out), "done") {
		t.Fatalf("child: %v\n%s", err, out)
	}
}
