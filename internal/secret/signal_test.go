package secret

import (
	"bufio"
	"bytes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/internal/secret/secrettest"
)

// signalChildEnv makes the test binary the child of
// TestNoKeyInSignalFrames.
const signalChildEnv = "KMSFS_SECRET_SIGNAL_CHILD"

// TestNoKeyInSignalFrames: a key that went through HMAC or NewKDF, the
// pseudorandom key NewKDF made of it, a key that Expand derived, a key
// that AESGCM built a cipher under (a second of builds, so that signals
// land inside some: Shield), and any two consecutive round keys of it
// (which give the key back) after WithAESGCM's seals, are not left in
// vector registers, where the kernel saves them in every
// signal frame on the thread's signal stack (Go heap, never cleared) and
// asynchronous preemption on the goroutine's stack (Copy's comment). A
// child process computes with a key and then takes profiling signals in
// a loop that touches no vector register; its memory must hold none of
// those keys afterwards.
func TestNoKeyInSignalFrames(t *testing.T) {
	if op := os.Getenv(signalChildEnv); op != "" {
		signalChild(op)
		return
	}
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc/PID/mem")
	}
	key := randBytes(32)
	salt := randBytes(16)
	derived, err := hkdf.Key(sha256.New, key, salt, "test label", 32)
	if err != nil {
		t.Fatal(err)
	}
	prk, err := hkdf.Extract(sha256.New, key, salt)
	if err != nil {
		t.Fatal(err)
	}
	needles := map[string][]byte{"input key": key, "pseudorandom key": prk, "derived key": derived}
	maps.Copy(needles, roundKeyPairs(t, "input key", key))
	// SHA-256 on the SHA extensions holds message blocks as big-endian
	// words; a derived key is also the one WithKDF's AEAD runs under.
	maps.Copy(needles, secrettest.WordSwapped(map[string][]byte{"input key": key, "pseudorandom key": prk, "derived key": derived}))
	maps.Copy(needles, roundKeyPairs(t, "derived key", derived))
	for _, op := range []string{"hmac", "newkdf", "expand", "aesgcm", "seal", "withkdf", "withkdfkey", "hmac", "newkdf", "expand", "aesgcm", "seal", "withkdf", "withkdfkey"} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestNoKeyInSignalFrames$")
		cmd.Env = append(os.Environ(), signalChildEnv+"="+op)
		cmd.Stdin = bytes.NewReader(append(bytes.Clone(key), salt...))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(out).ReadString('\n')
		if err != nil || strings.TrimSpace(line) != "ready" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("child: %q, %v", line, err)
		}
		found := scanProcess(t, cmd.Process.Pid, needles)
		cmd.Process.Kill()
		cmd.Wait()
		for name, where := range found {
			t.Errorf("after %s, the %s is in the child's memory at %v", op, name, where)
		}
	}
}

// signalChild reads a key and a salt from stdin, computes with them
// (op: hmac, newkdf, expand, aesgcm, seal, withkdf or withkdfkey), wipes everything, takes profiling
// signals for a while and says "ready"; then waits to be killed.
func signalChild(op string) {
	var in [48]byte
	if _, err := io.ReadFull(os.Stdin, in[:]); err != nil {
		panic(err)
	}
	// SIGPROF every 10ms from here on, on whatever thread runs.
	if err := pprof.StartCPUProfile(io.Discard); err != nil {
		panic(err)
	}
	switch op {
	case "hmac":
		var mac [size]byte
		HMAC(&mac, in[:32], []byte("message"))
	case "newkdf":
		NewKDF(in[:32], in[32:]).Wipe()
	case "expand":
		kdf := NewKDF(in[:32], in[32:])
		out := new([32]byte)
		kdf.Expand(out[:], "test label")
		kdf.Wipe()
		clear(out[:])
	case "aesgcm":
		// Many builds, so that profiling signals land inside some.
		for start := time.Now(); time.Since(start) < time.Second; {
			a, err := AESGCM(in[:32])
			if err != nil {
				panic(err)
			}
			Wipe(a)
		}
	case "withkdf":
		// Many derivations (on the SHA extensions, where the CPU has
		// them) and seals under the derived key, all under WithKDF's
		// one Shield.
		for start := time.Now(); time.Since(start) < time.Second; {
			WithKDF(in[:32], in[32:], func(k *KDF) {
				if err := k.WithAESGCM("test label", func(a cipher.AEAD) { a.Seal(nil, in[32:44], in[:32], nil) }); err != nil {
					panic(err)
				}
			})
		}
	case "withkdfkey":
		// Derivations alone, SHA-256 on the SHA extensions and no AES.
		for start := time.Now(); time.Since(start) < time.Second; {
			WithKDF(in[:32], in[32:], func(k *KDF) { k.Key("test label") })
		}
	case "seal":
		// Seal of a short message: AES-GCM's path for it holds seven
		// round keys in X1-X7 at once.
		for start := time.Now(); time.Since(start) < time.Second; {
			if err := WithAESGCM(in[:32], func(a cipher.AEAD) { a.Seal(nil, in[32:44], in[:32], nil) }); err != nil {
				panic(err)
			}
		}
	}
	clear(in[:])
	spin(time.Second)
	pprof.StopCPUProfile()
	fmt.Println("ready")
	time.Sleep(time.Minute)
	os.Exit(0)
}

// roundKeyPairs is secrettest.RoundKeyPairs of key, raw and
// word-swapped (as a schedule without AES-NI holds them).
func roundKeyPairs(t *testing.T, name string, key []byte) map[string][]byte {
	t.Helper()
	pairs, err := secrettest.RoundKeyPairs(name, key)
	if err != nil {
		t.Fatal(err)
	}
	maps.Copy(pairs, secrettest.WordSwapped(pairs))
	return pairs
}

// spin loops for d on integer arithmetic only.
//
//go:noinline
func spin(d time.Duration) {
	x := uint64(1)
	for start := time.Now(); time.Since(start) < d; {
		for range 1 << 20 {
			x = x*6364136223846793005 + 1442695040888963407
		}
	}
	spinSink = x
}

var spinSink uint64

// scanProcess returns where in pid's readable mappings each needle is.
func scanProcess(t *testing.T, pid int, needles map[string][]byte) map[string][]string {
	t.Helper()
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	found := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(maps)), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || !strings.HasPrefix(f[1], "r") || (len(f) > 5 && strings.HasPrefix(f[5], "[v")) {
			continue
		}
		lo, hi, _ := strings.Cut(f[0], "-")
		start, _ := strconv.ParseUint(lo, 16, 64)
		end, _ := strconv.ParseUint(hi, 16, 64)
		buf := make([]byte, end-start)
		n, _ := mem.ReadAt(buf, int64(start))
		buf = buf[:n]
		for name, needle := range needles {
			for off := 0; ; {
				i := bytes.Index(buf[off:], needle)
				if i < 0 {
					break
				}
				found[name] = append(found[name], fmt.Sprintf("%#x in %s", start+uint64(off+i), line))
				off += i + 1
			}
		}
	}
	return found
}
