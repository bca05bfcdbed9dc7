package secret

// useSHANI is whether compress may run the SHA extensions.
var useSHANI = hasSHANI()

// hasSHANI reports whether the CPU has the SHA extensions (SHA256RNDS2,
// SHA256MSG1, SHA256MSG2: CPUID.(EAX=7,ECX=0):EBX bit 29) and what
// compressSHANI uses besides: SSSE3's PSHUFB and SSE4.1's PBLENDW
// (CPUID.1:ECX bits 9 and 19). In assembly, not golang.org/x/sys/cpu:
// this package imports only the standard library.
//
//go:noescape
func hasSHANI() bool

// compressSHANI is compress on the SHA extensions: it hashes the 64 bytes
// at p into h. It keeps the state and the message schedule in X0–X10 and
// zeroes them before it returns; it writes no memory but h.
//
//go:noescape
func compressSHANI(h *[8]uint32, p *byte)
