package secret

import (
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
)

// TestCompressSHANI checks the SHA-extension compression against the Go
// one from random states and blocks, and that compress with vec set
// leaves the Go schedule alone; TestSHA256MatchesStdlib checks whichever
// compress runs.
func TestCompressSHANI(t *testing.T) {
	if !useSHANI {
		t.Skip("this CPU has no SHA extensions: compress runs in Go, which TestSHA256MatchesStdlib checks")
	}
	r := rand.New(rand.NewPCG(1, 2))
	var w [64]uint32
	for i := range 10000 {
		var h, want [8]uint32
		for j := range h {
			h[j] = r.Uint32()
		}
		p := make([]byte, blockSize)
		for j := range p {
			p[j] = byte(r.Uint32())
		}
		want = h
		compressGeneric(&want, &w, p)
		s := sched{vec: true}
		for j := range s.w {
			s.w[j] = 0x5a5a5a5a
		}
		compress(&h, &s, p)
		if h != want {
			t.Fatalf("block %d: SHA extensions give %08x, Go gives %08x", i, h, want)
		}
		for j := range s.w {
			if s.w[j] != 0x5a5a5a5a {
				t.Fatalf("block %d: compress on the SHA extensions wrote the Go schedule", i)
			}
		}
	}
}

// TestUseSHANI checks the CPUID probe against /proc/cpuinfo's flags, so
// that a probe that lost the SHA extensions (6× slower, failing nothing
// else) or claimed them falsely fails here.
func TestUseSHANI(t *testing.T) {
	info, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Skip("no /proc/cpuinfo to check the probe against")
	}
	var flags []string
	for line := range strings.Lines(string(info)) {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "flags" {
			flags = strings.Fields(v)
			break
		}
	}
	want := slices.Contains(flags, "sha_ni") && slices.Contains(flags, "ssse3") && slices.Contains(flags, "sse4_1")
	if useSHANI != want {
		t.Fatalf("CPUID says SHA extensions usable: %v; /proc/cpuinfo flags say %v", useSHANI, want)
	}
}

func BenchmarkCompressGeneric(b *testing.B) {
	var h [8]uint32
	var w [64]uint32
	p := randBytes(blockSize)
	b.SetBytes(blockSize)
	for b.Loop() {
		compressGeneric(&h, &w, p)
	}
}
